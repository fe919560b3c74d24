//! Bad input gets a clear error, a specific exit code, and loses nothing.

use std::io::Write;

use crate::cli::{Pgcairn, PASSPHRASE};
use crate::support::{files_under, free_port, Cluster, PgVersion, TestDir};

/// A cluster with a local repository holding one backup.
struct Fixture {
    cluster: Cluster,
    repo: TestDir,
    p: Pgcairn,
    label: String,
}

fn fixture() -> Fixture {
    let cluster = Cluster::init(PgVersion::V15);
    cluster.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path());
    p.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    let label = p.backup(&cluster.conninfo());
    Fixture { cluster, repo, p, label }
}

fn restore_args(dir: &std::path::Path) -> Vec<String> {
    vec!["restore".into(), format!("--pg-data={}", dir.display())]
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn passphrase_errors() {
    let f = fixture();
    let wrong = f.p.clone().with_env("PGCAIRN_REPO_PASSPHRASE", "not the passphrase");
    let (code, err) = wrong.fails(&["info"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("wrong passphrase for repository"), "{err}");
    let (code, err) = f.p.clone().without_env("PGCAIRN_REPO_PASSPHRASE").fails(&["info"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no passphrase was given"), "{err}");

    // A passphrase file works; the passphrase never appears in any output.
    let dir = TestDir::new("pass");
    let file = dir.path().join("passphrase");
    std::fs::File::create(&file).unwrap().write_all(format!("{PASSPHRASE}\n").as_bytes()).unwrap();
    let by_file = f.p.clone().without_env("PGCAIRN_REPO_PASSPHRASE");
    // Regression (issue 14): a passphrase file others can read was accepted (a key
    // file was refused). Both are refused now, naming the fix.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = by_file.fails(&["info", &format!("--repo-passphrase-file={}", file.display())]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("accessible by group or others") && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = by_file.ok(&["info", &format!("--repo-passphrase-file={}", file.display())]);
    assert!(out.contains(&f.label) && !out.contains(PASSPHRASE), "{out}");
}

#[test]
fn connection_errors() {
    let cluster = Cluster::init(PgVersion::V15);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path());

    let nobody = format!("host=127.0.0.1 port={} user=postgres", free_port());
    let (code, err) = p.fails(&["stanza-create", &format!("--pg={nobody}")]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("cannot connect to server 127.0.0.1"), "{err}");

    let (code, err) = p.fails(&["stanza-create", &format!("--pg={}", cluster.tcp_conninfo("norepl_user"))]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("ALTER ROLE norepl_user REPLICATION"), "{err}");

    let denied = p.clone().with_env("PGPASSWORD", crate::support::pg::PASSWORD);
    let (code, err) = denied.fails(&["stanza-create", &format!("--pg={}", cluster.tcp_conninfo("denied_user"))]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("pg_hba.conf"), "{err}");

    let wrong_pw = p.clone().with_env("PGPASSWORD", "wrong");
    let (code, err) = wrong_pw.fails(&["stanza-create", &format!("--pg={}", cluster.tcp_conninfo("scram_user"))]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("password"), "{err}");

    let (code, err) = p.fails(&["stanza-create", &format!("--pg={}", cluster.tcp_conninfo("scram_user"))]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("none was given") && err.contains(".pgpass"), "{err}");

    // Regression (issue 14): an unknown role got a password hint; a socket
    // connection without a pg_hba line got a `host` line to add.
    let socket = cluster.socket_dir().display().to_string();
    let hba = cluster.data_dir().join("pg_hba.conf");
    let mut lines = std::fs::OpenOptions::new().append(true).open(&hba).unwrap();
    lines.write_all(b"local replication nobody_here trust\n").unwrap();
    cluster.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let unknown = format!("--pg=host={socket} port={} user=nobody_here", cluster.port());
    let (code, err) = p.fails(&["stanza-create", &unknown]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("CREATE ROLE nobody_here") && !err.contains("password of role"), "{err}");
    let no_local_line = format!("--pg=host={socket} port={} user=scram_user", cluster.port());
    let (code, err) = p.fails(&["stanza-create", &no_local_line]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("`local replication scram_user scram-sha-256`"), "{err}");
    // None of these left a repository behind.
    assert_eq!(std::fs::read_dir(repo.path()).unwrap().count(), 0);
}

#[test]
fn password_md5_scram_and_pgpass_authentication() {
    let cluster = Cluster::init(PgVersion::V17);
    for user in ["scram_user", "md5_user", "pw_user"] {
        let repo = TestDir::new("repo");
        let p = Pgcairn::local(repo.path()).with_env("PGPASSWORD", crate::support::pg::PASSWORD);
        p.ok(&["stanza-create", &format!("--pg={}", cluster.tcp_conninfo(user))]);
    }
    // ~/.pgpass-style file, via PGPASSFILE; libpq matches database "replication".
    let dir = TestDir::new("pgpass");
    let file = dir.path().join("pgpass");
    std::fs::write(
        &file,
        format!("127.0.0.1:{}:replication:scram_user:{}\n", cluster.port(), crate::support::pg::PASSWORD),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&file).unwrap().permissions(), 0o600);
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path()).with_env("PGPASSFILE", &file.display().to_string());
    p.ok(&["stanza-create", &format!("--pg={}", cluster.tcp_conninfo("scram_user"))]);
    // A URI works too.
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path()).with_env("PGPASSWORD", crate::support::pg::PASSWORD);
    p.ok(&["stanza-create", &format!("--pg=postgresql://md5_user@127.0.0.1:{}/postgres", cluster.port())]);
}

