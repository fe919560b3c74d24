//! Issue 25, item 1: on PostgreSQL 17+ with `summarize_wal = on` (the harness turns
//! it on), diff and incr send the parent's backup_manifest up and take
//! `BASE_BACKUP ( INCREMENTAL )`: the server sends the changed pages only, and the
//! backup still restores on its own. Without summaries (turned off, removed, or an
//! older server) the whole cluster is read as before, and info says why.

use crate::archive::Archiving;
use crate::cli::{wait_promoted, Pgcairn};
use crate::support::{chown_to_postgres, files_under, Cluster, PgVersion, TestDir};

/// Every table the story touches, as one line per table (absent tables say so).
fn state(c: &Cluster) -> String {
    // Sorted: a UNION ALL has no order of its own (PostgreSQL 18 returned these lines
    // in another order once, with the same data).
    let mut out = c.psql(
        "SELECT line FROM (SELECT 'accounts ' || md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts
         UNION ALL SELECT 'history ' || count(*) || ' ' || coalesce(sum(delta), 0) FROM pgbench_history
         UNION ALL SELECT 'tables ' || string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('shrink', 'doomed', 'fresh', 'rewritten')
         UNION ALL SELECT 'shrink ' || count(*) || ' ' || md5(coalesce(string_agg(v, ',' ORDER BY id), '')) FROM shrink
         UNION ALL SELECT 'rewritten ' || count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM rewritten) s(line)
         ORDER BY line",
    );
    if c.psql("SELECT to_regclass('fresh') IS NOT NULL") == "t" {
        out.push_str(&c.psql("SELECT ' fresh ' || count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM fresh"));
    }
    if c.psql("SELECT count(*) FROM pg_database WHERE datname = 'newdb'") == "1" {
        out.push_str(&c.psql("\\c newdb\nSELECT ' newdb ' || count(*) || ' ' || sum(g) FROM t"));
    }
    out
}

fn backup(p: &Pgcairn, c: &Cluster, kind: &str) -> (String, String) {
    let (kind_flag, pg) = (format!("--type={kind}"), format!("--pg={}", c.conninfo()));
    let out = p.run(&["backup", "--start-fast", "--log-level=info", &kind_flag, &pg]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "backup --type={kind} failed:\n{stderr}");
    (stdout.lines().last().unwrap().trim().to_string(), stderr.into_owned())
}

fn info_of(p: &Pgcairn, label: &str) -> serde_json::Value {
    let info: serde_json::Value = serde_json::from_str(&p.ok(&["info", "--output=json"])).unwrap();
    info["backups"].as_array().unwrap().iter().find(|b| b["label"] == label).unwrap().clone()
}

/// Restore `label` into a new directory (recovering from the archive to its end),
/// start it, and return what it holds.
fn restored_state(a: &Archiving, label: &str) -> (String, Cluster, TestDir) {
    chown_to_postgres(a.repo.path());
    let dir = TestDir::new("restore");
    let data = dir.path().join("data");
    let (set, pg_data, key) = (
        format!("--set={label}"),
        format!("--pg-data={}", data.display()),
        format!("--repo-key-file={}", a.key.display()),
    );
    a.p.ok(&["restore", &set, &pg_data, &key, "--type=immediate", "--target-action=promote"]);
    let from_summaries = info_of(&a.p, label)["read"]["method"] == "wal-summaries";
    assert_eq!(data.join("backup_manifest").exists(), !from_summaries, "it would list INCREMENTAL files");
    let label_file = std::fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(!label_file.contains("INCREMENTAL FROM"), "PostgreSQL refuses such a label:\n{label_file}");
    let conf = data.join("postgresql.auto.conf");
    std::fs::write(&conf, std::fs::read_to_string(&conf).unwrap() + "\narchive_mode = off\n").unwrap();
    let c = Cluster::start_restored(a.cluster.version(), &data);
    wait_promoted(&c);
    (state(&c), c, dir)
}

/// What changes between backups: pgbench updates, a new table, a dropped one, one
/// truncated by VACUUM (its file shrinks), one rewritten by VACUUM FULL, a new database.
fn change_everything(c: &Cluster) {
    c.pgbench(&["-n", "-c", "2", "-t", "100", "--random-seed=11"]);
    c.psql(
        "CREATE TABLE fresh (id int PRIMARY KEY, v text);
         INSERT INTO fresh SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         DROP TABLE doomed;
         DELETE FROM shrink WHERE id > 5000; VACUUM shrink;
         UPDATE rewritten SET v = upper(v) WHERE id % 3 = 0; VACUUM FULL rewritten;
         CREATE DATABASE newdb;",
    );
    c.psql("\\c newdb\nCREATE TABLE t AS SELECT generate_series(1, 50000) g");
}

