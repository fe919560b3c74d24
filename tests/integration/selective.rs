//! Issue 25: restore only what is needed. `restore --db-include/--db-exclude` writes
//! the other databases as sparse zero files (PostgreSQL starts, they can be
//! dropped), delta restore and drill honour it, and `extract` turns one database or
//! table of a backup or a point in time into a pg_dump file.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::archive::Archiving;
use crate::cli::{wait_promoted, Pgcairn};
use crate::support::{chown_to_postgres, client_bin, files_under, run, Cluster, PgVersion, S3Server, TestDir};

/// Apparent and allocated bytes of every file below `dir` (sparse files allocate little).
fn sizes(dir: &Path) -> (u64, u64) {
    let (mut apparent, mut allocated) = (0, 0);
    for e in files_under(dir) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        if m.is_file() {
            apparent += m.len();
            allocated += m.blocks() * 512;
        }
    }
    (apparent, allocated)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn oid_of(c: &Cluster, db: &str) -> String {
    c.psql(&format!("SELECT oid FROM pg_database WHERE datname = '{db}'"))
}

fn checksum(c: &Cluster, db: &str, table: &str) -> String {
    c.psql(&format!("\\c {db}\nSELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM {table}"))
}

/// Three databases besides the system ones, one in a tablespace; `scratch` is the
/// largest, so leaving it out shows on the disk.
fn three_databases(a: &Archiving) {
    let ts = a.cluster.make_tablespace_dir("sel");
    a.cluster.psql(&format!(
        "CREATE TABLESPACE selts LOCATION '{}';
         CREATE DATABASE app; CREATE DATABASE ledger TABLESPACE selts; CREATE DATABASE scratch;",
        ts.display()
    ));
    for (db, rows) in [("app", 60_000), ("ledger", 30_000), ("scratch", 400_000)] {
        a.cluster.psql(&format!(
            "\\c {db}\nCREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, {rows}) g; CHECKPOINT;"
        ));
    }
}

fn restore(a: &Archiving, data: &Path, extra: &[&str]) -> String {
    chown_to_postgres(a.repo.path());
    let pg_data = format!("--pg-data={}", data.display());
    let key = format!("--repo-key-file={}", a.key.display());
    let mut args = vec!["restore", pg_data.as_str(), key.as_str(), "--type=immediate", "--target-action=promote"];
    args.extend_from_slice(extra);
    a.p.ok(&args)
}

fn start(version: PgVersion, data: &Path) -> Cluster {
    let conf = data.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&conf).unwrap() + "\narchive_mode = off\n";
    std::fs::write(&conf, text).unwrap();
    let c = Cluster::start_restored(version, data);
    wait_promoted(&c);
    c
}

