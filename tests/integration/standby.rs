//! Backups taken on a streaming standby (issue 24): a primary archives into the
//! stanza, a standby streams from it, and `pg` names the standby with `pg-primary`
//! naming the primary. Then the standby is promoted and the next backup comes from it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::archive::Archiving;
use crate::cli::wait_promoted;
use crate::support::{Cluster, PgVersion, TestDir};

/// pgbench's own invariant: every transaction adds the same delta to an account, its
/// teller, its branch and the history, so in any consistent state the four sums agree.
const PGBENCH_SUMS: &str = "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || '/' || \
     (SELECT sum(tbalance) FROM pgbench_tellers) || '/' || (SELECT sum(bbalance) FROM pgbench_branches) || '/' || \
     (SELECT coalesce(sum(delta), 0) FROM pgbench_history)";

fn sums_agree(c: &Cluster) -> String {
    let sums = c.psql(PGBENCH_SUMS);
    let parts: Vec<&str> = sums.split('/').collect();
    assert!(parts.iter().all(|p| *p == parts[0]), "an inconsistent snapshot: {sums}");
    sums
}

/// Restore `args` into a new directory, start it, wait until it is promoted.
fn restored(a: &Archiving, dir: &TestDir, name: &str, args: &[&str]) -> Cluster {
    let data = dir.path().join(name);
    // The key file lets the restore_command it writes open the repository as postgres.
    let key = format!("--repo-key-file={}", a.key.display());
    let mut all = vec!["restore".to_string(), format!("--pg-data={}", data.display()), key];
    all.extend(args.iter().map(|s| s.to_string()));
    a.p.ok(&all.iter().map(String::as_str).collect::<Vec<_>>());
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    std::fs::write(data.join("postgresql.auto.conf"), auto + "\narchive_mode = off\n").unwrap();
    let c = Cluster::start_restored(a.cluster.version(), &data);
    wait_promoted(&c);
    c
}