#[test]
fn repository_state_errors() {
    let f = fixture();
    let empty = TestDir::new("empty");
    let (code, err) = Pgcairn::local(empty.path()).fails(&["info"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("holds no stanza main") && err.contains("stanza-create"), "{err}");
    // Regression (issue 14): a mistyped stanza was told to create a new one; it is
    // told which stanzas exist.
    let mistyped = Pgcairn { stanza: "mian".into(), ..f.p.clone() };
    let (code, err) = mistyped.fails(&["info"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("holds no stanza mian; it holds: main") && err.contains("check --stanza"), "{err}");
    // Regression (issue 14): a repository path whose parent does not exist (a typo)
    // was created silently at stanza-create; it is refused before anything is written.
    let typo = f.repo.path().join("no-such-dir/repo");
    let (code, err) = Pgcairn::local(&typo).fails(&["stanza-create", &format!("--pg={}", f.cluster.conninfo())]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not exist, nor does its parent") && err.contains("typo"), "{err}");
    assert!(!f.repo.path().join("no-such-dir").exists());
    // Regression (issue 21, item 13): info on a mistyped repository path was told to
    // run stanza-create; it is told the directory does not exist (still exit 4).
    let (code, err) = Pgcairn::local(&typo).fails(&["info"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("the repository directory {} does not exist", typo.display())), "{err}");

    // Run again for the same cluster: nothing changes, and it says so (as pgBackRest).
    let out = f.p.ok(&["stanza-create", &format!("--pg={}", f.cluster.conninfo())]);
    assert!(out.contains("already exists") && out.contains("nothing changed"), "{out}");

    // A repository written by a future pgcairn is refused by version, and left alone.
    let config = f.repo.path().join("main/config");
    let original = std::fs::read_to_string(&config).unwrap();
    let current = format!("\"format_version\": {}", pgcairn::FORMAT_VERSION);
    assert!(original.contains(&current), "{original}");
    std::fs::write(&config, original.replace(&current, "\"format_version\": 99")).unwrap();
    let (code, err) = f.p.fails(&["info"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("format version 99"), "{err}");
    std::fs::write(&config, original).unwrap();
    f.p.ok(&["info"]);

    let (code, err) = f.p.fails(&["restore", "--pg-data=/nonexistent-pgcairn/x", "--set=20200101-000000F"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("backup set 20200101-000000F not found"), "{err}");
}

#[test]
fn corrupt_and_missing_objects_are_named() {
    let f = fixture();
    let packs: Vec<_> = files_under(&f.repo.path().join("main/data"));
    assert!(!packs.is_empty());

    // One flipped byte in the middle of a pack: the block that holds it fails to decrypt.
    let pack = &packs[0];
    let mut bytes = std::fs::read(pack).unwrap();
    let original = bytes.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(pack, &bytes).unwrap();
    let target = TestDir::new("restore");
    let args = restore_args(&target.path().join("data"));
    let (code, err) = f.p.fails(&as_strs(&args));
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains(&format!("backup {} file ", f.label)) && err.contains(" block ") && err.contains("corrupt"),
        "{err}"
    );
    std::fs::write(pack, &original).unwrap();

    // A missing pack.
    std::fs::rename(pack, pack.with_extension("moved")).unwrap();
    let target = TestDir::new("restore");
    let args = restore_args(&target.path().join("data"));
    let (code, err) = f.p.fails(&as_strs(&args));
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("is missing") && err.contains(&format!("backup {} file ", f.label)), "{err}");
    std::fs::rename(pack.with_extension("moved"), pack).unwrap();

    // The block list: missing, then damaged.
    let part = f.repo.path().join(format!("main/backup/{}/blocks/000000", f.label));
    std::fs::rename(&part, part.with_extension("moved")).unwrap();
    let target = TestDir::new("restore");
    let (code, err) = f.p.fails(&as_strs(&restore_args(&target.path().join("data"))));
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("block list") && err.contains("blocks/000000 is missing"), "{err}");
    let original = std::fs::read(part.with_extension("moved")).unwrap();
    let mut bytes = original.clone();
    bytes[original.len() / 2] ^= 0x01;
    std::fs::write(&part, &bytes).unwrap();
    assert!(std::fs::read_dir(target.path().join("data")).is_err(), "nothing written before the block list failed");
    let (code, err) = f.p.fails(&as_strs(&restore_args(&target.path().join("data"))));
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("blocks/000000") && err.contains("corrupt"), "{err}");
    std::fs::rename(part.with_extension("moved"), &part).unwrap();

    // Restored intact once the object is back: the failures damaged nothing. (The
    // set carries its WAL; without recovery settings no restore_command is written,
    // which the server could not run here: the passphrase is in this shell only.)
    let target = TestDir::new("restore");
    let mut args = restore_args(&target.path().join("data"));
    args.push("--type=none".into());
    f.p.ok(&as_strs(&args));
}

/// A diff stores a changed block as a delta over the parent's version of it, which
/// it must read. With the parent's packs gone it fails, names the object, says to take
/// a full backup and leaves no backup behind; with them back it works and restores.
#[test]
fn diff_with_missing_parent_pack_fails_and_leaves_nothing() {
    let f = fixture();
    let table = "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM t";
    f.cluster.psql("UPDATE t SET v = 'x' || v WHERE id % 100 = 0; CHECKPOINT");
    let want = f.cluster.psql(table);
    let packs = files_under(&f.repo.path().join("main/data"));
    for pack in &packs {
        std::fs::rename(pack, pack.with_extension("moved")).unwrap();
    }
    let pg = format!("--pg={}", f.cluster.conninfo());
    let (code, err) = f.p.fails(&["backup", "--type=diff", "--start-fast", &pg]);
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains(&format!("parent backup {}", f.label))
            && err.contains("is missing")
            && err.contains("take a full backup"),
        "{err}"
    );
    let info: serde_json::Value = serde_json::from_str(&f.p.ok(&["info", "--output=json"])).unwrap();
    assert_eq!(info["backups"].as_array().unwrap().len(), 1, "a failed diff is not listed");

    for pack in &packs {
        std::fs::rename(pack.with_extension("moved"), pack).unwrap();
    }
    let out = f.p.ok(&["backup", "--type=diff", "--start-fast", &pg]);
    let diff = out.lines().last().unwrap().trim().to_string();
    let target = TestDir::new("restore");
    let data = target.path().join("data");
    let mut args = restore_args(&data);
    args.extend([format!("--set={diff}"), "--type=none".into()]);
    f.p.ok(&as_strs(&args));
    let restored = Cluster::start_restored(PgVersion::V15, &data);
    assert_eq!(restored.psql(table), want, "the diff restores the changed rows");
}