/// Three databases (one in a tablespace): restore only `app`. PostgreSQL starts, app
/// is intact, the others take almost no disk and can be dropped; bad names are refused
/// before anything is written; delta restore and drill honour the selection.
#[test]
fn restore_of_chosen_databases() {
    let version = PgVersion::V17;
    let a = Archiving::new(version, "");
    three_databases(&a);
    let before = checksum(&a.cluster, "app", "t");
    let ledger = checksum(&a.cluster, "ledger", "t");
    let (ledger_oid, scratch_oid) = (oid_of(&a.cluster, "ledger"), oid_of(&a.cluster, "scratch"));
    a.p.backup(&a.cluster.conninfo());
    a.switch_segments(1);
    a.wait_archived();
    let dir = TestDir::new("selective");

    // A name the backup does not have: refused (exit 3) with what it has, nothing written.
    let data = dir.path().join("bad");
    let key = format!("--repo-key-file={}", a.key.display());
    let (code, err) = a.p.fails(&["restore", &format!("--pg-data={}", data.display()), &key, "--db-include=nosuch"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("has no such database") && err.contains("scratch (") && err.contains("ledger ("), "{err}");
    assert!(!data.exists(), "a refused restore wrote {}", data.display());
    let (code, err) = a.p.fails(&["restore", &format!("--pg-data={}", data.display()), &key, "--db-exclude=postgres"]);
    assert!(code == 3 && err.contains("system database, always restored"), "{err}");
    let (code, err) =
        a.p.fails(&["restore", &format!("--pg-data={}", data.display()), &key, "--db-include=app", "--type=standby"]);
    assert!(code == 3 && err.contains("a standby cannot drop the databases left out"), "{err}");
    assert!(!data.exists(), "a refused restore wrote {}", data.display());

    let ts_oid = a.cluster.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'selts'");
    let ts_map = |name: &str| format!("--tablespace-map={ts_oid}={}", dir.path().join(name).display());
    let data = dir.path().join("app-only");
    let out = restore(&a, &data, &["--db-include=app", &ts_map("app-only-ts")]);
    assert!(out.contains("left out") && out.contains("ledger (") && out.contains("scratch ("), "{out}");
    let (apparent, allocated) = sizes(&data.join("base").join(&scratch_oid));
    assert!(apparent > 20 << 20 && allocated < 1 << 20, "scratch: {apparent} bytes, {allocated} allocated");
    let ts_dirs = files_under(&dir.path().join("app-only-ts"));
    assert!(ts_dirs.iter().any(|p| p.to_string_lossy().contains(&format!("/{ledger_oid}/"))), "{ts_dirs:?}");
    // About the chosen database plus the system catalogs, nowhere near the whole cluster.
    let (whole, used) = sizes(&data);
    assert!(used < whole / 2, "restored {used} of {whole} bytes");
    let c = start(version, &data);
    assert_eq!(checksum(&c, "app", "t"), before);
    c.psql("DROP DATABASE ledger; DROP DATABASE scratch;");
    assert_eq!(
        c.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"),
        "app,postgres,template0,template1"
    );
    c.stop();
    drop(c);

    // Delta restore over a whole restore: excluding scratch zeroes it, keeps the rest.
    let data = dir.path().join("delta");
    restore(&a, &data, &[&ts_map("delta-ts")]);
    start(version, &data).stop();
    let out = restore(&a, &data, &["--delta", "--db-exclude=scratch", &ts_map("delta-ts")]);
    assert!(out.contains("scratch ("), "{out}");
    let (_, allocated) = sizes(&data.join("base").join(&scratch_oid));
    assert!(allocated < 1 << 20, "delta left {allocated} bytes of scratch");
    let c = start(version, &data);
    assert_eq!((checksum(&c, "app", "t"), checksum(&c, "ledger", "t")), (before.clone(), ledger.clone()));
    c.stop();
    drop(c);

    // A drill of app alone passes and says what it left out.
    let drill_dir = TestDir::new("selective-drill");
    chown_to_postgres(drill_dir.path());
    let report = a.p.ok(&[
        "drill",
        &format!("--pg-bin={}", version.bin_dir().display()),
        &format!("--drill-path={}", drill_dir.path().display()),
        &key,
        "--db-include=app",
        "--type=immediate",
        "--output=json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let zeroed = report["databases_zeroed"].to_string();
    assert!(zeroed.contains("ledger") && zeroed.contains("scratch") && !zeroed.contains("app"), "{report}");
    // Review of issue 25: such a drill proves only what it restored, and says so.
    let info = a.p.ok(&["info"]);
    assert!(info.contains("passed, partially (2 databases left out)"), "{info}");
    let metrics = a.p.ok(&["metrics"]);
    assert!(metrics.contains("pgcairn_drill_last_partial 1"), "{metrics}");

    // extract needs pg_dump of the backup's major version; the npm packages of 16-18
    // ship the server only: refused before anything is restored.
    let (code, err) = a.p.fails(&[
        "extract",
        &format!("--pg-bin={}", version.bin_dir().display()),
        &format!("--drill-path={}", drill_dir.path().display()),
        &key,
        "--db=app",
        &format!("--dump-file={}", dir.path().join("app.sql").display()),
    ]);
    assert!(code == 3 && err.contains("pg_dump not found"), "{code}: {err}");
    assert!(!dir.path().join("app.sql").exists());
}

/// The 3 a.m. story: a table was dropped; extract it from the backup as it was just
/// before the drop and load it back into the live cluster.
#[test]
fn a_dropped_table_is_extracted_and_loaded_back() {
    let version = PgVersion::V15;
    let a = Archiving::new(version, "");
    a.cluster.psql("CREATE DATABASE shop; CREATE DATABASE other;");
    a.cluster.psql(
        "\\c shop\nCREATE TABLE orders (id int PRIMARY KEY, v text);
         INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
    );
    a.cluster.psql("\\c other\nCREATE TABLE bulk AS SELECT g, md5(g::text) AS v FROM generate_series(1, 200000) g;");
    a.p.backup(&a.cluster.conninfo());
    // After the backup and before the drop: only a point-in-time recovery has these.
    a.cluster.psql("\\c shop\nINSERT INTO orders SELECT g, md5(g::text) FROM generate_series(20001, 25000) g;");
    let before = checksum(&a.cluster, "shop", "orders");
    std::thread::sleep(Duration::from_millis(1100));
    let noted = a.cluster.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(Duration::from_millis(1100));
    a.cluster.psql("\\c shop\nDROP TABLE orders;");
    a.switch_segments(1);
    a.wait_archived();
    chown_to_postgres(a.repo.path());

    let dir = TestDir::new("extract");
    chown_to_postgres(dir.path());
    let dump = dir.path().join("orders.sql");
    let args = |file: &str, more: &[&str]| -> Vec<String> {
        let mut v = vec![
            "extract".to_string(),
            format!("--pg-bin={}", version.bin_dir().display()),
            format!("--drill-path={}", dir.path().display()),
            format!("--repo-key-file={}", a.key.display()),
            "--db=shop".into(),
            "--table=public.orders".into(),
            "--type=time".into(),
            format!("--target={noted}"),
            format!("--dump-file={file}"),
        ];
        v.extend(more.iter().map(|s| s.to_string()));
        v
    };
    let out = a.p.ok(&refs(&args(&dump.display().to_string(), &[])));
    assert!(out.contains("extracted database shop") && out.contains("restored"), "{out}");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.contains("CREATE TABLE public.orders") && text.contains("COPY public.orders"), "{text}");
    let mode = std::fs::metadata(&dump).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "the dump holds production data");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert!(leftovers.is_empty(), "extract left its temporary cluster: {leftovers:?}");

    // Load it back into the live cluster: the rows as they were before the drop.
    let load = Command::new(client_bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump)
        .arg(a.cluster.conninfo().replace("dbname=postgres", "dbname=shop"))
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(checksum(&a.cluster, "shop", "orders"), before);

    // An existing file is never overwritten (exit 3, content kept).
    let (code, err) = a.p.fails(&refs(&args(&dump.display().to_string(), &[])));
    assert!(code == 3 && err.contains("never overwrites"), "{err}");
    // Custom format on standard output: pg_restore reads it; the report goes to stderr.
    let out = a.p.run(&refs(&args("-", &["--dump-format=custom"])));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.starts_with(b"PGDMP"), "not a custom-format dump");
    assert!(String::from_utf8_lossy(&out.stderr).contains("extracted database shop"));
    let custom = dir.path().join("orders.dump");
    std::fs::write(&custom, &out.stdout).unwrap();
    let list = run(Command::new(client_bin("pg_restore")).arg("--list").arg(&custom), "pg_restore --list");
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE DATA public orders"));
}