/// The whole story on one server: full, incr from summaries after every kind of
/// change, an incr of that incr, a diff; each restores to what it saw.
fn chain_from_summaries(version: PgVersion) {
    let a = Archiving::new(version, "");
    let (c, p) = (&a.cluster, &a.p);
    c.pgbench(&["-i", "-s", "5", "-q"]);
    c.psql(
        "CREATE TABLE shrink (id int, v text); INSERT INTO shrink SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 40000) g;
         CREATE TABLE doomed AS SELECT generate_series(1, 30000) g;
         CREATE TABLE rewritten (id int, v text); INSERT INTO rewritten SELECT g, md5(g::text) FROM generate_series(1, 30000) g;",
    );
    let (full, _) = backup(p, c, "full");
    let at_full = state(c);

    change_everything(c);
    let at_incr = state(c);
    let (incr, log) = backup(p, c, "incr");
    assert!(log.contains(&format!("pages changed since {full}")), "{log}");
    assert!(log.contains(" files, changed pages only: "), "the summary line says so: {log}");
    let i = info_of(p, &incr);
    assert_eq!(i["read"]["method"], "wal-summaries", "{i}");
    let (streamed, size) = (i["read"]["streamed"].as_u64().unwrap(), i["size"].as_u64().unwrap());
    // The new database (a copy of template1) and the new table come whole; of the
    // rest only changed pages and headers.
    assert!(streamed * 5 < size, "the server sent {streamed} of {size} bytes");

    c.pgbench(&["-n", "-c", "2", "-t", "100", "--random-seed=12"]);
    let at_incr2 = state(c);
    let (incr2, log) = backup(p, c, "incr");
    assert!(log.contains(&format!("pages changed since {incr}")), "an incr of an incr: {log}");
    let i2 = info_of(p, &incr2);
    // Free space maps always come whole (they are not WAL-logged), as do the small
    // non-relation files: a tenth of this small cluster, far less of a large one.
    assert!(i2["read"]["streamed"].as_u64().unwrap() * 10 < size, "{i2}");
    let (diff, _) = backup(p, c, "diff");
    assert_eq!(info_of(p, &diff)["read"]["method"], "wal-summaries");
    assert_eq!(info_of(p, &diff)["parent"], full.as_str());

    p.ok(&["verify"]);
    for (label, want) in [(&full, &at_full), (&incr, &at_incr), (&incr2, &at_incr2), (&diff, &at_incr2)] {
        let (got, restored, _dir) = restored_state(&a, label);
        assert_eq!(&got, want, "restore of {label} differs");
        let (ok, report) = restored.amcheck();
        assert!(ok, "pg_amcheck after restore of {label}:\n{report}");
    }
    if version == PgVersion::V17 {
        copies_to_a_second_repository(&a, &[&full, &incr, &incr2, &diff]);
        let incr3 = a_missing_parent_pack_fails_the_incr(&a, &diff);
        falls_back_without_summaries(&a, &incr3);
    }
}

/// The parents of a batch's changed pages are read together, scattered over packs:
/// one that is gone fails the incr with exit 8, naming the file, block and parent
/// backup, and the hint to take a full; nothing is listed. With the packs back the
/// incr works (its label is returned).
fn a_missing_parent_pack_fails_the_incr(a: &Archiving, parent: &str) -> String {
    let (c, p) = (&a.cluster, &a.p);
    c.pgbench(&["-n", "-c", "2", "-t", "100", "--random-seed=13"]);
    let packs = files_under(&a.repo.path().join("main/data"));
    assert!(!packs.is_empty(), "packs under main/data");
    for pack in &packs {
        std::fs::rename(pack, pack.with_extension("moved")).unwrap();
    }
    let pg = format!("--pg={}", c.conninfo());
    let (code, err) = p.fails(&["backup", "--type=incr", "--start-fast", &pg]);
    for pack in &packs {
        std::fs::rename(pack.with_extension("moved"), pack).unwrap();
    }
    assert_eq!(code, 8, "{err}");
    assert!(err.contains(&format!("of parent backup {parent}")) && err.contains(" block "), "{err}");
    assert!(err.contains("is missing") && err.contains("take a full backup"), "{err}");
    let info: serde_json::Value = serde_json::from_str(&p.ok(&["info", "--output=json"])).unwrap();
    assert_eq!(info["backups"].as_array().unwrap().last().unwrap()["label"], parent, "a failed incr is not listed");
    let (incr, _) = backup(p, c, "incr");
    assert_eq!(info_of(p, &incr)["read"]["method"], "wal-summaries");
    incr
}

