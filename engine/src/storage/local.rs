//! Local filesystem backend. Written on std::fs rather than object_store's
//! LocalFileSystem because that one does not fsync; every write here goes through
//! [`crate::fsutil`] (temp → fsync → link → fsync directory).

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{storage_error, ObjectInfo, Storage};
use crate::error::{Result, StorageErrorKind};
use crate::fsutil;

/// Temp files of writes in progress, below the root: never listed (the name starts
/// with a dot), never mistaken for an object, swept of dead writers' leftovers on
/// every put (fsutil::sweep_stale_temps).
const TMP_DIR: &str = ".tmp";

#[derive(Debug, Clone)]
pub(crate) struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        super::check_key(op, key, false)?;
        Ok(self.root.join(key))
    }
}

pub(super) fn map_io(op: &'static str, key: &str, path: &Path, e: std::io::Error) -> crate::Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => StorageErrorKind::NotFound,
        std::io::ErrorKind::AlreadyExists => StorageErrorKind::AlreadyExists,
        std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => StorageErrorKind::Transient,
        _ => StorageErrorKind::Permanent,
    };
    let detail = match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!("{e}: {}", permission_detail(path)),
        // Regression (issue 21, item 16): under the shipped systemd units
        // (ProtectSystem=strict) a repository outside ReadWritePaths= failed with a
        // bare "Read-only file system".
        std::io::ErrorKind::ReadOnlyFilesystem => format!(
            "{e}: {} is read-only for this process; under systemd with ProtectSystem=strict, add the repository (and spool-path) to the unit's ReadWritePaths=",
            path.display()
        ),
        _ => e.to_string(),
    };
    storage_error(op, key, kind, detail)
}

/// Who is refused where, and how to fix it. Regression (issue 14): "Permission
/// denied" named neither the path nor the user.
fn permission_detail(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let me = crate::pg::conninfo::os_user_name().unwrap_or_else(|| "this user".into());
    let Some((dir, meta)) = path.ancestors().find_map(|a| Some((a, std::fs::metadata(a).ok()?))) else {
        return format!("OS user {me} cannot reach {}", path.display());
    };
    format!(
        "OS user {me} (uid {}) is refused at {} (owner uid {}, mode {:o}); give {me} access (e.g. chown -R {me} on the repository directory) or run pgcairn as the owner",
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() },
        dir.display(),
        meta.uid(),
        meta.mode() & 0o7777
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| crate::Error::Internal(format!("blocking task failed: {e}")))?
}

// Invariant: `dir` is `root` joined with checked relative segments, and every
// entry's path is `dir` joined with its name, so it always starts with `root`.
#[allow(clippy::expect_used)]
fn list_into(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // temp files of writes in progress
        }
        // file_type() stats when the directory entry has no type (some FUSE, NFS).
        let ft = match entry.file_type() {
            Ok(ft) => ft,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if ft.is_dir() {
            list_into(root, &entry.path(), out)?; // a directory removed meanwhile lists empty
        } else if ft.is_file() {
            out.extend(object_info(root, &entry.path())?);
        }
    }
    Ok(())
}

/// The listing entry for the file at `path`; None when it was deleted between the
/// directory read and this stat — a listing is a snapshot, and the object is gone.
///
/// Regression (CI-like run, lifecycle test): a backup listing `lock/beat-` while the
/// lock holder replaced its heartbeat failed with "No such file or directory".
// Invariant: as list_into's, `path` starts with `root`.
#[allow(clippy::expect_used)]
fn object_info(root: &Path, path: &Path) -> std::io::Result<Option<ObjectInfo>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let key = path.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Ok(Some(ObjectInfo { key, size: meta.len(), modified: modified.map(|d| d.as_secs()) }))
}

