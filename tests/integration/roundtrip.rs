//! Full backup while pgbench writes, an incr on top (deltas), restore the incr, start
//! PostgreSQL, prove the data: on PG 15, 17 and 18, into a local and an S3 repository.

use std::process::Command;

use crate::cli::{tree_contains, Pgcairn};
use crate::support::{Cluster, PgVersion, S3Server, TestDir};

/// Varied data: a table of random text, TOASTed values stored out of line and
/// uncompressed, large objects, a table in a tablespace, pgbench tables, and a
/// canary string to look for in the repository.
fn load_data(c: &Cluster, canary: &str) {
    let ts = c.make_tablespace_dir("ts1");
    c.pgbench(&["-i", "-s", "3", "-q"]);
    c.psql(&format!(
        "CREATE TABLE random_text (id int PRIMARY KEY, t text);
         INSERT INTO random_text SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 200000) g;
         CREATE TABLE toasty (id int PRIMARY KEY, doc text);
         ALTER TABLE toasty ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO toasty SELECT g, (SELECT string_agg(md5(random()::text || i || g), '') FROM generate_series(1, 300) i) FROM generate_series(1, 400) g;
         SELECT count(lo_from_bytea(0, convert_to(repeat(md5(random()::text), 3000 + g), 'UTF8'))) FROM generate_series(1, 20) g;
         CREATE TABLESPACE ts1 LOCATION '{}';
         CREATE TABLE in_ts (id int PRIMARY KEY, v text) TABLESPACE ts1;
         INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 50000) g;
         CREATE TABLE canary (t text);
         INSERT INTO canary VALUES ('{canary}');
         CHECKPOINT;",
        ts.display()
    ));
}

/// Content hash of every table loaded before the backup (pgbench's are checked by invariant).
fn content_hashes(c: &Cluster) -> String {
    c.psql(
        "SELECT 'random_text ' || md5(string_agg(t, ',' ORDER BY id)) FROM random_text
         UNION ALL SELECT 'toasty ' || md5(string_agg(doc, ',' ORDER BY id)) FROM toasty
         UNION ALL SELECT 'in_ts ' || md5(string_agg(v, ',' ORDER BY id)) FROM in_ts
         UNION ALL SELECT 'lo ' || count(*) || ' ' || md5(string_agg(md5(lo_get(oid)), ',' ORDER BY oid)) FROM pg_largeobject_metadata
         UNION ALL SELECT 'canary ' || t FROM canary",
    )
}