/// Extraction from an S3 repository: the database of a backup that carries its WAL.
#[test]
fn extract_from_s3() {
    let cluster = Cluster::init(PgVersion::V15);
    let s3 = S3Server::start();
    let p = Pgcairn::s3(&s3, "extract");
    let pg = format!("--pg={}", cluster.conninfo());
    p.ok(&["stanza-create", &pg]);
    cluster.psql("CREATE DATABASE shop;");
    cluster.psql("\\c shop\nCREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 5000) g;");
    let before = checksum(&cluster, "shop", "orders");
    p.ok(&["backup", "--start-fast", &pg]);
    cluster.psql("\\c shop\nDROP TABLE orders;");
    let dir = TestDir::new("extract-s3");
    chown_to_postgres(dir.path());
    let dump = dir.path().join("shop.sql");
    p.ok(&[
        "extract",
        &format!("--pg-bin={}", PgVersion::V15.bin_dir().display()),
        &format!("--drill-path={}", dir.path().display()),
        "--db=shop",
        "--type=immediate",
        &format!("--dump-file={}", dump.display()),
    ]);
    cluster.psql("CREATE DATABASE shop_back;");
    let load = Command::new(client_bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump)
        .arg(cluster.conninfo().replace("dbname=postgres", "dbname=shop_back"))
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(checksum(&cluster, "shop_back", "orders"), before);
}

/// A role pg_hba.conf allows replication only (a common least-privilege setup) backs
/// up without the database names: the backup says so, lists the databases by OID, and
/// restore selects them by OID (a name is refused, naming the OIDs).
#[test]
fn a_backup_without_names_selects_by_oid() {
    let cluster = Cluster::init(PgVersion::V15);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path());
    p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    let hba = cluster.data_dir().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local replication replonly trust\nlocal all replonly reject\n{text}")).unwrap();
    cluster.psql("CREATE ROLE replonly LOGIN REPLICATION; SELECT pg_reload_conf();");
    cluster.psql("CREATE DATABASE keep; CREATE DATABASE drop_me;");
    cluster.psql("\\c keep\nCREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;");
    let before = checksum(&cluster, "keep", "t");
    let (keep, drop_me) = (oid_of(&cluster, "keep"), oid_of(&cluster, "drop_me"));
    let pg = cluster.conninfo().replace("user=postgres", "user=replonly");
    let out = p.run(&["backup", "--start-fast", &format!("--pg={pg}")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("lists its databases by OID only"), "{said}");

    let dir = TestDir::new("by-oid");
    let data = dir.path().join("data");
    let pg_data = format!("--pg-data={}", data.display());
    let (code, err) = p.fails(&["restore", &pg_data, "--type=none", "--db-include=keep"]);
    assert!(code == 3 && err.contains("by OID only") && err.contains(&keep) && err.contains(&drop_me), "{err}");
    let out = p.ok(&["restore", &pg_data, "--type=none", &format!("--db-include={keep}")]);
    assert!(out.contains(&format!("left out (files written as zeros): {drop_me}")), "{out}");
    let c = Cluster::start_restored(PgVersion::V15, &data);
    assert_eq!(checksum(&c, "keep", "t"), before);
    c.psql("DROP DATABASE drop_me");
}