#[async_trait::async_trait]
impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path("put", key)?;
        let tmp_dir = self.root.join(TMP_DIR);
        let root = self.root.clone();
        let key = key.to_string();
        blocking(move || {
            let io = |e| map_io("put", &key, &path, e);
            // A delete removing the last file of this directory may remove the directory
            // between its creation and the rename: then it is made again.
            let mut attempts = 0;
            loop {
                if let Some(parent) = path.parent() {
                    fsutil::create_dir_all_durable(parent).map_err(io)?;
                }
                match fsutil::write_file_via(&tmp_dir, &path, &data, fsutil::Commit::CreateOnly) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                    Ok(()) => {
                        if let Some(owner) = repository_owner(&root) {
                            hand_over(&root, &path, owner).map_err(io)?;
                            hand_over(&root, &tmp_dir, owner).map_err(io)?;
                        }
                        return Ok(());
                    }
                    Err(e) => return Err(io(e)),
                }
            }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path("get", key)?;
        let key = key.to_string();
        blocking(move || std::fs::read(&path).map(Bytes::from).map_err(|e| map_io("get", &key, &path, e))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let mut got = self.get_ranges(key, std::slice::from_ref(&range)).await?;
        got.pop().ok_or_else(|| storage_error("get", key, StorageErrorKind::Permanent, "no range read"))
    }

    /// One open and one positioned read per range, in one blocking task.
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        use std::os::unix::fs::FileExt;
        let path = self.path("get", key)?;
        let (key, ranges) = (key.to_string(), ranges.to_vec());
        blocking(move || {
            let f = std::fs::File::open(&path).map_err(|e| map_io("get", &key, &path, e))?;
            let len = f.metadata().map_err(|e| map_io("get", &key, &path, e))?.len();
            let mut out = Vec::with_capacity(ranges.len());
            for range in ranges {
                if range.end > len || range.start > range.end {
                    let detail = format!("range {}..{} is outside the object ({len} bytes)", range.start, range.end);
                    return Err(storage_error("get", &key, StorageErrorKind::Permanent, detail));
                }
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                f.read_exact_at(&mut buf, range.start).map_err(|e| map_io("get", &key, &path, e))?;
                out.push(Bytes::from(buf));
            }
            Ok(out)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        super::check_key("list", prefix, true)?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            // List the deepest directory the prefix names, then filter by the rest.
            let dir_part = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let mut out = Vec::new();
            list_into(&root, &root.join(dir_part), &mut out).map_err(|e| map_io("list", &prefix, &root, e))?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path("delete", key)?;
        let key = key.to_string();
        let root = self.root.clone();
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => {
                // The directories this emptied go first, then one fsync makes it all
                // durable. Regression: syncing before the rmdir left a window of an
                // fsync in which a kill -9 (an expire's, in the lifecycle test) left an
                // empty backup directory that no listing shows and no expire removes.
                let still_there = remove_empty_parents(&root, &path);
                // A concurrent delete of the directory's last other file may have removed
                // it (and synced its parent): nothing left to sync.
                match fsutil::sync_dir(&still_there) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(map_io("delete", &key, &path, e)),
                    _ => {}
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_io("delete", &key, &path, e)),
        })
        .await
    }
}

/// Whose files a root process writes into this repository: the owner of the stanza
/// directory, or of the repository directory when root owns the stanza's; None when
/// we are not root or root owns both.
///
/// Regression (issue 21, item 5): `drill` and `verify` as root (documented) wrote
/// root-owned 0600 results into a postgres-owned repository, and a root backup
/// eleven objects; afterwards every command as postgres failed with exit 10. A root
/// process now writes files owned by the repository's owner, as if it were it.
fn repository_owner(root: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    [Some(root), root.parent()]
        .into_iter()
        .flatten()
        .filter_map(|d| std::fs::metadata(d).ok())
        .find(|m| m.uid() != 0)
        .map(|m| (m.uid(), m.gid()))
}