/// pgbench's tpcb transactions keep every balance total equal to the history's sum;
/// a restore that mixed pages from different moments would break it.
fn assert_pgbench_consistent(c: &Cluster) {
    let row = c.psql(
        "SELECT (SELECT count(*) FROM pgbench_history),
                (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
            AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
            AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let (count, consistent) = row.split_once('|').expect("two columns");
    assert_eq!(consistent, "t", "pgbench balances disagree with pgbench_history after restore");
    assert!(count.parse::<u64>().unwrap() > 0, "pgbench wrote nothing before the backup; the test proves nothing");
}

fn roundtrip(version: PgVersion) {
    let cluster = Cluster::init(version);
    let canary = format!("pgcairn-canary-{:016x}", rand_u64());
    load_data(&cluster, &canary);
    let before = content_hashes(&cluster);
    let ts_oid = cluster.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    // The canary must be findable in the cluster's own files, or its absence from the
    // repository would prove nothing.
    assert!(tree_contains(cluster.data_dir(), canary.as_bytes()), "canary not in the data directory");

    let s3 = S3Server::start();
    let local_repo = TestDir::new("repo");
    for (kind, p) in [("local", Pgcairn::local(local_repo.path())), ("s3", Pgcairn::s3(&s3, "roundtrip"))] {
        p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);

        let mut bench = cluster.pgbench_background(&["-n", "-c", "2", "-T", "120"]);
        std::thread::sleep(std::time::Duration::from_secs(1));
        let label = p.backup(&cluster.conninfo());
        bench.kill().ok();
        bench.wait().ok();
        assert!(label.len() == 16 && label.ends_with('F'), "{kind}: label {label:?}");

        let info = p.ok(&["info", "--output=json"]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["backups"][0]["label"], label.as_str(), "{kind}: info lists the backup");
        assert_eq!(info["encrypted"], true);

        // An incr on top: its changed blocks are deltas over the full's, read back from
        // this repository while backing up and again while restoring.
        cluster.pgbench(&["-n", "-c", "2", "-t", "200"]);
        let out = p.ok(&["backup", "--start-fast", "--type=incr", &format!("--pg={}", cluster.conninfo())]);
        let incr = out.lines().last().unwrap().trim().to_string();
        assert!(incr.starts_with(&format!("{label}_")) && incr.ends_with('I'), "{kind}: incr label {incr:?}");

        let target = TestDir::new("restore");
        let ts_target = TestDir::new("restore-ts");
        let data = target.path().join("data");
        let mut args = vec![
            "restore".to_string(),
            format!("--pg-data={}", data.display()),
            format!("--set={incr}"),
            format!("--tablespace-map={ts_oid}={}", ts_target.path().join("ts1").display()),
        ];
        // Local: full recovery with restore_command (pgcairn archive-get, unlocked by a
        // key file the server can read). S3: no recovery settings (the server has no
        // AWS credentials here); the set carries its WAL, so it is consistent anyway.
        let key_dir = TestDir::new("key");
        if kind == "local" {
            let key = key_dir.path().join("repo.key");
            p.ok(&["key-file", &format!("--output={}", key.display())]);
            crate::support::chown_to_postgres(&key);
            // restore_command runs as the server's user and must read the repository
            // (created 0700): an unreadable one now stops recovery (exit 200) instead
            // of passing for the end of the archive.
            crate::support::chown_to_postgres(local_repo.path());
            args.push(format!("--repo-key-file={}", key.display()));
        } else {
            args.push("--type=none".into());
        }
        p.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        // Regression (issue 21, item 18): with --tablespace-map, pg_verifybackup said
        // "tablespace_map has size 28 on disk but size 26 in the manifest". Debian's
        // 15 has pg_verifybackup (the npm packages of 16-18 ship the server only).
        if version == PgVersion::V15 {
            let out = Command::new(version.bin("pg_verifybackup")).arg("-n").arg(&data).output().unwrap();
            assert!(out.status.success(), "{kind}: pg_verifybackup: {}", String::from_utf8_lossy(&out.stderr));
        }
        let restored = Cluster::start_restored(version, &data);
        crate::cli::wait_promoted(&restored);
        assert_eq!(content_hashes(&restored), before, "{kind}: tables differ after restore");
        assert_pgbench_consistent(&restored);
        assert_eq!(
            restored.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"),
            ts_target.path().join("ts1").display().to_string()
        );
        let (ok, report) = restored.amcheck();
        assert!(ok, "{kind}: pg_amcheck found problems:\n{report}");
    }
    // Nothing of the database is readable in either repository.
    assert!(!tree_contains(local_repo.path(), canary.as_bytes()), "canary found in the local repository");
    assert!(!tree_contains(&s3.dir(), canary.as_bytes()), "canary found in the S3 repository");
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

#[test]
fn roundtrip_pg15() {
    roundtrip(PgVersion::V15);
}

#[test]
fn roundtrip_pg16() {
    roundtrip(PgVersion::V16);
}

#[test]
fn roundtrip_pg17() {
    roundtrip(PgVersion::V17);
}

#[test]
fn roundtrip_pg18() {
    roundtrip(PgVersion::V18);
}

/// Issue 26: `bandwidth-max` caps what a backup and a restore move to and from the
/// repository. Unlimited, this cluster's backup stores its few MiB in about a second;
/// at 1 MiB/s each run must take at least the stored bytes at that rate (less one
/// pack, the object that may still be in flight), and the restore must come back whole.
#[test]
fn bandwidth_max_is_honoured_by_backup_and_restore() {
    let cluster = Cluster::init(PgVersion::V15);
    cluster.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g");
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path());
    p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    let limited = p.clone().with_env("PGCAIRN_BANDWIDTH_MAX", "1MiB");
    let started = std::time::Instant::now();
    let label = limited.backup(&cluster.conninfo());
    let took = started.elapsed().as_secs_f64();
    let stored = dir_bytes(repo.path()) as f64;
    let mib = (1u64 << 20) as f64;
    assert!(stored > 3.0 * mib, "a backup big enough to measure: {stored} bytes");
    let floor = (stored - 16.0 * mib).max(stored / 2.0) / mib;
    assert!(took >= floor * 0.95, "backup moved {stored} bytes in {took:.2} s: faster than 1 MiB/s");

    let target = TestDir::new("restore");
    let data = target.path().join("data");
    let started = std::time::Instant::now();
    limited.ok(&["restore", &format!("--pg-data={}", data.display()), "--type=none", &format!("--set={label}")]);
    let took = started.elapsed().as_secs_f64();
    assert!(took >= floor * 0.95, "restore read about {stored} bytes in {took:.2} s: faster than 1 MiB/s");
    let restored = Cluster::start_restored(PgVersion::V15, &data);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "100000");
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}
