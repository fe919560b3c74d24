//! Issue 10's defects, each as a regression test against real clusters: a storage
//! owner cannot switch encryption off, damaged WAL stops recovery instead of ending
//! it, damage to one backup never hides the others, files are private whatever the
//! umask, names cannot leave the repository, outside input never panics.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::archive::{archive_push_bin, Archiving};
use crate::cli::{tree_contains, wait_promoted, Pgcairn};
use crate::support::{Cluster, PgVersion, TestDir};

fn info_json(p: &Pgcairn) -> serde_json::Value {
    serde_json::from_str(&p.ok(&["info", "--output=json"])).expect("info prints JSON")
}

/// Every regular file below `dir`, recursively, with directories.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(tree(&e.path()));
        }
    }
    out
}

/// Wait until the server has no file left to archive (no `.ready` in archive_status).
fn wait_archiver_idle(c: &crate::support::Cluster) {
    let status = c.data_dir().join("pg_wal/archive_status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ready =
        || std::fs::read_dir(&status).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".ready"));
    while ready() {
        assert!(std::time::Instant::now() < deadline, "the archiver did not finish");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn flip_byte(path: &Path, at: usize) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut bytes = original.clone();
    bytes[at] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
    original
}

/// Defect 1: changing `"encryption": "aes-256-gcm"` to `"none"` in the plaintext
/// `config` made every later backup and archive-push store plain zstd, silently —
/// a pack then held the table's text in clear. Now the config is authenticated
/// under the master key: backup, archive-push and info refuse it, naming the
/// object, and nothing is written.
#[test]
fn encryption_downgrade_is_refused() {
    let a = Archiving::new(PgVersion::V15, "");
    a.cluster.psql("CREATE TABLE secret AS SELECT 'downgrade-canary-' || g AS v FROM generate_series(1, 500) g");
    a.p.backup(&a.cluster.conninfo());
    let config = a.repo.path().join("main/config");
    let original = std::fs::read_to_string(&config).unwrap();
    assert!(original.contains("\"config_mac\""), "{original}");
    // Regression (CI flake at 011636f): the backup history file (.backup) was still
    // being archived by the server when the repository was counted, and arrived
    // after: "nothing was written" saw one file more. Count once the archiver is idle.
    wait_archiver_idle(&a.cluster);
    std::fs::write(&config, original.replace("\"aes-256-gcm\"", "\"none\"")).unwrap();
    let before = tree(a.repo.path()).len();

    let (code, err) = a.p.fails(&["backup", "--start-fast", &format!("--pg={}", a.cluster.conninfo())]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("main/config fails authentication"), "{err}");
    let (code, err) = a.p.fails(&["info"]);
    assert_eq!(code, 8, "{err}");
    // archive-push with the key file: refused too, within archive_command's contract.
    let segment = a.cluster.data_dir().join("pg_wal").join(a.archived_names()[0].clone());
    let o = a.push(&segment);
    assert_eq!(o.status.code(), Some(8), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tree(a.repo.path()).len(), before, "nothing was written");
    assert!(!tree_contains(a.repo.path(), b"downgrade-canary-"), "plaintext reached the repository");

    std::fs::write(&config, original).unwrap();
    a.p.backup(&a.cluster.conninfo());
    assert_eq!(info_json(&a.p)["backups"].as_array().unwrap().len(), 2);
}

/// Defect 2: with one later segment corrupt in the repository, PostgreSQL ended
/// recovery at it and promoted onto a new timeline, losing committed rows that
/// were intact in the archive: every archive-get failure exited below 126, which
/// PostgreSQL reads as "not in the archive". Now archive-get exits 200 and
/// recovery stops; once the object is repaired, a restart recovers every row.
#[test]
fn damaged_wal_stops_recovery_instead_of_ending_it() {
    let a = Archiving::new(PgVersion::V15, "");
    a.cluster.psql("CREATE TABLE batches (batch int, n int)");
    let label = a.p.backup(&a.cluster.conninfo());
    let mut damaged = String::new();
    for batch in 1..=3 {
        if batch == 2 {
            damaged = a.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        }
        a.cluster.psql(&format!("INSERT INTO batches SELECT {batch}, g FROM generate_series(1, 1000) g"));
        a.switch_segments(1);
    }
    a.wait_archived();
    let object = a.repo.path().join("main/wal/00000001").join(&damaged);
    let size = std::fs::metadata(&object).unwrap().len() as usize;
    let original = flip_byte(&object, size / 2);

    let target = TestDir::new("restore");
    let data = target.path().join("data");
    a.p.ok(&[
        "restore",
        &format!("--pg-data={}", data.display()),
        &format!("--set={label}"),
        &format!("--repo-key-file={}", a.key.display()),
    ]);
    let c = Cluster::launch_restored(PgVersion::V15, &data);
    c.wait_stopped(Duration::from_secs(120));
    let log = c.server_log();
    assert!(log.contains(&damaged) && log.contains("exits 200"), "archive-get did not name the damage:\n{log}");
    assert!(!log.contains("selected new timeline ID"), "recovery ended early and promoted:\n{log}");

    std::fs::write(&object, original).unwrap();
    c.start();
    wait_promoted(&c);
    assert_eq!(c.psql("SELECT count(*) FROM batches WHERE batch = 3"), "1000", "rows after the repaired segment");
}

