//! The key cache: a repository's unwrapped master key kept in memory-backed storage
//! (`/dev/shm` by default) by the OS user who unlocked it with a passphrase, so the
//! commands PostgreSQL runs once per WAL segment do not pay an Argon2id derivation
//! (~0.2 s, 64 MiB) each (issue 26).
//!
//! What it may cost, and why it is the default (docs/config.md, "The key cache"):
//! the file holds what a key file holds, readable only by the user who can already
//! read the passphrase file (same owner, mode 0600, in a 0700 directory of theirs).
//! It lives on tmpfs, so it never reaches a disk (swap aside) and is gone at
//! reboot. It is used only while
//! - the passphrase given still matches (a keyed hash of it, salted per entry),
//! - the key slot that passphrase opened is still in the repository (`key remove`
//!   revokes the cache with the slot), and
//! - the key still proves itself against the repository (key check, config MAC).
//!
//! Anything else — a missing, foreign, unreadable or malformed entry, a directory
//! that is not this user's alone — is a miss: the passphrase path runs as before.

use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::keys::B64;
use crate::crypto::{Secret, KEY_LEN};

/// Largest entry read back (an entry is ~250 bytes).
const MAX_ENTRY: u64 = 4096;

/// One user's cache directory: `<base>/pgcairn-<uid>`.
#[derive(Debug, Clone)]
pub struct KeyCache {
    dir: PathBuf,
}

/// What one entry holds: the unwrapped key and what must still hold to use it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    repository_id: String,
    /// The key slot (`keys/<id>`) the passphrase opened.
    slot: String,
    /// base64 of 16 random bytes.
    salt: String,
    /// Hex of the passphrase's keyed hash under `salt`.
    passphrase_check: String,
    /// base64 of the master key.
    master_key: String,
}

/// A hit: the key and the slot it came from.
pub(super) struct Cached {
    pub slot: String,
    pub master: [u8; KEY_LEN],
}

impl KeyCache {
    /// The cache of this OS user below `base` (the `key-cache-path` setting).
    pub fn new(base: &Path) -> Self {
        KeyCache { dir: base.join(format!("pgcairn-{}", euid())) }
    }

    /// This user's directory (tests look inside).
    #[cfg(test)]
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, repository_id: &str) -> Option<PathBuf> {
        let plain = !repository_id.is_empty() && repository_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        plain.then(|| self.dir.join(format!("{repository_id}.key")))
    }

    /// The cached key of `repository_id` for `passphrase`, if there is a usable one.
    pub(super) fn lookup(&self, repository_id: &str, passphrase: &Secret) -> Option<Cached> {
        let path = self.entry_path(repository_id)?;
        if !private_dir(&self.dir) {
            return None;
        }
        let entry: Entry = serde_json::from_slice(&read_private(&path)?).ok()?;
        let salt = B64.decode(&entry.salt).ok()?;
        if entry.repository_id != repository_id || entry.passphrase_check != passphrase_check(&salt, passphrase) {
            return None;
        }
        let master = B64.decode(&entry.master_key).ok()?.try_into().ok()?;
        Some(Cached { slot: entry.slot, master })
    }

    /// Remember `master` for `passphrase`; a failure only costs the next call a derivation.
    pub(super) fn store(&self, repository_id: &str, slot: &str, passphrase: &Secret, master: &[u8; KEY_LEN]) {
        match self.try_store(repository_id, slot, passphrase, master) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => tracing::warn!(
                "key cache {} is not used: {e}; every run derives the key again (remove it, or set key-cache-path)",
                self.dir.display()
            ),
            Err(e) => tracing::debug!("key cache {}: not written: {e}", self.dir.display()),
            Ok(()) => {}
        }
    }

    /// Remove the entry of `repository_id` (its slot is gone): the key leaves memory.
    pub(super) fn forget(&self, repository_id: &str) {
        if let Some(path) = self.entry_path(repository_id).filter(|_| private_dir(&self.dir)) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn try_store(
        &self,
        repository_id: &str,
        slot: &str,
        passphrase: &Secret,
        master: &[u8; KEY_LEN],
    ) -> std::io::Result<()> {
        let path = self.entry_path(repository_id).ok_or_else(|| std::io::Error::other("unusual repository id"))?;
        match std::fs::DirBuilder::new().mode(crate::fsutil::PRIVATE_DIR).create(&self.dir) {
            Ok(()) => std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(crate::fsutil::PRIVATE_DIR))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if !private_dir(&self.dir) {
            let problem = "the directory is not this user's alone (owner, mode 0700)";
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, problem));
        }
        // A writer killed before its rename left a copy of a key: remove it.
        crate::fsutil::sweep_dead_writers(&self.dir);
        let salt: [u8; 16] = rand::random();
        let entry = Entry {
            repository_id: repository_id.to_string(),
            slot: slot.to_string(),
            salt: B64.encode(salt),
            passphrase_check: passphrase_check(&salt, passphrase),
            master_key: B64.encode(master),
        };
        let json = zeroize::Zeroizing::new(serde_json::to_vec(&entry).map_err(std::io::Error::other)?);
        // tmpfs: nothing to fsync; the rename makes the entry appear whole.
        crate::fsutil::write_file_volatile(&self.dir, &path, &json)
    }
}

/// The passphrase's keyed hash under `salt`: tells whether the passphrase given now
/// is the one the entry was made with, without storing it.
fn passphrase_check(salt: &[u8], passphrase: &Secret) -> String {
    let mut h = blake3::Hasher::new_derive_key("pgcairn 2026-12 key cache passphrase check");
    h.update(salt);
    h.update(passphrase.expose().as_bytes());
    h.finalize().to_hex().to_string()
}

/// This process's effective user id: the owner every directory and entry must have.
fn euid() -> u32 {
    // SAFETY: geteuid(2) only reads this process's effective user id.
    unsafe { libc::geteuid() }
}

/// Whether `dir` is a real directory owned by this user that nobody else can enter.
fn private_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == euid() && m.mode() & 0o077 == 0)
}

/// The file's bytes when it is a regular file (not a link) of this user's, mode
/// 0600 or stricter, and small.
fn read_private(path: &Path) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != euid() || meta.mode() & 0o077 != 0 || meta.len() > MAX_ENTRY {
        return None;
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_ENTRY).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}
