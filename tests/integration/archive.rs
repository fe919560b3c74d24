//! WAL archiving against real clusters: archive_command set to the built
//! pgcairn-archive-push, archive-get byte-identity, duplicates, foreign WAL,
//! kill -9, restore through the archive, point-in-time recovery, check, async mode.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cli::{wait_promoted, Pgcairn};
use crate::support::{chown_to_postgres, Cluster, PgVersion, TestDir};

/// The archive-push binary lives in its own package; build it next to `pgcairn`.
pub fn archive_push_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let pgcairn = Path::new(env!("CARGO_BIN_EXE_pgcairn"));
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "pgcairn-archive-push"]);
        if pgcairn.parent().is_some_and(|d| d.ends_with("release")) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p pgcairn-archive-push failed");
        pgcairn.with_file_name("pgcairn-archive-push")
    })
    .clone()
}

/// A cluster archiving into a local stanza through pgcairn-archive-push.
pub struct Archiving {
    pub cluster: Cluster,
    pub repo: TestDir,
    _key_dir: TestDir,
    pub key: PathBuf,
    pub p: Pgcairn,
}

impl Archiving {
    pub fn new(version: PgVersion, extra_flags: &str) -> Archiving {
        let cluster = Cluster::init(version);
        let repo = TestDir::new("repo");
        let key_dir = TestDir::new("key");
        let key = key_dir.path().join("repo.key");
        let p = Pgcairn::local(repo.path()).without_env("PGCAIRN_ARCHIVE_COPY");
        p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
        p.ok(&["key-file", &format!("--output={}", key.display())]);
        chown_to_postgres(repo.path());
        chown_to_postgres(&key);
        let a = Archiving { cluster, repo, _key_dir: key_dir, key, p };
        a.set_archive_command(extra_flags);
        a.cluster.psql("ALTER SYSTEM SET archive_mode = on; ALTER SYSTEM SET wal_keep_size = '4GB';");
        a.cluster.stop();
        a.cluster.start();
        a
    }

    pub fn archive_command(&self, extra_flags: &str) -> String {
        format!(
            "{} --stanza=main --repo={} --repo-key-file={} {extra_flags} %p",
            archive_push_bin().display(),
            self.repo.path().display(),
            self.key.display()
        )
    }

    pub fn set_archive_command(&self, extra_flags: &str) {
        self.cluster.psql(&format!(
            "ALTER SYSTEM SET archive_command = '{}'; SELECT pg_reload_conf();",
            self.archive_command(extra_flags)
        ));
        std::thread::sleep(Duration::from_millis(300)); // the archiver picks up the reload
    }

    /// Force `n` segment switches, each with a little WAL in it.
    pub fn switch_segments(&self, n: usize) {
        for _ in 0..n {
            self.cluster.psql("CREATE TABLE IF NOT EXISTS switches (at timestamptz); INSERT INTO switches VALUES (now()); SELECT pg_switch_wal();");
        }
    }

    /// Wait until the archiver has archived everything before the current segment.
    pub fn wait_archived(&self) {
        wait_archived(&self.cluster);
    }