#[test]
fn restore_refuses_non_empty_target_and_running_cluster() {
    let f = fixture();
    let (code, err) = f.p.fails(&as_strs(&restore_args(f.cluster.data_dir())));
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("is running in it"), "{err}");
    let target = TestDir::new("restore");
    std::fs::write(target.path().join("keep-me"), "precious").unwrap();
    let (code, err) = f.p.fails(&as_strs(&restore_args(target.path())));
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(target.path().join("keep-me")).unwrap(), "precious");
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 1, "restore wrote into a non-empty directory");
}

#[test]
fn data_checksum_failure_fails_the_backup_naming_the_file() {
    let f = fixture();
    let rel = f.cluster.psql("SELECT pg_relation_filepath('t')");
    f.cluster.stop();
    let path = f.cluster.data_dir().join(&rel);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4000] ^= 0xff; // inside page 0's tuple data, not its header
    std::fs::write(&path, &bytes).unwrap();
    f.cluster.start();
    let (code, err) = f.p.fails(&["backup", &format!("--pg={}", f.cluster.conninfo())]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("checksum verification failed") && err.contains(&rel), "{err}");
    // The failed backup is not visible.
    let info: serde_json::Value = serde_json::from_str(&f.p.ok(&["info", "--output=json"])).unwrap();
    assert_eq!(info["backups"].as_array().unwrap().len(), 1);
}

