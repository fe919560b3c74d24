//! Test support: throwaway PostgreSQL clusters (15-18), an S3-compatible server and the
//! Azure Blob and GCS emulators.
//!
//! Everything lives under one root ($PGCAIRN_TEST_ROOT, default /var/tmp/pgcairn-tests) so a
//! failed run is easy to inspect and clean. Set PGCAIRN_TEST_KEEP=1 to keep the directories.
//! CI runs as root and PostgreSQL refuses to, so when root the server runs as `postgres` and
//! the directories it needs are owned by that user. Missing binaries make tests panic with
//! the command that installs them: a test that cannot run must never pass silently.

// Each test uses a different subset of this module.
#![allow(dead_code)]

pub mod cloud;
pub mod pg;
pub mod s3;

#[allow(unused_imports)]
pub use cloud::{Azurite, FakeGcs, MotoS3};
#[allow(unused_imports)] // convenience re-exports; not every test uses every one
pub use pg::{client_bin, Cluster, PgVersion};
#[allow(unused_imports)]
pub use s3::S3Server;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Root of all test directories; must be traversable by the `postgres` user.
pub fn test_root() -> PathBuf {
    let root = std::env::var_os("PGCAIRN_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pgcairn-tests"));
    static KEY_CACHE: OnceLock<()> = OnceLock::new();
    KEY_CACHE.get_or_init(|| use_own_key_cache(&root));
    root
}

/// Every pgcairn the tests run (themselves, or the servers' archive and restore
/// commands) keeps its key cache under the test root, not in the machine's /dev/shm:
/// a sticky, world-writable directory like /dev/shm, where each OS user gets its own
/// `pgcairn-<uid>`. Set once, before any test starts a process.
fn use_own_key_cache(root: &Path) {
    let dir = root.join("key-cache");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    std::env::set_var("PGCAIRN_KEY_CACHE_PATH", &dir);
}

/// A new, empty directory `<root>/<prefix>-<pid>-<n>`, mode 0755 and (when root) owned by
/// `postgres`, so the server can both reach and write it. Not removed automatically: use
/// `TestDir` for that.
pub fn unique_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let root = test_root();
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create test root {}: {e}", root.display()));
    // Best effort: the root may belong to someone else, which is fine if it is traversable.
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{prefix}-{}-{n}", std::process::id()));
        // create_dir (not _all) fails on leftovers from an earlier process with the same pid.
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
                chown_to_postgres(&dir);
                return dir;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// A `unique_dir` that is removed on drop (unless PGCAIRN_TEST_KEEP is set).
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(prefix: &str) -> TestDir {
        TestDir(unique_dir(prefix))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        remove_test_dir(&self.0);
    }
}

/// Write a secret or config file the server's OS user reads: mode 0640, owned by
/// `postgres` when root (as the docs tell operators to install them).
pub fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    chown_to_postgres(path);
}

/// True when running as root (euid 0): then servers must run as `postgres`.
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        // std has no geteuid; the second field of "Uid:" is the effective uid.
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .map(|euid| euid == "0")
            .expect("no Uid line in /proc/self/status")
    })
}

/// Every file under `dir` (recursively), sorted.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// `chown -R postgres:postgres PATH` when running as root; a no-op otherwise (then the
/// server runs as the current user, who already owns what it created).
pub fn chown_to_postgres(path: &Path) {
    if is_root() {
        run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(path), "chown to postgres");
    }
}

/// A free TCP port on 127.0.0.1. Ports are never handed out twice per process, so
/// parallel tests cannot pick the same one between probing and the server binding it.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Runs a command to completion; panics with its output unless it succeeded.
pub fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Removes a test directory unless PGCAIRN_TEST_KEEP is set (then says where it is).
pub fn remove_test_dir(dir: &Path) {
    if std::env::var_os("PGCAIRN_TEST_KEEP").is_some() {
        eprintln!("PGCAIRN_TEST_KEEP: keeping {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: cannot remove {}: {e}", dir.display());
        }
    }
}
