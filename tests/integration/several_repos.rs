//! Several repositories per stanza (issue 23): WAL into every one, reads that fall back
//! from one to the next, and the Azure-primary / S3-secondary deployment surviving
//! the loss of its primary.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::archive::{archive_push_bin, previous_segment, wait_archived};
use crate::cli::{wait_promoted, Pgcairn, PASSPHRASE};
use crate::support::cloud::{AZURITE_ACCOUNT, AZURITE_KEY};
use crate::support::{chown_to_postgres, private_file, Azurite, Cluster, PgVersion, S3Server, TestDir};

const DR_PASSPHRASE: &str = "the second repository has its own passphrase";

/// A cluster archiving into two repositories named in one config file, as an
/// operator writes it: `first` (its `repo = …` lines) and an s3s-fs repository 2.
struct TwoRepos {
    cluster: Cluster,
    p: Pgcairn,
    config: std::path::PathBuf,
    first: String,
    second: String,
    /// Config lines added once the key files exist.
    keys: String,
}

impl TwoRepos {
    fn new(version: PgVersion, first: String, s3: &S3Server, dir: &Path) -> TwoRepos {
        let cluster = Cluster::init(version);
        let creds = dir.join("s3.credentials");
        let text = format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key(),
            s3.secret_key()
        );
        private_file(&creds, &text);
        let second = format!(
            "repo2 = \"s3://{}/dr\"\nrepo2-s3-endpoint = \"{}\"\nrepo2-s3-region = \"{}\"\nrepo2-s3-allow-http = true\nrepo2-s3-credentials-file = \"{}\"\n",
            s3.bucket(),
            s3.endpoint(),
            s3.region(),
            creds.display()
        );
        let config = dir.join("pgcairn.toml");
        let t = TwoRepos {
            cluster,
            p: Pgcairn { stanza: "main".into(), all_stanzas: false, repo: String::new(), env: vec![] },
            config,
            first,
            second,
            keys: String::new(),
        };
        t.write_config("");
        let p =
            t.p.clone()
                .with_env("PGCAIRN_CONFIG", &t.config.display().to_string())
                .with_env("PGCAIRN_REPO_PASSPHRASE", PASSPHRASE)
                .with_env("PGCAIRN_REPO2_PASSPHRASE", DR_PASSPHRASE);
        let pg = format!("--pg={}", t.cluster.conninfo());
        p.ok(&["stanza-create", &pg]);
        p.ok(&["stanza-create", "--repo-number=2", &pg]);
        let (k1, k2) = (dir.join("repo1.key"), dir.join("repo2.key"));
        p.ok(&["key-file", &format!("--output={}", k1.display())]);
        p.ok(&["key-file", "--repo-number=2", &format!("--output={}", k2.display())]);
        chown_to_postgres(&k1);
        chown_to_postgres(&k2);
        let keys = format!("repo-key-file = \"{}\"\nrepo2-key-file = \"{}\"\n", k1.display(), k2.display());
        let t = TwoRepos { keys, ..t };
        t.write_config("");
        let push = format!("{} --config={} --stanza=main %p", archive_push_bin().display(), t.config.display());
        t.cluster.psql(&format!("ALTER SYSTEM SET archive_command = '{push}'; ALTER SYSTEM SET archive_mode = on;"));
        t.cluster.stop();
        t.cluster.start();
        TwoRepos { p, ..t }
    }

    fn write_config(&self, extra: &str) {
        private_file(&self.config, &format!("{}{}{}{extra}", self.first, self.second, self.keys));
    }

    fn wait_archived(&self) {
        wait_archived(&self.cluster);
    }

    /// The last archived segment repository `n` holds, by info.
    fn last_in(&self, n: usize) -> String {
        let info = self.p.ok(&["info", &format!("--repo-number={n}"), "--output=json"]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        info["archive"][0]["last"].as_str().unwrap_or_default().to_string()
    }
}

