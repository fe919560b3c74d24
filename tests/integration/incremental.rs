//! diff and incr backups store only what changed and restore exactly; delta restore
//! rewrites only what differs and leaves the directory equal to a fresh restore.

use crate::cli::Pgcairn;
use crate::support::{Cluster, PgVersion, TestDir};

fn hashes(c: &Cluster) -> String {
    c.psql(
        "SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts
         UNION ALL SELECT count(*) || ' ' || coalesce(sum(delta), 0) FROM pgbench_history",
    )
}

fn info_backups(p: &Pgcairn) -> Vec<serde_json::Value> {
    let info: serde_json::Value = serde_json::from_str(&p.ok(&["info", "--output=json"])).unwrap();
    info["backups"].as_array().unwrap().clone()
}

fn backup(p: &Pgcairn, c: &Cluster, kind: &str) -> (String, String) {
    let out = p.run(&["backup", "--start-fast", &format!("--type={kind}"), &format!("--pg={}", c.conninfo())]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "backup --type={kind} failed:\n{stderr}");
    (stdout.lines().last().unwrap().trim().to_string(), stderr.into_owned())
}

fn restore(p: &Pgcairn, set: &str, data: &std::path::Path, delta: bool) -> String {
    let mut args = vec!["restore".to_string(), format!("--set={set}"), format!("--pg-data={}", data.display())];

    args.push("--type=none".into()); // the sets carry their WAL: consistent without an archive
    if delta {
        args.push("--delta".into());
    }
    let out = p.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "restore failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn diff_incr_and_delta_restore() {
    let cluster = Cluster::init(PgVersion::V17);
    cluster.pgbench(&["-i", "-s", "4", "-q"]);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path());
    p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);

    // A diff with no full to compare with becomes a full, and says so.
    let (full, stderr) = backup(&p, &cluster, "diff");
    assert!(full.len() == 16 && full.ends_with('F'), "label {full}");
    assert!(stderr.contains("no prior full backup"), "{stderr}");

    let workload = ["-n", "-c", "2", "-t", "50", "--random-seed=7"];
    cluster.pgbench(&workload);
    let at_diff = hashes(&cluster);
    let (diff, _) = backup(&p, &cluster, "diff");
    cluster.pgbench(&workload);
    let at_incr = hashes(&cluster);
    let (incr, _) = backup(&p, &cluster, "incr");
    assert!(diff.starts_with(&format!("{full}_")) && diff.ends_with('D'), "diff label {diff}");
    assert!(incr.starts_with(&format!("{full}_")) && incr.ends_with('I'), "incr label {incr}");
    let (again, _) = backup(&p, &cluster, "full");

    let b = info_backups(&p);
    let labels: Vec<&str> = b.iter().map(|x| x["label"].as_str().unwrap()).collect();
    assert_eq!(labels, [full.as_str(), diff.as_str(), incr.as_str(), again.as_str()]);
    let types: Vec<&str> = b.iter().map(|x| x["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["full", "diff", "incr", "full"]);
    assert_eq!(b[1]["parent"], full.as_str());
    assert_eq!(b[2]["parent"], diff.as_str());
    assert!(b[3]["parent"].is_null());
    let stored = |i: usize| b[i]["stored_new"].as_u64().unwrap();
    // 100 transactions touch a few percent of the blocks, and change a few bytes of
    // each page: stored as deltas over the parent's blocks they take ~1% of the full
    // (stored whole, those blocks took ~7%); a full stores everything anew.
    assert!(stored(1) * 40 < stored(0), "diff stored {} of the full's {}", stored(1), stored(0));
    assert!(stored(2) * 40 < stored(0), "incr stored {} of the full's {}", stored(2), stored(0));
    assert!(stored(3) * 10 > stored(0) * 9, "second full stored {} of the first's {}", stored(3), stored(0));

    // Restore the incr into an empty directory: exactly the data at its time.
    let target = TestDir::new("restore");
    let data = target.path().join("data");
    restore(&p, &incr, &data, false);
    let restored = Cluster::start_restored(PgVersion::V17, &data);
    assert_eq!(hashes(&restored), at_incr, "incr restore differs");
    // Change it: updated pages, a new relation (files the diff does not have).
    restored.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0; CREATE TABLE extra AS SELECT generate_series(1, 20000) g; CHECKPOINT");
    let extra = data.join(restored.psql("SELECT pg_relation_filepath('extra')"));
    assert!(extra.is_file());
    restored.stop();

    // Without --delta a non-empty directory is refused, with a hint naming --delta.
    let (code, err) = p.fails(&["restore", &format!("--set={diff}"), &format!("--pg-data={}", data.display())]);
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("--delta"), "{err}");

    let out = restore(&p, &diff, &data, true);
    assert!(!extra.exists(), "delta restore kept a file the backup does not have");
    assert!(!out.contains(" 0 B fetched"), "the changed directory needed blocks: {out}");
    // Over an unchanged copy nothing is fetched. Regression: PostgreSQL 17 names
    // "./pg_wal/summaries" in its tar; stored as such, delta restore removed and
    // recreated that directory on every run.
    let out = restore(&p, &diff, &data, true);
    let files = out.split(" files unchanged").next().unwrap().rsplit('(').next().unwrap();
    assert!(out.contains(" 0 B fetched"), "{out}");
    assert!(out.contains(&format!("in {files} files")), "every file unchanged: {out}");

    let again = Cluster::start_restored(PgVersion::V17, &data);
    assert_eq!(hashes(&again), at_diff, "delta restore of the diff differs");
    let (ok, report) = again.amcheck();
    assert!(ok, "pg_amcheck after delta restore:\n{report}");
    drop(restored);
}

#[test]
fn delta_refuses_a_directory_that_is_not_postgres() {
    let repo = TestDir::new("repo");
    let cluster = Cluster::init(PgVersion::V15);
    let p = Pgcairn::local(repo.path());
    p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    let label = p.backup(&cluster.conninfo());
    let target = TestDir::new("not-pg");
    std::fs::write(target.path().join("notes.txt"), b"keep me").unwrap();
    let (code, err) = p.fails(&[
        "restore",
        "--delta",
        "--type=none",
        &format!("--set={label}"),
        &format!("--pg-data={}", target.path().display()),
    ]);
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("has no PG_VERSION"), "{err}");
    assert_eq!(std::fs::read(target.path().join("notes.txt")).unwrap(), b"keep me");
}
