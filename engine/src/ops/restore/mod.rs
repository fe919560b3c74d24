//! Restore a backup set into an empty directory — or, with `delta`, over an existing
//! data directory, fetching only the blocks that differ (see `delta`). Ranged reads of
//! the packs, decrypt + decompress + verify on rayon, new files written temp → fsync →
//! rename, tablespace links, modes, and pg_control last.

mod delta;
mod fetch;
mod recovery;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, Commit};
use crate::progress::Progress;
use crate::repo::format::*;
use crate::repo::{ChunkIndex, Repository};
use delta::Action;
use fetch::{Ctx, PARALLEL_FILES};
use recovery::write_recovery;
pub use recovery::{Recovery, RecoveryTarget};

/// Written last, so PostgreSQL cannot start on a partial restore.
const PG_CONTROL: &str = "global/pg_control";

pub struct RestoreRequest {
    pub target: PathBuf,
    /// Backup label; the newest when None.
    pub set: Option<String>,
    /// Tablespace OID → directory; unmapped tablespaces go to their original location.
    pub tablespace_map: HashMap<u32, PathBuf>,
    pub progress: Arc<dyn Progress>,
    pub recovery: Recovery,
    /// Restore over an existing data directory, rewriting only what differs.
    pub delta: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub label: String,
    pub files: usize,
    pub bytes: u64,
    /// Files a delta restore found identical and left alone.
    pub files_unchanged: usize,
    /// Restored bytes fetched from the repository.
    pub bytes_fetched: u64,
    pub seconds: f64,
}

/// Refuse a directory a live postmaster uses (a stale postmaster.pid is fine).
fn check_not_running(dir: &Path) -> Result<()> {
    let pid_file = dir.join("postmaster.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file) {
        if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill with signal 0 only checks that the process exists.
            if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
                return Err(Error::RestoreTarget {
                    path: dir.to_path_buf(),
                    reason: format!("PostgreSQL (pid {pid}) is running in it: stop it, then restore"),
                });
            }
        }
    }
    Ok(())
}

/// Refuse a target that holds anything.
fn check_empty_target(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::RestoreTarget {
                    path: dir.to_path_buf(),
                    reason: "is not empty: restore into an empty or new directory, or add --delta to overwrite this data directory with the backup".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot read restore target {}", dir.display()), e)),
    }
}