/// Restore with `args`, start, wait for promotion; the seed counts ('test'/'after')
/// and the rows of `switches` (written into the last segments archived).
fn restore_and_count(t: &TwoRepos, version: PgVersion, dir: &Path, args: &[&str]) -> String {
    let data = dir.join(format!("restored-{}", rand_suffix()));
    let mut all = vec!["restore".to_string(), format!("--pg-data={}", data.display())];
    all.extend(args.iter().map(|a| a.to_string()));
    t.p.ok(&all.iter().map(String::as_str).collect::<Vec<_>>());
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains(AZURITE_KEY), "a secret in the recovery settings: {auto}");
    std::fs::write(data.join("postgresql.auto.conf"), auto + "\narchive_mode = off\n").unwrap();
    let restored = Cluster::start_restored(version, &data);
    wait_promoted(&restored);
    restored.psql(
        "SELECT count(*) FILTER (WHERE v = 'test') || '/' || count(*) FILTER (WHERE v = 'after') || ' ' ||
                (SELECT count(*) FROM switches) FROM seed",
    )
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The deployment issue 23 asks for, end to end: repository 1 on Azure (Azurite),
/// repository 2 on S3 (s3s-fs), each with its own passphrase; archive_command puts
/// every segment into both; full, diff and incr into repository 1, a full into 2, then
/// `copy` of repository 1's backups into 2.
/// - A segment deleted from repository 1 and another with a flipped byte there are
///   served from repository 2: recovery from repository 1 reaches the end.
/// - Repository 1 is destroyed (its container deleted): the seed drill from
///   repository 2 — 1000 rows 'test', the time noted, 1000 rows 'after', restore the
///   copied incr to the time — gives 1000 / 0.
fn azure_primary_s3_secondary(version: PgVersion) {
    let (azurite, s3) = (Azurite::start(), S3Server::start());
    let dir = TestDir::new("two-repos");
    let key = dir.path().join("azure.key");
    private_file(&key, AZURITE_KEY);
    let first = format!(
        "repo = \"az://{}/prod\"\nrepo-azure-account = \"{AZURITE_ACCOUNT}\"\nrepo-azure-key-file = \"{}\"\nrepo-azure-endpoint = \"{}\"\nrepo-azure-allow-http = true\n",
        azurite.container(),
        key.display(),
        azurite.endpoint()
    );
    let t = TwoRepos::new(version, first, &s3, dir.path());
    let incr = backups_then_copy(&t);
    every_repository_reported(&t);
    let target = seed_rows(&t);
    let last = t.last_in(1);
    assert!(!last.is_empty() && last == t.last_in(2), "both repositories hold every segment: {last}");
    // info without --repo-number shows both: three backups in 1; in 2 its own full
    // and the three copies.
    let all: serde_json::Value = serde_json::from_str(&t.p.ok(&["info", "--output=json"])).unwrap();
    let shown: Vec<(u64, usize)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["repository"]["number"].as_u64().unwrap(), r["backups"].as_array().unwrap().len()))
        .collect();
    assert_eq!(shown, [(1, 3), (2, 4)], "{all}");

    // Damage in repository 1: B gone (taken for the end of the archive, recovery
    // would stop before C: switches 0), A with a flipped byte (an error there would
    // stop recovery). Both come from repository 2.
    let wal = |name: &str| format!("prod/main/wal/{}/{name}", &name[..8]);
    let lost = previous_segment(&last);
    let flipped = previous_segment(&lost);
    azurite.delete_blob(&wal(&lost));
    azurite.flip_byte(&wal(&flipped));
    assert_eq!(restore_and_count(&t, version, dir.path(), &[]), "1000/1000 2", "recovery to the end");

    // Repository 1 is lost; repository 2 has everything.
    azurite.delete_container();
    let (code, err) = t.p.fails(&["info"]);
    assert_ne!(code, 0, "{err}");
    lost_repository_reported(&t);
    let time = format!("--target={target}");
    let set = format!("--set={incr}");
    let args = ["--repo-number=2", &set, "--type=time", &time, "--target-action=promote"];
    let counts = restore_and_count(&t, version, dir.path(), &args);
    assert_eq!(counts, "1000/0 0", "the seed drill from repository 2, from the copy of the incr");
}

/// check, check --archive-only, verify, expire and metrics without `--repo-number`
/// cover both repositories, each with its own settings.
fn every_repository_reported(t: &TwoRepos) {
    let pg = format!("--pg={}", t.cluster.conninfo());
    let check: serde_json::Value = serde_json::from_str(&t.p.ok(&["check", &pg, "--output=json"])).unwrap();
    assert_eq!(check["repositories"], serde_json::json!([1, 2]), "the switched segment reached both: {check}");
    let nagios = t.p.ok(&["check", "--archive-only", &pg]);
    for n in [1, 2] {
        assert!(nagios.contains(&format!("PGCAIRN ARCHIVE OK - stanza main repository {n}:")), "{nagios}");
    }
    let verify = t.p.ok(&["verify"]);
    assert!(verify.contains("repository 1 (az://") && verify.contains("repository 2 (s3://"), "{verify}");
    // Each repository under its own retention: one full in 2 keeps only its newest
    // (its own), so the three copies would go; repository 1 has no policy.
    let expire = t.p.ok(&["expire", "--dry-run", "--repo2-retention-full=1", "--output=json"]);
    let expire: serde_json::Value = serde_json::from_str(&expire).unwrap();
    let expired = |i: usize| expire[i]["backups"].as_array().unwrap().iter().filter(|b| b["expired"] == true).count();
    assert_eq!((expired(0), expired(1)), (0, 3), "{expire}");
    assert_eq!(expire[1]["repository"]["number"], 2, "{expire}");
    let metrics = t.p.ok(&["metrics"]);
    for n in [1, 2] {
        assert!(metrics.contains(&format!("pgcairn_up{{stanza=\"main\",repo=\"{n}\"}} 1")), "{metrics}");
    }
}