/// Defects 3 and 8: one damaged manifest made `info` fail for the whole stanza
/// (rc 8, telling the operator to run `pgcairn info`), and a backup whose WAL had a
/// gap was listed as normal and restored with exit 0 into a cluster that could not
/// start. Now info lists each backup with its status, and restore refuses the ones
/// that cannot work before writing anything.
#[test]
fn damaged_backups_are_listed_and_refused() {
    let a = Archiving::new(PgVersion::V15, "");
    let first = a.p.backup(&a.cluster.conninfo());
    a.switch_segments(2);
    let second = a.p.backup(&a.cluster.conninfo());
    a.switch_segments(1);
    a.wait_archived();
    let third = a.p.backup(&a.cluster.conninfo());
    a.switch_segments(1);
    a.wait_archived();

    // info reads each backup's summary (format 5), restore its manifest: damage to
    // either is named by the command that reads it.
    flip_byte(&a.repo.path().join(format!("main/backup/{first}/summary")), 40);
    flip_byte(&a.repo.path().join(format!("main/backup/{first}/manifest")), 40);
    let info = info_json(&a.p);
    let backups = info["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 3, "{info}");
    assert_eq!(backups[0]["status"], "damaged", "{info}");
    assert!(backups[0]["problem"].as_str().unwrap().contains(&format!("{first}/summary")), "{info}");
    assert_eq!(backups[1]["status"], "ok", "{info}");

    // The second backup's first WAL segment goes missing from the archive.
    let wal_start = backups[1]["wal_start"].as_str().unwrap().to_string();
    std::fs::remove_file(a.repo.path().join("main/wal/00000001").join(&wal_start)).unwrap();
    let info = info_json(&a.p);
    assert_eq!(info["backups"][1]["status"], "not-restorable", "{info}");
    assert!(info["backups"][1]["problem"].as_str().unwrap().contains(&wal_start), "{info}");
    assert_eq!(info["backups"][2]["status"], "ok", "{info}");
    let text = a.p.ok(&["info"]);
    assert!(text.contains("DAMAGED backup") && text.contains("NOT RESTORABLE"), "{text}");

    let target = TestDir::new("restore");
    let data = target.path().join("data");
    for (label, why) in [(&first, "manifest"), (&second, wal_start.as_str())] {
        let (code, err) = a.p.fails(&["restore", &format!("--pg-data={}", data.display()), &format!("--set={label}")]);
        assert_eq!(code, 8, "{err}");
        assert!(err.contains(why), "{err}");
        assert!(!data.exists(), "a refused restore wrote {}", data.display());
    }
    // A block list part missing: damaged, named.
    let part = a.repo.path().join(format!("main/backup/{third}/blocks/000000"));
    std::fs::remove_file(&part).unwrap();
    let info = info_json(&a.p);
    assert_eq!(info["backups"][2]["status"], "damaged", "{info}");
    assert!(info["backups"][2]["problem"].as_str().unwrap().contains("blocks/000000"), "{info}");
}

/// `sh -c 'umask 022; exec …'`: run a command as cron or a login shell would.
fn under_umask_022(cmd: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c").arg("umask 022; exec \"$0\" \"$@\"").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_private(root: &Path) {
    for p in tree(root) {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(meta.permissions().mode() & 0o777, want, "{} is not private", p.display());
    }
}

/// Defect 4: run from a shell or cron with umask 022, the async spool held
/// plaintext WAL as 0644, archive-get output was 0644, and repository objects were
/// 0644 in 0755 directories. Now everything pgcairn creates is 0600 / 0700.
#[test]
fn files_are_private_whatever_the_umask() {
    let cluster = Cluster::init(PgVersion::V15);
    let repo = TestDir::new("repo");
    let work = TestDir::new("umask");
    let p = Pgcairn::local(repo.path());
    let key = work.path().join("repo.key");
    let spool = work.path().join("spool");
    run_ok(&mut under_umask_022(&p.cmd(&["stanza-create", &format!("--pg={}", cluster.conninfo())])));
    run_ok(&mut under_umask_022(&p.cmd(&["key-file", &format!("--output={}", key.display())])));
    run_ok(&mut under_umask_022(&p.cmd(&["backup", "--start-fast", &format!("--pg={}", cluster.conninfo())])));
    cluster.psql("CREATE TABLE m AS SELECT 'umask-marker' AS v");
    let names: Vec<String> = (0..2)
        .map(|_| {
            let n = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
            cluster.psql("SELECT pg_switch_wal()");
            n
        })
        .collect();
    let push = |extra: &[String], name: &str| {
        let mut cmd = Command::new(archive_push_bin());
        cmd.env("PGCAIRN_CONFIG", "");
        cmd.arg("--stanza=main").arg(format!("--repo={}", repo.path().display()));
        cmd.arg(format!("--repo-key-file={}", key.display())).args(extra);
        cmd.arg(cluster.data_dir().join("pg_wal").join(name));
        run_ok(&mut under_umask_022(&cmd));
    };
    push(&[], &names[0]);
    let async_flags = ["--archive-async=true".to_string(), format!("--spool-path={}", spool.display())];
    push(&async_flags, &names[1]);
    let object = repo.path().join("main/wal/00000001").join(&names[1]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !object.exists() {
        assert!(std::time::Instant::now() < deadline, "the drainer did not push {}", names[1]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = work.path().join("got");
    let get = p.cmd(&[
        "archive-get",
        &names[0],
        &got.display().to_string(),
        &format!("--spool-path={}", spool.display()),
        &format!("--repo-key-file={}", key.display()),
    ]);
    run_ok(&mut under_umask_022(&get));
    assert_eq!(std::fs::metadata(&got).unwrap().permissions().mode() & 0o777, 0o600, "archive-get output");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "key file");
    assert_private(&repo.path().join("main"));
    assert_private(&spool);
}

/// Defect 5: `--stanza=../escaped` created a directory outside the repository.
/// Stanza names and labels are checked before any storage call.
#[test]
fn names_cannot_leave_the_repository() {
    let outer = TestDir::new("names");
    let repo = outer.path().join("repo");
    let p = Pgcairn::local(&repo);
    for stanza in ["../escaped", "a/b", ".hidden", ""] {
        let o = Pgcairn { stanza: stanza.into(), ..p.clone() }.run(&["info"]);
        assert_eq!(o.status.code(), Some(3), "--stanza={stanza}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("stanza name"), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(!outer.path().join("escaped").exists() && !repo.exists(), "a directory was created");

    let f = p;
    let cluster = Cluster::init(PgVersion::V15);
    f.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    let target = outer.path().join("restore");
    for set in ["../../config", "20260101-000000F/../x", "a b"] {
        let (code, err) = f.fails(&["restore", &format!("--pg-data={}", target.display()), &format!("--set={set}")]);
        assert_eq!(code, 3, "--set={set}: {err}");
        assert!(err.contains("backup label"), "{err}");
    }
}

/// Defects 6 and 7: pgcairn-archive-push panicked (exit 101) on a non-UTF-8 path;
/// garbage `.history` files and 100-byte `.partial` files were archived without a
/// look. Now each is refused with a code inside archive_command's contract and
/// nothing is stored.
#[test]
fn archive_push_refuses_bad_input_without_panicking() {
    let a = Archiving::new(PgVersion::V15, "");
    let dir = TestDir::new("bad-wal");
    let before = tree(&a.repo.path().join("main")).len();
    let name = OsStr::from_bytes(b"00000001000000000000000\xff");
    std::fs::write(dir.path().join(name), b"x").unwrap();
    let cmd = a.archive_command("");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let o = Command::new(words[0])
        .args(&words[1..words.len() - 1])
        .arg(dir.path().join(name))
        .env("PGCAIRN_CONFIG", "")
        .output()
        .unwrap();
    let code = o.status.code().unwrap();
    assert!((1..=125).contains(&code) && code != 101, "exit {code}: {}", String::from_utf8_lossy(&o.stderr));

    std::fs::write(dir.path().join("00000002.history"), b"this is not a timeline history\n").unwrap();
    let partial = format!("{}.partial", a.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
    let segment = std::fs::read(a.cluster.data_dir().join("pg_wal").join(&partial[..24])).unwrap();
    std::fs::write(dir.path().join(&partial), &segment[..100]).unwrap();
    for bad in ["00000002.history", partial.as_str()] {
        let o = a.push(&dir.path().join(bad));
        assert_eq!(o.status.code(), Some(11), "{bad}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("refused"), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(tree(&a.repo.path().join("main")).len(), before, "a refused file left an object");
}