#[test]
fn config_file_env_and_flag_precedence() {
    let f = fixture();
    let dir = TestDir::new("conf");
    let conf = dir.path().join("pgcairn.toml");
    std::fs::write(
        &conf,
        format!("repo = \"/nonexistent-pgcairn/top\"\n[stanza.main]\nrepo = \"{}\"\n", f.repo.path().display()),
    )
    .unwrap();
    // No --repo flag: the setting must come from the environment or the file.
    let mut base = f.p.clone().with_env("PGCAIRN_CONFIG", &conf.display().to_string());
    base.repo = String::new();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = base.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // [stanza.main] beats the top level.
    let out = run(&[], &["info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The environment beats the file.
    let out = run(&[("PGCAIRN_REPO", "/nonexistent-pgcairn/env")], &["info"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-pgcairn/env"), "{out:?}");
    // A flag beats the environment.
    let flag = format!("--repo={}", f.repo.path().display());
    let out = run(&[("PGCAIRN_REPO", "/nonexistent-pgcairn/env")], &["info", &flag]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unencrypted_repository_only_on_request() {
    let cluster = Cluster::init(PgVersion::V15);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path()).without_env("PGCAIRN_REPO_PASSPHRASE");
    // Without a passphrase, stanza-create refuses rather than silently not encrypting.
    let (code, err) = p.fails(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--no-encryption"), "{err}");
    p.ok(&["stanza-create", "--no-encryption", &format!("--pg={}", cluster.conninfo())]);
    let label = p.backup(&cluster.conninfo());
    let info: serde_json::Value = serde_json::from_str(&p.ok(&["info", "--output=json"])).unwrap();
    assert_eq!(info["encrypted"], false);
    let target = TestDir::new("restore");
    let data = target.path().join("data");
    // restore_command runs as the server's user: it must be able to read the
    // repository (restore checks that before it succeeds, issue 21 item 3).
    crate::support::chown_to_postgres(repo.path());
    p.ok(&["restore", &format!("--pg-data={}", data.display()), &format!("--set={label}")]);
    let restored = Cluster::start_restored(PgVersion::V15, &data);
    assert_eq!(restored.psql("SELECT count(*) FROM pg_database WHERE datname = 'postgres'"), "1");
}

#[test]
fn backup_refuses_another_cluster() {
    let f = fixture();
    let other = Cluster::init(PgVersion::V15);
    let (code, err) = f.p.fails(&["backup", &format!("--pg={}", other.conninfo())]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("has system identifier") && err.contains("stanza main belongs to system"), "{err}");
    let info: serde_json::Value = serde_json::from_str(&f.p.ok(&["info", "--output=json"])).unwrap();
    assert_eq!(info["backups"].as_array().unwrap().len(), 1, "nothing was added");
}