/// With repository 1 gone, each per-repository command reports it as down and still
/// reports repository 2.
fn lost_repository_reported(t: &TwoRepos) {
    let metrics = t.p.ok(&["metrics"]);
    assert!(metrics.contains("pgcairn_up{stanza=\"main\",repo=\"1\"} 0"), "{metrics}");
    assert!(metrics.contains("pgcairn_up{stanza=\"main\",repo=\"2\"} 1"), "{metrics}");
    let out = t.p.run(&["check", "--archive-only"]);
    let nagios = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{nagios}");
    assert!(nagios.starts_with("PGCAIRN ARCHIVE CRITICAL - stanza main repository 1:"), "worst first: {nagios}");
    assert!(nagios.contains("PGCAIRN ARCHIVE OK - stanza main repository 2:"), "{nagios}");
    let out = t.p.run(&["verify", "--output=json"]);
    assert!(!out.status.success(), "a lost repository must fail verify");
    let verify: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&verify[0]["ok"], &verify[1]["ok"]), (&serde_json::json!(false), &serde_json::json!(true)), "{verify}");
}

/// Full, diff and incr into repository 1, a full into 2, then `copy` of repository
/// 1's three backups into 2 (re-sealed under its keys; run again, it finds nothing
/// to do). The copied incr's label.
fn backups_then_copy(t: &TwoRepos) -> String {
    let pg = format!("--pg={}", t.cluster.conninfo());
    t.cluster.psql("CREATE TABLE seed (v text); CREATE TABLE switches (n int)");
    t.p.backup(&t.cluster.conninfo());
    t.cluster.psql("INSERT INTO seed SELECT 'early' FROM generate_series(1, 10)");
    t.p.ok(&["backup", "--start-fast", "--type=diff", &pg]);
    t.cluster.psql("DELETE FROM seed");
    t.p.ok(&["backup", "--start-fast", "--type=incr", &pg]);
    t.p.ok(&["backup", "--start-fast", "--repo-number=2", &pg]);
    let report: serde_json::Value = serde_json::from_str(&t.p.ok(&["copy", "--to-repo=2", "--output=json"])).unwrap();
    let copied: Vec<String> =
        report["copied"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
    assert_eq!(copied.len(), 3, "{report}");
    assert!(copied[1].ends_with('D') && copied[2].ends_with('I'), "parents first: {copied:?}");
    let again: serde_json::Value = serde_json::from_str(&t.p.ok(&["copy", "--to-repo=2", "--output=json"])).unwrap();
    assert_eq!(again["copied"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["present"].as_array().unwrap().len(), 3, "{again}");
    copied[2].clone()
}

/// The seed drill's rows: 1000 'test', the time noted (returned), 1000 'after'; then
/// segments A (the rows), B and C (one `switches` row each) archived, the third
/// `switches` row left in the current segment.
fn seed_rows(t: &TwoRepos) -> String {
    t.cluster.psql("INSERT INTO seed SELECT 'test' FROM generate_series(1, 1000)");
    std::thread::sleep(Duration::from_millis(1100));
    let target = t.cluster.psql("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    t.cluster.psql("INSERT INTO seed SELECT 'after' FROM generate_series(1, 1000)");
    for _ in 0..3 {
        t.cluster.psql("SELECT pg_switch_wal()");
        t.cluster.psql("INSERT INTO switches VALUES (1)");
    }
    t.wait_archived();
    target
}

#[test]
fn azure_primary_s3_secondary_pg15() {
    azure_primary_s3_secondary(PgVersion::V15);
}

#[test]
fn azure_primary_s3_secondary_pg17() {
    azure_primary_s3_secondary(PgVersion::V17);
}

/// archive-push with repository 2 down (its server stopped): sync fails naming it
/// and PostgreSQL keeps the segment; async keeps feeding repository 1 and catches
/// repository 2 up when it is back. No segment is lost in either.
#[test]
fn archive_push_with_one_repository_down() {
    let mut s3 = S3Server::start();
    let dir = TestDir::new("two-repos-down");
    let local = dir.path().join("repo1");
    std::fs::create_dir(&local).unwrap();
    chown_to_postgres(&local);
    let t = TwoRepos::new(PgVersion::V15, format!("repo = \"{}\"\n", local.display()), &s3, dir.path());
    t.cluster.psql("CREATE TABLE seed (v text); SELECT pg_switch_wal()");
    t.wait_archived();

    s3.kill();
    let before = t.last_in(1);
    t.cluster.psql("INSERT INTO seed VALUES ('sync'); SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !t.cluster.server_log().contains("repository 2 (s3://") {
        assert!(Instant::now() < deadline, "no failure naming repository 2:\n{}", t.cluster.server_log());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_ne!(t.cluster.psql("SELECT failed_count FROM pg_stat_archiver"), "0");
    assert_eq!(
        t.cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"),
        before,
        "sync reported success with repository 2 down"
    );
    s3.restart();
    t.wait_archived();

    // Async: one queue per repository.
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    chown_to_postgres(&spool);
    t.write_config(&format!("archive-async = true\nspool-path = \"{}\"\n", spool.display()));
    t.cluster.psql("SELECT pg_reload_conf()");
    s3.kill();
    t.cluster.psql("INSERT INTO seed VALUES ('async'); SELECT pg_switch_wal()");
    t.cluster.psql("INSERT INTO seed VALUES ('async'); SELECT pg_switch_wal()");
    t.wait_archived();
    let current = t.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let want = previous_segment(&current);
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.last_in(1) < want {
        assert!(Instant::now() < deadline, "repository 1 did not receive {want} while 2 was down");
        std::thread::sleep(Duration::from_millis(300));
    }
    s3.restart();
    let deadline = Instant::now() + Duration::from_secs(90);
    while t.last_in(2) < want {
        assert!(Instant::now() < deadline, "repository 2 was not caught up to {want}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in [1, 2] {
        let info = t.p.ok(&["info", &format!("--repo-number={n}"), "--output=json"]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["archive"][0]["gaps"].as_array().unwrap().len(), 0, "repository {n}: {info}");
    }
}

/// copy killed with kill -9 at several points, then run again: it finishes, the
/// destination never lists a half-copied backup, verify passes on it, and each copied
/// backup restores to the source's data.
#[test]
fn copy_killed_and_resumed() {
    let cluster = Cluster::init(PgVersion::V15);
    let dir = TestDir::new("copy-kill");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let p = Pgcairn::local(&one)
        .with_env("PGCAIRN_REPO2", &two.display().to_string())
        .with_env("PGCAIRN_REPO2_PASSPHRASE", DR_PASSPHRASE);
    let pg = format!("--pg={}", cluster.conninfo());
    p.ok(&["stanza-create", &pg]);
    p.ok(&["stanza-create", "--repo-number=2", &pg]);
    cluster.pgbench(&["-i", "-s", "8", "-q"]);
    let want = cluster.psql("SELECT sum(abalance) || '/' || count(*) FROM pgbench_accounts");
    let full = p.backup(&cluster.conninfo());
    cluster.pgbench(&["-n", "-c", "2", "-t", "300"]);
    let incr_out = p.ok(&["backup", "--start-fast", "--type=incr", &pg]);
    let incr = incr_out.lines().last().unwrap().trim().to_string();
    let want_incr = cluster.psql("SELECT sum(abalance) || '/' || count(*) FROM pgbench_accounts");
    let mut logs = String::new();
    let mut interrupted = 0;
    for ms in [150u64, 500, 1200] {
        let mut child = p.cmd(&["copy", "--to-repo=2"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        interrupted += usize::from(!out.status.success());
        logs.push_str(&String::from_utf8_lossy(&out.stderr));
        let info: serde_json::Value =
            serde_json::from_str(&p.ok(&["info", "--repo-number=2", "--output=json"])).unwrap();
        for b in info["backups"].as_array().unwrap() {
            assert_eq!(b["status"], "ok", "a listed backup is whole: {info}");
        }
    }
    assert!(interrupted > 0, "no copy was killed before it finished: the test proves nothing");
    let last = p.cmd(&["copy", "--to-repo=2"]).output().unwrap();
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    logs.push_str(&String::from_utf8_lossy(&last.stderr));
    assert!(logs.contains("an interrupted copy left"), "no run resumed an interrupted copy:\n{logs}");
    let info: serde_json::Value = serde_json::from_str(&p.ok(&["info", "--repo-number=2", "--output=json"])).unwrap();
    let labels: Vec<&str> = info["backups"].as_array().unwrap().iter().map(|b| b["label"].as_str().unwrap()).collect();
    assert_eq!(labels, [full.as_str(), incr.as_str()], "{info}");
    let verify: serde_json::Value =
        serde_json::from_str(&p.ok(&["verify", "--repo-number=2", "--output=json"])).unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    for (label, expected) in [(&full, &want), (&incr, &want_incr)] {
        let data = dir.path().join(format!("restored-{label}"));
        p.ok(&[
            "restore",
            "--repo-number=2",
            &format!("--set={label}"),
            &format!("--pg-data={}", data.display()),
            "--type=none",
        ]);
        let restored = Cluster::start_restored(PgVersion::V15, &data);
        assert_eq!(
            &restored.psql("SELECT sum(abalance) || '/' || count(*) FROM pgbench_accounts"),
            expected,
            "{label}"
        );
    }
}