/// Give `path` and the directories between it and `root` (both included) to `owner`.
/// Not through a symbolic link: a link planted in the repository must not make root
/// hand a file elsewhere to the repository's owner (a review finding).
fn hand_over(root: &Path, path: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    let linked = path
        .ancestors()
        .take_while(|p| p.starts_with(root))
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()));
    if let Some(link) = linked {
        tracing::warn!(
            "{} not handed to the repository's owner: {} is a symbolic link",
            path.display(),
            link.display()
        );
        return Ok(());
    }
    let mut next = Some(path);
    while let Some(p) = next.filter(|p| p.starts_with(root)) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        next = p.parent();
    }
    Ok(())
}

/// Regression (issue 21, item 15): expire and stanza-delete left empty
/// `backup/<label>/` and `data/<xx>/` directories (15 labels on disk, 3 in info).
/// The directories a deleted file leaves empty go too, up to the second level below
/// the stanza (`backup/`, `data/`, `wal/` stay). A directory that is not empty, or
/// gone, is left as it is.
/// Remove the directories below the stanza's own that deleting `file` left empty;
/// returns the deepest directory still there (for the caller to sync).
fn remove_empty_parents(root: &Path, file: &Path) -> PathBuf {
    let mut dir = file.parent().unwrap_or(root);
    loop {
        let depth = dir.strip_prefix(root).map_or(0, |rel| rel.components().count());
        if depth < 2 || std::fs::remove_dir(dir).is_err() {
            return dir.to_path_buf();
        }
        dir = dir.parent().unwrap_or(root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        super::super::conformance::run(&s).await;
        super::super::conformance::run_concurrent_create(&s).await;
    }

    /// Issue 21, item 5: what root writes into a repository another user owns is
    /// that user's (as anyone else, its own), directories and temp area included;
    /// deleting the last file of a directory removes the directory.
    #[tokio::test]
    async fn root_writes_as_the_repository_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let owner = if root { 65534 } else { std::fs::metadata(&repo).unwrap().uid() };
        if root {
            std::os::unix::fs::chown(&repo, Some(owner), Some(owner)).unwrap();
        }
        let s = LocalStorage::new(repo.join("main"));
        s.put_new("result/verify/1", Bytes::from_static(b"x")).await.unwrap();
        for p in ["main", "main/result", "main/result/verify", "main/result/verify/1", "main/.tmp"] {
            assert_eq!(std::fs::metadata(repo.join(p)).unwrap().uid(), owner, "{p}");
        }
        s.delete("result/verify/1").await.unwrap();
        assert!(!repo.join("main/result/verify").exists() && repo.join("main/result").exists());
    }

    /// A file gone between the directory read and the stat is left out, not an error.
    #[test]
    fn a_file_deleted_while_listing_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(object_info(dir.path(), &dir.path().join("lock/beat-1")).unwrap().is_none());
        std::fs::write(dir.path().join("here"), b"x").unwrap();
        let found = object_info(dir.path(), &dir.path().join("here")).unwrap().unwrap();
        assert_eq!((found.key.as_str(), found.size), ("here", 1));
    }

    /// Listing while another writer creates and deletes files and directories never
    /// fails (the race the lock's heartbeat hit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listing_beside_deletions_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let s = LocalStorage::new(root.clone());
        s.put_new("lock/keep", Bytes::from_static(b"k")).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (stop, lock) = (stop.clone(), root.join("lock"));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sub = lock.join(format!("d{}", i % 4));
                    let _ = std::fs::create_dir_all(&sub);
                    let _ = std::fs::write(lock.join(format!("beat-{i}")), b"b");
                    let _ = std::fs::write(sub.join("f"), b"f");
                    let _ = std::fs::remove_file(lock.join(format!("beat-{}", i.saturating_sub(1))));
                    let _ = std::fs::remove_dir_all(&sub);
                    i += 1;
                }
            })
        };
        for _ in 0..500 {
            let listed = s.list("lock/").await.unwrap();
            assert!(listed.iter().any(|o| o.key == "lock/keep"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }
}