/// Rebuilt files have no whole-file CRC; copy re-reads them and must accept that
/// (regression: every such backup was refused as "files differ").
fn copies_to_a_second_repository(a: &Archiving, labels: &[&String]) {
    let second = TestDir::new("repo2");
    let p =
        a.p.clone()
            .with_env("PGCAIRN_REPO2", &second.path().display().to_string())
            .with_env("PGCAIRN_REPO2_PASSPHRASE", "another passphrase for the second repository");
    p.ok(&["stanza-create", "--repo-number=2", &format!("--pg={}", a.cluster.conninfo())]);
    let report: serde_json::Value = serde_json::from_str(&p.ok(&["copy", "--to-repo=2", "--output=json"])).unwrap();
    let copied: Vec<&str> = report["copied"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(copied, labels.iter().map(|l| l.as_str()).collect::<Vec<_>>(), "{report}");
    p.ok(&["verify", "--repo-number=2"]);
}

/// Summaries turned off, then removed: the incr reads the whole cluster, says why
/// in the log and in info, and restores all the same.
fn falls_back_without_summaries(a: &Archiving, parent: &str) {
    let (c, p) = (&a.cluster, &a.p);
    c.psql("ALTER SYSTEM SET summarize_wal = off; SELECT pg_reload_conf();");
    c.pgbench(&["-n", "-c", "1", "-t", "50", "--random-seed=13"]);
    let (off, log) = backup(p, c, "incr");
    assert!(log.contains("summarize_wal is off"), "{log}");
    let i = info_of(p, &off);
    assert_eq!(i["read"]["method"], "whole-cluster", "{i}");
    assert!(i["read"]["fallback"].as_str().unwrap().contains("summarize_wal is off"), "{i}");
    assert_eq!(i["parent"], parent);
    let text = p.ok(&["info"]);
    assert!(text.contains("the whole cluster, because summarize_wal is off"), "info says why:\n{text}");
    assert!(text.contains("changed pages only (WAL summaries)"), "{text}");

    // Summaries back on, but those since the parent removed: the server refuses
    // (after its checkpoint), and the backup reads everything instead.
    c.psql("ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();");
    c.pgbench(&["-n", "-c", "1", "-t", "50", "--random-seed=14"]);
    c.psql("SELECT pg_switch_wal(); CHECKPOINT;");
    std::thread::sleep(std::time::Duration::from_secs(2));
    for f in std::fs::read_dir(c.data_dir().join("pg_wal/summaries")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let at_removed = state(c);
    let (removed, log) = backup(p, c, "incr");
    assert!(log.contains("WAL summaries are required"), "{log}");
    let i = info_of(p, &removed);
    assert_eq!(i["read"]["method"], "whole-cluster", "{i}");
    assert!(i["read"]["fallback"].as_str().unwrap().contains("cannot send the changes since"), "{i}");
    let (got, restored, _dir) = restored_state(a, &removed);
    assert_eq!(got, at_removed);

    // The restored cluster was promoted onto timeline 2: an incr of it (same system,
    // same stanza) cannot use summaries against a parent on timeline 1.
    let pg = format!("--pg={}", restored.conninfo());
    let out = p.run(&["backup", "--start-fast", "--type=incr", "--archive-copy", &pg]);
    let (stdout, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("parent backup {removed} is on timeline 1, the server on 2")), "{log}");
    let i = info_of(p, stdout.lines().last().unwrap().trim());
    assert_eq!(i["read"]["method"], "whole-cluster", "{i}");
}

#[test]
fn incremental_from_wal_summaries_pg17() {
    chain_from_summaries(PgVersion::V17);
}

#[test]
fn incremental_from_wal_summaries_pg18() {
    chain_from_summaries(PgVersion::V18);
}

/// PostgreSQL 15 has no summaries: an incr compares the whole cluster, and says so.
#[test]
fn incremental_before_17_reads_everything() {
    let c = Cluster::init(PgVersion::V15);
    c.pgbench(&["-i", "-s", "1", "-q"]);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path());
    p.ok(&["stanza-create", &format!("--pg={}", c.conninfo())]);
    backup(&p, &c, "full");
    c.pgbench(&["-n", "-t", "20"]);
    let (incr, log) = backup(&p, &c, "incr");
    assert!(log.contains("PostgreSQL 15 has no WAL summaries"), "{log}");
    let i = info_of(&p, &incr);
    assert_eq!(i["read"]["method"], "whole-cluster", "{i}");
    assert!(i["read"]["streamed"].as_u64().unwrap() >= i["size"].as_u64().unwrap(), "{i}");
}