    pub fn archived_names(&self) -> Vec<String> {
        let dir = self.repo.path().join("main/wal/00000001");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The archive-push binary run by hand, as PostgreSQL would run it.
    pub fn push(&self, path: &Path) -> std::process::Output {
        let cmd = self.archive_command("");
        let mut words = cmd.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        *words.last_mut().unwrap() = path.display().to_string();
        Command::new(&words[0]).args(&words[1..]).env("PGCAIRN_CONFIG", "").output().unwrap()
    }

    pub fn get(&self, name: &str, dest: &Path) -> std::process::Output {
        self.p.run(&["archive-get", name, &dest.display().to_string()])
    }
}

/// Wait until `cluster`'s archiver has archived everything before the current segment.
pub fn wait_archived(cluster: &Cluster) {
    // + 1: right after pg_switch_wal() the position is the first byte of the next
    // segment, which pg_walfile_name names as the segment before it; the wait then
    // ended before the switched segment was archived (issue 24's standby test
    // restored to a target in it and was told the archive ended earlier).
    let current = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn() + 1)");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let last = cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if last.as_str() >= previous_segment(&current).as_str() {
            return;
        }
        assert!(Instant::now() < deadline, "archiver stuck at {last:?} (want {current}):\n{}", cluster.server_log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn previous_segment(name: &str) -> String {
    let (tli, hi, lo) =
        (&name[0..8], u32::from_str_radix(&name[8..16], 16).unwrap(), u32::from_str_radix(&name[16..24], 16).unwrap());
    let segno = (hi as u64) * 256 + lo as u64 - 1;
    format!("{tli}{:08X}{:08X}", segno / 256, segno % 256)
}

fn archive_roundtrip(version: PgVersion) {
    let a = Archiving::new(version, "");
    a.cluster.pgbench(&["-i", "-s", "5", "-q"]);
    a.cluster.pgbench(&["-n", "-c", "2", "-T", "3"]);
    a.switch_segments(52);
    a.wait_archived();
    let stats = a.cluster.psql("SELECT archived_count, failed_count FROM pg_stat_archiver");
    let (archived, failed) = stats.split_once('|').unwrap();
    assert_eq!(failed, "0", "pg_stat_archiver reports failures:\n{}", a.cluster.server_log());
    assert!(archived.parse::<u32>().unwrap() >= 50, "only {archived} segments archived");

    // Every archived segment comes back byte for byte.
    let names = a.archived_names();
    assert!(names.len() >= 50, "{} objects", names.len());
    let out = TestDir::new("get");
    for name in &names {
        let dest = out.path().join("RECOVERYXLOG");
        let o = a.get(name, &dest);
        assert!(o.status.success(), "archive-get {name}: {}", String::from_utf8_lossy(&o.stderr));
        let original = std::fs::read(a.cluster.data_dir().join("pg_wal").join(name)).unwrap();
        assert!(std::fs::read(&dest).unwrap() == original, "{name} differs from PostgreSQL's copy");
    }
    // Past the end of the archive: exit 1, quietly, nothing written.
    let dest = out.path().join("absent");
    let o = a.get("0000000100000099000000FF", &dest);
    assert_eq!(o.status.code(), Some(1));
    assert!(!dest.exists());

    // Identical re-push succeeds; different content under the same name fails and
    // the archived copy stays.
    let name = &names[names.len() / 2];
    let original = a.cluster.data_dir().join("pg_wal").join(name);
    let o = a.push(&original);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already archived"));
    let altered_dir = TestDir::new("altered");
    let altered = altered_dir.path().join(name);
    let mut bytes = std::fs::read(&original).unwrap();
    bytes[81920] ^= 0xff;
    std::fs::write(&altered, &bytes).unwrap();
    let o = a.push(&altered);
    assert_eq!(o.status.code(), Some(11), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("different content"));
    let dest = out.path().join("check");
    assert!(a.get(name, &dest).status.success());
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&original).unwrap(), "archived copy was changed");

    // WAL of another cluster is refused, and nothing is written.
    let other = Cluster::init(version);
    let foreign_name = other.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    other.psql("SELECT pg_switch_wal()");
    let foreign = other.data_dir().join("pg_wal").join(&foreign_name);
    let before = a.archived_names();
    let o = a.push(&foreign);
    assert_eq!(o.status.code(), Some(11), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another cluster"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(a.archived_names(), before, "a refused segment left an object");

    // check passes on a working setup.
    let out_check = a.p.ok(&["check", &format!("--pg={}", a.cluster.conninfo())]);
    assert!(out_check.contains("check ok"), "{out_check}");
    // Issue 25: check says whether diff and incr can read only what changed.
    let summaries = match version >= PgVersion::V17 {
        true => "summarize_wal on (kept 10d)",
        false => "no WAL summaries before PostgreSQL 17",
    };
    assert!(out_check.contains(summaries), "{out_check}");

    // A backup that relies on the archive, then more work, a restore point, more work.
    a.cluster.pgbench(&["-n", "-c", "2", "-T", "2"]);
    let mut bench = a.cluster.pgbench_background(&["-n", "-c", "2", "-T", "60"]);
    std::thread::sleep(Duration::from_secs(1));
    let label = a.p.backup(&a.cluster.conninfo());
    bench.kill().ok();
    bench.wait().ok();
    let info: serde_json::Value = serde_json::from_str(&a.p.ok(&["info", "--output=json"])).unwrap();
    assert_eq!(info["backups"][0]["wal_included"], false, "archiving is on: the set relies on the archive");
    assert_eq!(info["archive"][0]["gaps"].as_array().unwrap().len(), 0, "{info}");
    a.cluster.psql("CREATE TABLE after_backup AS SELECT 42 AS answer; SELECT pg_create_restore_point('before_drop');");
    a.cluster.psql("DROP TABLE after_backup;");
    a.switch_segments(1);
    a.wait_archived();

    // Restore to the end of the archive: replays past the backup, the table is gone again.
    let restore = |extra: &[&str]| -> (TestDir, Cluster) {
        let target = TestDir::new("restore");
        let data = target.path().join("data");
        let mut args = vec![
            "restore".to_string(),
            format!("--pg-data={}", data.display()),
            format!("--set={label}"),
            format!("--repo-key-file={}", a.key.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        a.p.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let c = Cluster::start_restored(version, &data);
        wait_promoted(&c);
        (target, c)
    };
    let (_t1, end) = restore(&[]);
    assert_eq!(end.psql("SELECT count(*) FROM pg_class WHERE relname = 'after_backup'"), "0");
    // Promoted onto timeline 2, the restored cluster archives its history file into
    // the stanza (its archive_command came with the backup); archive-get returns it.
    let history = a.repo.path().join("main/wal/00000002/00000002.history");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !history.exists() {
        assert!(Instant::now() < deadline, "00000002.history not archived:\n{}", end.server_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let fetched = out.path().join("history");
    assert!(a.get("00000002.history", &fetched).status.success());
    assert_eq!(
        std::fs::read_to_string(&fetched).unwrap(),
        std::fs::read_to_string(end.data_dir().join("pg_wal/00000002.history")).unwrap()
    );
    assert!(end.server_log().contains("restored log file"), "recovery did not use archive-get:\n{}", end.server_log());
    assert_eq!(
        end.psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"),
        "t"
    );
    drop(end);
    // Point in time: the restore point, before the drop.
    let (_t2, pitr) = restore(&["--type=name", "--target=before_drop", "--target-action=promote"]);
    assert_eq!(pitr.psql("SELECT answer FROM after_backup"), "42");
}

#[test]
fn archive_pg15() {
    archive_roundtrip(PgVersion::V15);
}

#[test]
fn archive_pg17() {
    archive_roundtrip(PgVersion::V17);
}

/// kill -9 of archive-push in the middle of its work, then PostgreSQL's retry:
/// the retry succeeds and the repository holds one correct object.
#[test]
fn killed_archive_push_is_retried_cleanly() {
    let a = Archiving::new(PgVersion::V15, "");
    a.cluster.psql("ALTER SYSTEM SET archive_mode = off");
    a.cluster.stop();
    a.cluster.start();
    a.cluster.pgbench(&["-i", "-s", "2", "-q"]);
    let name = a.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    a.cluster.psql("SELECT pg_switch_wal()");
    let segment = a.cluster.data_dir().join("pg_wal").join(&name);
    let cmd = a.archive_command("");
    let words: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
    for delay_ms in [0u64, 2, 5, 10, 20, 40] {
        let mut child = Command::new(&words[0])
            .args(&words[1..words.len() - 1])
            .arg(&segment)
            .env("PGCAIRN_CONFIG", "")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().ok(); // SIGKILL
        child.wait().ok();
    }
    let o = a.push(&segment);
    assert!(o.status.success(), "retry after kill -9 failed: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(a.archived_names().iter().filter(|n| **n == name).count(), 1, "exactly one object for the segment");
    // Regression (issue 10, defect 7): killed pushes left `.<segment>.pgcairn-tmp.*`
    // files in wal/ that nothing removed. Temp files now live in .tmp/, named by
    // their writer, and the next push removes those of dead writers.
    let wal_dir = a.repo.path().join("main/wal/00000001");
    let dotfiles: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name())
        .collect();
    assert!(dotfiles.is_empty(), "temp files in {}: {dotfiles:?}", wal_dir.display());
    let tmp = a.repo.path().join("main/.tmp");
    let left: Vec<_> =
        std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "temp files of killed pushes left in {}: {left:?}", tmp.display());
    let dest = TestDir::new("get");
    assert!(a.get(&name, &dest.path().join("x")).status.success());
    assert!(std::fs::read(dest.path().join("x")).unwrap() == std::fs::read(&segment).unwrap());
}

/// Issue 14: check and backup refuse what cannot work before doing the work. A
/// backup of a server that does not archive silently carried its WAL (no PITR);
/// a failing archive_command made check wait its whole archive-timeout and backup
/// stream the whole cluster first. Now both read the server's settings and
/// pg_stat_archiver first; `check --archive-only` says CRITICAL (exit 2) at once.
#[test]
fn check_names_what_to_fix() {
    let cluster = Cluster::init(PgVersion::V15);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path()).without_env("PGCAIRN_ARCHIVE_COPY");
    let pg = format!("--pg={}", cluster.conninfo());
    p.ok(&["stanza-create", &pg]);
    let (code, err) = p.fails(&["check", &pg]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("archive_mode is off") && err.contains("pgcairn-archive-push"), "{err}");
    assert!(err.contains("/pgcairn-archive-push") && err.contains("--stanza=main %p"), "absolute path: {err}");
    let (code, err) = p.fails(&["backup", "--start-fast", &pg]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not archive WAL") && err.contains("--archive-copy"), "{err}");
    assert!(p.ok(&["info", "--output=json"]).contains("\"no-backups\""), "nothing was stored");
    cluster.psql("ALTER SYSTEM SET archive_mode = on; ALTER SYSTEM SET archive_command = 'cp %p /nowhere/%f'");
    cluster.stop();
    cluster.start();
    let (code, err) = p.fails(&["check", &format!("--pg={}", cluster.conninfo())]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not call pgcairn"), "{err}");
    // Archiving configured but failing: check stops at the first failure of its
    // segment (pg_stat_archiver), not after archive-timeout.
    cluster.psql("ALTER SYSTEM SET archive_command = '/bin/false pgcairn --stanza=main %p'; SELECT pg_reload_conf()");
    let started = Instant::now();
    let (code, err) = p.fails(&["check", "--archive-timeout=120", &pg]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("archive_command is failing") && err.contains("server log"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "check waited {:?}", started.elapsed());
    let out = p.run(&["check", "--archive-only", &pg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.starts_with("PGCAIRN ARCHIVE CRITICAL") && text.contains("archive_command is failing"), "{text}");
    let started = Instant::now();
    let (code, err) = p.fails(&["backup", "--start-fast", "--archive-timeout=120", &pg]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("archive_command is failing"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "backup waited {:?}", started.elapsed());
}

/// Async mode under pgbench: nothing lost; then the queue bound, both ways.
#[test]
fn async_archive_push() {
    let spool = TestDir::new("spool");
    let flags = format!("--archive-async=true --spool-path={}", spool.path().display());
    let a = Archiving::new(PgVersion::V17, &flags);
    let mut bench = a.cluster.pgbench_background(&["-n", "-c", "2", "-T", "15"]);
    a.cluster.pgbench(&["-i", "-s", "5", "-q", "--unlogged-tables"]);
    a.switch_segments(30);
    bench.wait().ok();
    a.switch_segments(1);
    a.wait_archived();
    // archive_command returned on queueing; wait for the drainer to empty the queue.
    let out = spool.path().join("main/out");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&out).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "queue not drained:\n{}",
            std::fs::read_to_string(spool.path().join("main/drain.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let info: serde_json::Value = serde_json::from_str(&a.p.ok(&["info", "--output=json"])).unwrap();
    let tl = &info["archive"][0];
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "async lost segments: {info}");
    let last = a.cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver");
    assert_eq!(tl["last"], last.as_str(), "{info}");
    assert!(tl["segments"].as_u64().unwrap() >= 30);

    // Queue bound with queue-full=fail: archive_command fails, PostgreSQL keeps and retries.
    a.set_archive_command(&format!("{flags} --archive-push-queue-max=1 --archive-push-queue-full=fail"));
    a.switch_segments(2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.cluster.psql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "archive_command never failed with a full queue");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing queued beyond the bound");
    // Back to a roomy queue: the kept segments are archived, nothing lost.
    a.set_archive_command(&flags);
    a.switch_segments(1);
    a.wait_archived();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: serde_json::Value = serde_json::from_str(&a.p.ok(&["info", "--output=json"])).unwrap();
        let last = a.cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver");
        if info["archive"][0]["last"] == last.as_str() {
            assert_eq!(info["archive"][0]["gaps"].as_array().unwrap().len(), 0, "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "async archive did not catch up: {info}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // queue-full=drop: archive_command succeeds, the drop is recorded, check fails, info shows the gap.
    a.set_archive_command(&format!("{flags} --archive-push-queue-max=1 --archive-push-queue-full=drop"));
    a.switch_segments(2);
    a.wait_archived();
    let dropped = std::fs::read_to_string(spool.path().join("main/dropped.log")).unwrap_or_default();
    assert!(dropped.lines().count() >= 2, "drops not recorded: {dropped:?}");
    a.set_archive_command(&flags);
    a.switch_segments(2);
    a.wait_archived();
    let check_args = [
        "check".to_string(),
        format!("--pg={}", a.cluster.conninfo()),
        "--archive-async=true".to_string(),
        format!("--spool-path={}", spool.path().display()),
    ];
    let (code, err) = a.p.fails(&check_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("were dropped"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: serde_json::Value = serde_json::from_str(&a.p.ok(&["info", "--output=json"])).unwrap();
        if !info["archive"][0]["gaps"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "dropped segments do not show as a gap: {info}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Issue 26: with the README's configuration (a config file naming a passphrase file,
/// no key file) every archive-push derived the key with Argon2id: ~0.3 s and ~75 MiB
/// per segment. The server's archive-push now keeps the key in its OS user's key cache
/// (0700 directory, 0600 entry, no passphrase in it) and the next segments use it;
/// `key-cache = false` keeps none.
#[test]
fn readme_configuration_archives_through_the_key_cache() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let a = Archiving::new(PgVersion::V15, "");
    let conf_dir = TestDir::new("readme-conf");
    let pass = conf_dir.path().join("passphrase");
    crate::support::private_file(&pass, &format!("{}\n", crate::cli::PASSPHRASE));
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = |name: &str, extra: &str| {
        let path = conf_dir.path().join(name);
        let text = format!(
            "stanza = \"main\"\nrepo = \"{}\"\nrepo-passphrase-file = \"{}\"\n{extra}",
            a.repo.path().display(),
            pass.display()
        );
        crate::support::private_file(&path, &text);
        path
    };
    let push_with = |config: &Path| {
        a.cluster.psql(&format!(
            "ALTER SYSTEM SET archive_command = '{} --config={} %p'; SELECT pg_reload_conf();",
            archive_push_bin().display(),
            config.display()
        ));
        std::thread::sleep(Duration::from_millis(300));
        let before = a.archived_names().len();
        a.switch_segments(3);
        a.wait_archived();
        assert!(a.archived_names().len() >= before + 3, "{}", a.cluster.server_log());
    };
    let repo_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.repo.path().join("main/config")).unwrap()).unwrap();
    let id = repo_config["repository_id"].as_str().unwrap().to_string();
    let server_uid = std::fs::metadata(a.cluster.data_dir()).unwrap().uid();
    let user_dir = |base: &Path| base.join(format!("pgcairn-{server_uid}"));

    push_with(&config("pgcairn.toml", ""));
    let cache = user_dir(&crate::support::test_root().join("key-cache"));
    let entry = cache.join(format!("{id}.key"));
    let meta = std::fs::symlink_metadata(&entry).unwrap_or_else(|e| panic!("no entry {}: {e}", entry.display()));
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, server_uid));
    assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
    assert!(!String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).contains(crate::cli::PASSPHRASE));

    let off_base = TestDir::new("no-cache");
    push_with(&config("off.toml", &format!("key-cache = false\nkey-cache-path = \"{}\"\n", off_base.path().display())));
    assert!(!user_dir(off_base.path()).exists(), "key-cache = false wrote a cache");
}