/// Pause replay on `standby` and wait until it is paused: a pause request only
/// takes effect at the next record, so WAL written right after it could still be
/// replayed.
fn pause_replay(standby: &Cluster) {
    standby.psql("SELECT pg_wal_replay_pause()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while standby.psql("SELECT pg_get_wal_replay_pause_state()") != "paused" {
        assert!(Instant::now() < deadline, "replay did not pause");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The refusals: a standby without `pg-primary`, a `pg-primary` that is a standby
/// itself or another cluster, and a standby that does not catch up with its primary.
fn standby_refusals(a: &Archiving, standby: &Cluster) {
    let pg = format!("--pg={}", standby.conninfo());
    let (code, err) = a.p.fails(&["backup", &pg]);
    assert!(err.contains("is a standby") && err.contains("set pg-primary"), "exit {code}: {err}");
    let itself = format!("--pg-primary={}", standby.conninfo());
    let (_, err) = a.p.fails(&["backup", &pg, &itself]);
    assert!(err.contains("pg-primary") && err.contains("in recovery too"), "{err}");
    let other = Cluster::init(a.cluster.version());
    let (_, err) = a.p.fails(&["backup", &pg, &format!("--pg-primary={}", other.conninfo())]);
    assert!(err.contains("pg-primary") && err.contains("system identifier"), "{err}");
    drop(other);
    // Replay paused: the standby falls behind and the backup is refused, not taken.
    pause_replay(standby);
    a.cluster.psql("CREATE TABLE behind AS SELECT generate_series(1, 10000) AS n");
    let primary = format!("--pg-primary={}", a.cluster.conninfo());
    let (_, err) = a.p.fails(&["backup", &pg, &primary, "--archive-timeout=3"]);
    assert!(err.contains("did not catch up") && err.contains("behind its primary"), "{err}");
    standby.psql("SELECT pg_wal_replay_resume()");
    standby.wait_streaming(&a.cluster);
}

/// Full, diff and incr taken on the standby while pgbench writes on the primary; each
/// restores to a consistent state. Then a time target inside the incr's WAL.
/// `standby_conf`: the standby's own settings (archive_mode = always: it archives too).
fn standby_backups(version: PgVersion, standby_conf: &str) {
    let a = Archiving::new(version, "");
    a.cluster.pgbench(&["-i", "-s", "2", "-q"]);
    let standby = Cluster::standby_of(&a.cluster, standby_conf);
    if version == PgVersion::V15 {
        standby_refusals(&a, &standby);
    }
    let pg = format!("--pg={}", standby.conninfo());
    let primary = format!("--pg-primary={}", a.cluster.conninfo());
    let check = a.p.ok(&["check", &pg, &primary]);
    assert!(check.contains("check ok"), "{check}");

    let mut load = a.cluster.pgbench_background(&["-n", "-c", "2", "-T", "30"]);
    let mut labels = Vec::new();
    for kind in ["full", "diff", "incr"] {
        let out = a.p.ok(&["backup", "--start-fast", &format!("--type={kind}"), &pg, &primary]);
        labels.push(out.lines().last().unwrap().trim().to_string());
    }
    let _ = load.kill();
    let _ = load.wait();
    let info: serde_json::Value = serde_json::from_str(&a.p.ok(&["info", "--output=json"])).unwrap();
    for b in info["backups"].as_array().unwrap() {
        assert_eq!(b["source"]["role"], "standby", "{b}");
        assert_eq!(b["source"]["server"], format!("{}:{}", standby.socket_dir().display(), standby.port()), "{b}");
    }
    let dir = TestDir::new("standby-restores");
    for (i, label) in labels.iter().enumerate() {
        let c = restored(
            &a,
            &dir,
            &format!("r{i}"),
            &[&format!("--set={label}"), "--type=immediate", "--target-action=promote"],
        );
        sums_agree(&c);
    }

    // A time target after the incr, on timeline 1.
    a.cluster.psql("CREATE TABLE seed (v text); INSERT INTO seed SELECT 'test' FROM generate_series(1, 1000)");
    std::thread::sleep(Duration::from_millis(1100));
    let target = a.cluster.psql("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    a.cluster.psql("INSERT INTO seed SELECT 'after' FROM generate_series(1, 1000); SELECT pg_switch_wal()");
    a.wait_archived();
    let time = format!("--target={target}");
    let c = restored(
        &a,
        &dir,
        "pitr1",
        &[&format!("--set={}", labels[2]), "--type=time", &time, "--target-action=promote"],
    );
    let counts =
        c.psql("SELECT count(*) FILTER (WHERE v = 'test') || '/' || count(*) FILTER (WHERE v = 'after') FROM seed");
    assert_eq!(counts, "1000/0", "PITR on timeline 1 from a standby backup");
    drop(c);
    standby_from_a_backup(&a, &dir);
    promoted_standby_backs_up(&a, standby, &dir);
}

/// `restore --type=standby` with the primary's connection as a recovery option: the
/// restored cluster starts as a standby, streams from the primary and follows it.
fn standby_from_a_backup(a: &Archiving, dir: &TestDir) {
    let data = dir.path().join("built-standby");
    let conninfo = format!(
        "primary_conninfo=host={} port={} user=postgres application_name=built",
        a.cluster.socket_dir().display(),
        a.cluster.port()
    );
    let (pg_data, key) = (format!("--pg-data={}", data.display()), format!("--repo-key-file={}", a.key.display()));
    a.p.ok(&["restore", &pg_data, &key, "--type=standby", &format!("--recovery-option={conninfo}")]);
    assert!(data.join("standby.signal").is_file() && !data.join("recovery.signal").exists());
    let c = Cluster::start_restored(a.cluster.version(), &data);
    let streams = "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'built' AND state = 'streaming'";
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.cluster.psql(streams) == "0" {
        assert!(Instant::now() < deadline, "the restored standby does not stream:\n{}", c.server_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    a.cluster.psql("CREATE TABLE followed AS SELECT 42 AS n");
    while c.psql("SELECT to_regclass('followed') IS NOT NULL") != "t" {
        assert!(Instant::now() < deadline, "the restored standby does not follow its primary");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.psql("SELECT pg_is_in_recovery()"), "t", "it stays a standby");
}

/// The standby is promoted (timeline 2) while a backup waits for it to catch up: that
/// backup fails, saying so. The old primary is stopped; the next backup comes from
/// the new primary and a recovery to the end of timeline 2 has its rows.
fn promoted_standby_backs_up(a: &Archiving, standby: Cluster, dir: &TestDir) {
    standby.wait_streaming(&a.cluster);
    // Cut off from the primary, so that what the primary writes next never reaches
    // it (a paused replay would resume at the promotion and catch up).
    standby.psql("ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while standby.psql("SELECT count(*) FROM pg_stat_wal_receiver") != "0" {
        assert!(Instant::now() < deadline, "the standby still streams");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.cluster.psql("CREATE TABLE lost_at_the_promotion AS SELECT 1 AS n");
    let pg = format!("--pg={}", standby.conninfo());
    let primary = format!("--pg-primary={}", a.cluster.conninfo());
    let mut waiting = a.p.cmd(&["backup", "--archive-timeout=120", &pg, &primary]);
    let waiting = waiting.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Promote once the backup waits for the standby to catch up (its session there
    // has asked for the replay position).
    let deadline = Instant::now() + Duration::from_secs(60);
    let waits = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgcairn' \
                 AND query LIKE '%pg_last_wal_replay_lsn%'";
    while standby.psql(waits) == "0" {
        assert!(Instant::now() < deadline, "the backup never connected to the standby");
        std::thread::sleep(Duration::from_millis(50));
    }
    standby.promote();
    let out = waiting.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("it was promoted during the backup"), "{}: {err}", out.status);
    a.cluster.stop();
    let out = a.p.ok(&["backup", "--start-fast", &pg]);
    let label = out.lines().last().unwrap().trim().to_string();
    standby.psql("INSERT INTO seed SELECT 'timeline 2' FROM generate_series(1, 500); SELECT pg_switch_wal()");
    crate::archive::wait_archived(&standby);
    let info: serde_json::Value = serde_json::from_str(&a.p.ok(&["info", "--output=json"])).unwrap();
    let new = info["backups"].as_array().unwrap().iter().find(|b| b["label"] == label.as_str()).unwrap();
    assert_eq!(new["source"]["role"], "primary", "{new}");
    let c = restored(a, dir, "tl2", &[&format!("--set={label}")]);
    assert_eq!(c.psql("SELECT count(*) FROM seed WHERE v = 'timeline 2'"), "500");
    assert_eq!(c.psql("SELECT timeline_id >= 2 FROM pg_control_checkpoint()"), "t");
}

/// The primary archives; the standby does not.
#[test]
fn backups_on_a_standby_pg15() {
    standby_backups(PgVersion::V15, "");
}

/// Both archive into the stanza (archive_mode = always on the standby): the standby's
/// archiving is the one the backup judges and waits for; duplicates are harmless.
#[test]
fn backups_on_a_standby_archiving_itself_pg17() {
    standby_backups(PgVersion::V17, "archive_mode = always");
}