fn escape_tablespace_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '\\' | '\n' | '\r') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub async fn restore(repo: &Repository, req: &RestoreRequest) -> Result<RestoreSummary> {
    let started = std::time::Instant::now();
    let label = match &req.set {
        Some(l) => l.clone(),
        None => {
            repo.list_backups().await?.pop().ok_or_else(|| Error::NoBackups { stanza: repo.config().stanza.clone() })?
        }
    };
    let mut manifest = repo.load_manifest(&label).await?;
    if req.recovery.target == RecoveryTarget::None && !manifest.wal_included {
        return Err(Error::Config(format!(
            "backup {label} does not carry its WAL (it relies on the archive from {} to {}): --type=none cannot make it consistent; use --type=immediate",
            manifest.wal_start.as_deref().unwrap_or("?"),
            manifest.wal_stop.as_deref().unwrap_or("?")
        )));
    }

    // Where each tablespace goes; every target must be empty (or, with --delta, a
    // PostgreSQL directory that is not in use).
    let ts_dirs: HashMap<u32, PathBuf> = manifest
        .tablespaces
        .iter()
        .map(|t| (t.oid, req.tablespace_map.get(&t.oid).cloned().unwrap_or_else(|| PathBuf::from(&t.location))))
        .collect();
    check_not_running(&req.target)?;
    for (dir, tablespace) in std::iter::once((&req.target, false)).chain(ts_dirs.values().map(|d| (d, true))) {
        if req.delta {
            delta::check_target(dir, tablespace)?;
        } else {
            check_empty_target(dir)?;
        }
    }
    let dest_of = |f: &FileEntry| -> PathBuf {
        match f.tablespace {
            None => req.target.join(&f.path),
            Some(oid) => ts_dirs[&oid].join(&f.path),
        }
    };
    // The block lists move out of the manifest (no second copy); the rest of it still
    // describes directories, links and modes.
    let files: Vec<(FileEntry, PathBuf)> = manifest
        .files
        .iter_mut()
        .filter(|f| f.kind == FileKind::File && !(f.tablespace.is_none() && f.path == "tablespace_map"))
        .map(|f| {
            let blocks = std::mem::take(&mut f.blocks);
            (FileEntry { blocks, ..f.clone() }, dest_of(f))
        })
        .collect();
    let (files, mut actions) = if req.delta {
        req.progress.begin(&format!("delta restore {label}: compare"), Some(manifest.size));
        let (key, progress) = (*repo.chunk_key(), req.progress.clone());
        let block_size = manifest.block_size as u64;
        let (files, actions) = tokio::task::spawn_blocking(move || {
            delta::compare(&files, block_size, &key, &progress).map(|actions| (files, actions))
        })
        .await
        .map_err(|e| Error::Other(format!("compare task failed: {e}")))??;
        req.progress.finish();
        for ((f, _), a) in files.iter().zip(&actions) {
            match a {
                Action::Keep => {}
                Action::Patch(list) => tracing::debug!("delta restore: {}: {} blocks differ", f.path, list.len()),
                Action::Write => tracing::debug!("delta restore: {}: rewritten whole", f.path),
            }
        }
        (files, actions)
    } else {
        let actions = vec![Action::Write; files.len()];
        (files, actions)
    };
    let pg_control = req.target.join(PG_CONTROL);
    let changes = actions.iter().any(|a| *a != Action::Keep);
    if changes {
        // pg_control goes first and comes back last (see below).
        for (a, (_, dest)) in actions.iter_mut().zip(&files) {
            if *dest == pg_control {
                *a = Action::Write;
            }
        }
    }
    let needed = |(n, (f, _)): (usize, &(FileEntry, PathBuf))| -> Vec<(usize, ChunkId)> {
        match &actions[n] {
            Action::Keep => Vec::new(),
            Action::Patch(list) => list.iter().map(|&b| (b, f.blocks[b])).collect(),
            Action::Write => f.blocks.iter().copied().enumerate().collect(),
        }
    };

    // Load the index only when something must be fetched, and check that every needed
    // block is in it before writing anything.
    let mut fetch_bytes = 0u64;
    let wanted: std::collections::HashSet<ChunkId> =
        files.iter().enumerate().flat_map(|(n, file)| needed((n, file))).map(|(_, id)| id).collect();
    let index = if wanted.is_empty() { ChunkIndex::new() } else { repo.load_index_for(Some(&wanted)).await? };
    drop(wanted);
    for (n, file) in files.iter().enumerate() {
        for (b, id) in needed((n, file)) {
            match index.get(&id) {
                Some(loc) => fetch_bytes += loc.raw_length as u64,
                None => {
                    return Err(Error::Corrupt {
                        what: format!("backup {label} file {} block {b}", file.0.path),
                        detail: format!("chunk {id} is in no index"),
                    })
                }
            }
        }
    }
    let ciphers = index.values().map(|l| l.key_id).collect::<std::collections::HashSet<_>>();
    let ciphers = ciphers.into_iter().map(|k| (k, repo.data_cipher(&k))).collect();
    let ctx = Arc::new(Ctx {
        repo_storage: repo.storage().clone(),
        chunk_key: *repo.chunk_key(),
        ciphers,
        index,
        label: label.clone(),
        progress: req.progress.clone(),
    });

    if req.delta && changes {
        // From here until the restore completes PostgreSQL must not start on a mix of
        // old and new files: without pg_control it refuses to.
        match std::fs::remove_file(&pg_control) {
            Ok(()) => fsutil::sync_parent_dir(&pg_control).ctx(|| format!("cannot fsync {}", req.target.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot remove {}", pg_control.display()), e)),
        }
    }
    if req.delta {
        let mut removed = 0;
        for (root, oid) in std::iter::once((&req.target, None)).chain(ts_dirs.iter().map(|(o, d)| (d, Some(*o)))) {
            let keep = delta::listed(manifest.files.iter().filter(|f| f.tablespace == oid));
            removed += delta::remove_extras(root, &keep)?;
        }
        tracing::info!("delta restore: removed {removed} files and directories the backup does not have");
    }

    let mkdir = |d: &Path| fsutil::create_dir_all_durable(d).ctx(|| format!("cannot create directory {}", d.display()));
    mkdir(&req.target)?;
    std::fs::set_permissions(&req.target, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("cannot set mode of {}", req.target.display()))?;
    for dir in ts_dirs.values() {
        mkdir(dir)?;
    }
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::Dir) {
        mkdir(&dest_of(f))?;
    }
    // Parents of files whose directory entry the archive did not carry.
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::File) {
        if let Some(p) = dest_of(f).parent() {
            mkdir(p)?;
        }
    }

    req.progress.begin(&format!("restore {label}"), Some(fetch_bytes));
    let unchanged = actions.iter().filter(|a| **a == Action::Keep).count();
    let file_count = files.len();
    let block_size = manifest.block_size as u64;
    let run = |(entry, dest): (FileEntry, PathBuf), action: Action| {
        let ctx = ctx.clone();
        async move {
            match action {
                Action::Keep => std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(entry.mode))
                    .ctx(|| format!("cannot set mode of {}", dest.display())),
                Action::Patch(list) => ctx.patch_file(entry, dest, block_size, list).await,
                Action::Write => ctx.restore_file(entry, dest).await,
            }
        }
    };
    // pg_control last: until it is in place PostgreSQL cannot start on a partial restore.
    let (last, rest): (Vec<_>, Vec<_>) = files.into_iter().zip(actions).partition(|((_, dest), _)| *dest == pg_control);
    let mut restored = futures::stream::iter(rest.into_iter().map(|(f, a)| run(f, a)))
        .buffer_unordered(PARALLEL_FILES)
        .try_collect::<Vec<()>>()
        .await;
    if restored.is_ok() {
        for (f, a) in last {
            restored = run(f, a).await.map(|()| Vec::new());
        }
    }
    if restored.is_err() {
        // The operator will retry; say what stands in the way.
        let hint = if req.delta {
            "run the same restore with --delta again"
        } else {
            "remove that directory (and restored tablespace directories) before restoring again, or rerun with --delta"
        };
        tracing::error!("restore of backup {label} into {} stopped part-way: {hint}", req.target.display());
    }
    restored?;
    req.progress.finish();

    // Tablespaces: a tablespace_map naming the (possibly remapped) locations, which
    // PostgreSQL turns into pg_tblspc links at startup, and the links themselves.
    if !ts_dirs.is_empty() {
        let mut map = String::new();
        let mut oids: Vec<_> = ts_dirs.keys().copied().collect();
        oids.sort();
        for oid in oids {
            let dir = &ts_dirs[&oid];
            map.push_str(&format!("{oid} {}\n", escape_tablespace_path(&dir.to_string_lossy())));
            let link = req.target.join("pg_tblspc").join(oid.to_string());
            mkdir(link.parent().unwrap())?;
            std::os::unix::fs::symlink(dir, &link)
                .ctx(|| format!("cannot create tablespace link {}", link.display()))?;
        }
        fsutil::write_file(&req.target.join("tablespace_map"), map.as_bytes(), Commit::Replace)
            .ctx(|| "cannot write tablespace_map".to_string())?;
        std::fs::set_permissions(req.target.join("tablespace_map"), std::fs::Permissions::from_mode(0o600))
            .ctx(|| "cannot set mode of tablespace_map".to_string())?;
    }
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::Symlink) {
        let dest = dest_of(f);
        if dest.symlink_metadata().is_ok() {
            continue; // a tablespace link made above
        }
        let target = f.link.clone().unwrap_or_default();
        std::os::unix::fs::symlink(&target, &dest).ctx(|| format!("cannot create link {}", dest.display()))?;
    }
    // Directory modes last (a 0500 directory would block writes into it), then
    // fsync every directory so the new entries are durable.
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::Dir).rev() {
        let d = dest_of(f);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(f.mode))
            .ctx(|| format!("cannot set mode of {}", d.display()))?;
        fsutil::sync_dir(&d).ctx(|| format!("cannot fsync {}", d.display()))?;
    }
    if req.recovery.target != RecoveryTarget::None {
        write_recovery(&req.target, &label, &req.recovery)?;
    }
    fsutil::sync_dir(&req.target).ctx(|| format!("cannot fsync {}", req.target.display()))?;
    Ok(RestoreSummary {
        label,
        files: file_count,
        bytes: manifest.size,
        files_unchanged: unchanged,
        bytes_fetched: fetch_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_target() {
        let dir = tempfile::tempdir().unwrap();
        check_empty_target(dir.path()).unwrap();
        check_empty_target(&dir.path().join("new")).unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "17").unwrap();
        let err = check_empty_target(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }

    #[test]
    fn names_a_running_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).unwrap();
        let err = check_not_running(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is running in it"), "{err}");
    }

    #[test]
    fn escapes_tablespace_paths() {
        assert_eq!(escape_tablespace_path("/a b/c"), "/a b/c");
        assert_eq!(escape_tablespace_path("/a\\b\nc"), "/a\\\\b\\\nc");
    }
}
