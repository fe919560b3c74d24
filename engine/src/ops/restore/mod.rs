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
use crate::repo::blocklist::{block_count, BlockListReader, BLOCKS_PER_PART};
use crate::repo::format::*;
use crate::repo::Repository;
use delta::{Action, Compared};
use fetch::{Ctx, FileJob, PARALLEL_FILES};
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

/// Compare every file on disk with the backup, a window of about one block list part
/// at a time (so memory does not grow with the backup), hashing on rayon.
async fn compare_all(
    jobs: &[FileJob],
    block_list: &BlockListReader<'_>,
    block_size: u64,
    repo: &Repository,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<Action>> {
    let mut actions = Vec::with_capacity(jobs.len());
    let mut start = 0;
    while start < jobs.len() {
        let (mut end, mut blocks) = (start, 0u64);
        while end < jobs.len() && (end == start || blocks + jobs[end].count <= BLOCKS_PER_PART as u64) {
            blocks += jobs[end].count;
            end += 1;
        }
        let mut window = Vec::with_capacity(end - start);
        for job in &jobs[start..end] {
            let ids = block_list.range(job.first, job.count).await?.into_iter().map(|(id, _)| id).collect();
            window.push(Compared { dest: &job.dest, size: job.entry.size, ids });
        }
        let key = repo.chunk_key();
        actions.extend(tokio::task::block_in_place(|| delta::compare(&window, block_size, key, progress))?);
        for (job, a) in jobs[start..end].iter().zip(&actions[start..end]) {
            match a {
                Action::Keep => {}
                Action::Patch(list) => {
                    tracing::debug!("delta restore: {}: {} blocks differ", job.entry.path, list.len())
                }
                Action::Write => tracing::debug!("delta restore: {}: rewritten whole", job.entry.path),
            }
        }
        start = end;
    }
    Ok(actions)
}

/// Refuse, before anything is written, a backup whose own objects or WAL are not
/// all there: PostgreSQL could not start on it (`info` marks it the same way).
async fn check_restorable(repo: &Repository, m: &Manifest) -> Result<()> {
    let problem = match repo.missing_backup_objects(m).await? {
        Some(p) => Some(p),
        None if m.wal_included => None,
        None => {
            let archived = crate::ops::archive::archived_segments(repo).await?;
            crate::ops::archive::missing_wal(m, &archived, repo.config().wal_segment_size)
        }
    };
    match problem {
        None => Ok(()),
        Some(detail) => Err(Error::Corrupt { what: format!("backup {}", m.label), detail }),
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
    let manifest = repo.load_manifest(&label).await?;
    check_restorable(repo, &manifest).await?;
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
    // Every regular file and where its blocks start in the block list.
    let mut jobs = Vec::new();
    let mut next = 0u64;
    for f in manifest.files.iter().filter(|f| f.kind == FileKind::File) {
        let count = block_count(f.size, manifest.block_size);
        if !(f.tablespace.is_none() && f.path == "tablespace_map") {
            jobs.push(FileJob { entry: f.clone(), dest: dest_of(f), first: next, count });
        }
        next += count;
    }
    if next != manifest.blocks {
        return Err(Error::Corrupt {
            what: format!("backup {label}"),
            detail: format!("its files have {next} blocks, its block list {}", manifest.blocks),
        });
    }
    let block_list = BlockListReader::new(repo, &manifest, PARALLEL_FILES);
    let mut actions = if req.delta {
        req.progress.begin(&format!("delta restore {label}: compare"), Some(manifest.size));
        let actions = compare_all(&jobs, &block_list, manifest.block_size as u64, repo, &req.progress).await?;
        req.progress.finish();
        actions
    } else {
        block_list.check().await?;
        vec![Action::Write; jobs.len()]
    };
    let pg_control = req.target.join(PG_CONTROL);
    let changes = actions.iter().any(|a| *a != Action::Keep);
    if changes {
        // pg_control goes first and comes back last (see below).
        for (a, job) in actions.iter_mut().zip(&jobs) {
            if job.dest == pg_control {
                *a = Action::Write;
            }
        }
    }
    let block_size = manifest.block_size as u64;
    let fetch_bytes: u64 = jobs
        .iter()
        .zip(&actions)
        .map(|(job, a)| match a {
            Action::Keep => 0,
            Action::Write => job.entry.size,
            Action::Patch(list) => list.iter().map(|&b| block_size.min(job.entry.size - b as u64 * block_size)).sum(),
        })
        .sum();
    let ctx = Arc::new(Ctx {
        repo_storage: repo.storage().clone(),
        chunk_key: *repo.chunk_key(),
        ciphers: repo.data_ciphers(),
        blocks: block_list,
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
    let file_count = jobs.len();
    let run = |job: FileJob, action: Action| {
        let ctx = ctx.clone();
        async move {
            match action {
                Action::Keep => std::fs::set_permissions(&job.dest, std::fs::Permissions::from_mode(job.entry.mode))
                    .ctx(|| format!("cannot set mode of {}", job.dest.display())),
                Action::Patch(list) => ctx.patch_file(job, block_size, list).await,
                Action::Write => ctx.restore_file(job).await,
            }
        }
    };
    // pg_control last: until it is in place PostgreSQL cannot start on a partial restore.
    let (last, rest): (Vec<_>, Vec<_>) = jobs.into_iter().zip(actions).partition(|(job, _)| job.dest == pg_control);
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
