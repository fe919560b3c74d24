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
