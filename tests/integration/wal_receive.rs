//! `pgcairn wal-receive` (issue 24): WAL streamed over a replication slot into the
//! repository as it is written, beside archive_command. After an immediate stop of
//! the primary, a restore to the latest point has every commit a client saw
//! acknowledged in synchronous mode, and all but the last refresh interval in
//! asynchronous mode; a wal-receive killed with SIGKILL and started again loses and
//! duplicates nothing; a stopped wal-receive's slot holds WAL on the primary.

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::archive::Archiving;
use crate::cli::wait_promoted;
use crate::support::{Cluster, PgVersion, TestDir};

const SLOT: &str = "pgcairn_main";

/// A running `pgcairn wal-receive`; its log is kept for the assertion messages.
struct Receiver {
    child: Child,
    log: std::path::PathBuf,
}

impl Receiver {
    fn start(a: &Archiving, dir: &TestDir, conninfo: &str, extra: &[&str]) -> Receiver {
        let log = dir.path().join(format!("wal-receive-{}.log", std::fs::read_dir(dir.path()).unwrap().count()));
        let mut args = vec!["wal-receive".to_string(), format!("--pg={conninfo}"), "--log-level=info".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = a.p.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let child = cmd.stdout(Stdio::null()).stderr(File::create(&log).unwrap()).spawn().unwrap();
        Receiver { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the primary shows the slot in use by a streaming receiver.
    fn wait_streaming(&self, primary: &Cluster) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let sql = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}' AND active");
        while primary.psql(&sql) != "1" {
            assert!(Instant::now() < deadline, "wal-receive does not stream:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: it stores what it received and exits 0.
    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "wal-receive after SIGTERM: {status}\n{log}");
        log
    }
}

/// Commit one row per transaction for `seconds` (each psql call returns once its
/// commit is acknowledged); how many were acknowledged and the last one's time.
fn commit_ticks(c: &Cluster, seconds: f64) -> (u64, String) {
    let (started, mut n, mut last) = (Instant::now(), 0, String::new());
    while started.elapsed().as_secs_f64() < seconds {
        last = c.psql("INSERT INTO ticks VALUES (clock_timestamp()) RETURNING at");
        n += 1;
    }
    (n, last)
}

/// Restore the newest backup to the end of the archive, start it, wait until promoted.
fn restore_latest(a: &Archiving, dir: &TestDir, name: &str) -> Cluster {
    let data = dir.path().join(name);
    let key = format!("--repo-key-file={}", a.key.display());
    a.p.ok(&["restore", &format!("--pg-data={}", data.display()), &key]);
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    std::fs::write(data.join("postgresql.auto.conf"), auto + "\narchive_mode = off\n").unwrap();
    let c = Cluster::start_restored(a.cluster.version(), &data);
    wait_promoted(&c);
    c
}

/// Asynchronous (interval 1 s), then killed and restarted under load, then synchronous
/// (interval 0, synchronous_standby_names naming it); each phase ends with an
/// immediate stop of the primary and a restore to the latest point.
fn streaming(version: PgVersion) {
    let a = Archiving::new(version, "");
    let dir = TestDir::new("wal-receive");
    a.cluster.psql("CREATE TABLE ticks (at timestamptz)");
    a.p.backup(&a.cluster.conninfo());
    let pg = format!("{} application_name=walrecv", a.cluster.conninfo());
    let r = Receiver::start(&a, &dir, &pg, &[]);
    r.wait_streaming(&a.cluster);
    assert!(r.log().contains(&format!("created the physical replication slot {SLOT}")), "{}", r.log());

    // SIGKILL at two points of a loaded stream, started again each time.
    let mut r = r;
    for round in 0..2 {
        a.cluster.psql(&format!(
            "INSERT INTO ticks SELECT clock_timestamp() FROM generate_series(1, {})",
            20000 * (round + 1)
        ));
        r.kill();
        r = Receiver::start(&a, &dir, &pg, &[]);
        r.wait_streaming(&a.cluster);
    }
    let before: u64 = a.cluster.psql("SELECT count(*) FROM ticks").parse().unwrap();
    a.cluster.psql("SELECT pg_switch_wal()");
    commit_ticks(&a.cluster, 2.0);
    // A point inside the segment only wal-receive has: recovery targets it can reach.
    let mid = a.cluster.psql("SELECT count(*) || ' ' || pg_current_wal_lsn() || ' ' || clock_timestamp() FROM ticks");
    let (_, last) = commit_ticks(&a.cluster, 2.0);
    a.cluster.kill();
    let log = r.terminate();
    let c = restore_latest(&a, &dir, "async");
    let restored = c.psql("SELECT count(*) || '/' || max(at) FROM ticks");
    let lost = c.psql(&format!("SELECT extract(epoch FROM '{last}'::timestamptz - max(at)) FROM ticks"));
    println!(
        "asynchronous wal-receive (interval 1 s): restored {restored}, last commit {last}: lost {lost} s of commits"
    );
    let lost: f64 = lost.parse().unwrap();
    assert!(lost <= 1.5, "more than the interval was lost: {lost} s\n{log}");
    let rows: u64 = restored.split('/').next().unwrap().parse().unwrap();
    assert!(rows > before, "nothing committed in the last segment was restored: {restored}");
    drop(c);
    targets_inside_the_streamed_part(&a, &dir, &mid);
    synchronous(&a, &dir, &pg);
}

/// LSN and time targets inside the streamed part: restore chooses the backup (the
/// streamed segment counts as archived) and recovery stops exactly there.
fn targets_inside_the_streamed_part(a: &Archiving, dir: &TestDir, mid: &str) {
    let (count, rest) = mid.split_once(' ').unwrap();
    let (lsn, time) = rest.split_once(' ').unwrap();
    let key = format!("--repo-key-file={}", a.key.display());
    for (name, kind, target) in [("lsn", "lsn", lsn), ("time", "time", time)] {
        let data = dir.path().join(name);
        let (pg_data, target) = (format!("--pg-data={}", data.display()), format!("--target={target}"));
        let kind = format!("--type={kind}");
        a.p.ok(&["restore", &pg_data, &key, &kind, &target, "--target-action=promote"]);
        let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
        std::fs::write(data.join("postgresql.auto.conf"), auto + "\narchive_mode = off\n").unwrap();
        let c = Cluster::start_restored(a.cluster.version(), &data);
        wait_promoted(&c);
        assert_eq!(c.psql("SELECT count(*) FROM ticks"), count, "{name} target inside the streamed part");
    }
}

/// synchronous_standby_names names wal-receive: every acknowledged commit is in the
/// repository when the primary stops.
fn synchronous(a: &Archiving, dir: &TestDir, pg: &str) {
    a.cluster.start();
    a.cluster.psql("ALTER SYSTEM SET synchronous_standby_names = 'walrecv'; SELECT pg_reload_conf()");
    let r = Receiver::start(a, dir, pg, &["--wal-receive-interval=0"]);
    r.wait_streaming(&a.cluster);
    let sync = "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walrecv'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.cluster.psql(sync) != "sync" {
        assert!(Instant::now() < deadline, "wal-receive is not a synchronous standby: {}", a.cluster.psql(sync));
        std::thread::sleep(Duration::from_millis(100));
    }
    let before: u64 = a.cluster.psql("SELECT count(*) FROM ticks").parse().unwrap();
    let (acknowledged, _) = commit_ticks(&a.cluster, 3.0);
    a.cluster.kill();
    let log = r.terminate();
    let c = restore_latest(a, dir, "sync");
    let rows: u64 = c.psql("SELECT count(*) FROM ticks").parse().unwrap();
    println!("synchronous wal-receive: {acknowledged} commits acknowledged, {} restored", rows - before);
    assert_eq!(rows, before + acknowledged, "an acknowledged commit was lost\n{log}");
    a.cluster.start();
}

/// wal-receive streams from a standby (cascading, its slot there); the primary stops
/// and the standby is promoted: wal-receive follows timeline 2. Stopped, its slot
/// holds the new primary's WAL; started again it resumes, and a restore of the
/// timeline 1 backup to the latest point has the rows of both timelines.
fn follows_a_promotion(version: PgVersion) {
    let a = Archiving::new(version, "");
    let dir = TestDir::new("wal-receive-tl");
    a.cluster.psql("CREATE TABLE ticks (at timestamptz, tag text)");
    a.p.backup(&a.cluster.conninfo());
    let standby = Cluster::standby_of(&a.cluster, "");
    let pg = format!("{} application_name=walrecv", standby.conninfo());
    let r = Receiver::start(&a, &dir, &pg, &[]);
    r.wait_streaming(&standby);
    a.cluster.psql("INSERT INTO ticks SELECT clock_timestamp(), 'one' FROM generate_series(1, 100)");
    a.cluster.stop();
    standby.promote();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.log().contains("wal-receive follows timeline 2") {
        assert!(Instant::now() < deadline, "wal-receive did not follow the promotion:\n{}", r.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    standby.psql("INSERT INTO ticks SELECT clock_timestamp(), 'two' FROM generate_series(1, 100)");
    slot_holds_wal(&a, &standby, r);
    let r = Receiver::start(&a, &dir, &pg, &[]);
    r.wait_streaming(&standby);
    standby.psql("INSERT INTO ticks SELECT clock_timestamp(), 'three' FROM generate_series(1, 100)");
    std::thread::sleep(Duration::from_millis(2500));
    let info = a.p.ok(&["info"]);
    assert!(info.contains("timeline 2") && info.contains("streamed by wal-receive up to"), "{info}");
    standby.kill();
    r.terminate();
    let c = restore_latest(&a, &dir, "latest");
    let tags = c.psql("SELECT string_agg(tag || '=' || n, ',' ORDER BY tag) FROM (SELECT tag, count(*) AS n FROM ticks GROUP BY tag) t");
    assert_eq!(tags, "one=100,three=100,two=100");
    assert_eq!(c.psql("SELECT count(*) FROM ticks"), "300");
    drop(c);
    no_streamed_object_outlives_its_segment(&a);
    standby.start();
    slot_lost(&a, &dir, &standby, &pg);
}

/// Every completed segment's streamed objects were deleted: at most the last
/// segment of each timeline still has them (after two SIGKILLs, restarts and a
/// promotion).
fn no_streamed_object_outlives_its_segment(a: &Archiving) {
    let wal = a.repo.path().join("main").join("wal");
    for timeline in std::fs::read_dir(&wal).unwrap() {
        let dir = timeline.unwrap().path();
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        for streamed in names.iter().filter(|n| n.ends_with(".stream")) {
            let segment = &streamed[..24];
            let completed = names.iter().any(|n| n == segment);
            let later = names.iter().any(|n| n.len() == 24 && n[8..] > segment[8..]);
            assert!(!completed && !later, "{streamed} in {} outlived its segment: {names:?}", dir.display());
        }
    }
}

/// A slot past max_slot_wal_keep_size while wal-receive is down: PostgreSQL
/// invalidates it; wal-receive refuses to go on (the stream would have a gap) and
/// says what to do; check --archive-only reports it as critical.
fn slot_lost(a: &Archiving, dir: &TestDir, server: &Cluster, pg: &str) {
    server.psql(
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'; ALTER SYSTEM SET wal_keep_size = 0; SELECT pg_reload_conf()",
    );
    for _ in 0..3 {
        server.psql(
            "INSERT INTO ticks SELECT clock_timestamp(), 'lost' FROM generate_series(1, 10); SELECT pg_switch_wal()",
        );
    }
    crate::archive::wait_archived(server);
    server.psql("CHECKPOINT");
    let status = format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{SLOT}'");
    assert_eq!(server.psql(&status), "lost", "the slot was not invalidated");
    let mut r = Receiver::start(a, dir, pg, &[]);
    let status = r.child.wait().unwrap();
    let log = r.log();
    assert!(
        !status.success() && log.contains("holds no WAL any more") && log.contains("pg_drop_replication_slot"),
        "{status}: {log}"
    );
    let out = a.p.run(&["check", "--archive-only", &format!("--pg={}", server.conninfo())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.code() == Some(2) && text.contains("CRITICAL") && text.contains("lost its WAL"), "{text}");
}

/// A stopped wal-receive: its slot keeps the WAL it has not stored on the server,
/// through segment switches and checkpoints.
fn slot_holds_wal(a: &Archiving, server: &Cluster, r: Receiver) {
    let log = r.terminate();
    // check and metrics see the idle slot and what it holds.
    let pg = format!("--pg={}", server.conninfo());
    let out = a.p.run(&["check", "--archive-only", &pg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("nothing streams from the replication slot {SLOT}")), "{text}");
    let metrics = a.p.ok(&["metrics", &pg]);
    assert!(
        metrics.contains(&format!("pgcairn_wal_receive_slot_active{{stanza=\"main\",repo=\"1\",slot=\"{SLOT}\"}} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgcairn_wal_receive_slot_retained_bytes")
            && metrics.contains("pgcairn_wal_streamed_lsn_bytes"),
        "{metrics}"
    );
    assert!(log.contains("stopped by SIGTERM"), "{log}");
    server.psql("ALTER SYSTEM SET wal_keep_size = 0; SELECT pg_reload_conf()");
    let held = server
        .psql(&format!("SELECT pg_walfile_name(restart_lsn) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"));
    for _ in 0..4 {
        server.psql(
            "INSERT INTO ticks SELECT clock_timestamp(), 'filler' FROM generate_series(1, 10); SELECT pg_switch_wal()",
        );
    }
    crate::archive::wait_archived(server);
    server.psql("CHECKPOINT");
    let kept = server.psql(&format!("SELECT count(*) FROM pg_ls_waldir() WHERE name = '{held}'"));
    assert_eq!(kept, "1", "the slot did not keep {held} on the server");
    server.psql("DELETE FROM ticks WHERE tag = 'filler'");
}

#[test]
fn wal_receive_follows_a_promotion_pg17() {
    follows_a_promotion(PgVersion::V17);
}

#[test]
fn wal_receive_pg15() {
    streaming(PgVersion::V15);
}
