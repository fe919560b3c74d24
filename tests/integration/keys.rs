//! Issue 15: passphrase rotation. key add → old and new both open → remove the old →
//! old refused, new opens, backups still restore; the last slot and the slot that
//! opened this run are protected; the new passphrase never comes from argv.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::cli::Pgcairn;
use crate::support::{Cluster, PgVersion, TestDir};

const NEW: &str = "the new, longer repository passphrase";

fn slots(p: &Pgcairn) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&p.ok(&["key", "list", "--output=json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn passphrase_rotation_keeps_backups_restorable() {
    let cluster = Cluster::init(PgVersion::V15);
    cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let repo = TestDir::new("repo");
    let old = Pgcairn::local(repo.path());
    old.ok(&["stanza-create", &format!("--pg={}", cluster.conninfo())]);
    let label = old.backup(&cluster.conninfo());

    // From a file (refused while others can read it), or stdin; never a flag value.
    let dir = TestDir::new("newpass");
    let file = dir.path().join("pass");
    std::fs::write(&file, format!("{NEW}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = old.fails(&["key", "add", &format!("--new-passphrase-file={}", file.display())]);
    assert!(code == 3 && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    old.ok(&["key", "add", &format!("--new-passphrase-file={}", file.display())]);
    let mut child = old
        .cmd(&["key", "add", "--new-passphrase-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a third passphrase for the stdin path\n").unwrap();
    assert!(child.wait_with_output().unwrap().status.success());

    let new = old.clone().with_env("PGCAIRN_REPO_PASSPHRASE", NEW);
    let listed = slots(&old);
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|s| s["kdf"] == "argon2id" && s["kdf_params"]["m_cost"].as_u64().unwrap() > 0));
    let old_slot = listed.iter().find(|s| s["unlocked_this_run"] == true).unwrap()["id"].as_str().unwrap().to_string();
    let new_slot =
        slots(&new).into_iter().find(|s| s["unlocked_this_run"] == true).unwrap()["id"].as_str().unwrap().to_string();
    assert_ne!(old_slot, new_slot);

    // Removing the slot this run opened needs --force; with the new passphrase it goes.
    let (code, err) = old.fails(&["key", "remove", &old_slot]);
    assert!(code == 3 && err.contains("opened"), "{err}");
    new.ok(&["key", "remove", &old_slot]);
    // Issue 26: the old passphrase's key is in this user's key cache (the default),
    // and must not outlive its slot.
    let cached = crate::support::test_root().join("key-cache").join(format!("pgcairn-{}", unsafe { libc::geteuid() }));
    let entries = std::fs::read_dir(&cached).map(|d| d.count()).unwrap_or(0);
    assert!(entries > 0, "no key cache entry in {}", cached.display());
    let (code, err) = old.fails(&["info"]);
    assert_eq!(code, 5, "the old passphrase must open nothing now: {err}");
    assert!(new.ok(&["info"]).contains(&label));

    // The last slot stays.
    let third =
        slots(&new).into_iter().find(|s| s["unlocked_this_run"] == false).unwrap()["id"].as_str().unwrap().to_string();
    new.ok(&["key", "remove", &third]);
    let (code, err) = new.fails(&["key", "remove", &new_slot, "--force"]);
    assert!(code == 3 && err.contains("last"), "{err}");

    let target = TestDir::new("restore");
    let data = target.path().join("data");
    new.ok(&["restore", &format!("--pg-data={}", data.display()), "--type=none", &format!("--set={label}")]);
    let restored = Cluster::start_restored(PgVersion::V15, &data);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "1000");
}

/// Every `cmdline` of every process now (what `ps` shows).
fn all_cmdlines() -> String {
    let mut out = String::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            out.push_str(&String::from_utf8_lossy(&c).replace('\0', " "));
            out.push('\n');
        }
    }
    out
}

/// Issue 15: no passphrase, master key or connection password in any argv (also
/// archive-push's and restore_command's), log line at any level, message, or the
/// restored postgresql.auto.conf; the log file is private.
#[test]
fn secrets_appear_nowhere() {
    let a = crate::archive::Archiving::new(PgVersion::V15, "--log-level=trace");
    let master = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&a.key).unwrap()).unwrap()
        ["master_key"]
        .as_str()
        .unwrap()
        .to_string();
    let secrets = [crate::cli::PASSPHRASE.to_string(), master, crate::support::pg::PASSWORD.to_string()];
    let logs = TestDir::new("logs");
    let log = logs.path().join("pgcairn.log");
    let p = a.p.clone().with_env("PGPASSWORD", crate::support::pg::PASSWORD);
    let trace = ["--log-level=trace".to_string(), format!("--log-file={}", log.display())];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = trace.iter().map(String::as_str).collect();
        all.extend(args);
        let out = p.run(&all);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let pg = format!("--pg={}", a.cluster.tcp_conninfo("scram_user"));
    let mut seen = String::new();
    let mut ps = String::new();
    // What PostgreSQL runs per segment, and whatever runs while segments are archived.
    ps.push_str(&a.cluster.psql("SHOW archive_command"));
    assert!(ps.contains("pgcairn-archive-push"), "{ps}");
    for _ in 0..5 {
        a.switch_segments(1);
        ps.push_str(&all_cmdlines());
    }
    seen.push_str(&run(&["backup", "--start-fast", &pg]));
    seen.push_str(&run(&["check", &pg]));
    seen.push_str(&run(&["info"]));
    seen.push_str(&run(&["check", "--pg=host=127.0.0.1 port=1 user=x password=notlogged"]));
    let target = TestDir::new("restore");
    let data = target.path().join("data");
    let key = format!("--repo-key-file={}", a.key.display());
    seen.push_str(&run(&["restore", &format!("--pg-data={}", data.display()), "--type=immediate", &key]));
    let auto_conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto_conf.contains("restore_command") && auto_conf.contains(&a.key.display().to_string()), "{auto_conf}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("TRACE") || logged.contains("DEBUG"), "trace logging produced nothing: {logged}");
    let server_log = a.cluster.server_log();
    for (what, text) in [
        ("output", &seen),
        ("log file", &logged),
        ("server log", &server_log),
        ("ps", &ps),
        ("postgresql.auto.conf", &auto_conf),
    ] {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a secret appears in the {what}");
        }
    }
    assert!(!seen.contains("notlogged"), "a password from the connection string appears in an error");
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
}
