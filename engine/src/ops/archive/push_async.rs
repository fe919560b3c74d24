//! Asynchronous archive-push. archive_command returns once the segment is durably
//! queued in the spool directory; a detached drainer process (the same binary with the
//! settings the caller forwards, `PGCAIRN_ARCHIVE_DRAIN=1`) pushes queued segments in parallel and
//! exits when the queue is empty. One drainer at a time (flock on `drain.lock`).
//!
//! With several repositories (`repo2`…`repo4`) a segment goes into each: sync mode
//! pushes to all at once and succeeds only when every one has it; async mode keeps
//! one queue (and one drainer) per repository, `<spool>/<stanza>` for repository 1
//! and `<spool>/<stanza>/repoN` for the others, so an outage of one repository does
//! not hold up the others, and the queue bound applies to each queue on its own.
//!
//! `archive-push-queue-max` bounds the queue. When a segment would exceed it,
//! `archive-push-queue-full` decides:
//! * `fail` (default): archive_command fails, PostgreSQL keeps the segment in pg_wal
//!   and retries: nothing is lost, but pg_wal grows while the repository is slow.
//! * `drop`: the segment is NOT archived, archive_command succeeds so pg_wal cannot
//!   fill the disk; every drop is logged as an error and listed in `dropped.log`,
//!   `check` fails while that file exists and `info` shows the gap.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;

use crate::error::{Error, IoContext, Misconfig, Result};
use crate::fsutil::{self, Commit};
use crate::ops::archive::{archive_push, store_wal, validate_wal_file};
use crate::repo::access::RepoAccess;
use crate::repo::Repository;

const DRAIN_ENV: &str = "PGCAIRN_ARCHIVE_DRAIN";
const PARALLEL_PUSHES: usize = 4;

/// archive_command's work, as the caller's settings say: push now, or queue.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The stanza's repositories: every one receives the segment.
    pub repos: Vec<RepoAccess>,
    /// zstd level for WAL (`compress-level-wal`).
    pub level: i32,
    /// `archive-async`: queue instead of pushing.
    pub queue: Option<AsyncQueue>,
}

/// Settings of the asynchronous archive queue (`archive-async`).
#[derive(Debug, Clone)]
pub struct AsyncQueue {
    /// `spool-path`; the queue is `<spool>/<stanza>/out`.
    pub spool_path: PathBuf,
    /// `archive-push-queue-max`: None for unbounded.
    pub max: Option<u64>,
    /// `archive-push-queue-full`.
    pub full: QueueFull,
    /// How to start a drainer process when none is running.
    pub drainer: HelperCommand,
}

/// What to do with a segment that does not fit in the queue (module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// archive_command fails; PostgreSQL keeps the segment and retries.
    Fail,
    /// The segment is not archived, logged and listed in `dropped.log`; archive_command succeeds.
    Drop,
}

/// The command line of a background helper (the archive drainer, the WAL fetcher):
/// this program with the settings that found the repository. A drainer's WAL path
/// is appended (the drainer ignores it).
#[derive(Debug, Clone)]
pub struct HelperCommand {
    /// The executable to run (normally this program's own path).
    pub program: PathBuf,
    /// Its arguments: the subcommand, if any, and the settings.
    pub args: Vec<OsString>,
}

/// The one entry point of `archive_command`, for both binaries: sync or async as requested.
pub async fn run_archive_push(req: &PushRequest, path: &Path) -> Result<()> {
    let Some(queue) = &req.queue else { return push_to_all(&req.repos, path, req.level).await };
    let spools: Vec<Spool> = req.repos.iter().map(|r| Spool::of(&queue.spool_path, r)).collect::<Result<_>>()?;
    if let Some(drained) = std::env::var_os(DRAIN_ENV) {
        // The drainer of one queue: PGCAIRN_ARCHIVE_DRAIN names its repository.
        let number: usize = drained.to_str().and_then(|n| n.parse().ok()).unwrap_or(1);
        let Some(i) = req.repos.iter().position(|r| r.number == number) else { return Ok(()) };
        return drain(&req.repos[i], &spools[i], req.level).await;
    }
    let (mut first_error, mut first_copy) = (None, None);
    for (access, spool) in req.repos.iter().zip(&spools) {
        let queued = spool.enqueue(queue, path, first_copy.as_deref());
        let queued = queued.map_err(|e| access.context_among(req.repos.len(), e));
        match queued.and_then(|copy| spawn_drainer(spool, &queue.drainer, path, access.number).map(|()| copy)) {
            Ok(copy) => first_copy = first_copy.or(copy),
            Err(e) if req.repos.len() > 1 => {
                tracing::error!("{e}");
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Sync archive-push: into every repository at once; done only when all have it.
/// Each failure is logged naming its repository; the first is returned.
async fn push_to_all(repos: &[RepoAccess], path: &Path, level: i32) -> Result<()> {
    let pushes = repos.iter().map(|access| async move {
        let pushed = async { archive_push(&access.open().await?, path, level).await }.await;
        pushed.map_err(|e| access.context_among(repos.len(), e))
    });
    let mut first_error = None;
    for result in futures::future::join_all(pushes).await {
        if let Err(e) = result {
            if repos.len() > 1 {
                tracing::error!("{e}; PostgreSQL keeps the segment and retries");
            }
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Where repository `number`'s async queue lives: `<spool>/<stanza>` for repository 1,
/// `<spool>/<stanza>/repoN` for the others.
pub(crate) fn queue_root(spool_path: &Path, stanza: &str, number: usize) -> PathBuf {
    match number {
        1 => spool_path.join(stanza),
        n => spool_path.join(stanza).join(format!("repo{n}")),
    }
}

pub(crate) struct Spool {
    root: PathBuf,
}

impl Spool {
    /// The queue of `access`'s repository (module comment).
    fn of(spool_path: &Path, access: &RepoAccess) -> Result<Self> {
        Self::at(queue_root(spool_path, &access.stanza, access.number))
    }

    fn at(root: PathBuf) -> Result<Self> {
        for d in [root.join("out"), root.join("error")] {
            fsutil::create_dir_all_durable(&d).ctx(|| format!("cannot create spool directory {}", d.display()))?;
        }
        Ok(Self { root })
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    pub(crate) fn dropped_log(&self) -> PathBuf {
        self.root.join("dropped.log")
    }

    fn queued_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for e in std::fs::read_dir(self.out()).ctx(|| format!("cannot list {}", self.out().display()))? {
            let e = e.ctx(|| "cannot list the spool".into())?;
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(total)
    }

    /// Queue the segment at `path`; the queued file (None when it was dropped). With
    /// several repositories, the queues after the first link to the first one's copy
    /// (`queued`) instead of writing the segment again, when they can.
    fn enqueue(&self, queue: &AsyncQueue, path: &Path, queued: Option<&Path>) -> Result<Option<PathBuf>> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let size = std::fs::metadata(path).ctx(|| format!("cannot read {}", path.display()))?.len();
        if let Some(max) = queue.max {
            let held = self.queued_bytes()?;
            if held + size > max {
                return self.queue_full(queue.full, &name, held, max).map(|()| None);
            }
        }
        let dest = self.out().join(&name);
        // The temp file lives outside out/: a killed enqueue must neither count
        // against the queue bound nor stay behind (swept by the next enqueue).
        let tmp = self.root.join(".tmp");
        if let Some(copy) = queued {
            match fsutil::link_via(&tmp, copy, &dest) {
                Ok(()) => return Ok(Some(dest)),
                // Drained meanwhile, or another file system: write it.
                Err(e) => tracing::debug!("cannot link {} as {}: {e}", copy.display(), dest.display()),
            }
        }
        // Mapped, not read: a fresh 16 MiB buffer per call cost more than the copy.
        let data = super::map_file(path)?;
        fsutil::write_file_via(&tmp, &dest, &data, Commit::Replace)
            .ctx(|| format!("cannot queue {}", dest.display()))?;
        Ok(Some(dest))
    }

    fn queue_full(&self, full: QueueFull, name: &str, queued: u64, max: u64) -> Result<()> {
        let what =
            format!("archive-push queue {} holds {queued} bytes (archive-push-queue-max {max})", self.out().display());
        match full {
            QueueFull::Drop => {
                tracing::error!(
                    "{what}: {name} was DROPPED and is not archived (archive-push-queue-full = drop); point-in-time recovery across it is impossible: take a new full backup once the repository keeps up, then remove {}",
                    self.dropped_log().display()
                );
                let mut f = fsutil::private_file()
                    .create(true)
                    .append(true)
                    .open(self.dropped_log())
                    .ctx(|| format!("cannot write {}", self.dropped_log().display()))?;
                writeln!(f, "{} {name}", chrono::Utc::now().to_rfc3339()).ctx(|| "cannot write dropped.log".into())?;
                f.sync_all().ctx(|| "cannot fsync dropped.log".into())
            }
            QueueFull::Fail => Err(Error::misconfigured(
                Misconfig::ResourceLimit,
                format!("{what}: {name} not queued; PostgreSQL keeps it and retries"),
                "the repository is not keeping up: check it, or raise archive-push-queue-max",
            )),
        }
    }
}

/// An exclusive, non-blocking flock on the drainer lock; None if someone holds it.
fn try_lock(spool: &Spool) -> Result<Option<File>> {
    let path = spool.root.join("drain.lock");
    fsutil::try_flock(&path).ctx(|| format!("cannot open {}", path.display()))
}

/// Start a detached drainer unless one runs.
fn spawn_drainer(spool: &Spool, drainer: &HelperCommand, path: &Path, number: usize) -> Result<()> {
    match try_lock(spool)? {
        None => return Ok(()), // a drainer is running; it drains until the queue is empty
        Some(lock) => drop(lock),
    }
    let log = fsutil::private_file()
        .create(true)
        .append(true)
        .open(spool.root.join("drain.log"))
        .ctx(|| "cannot open drain.log".into())?;
    std::process::Command::new(&drainer.program)
        .args(&drainer.args)
        .arg(path)
        .env(DRAIN_ENV, number.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().ctx(|| "drain.log".into())?)
        .stderr(log)
        // Its own process group: PostgreSQL's archiver must not take it down.
        .process_group(0)
        .spawn()
        .ctx(|| "cannot start the archive drainer".into())?;
    Ok(())
}

async fn drain(access: &RepoAccess, spool: &Spool, level: i32) -> Result<()> {
    let Some(mut lock) = try_lock(spool)? else { return Ok(()) };
    let repo = access.open().await?;
    loop {
        let mut names: Vec<String> = std::fs::read_dir(spool.out())
            .ctx(|| "cannot list the spool".into())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        if names.is_empty() {
            // Release, then look again: a segment queued while we held the lock
            // found the lock taken and started no drainer.
            drop(lock);
            let again = std::fs::read_dir(spool.out())
                .map(|d| d.flatten().any(|e| !e.file_name().to_string_lossy().starts_with('.')));
            match (again, try_lock(spool)?) {
                (Ok(true), Some(l)) => {
                    lock = l;
                    continue;
                }
                _ => return Ok(()),
            }
        }
        names.sort();
        let results: Vec<Result<()>> = futures::stream::iter(names.iter().map(|n| push_queued(&repo, spool, n, level)))
            .buffer_unordered(PARALLEL_PUSHES)
            .collect()
            .await;
        if let Some(e) = results.into_iter().find_map(|r| r.err()) {
            // Transient trouble (storage down): keep the queue, try again shortly.
            tracing::error!("archive drainer: {e}; retrying in 5s");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

async fn push_queued(repo: &Repository, spool: &Spool, name: &str, level: i32) -> Result<()> {
    let path = spool.out().join(name);
    // A queued file is never changed once renamed into out/: it can be mapped.
    let data = super::map_file(&path)?;
    let outcome = match validate_wal_file(repo, name, &data) {
        Ok(file) => store_wal(repo, name, file, &data, level).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => {
            std::fs::remove_file(&path).ctx(|| format!("cannot remove {}", path.display()))?;
            fsutil::sync_dir(&spool.out()).ctx(|| "cannot fsync the spool".into())
        }
        Err(e @ (Error::WalRefused { .. } | Error::WalMismatch { .. })) => {
            // Never retried: parked for the operator, reported on every run of check.
            tracing::error!("archive drainer: {e}");
            let parked = spool.root.join("error").join(name);
            std::fs::rename(&path, &parked).ctx(|| format!("cannot move {} aside", path.display()))?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// WAL names the async queue of `stanza`'s repository `number` still speaks of:
/// segments parked in `error/` and those listed in `dropped.log` (none when there is
/// no spool).
pub(crate) fn spool_wal_names(spool_path: &Path, stanza: &str, number: usize) -> Vec<String> {
    let root = queue_root(spool_path, stanza, number);
    let parked = std::fs::read_dir(root.join("error"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    let dropped = std::fs::read_to_string(root.join("dropped.log")).unwrap_or_default();
    parked.into_iter().chain(dropped.lines().filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))).collect()
}

/// Forget spool state about WAL that expire made moot (`moot`: names wholly before
/// the kept window): parked segments are removed and their `dropped.log` lines too,
/// the log rewritten durably (removed when it ends up empty). Returns what went.
pub(crate) fn prune_spool(spool_path: &Path, stanza: &str, number: usize, moot: &[String]) -> Result<Vec<String>> {
    let root = queue_root(spool_path, stanza, number);
    let mut gone = Vec::new();
    for name in moot {
        let parked = root.join("error").join(name);
        if parked.exists() {
            std::fs::remove_file(&parked).ctx(|| format!("cannot remove {}", parked.display()))?;
            gone.push(format!("error/{name}"));
        }
    }
    let log = root.join("dropped.log");
    let Ok(text) = std::fs::read_to_string(&log) else { return Ok(gone) };
    let is_moot = |l: &str| l.split_whitespace().nth(1).is_some_and(|n| moot.iter().any(|m| m == n));
    let kept: Vec<&str> = text.lines().filter(|l| !is_moot(l)).collect();
    if kept.len() == text.lines().count() {
        return Ok(gone);
    }
    gone.extend(text.lines().filter(|l| is_moot(l)).map(|l| format!("dropped.log: {l}")));
    if kept.is_empty() {
        std::fs::remove_file(&log).ctx(|| format!("cannot remove {}", log.display()))?;
    } else {
        let body = kept.iter().map(|l| format!("{l}\n")).collect::<String>();
        fsutil::write_file_via(&root.join(".tmp"), &log, body.as_bytes(), Commit::Replace)
            .ctx(|| format!("cannot rewrite {}", log.display()))?;
    }
    Ok(gone)
}

/// Problems of repository `number`'s async queue in `spool_path` an operator must
/// know about (for `check`).
pub fn spool_problems(spool_path: &Path, stanza: &str, number: usize) -> Result<Vec<String>> {
    let spool = Spool::at(queue_root(spool_path, stanza, number))?;
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(spool.dropped_log()) {
        let n = text.lines().count();
        if n > 0 {
            out.push(format!(
                "{n} WAL segment(s) were dropped because the archive-push queue was full (see {}): take a new full backup, then remove that file",
                spool.dropped_log().display()
            ));
        }
    }
    let parked: Vec<String> = std::fs::read_dir(spool.root.join("error"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if !parked.is_empty() {
        out.push(format!(
            "segment(s) refused by the repository were parked in {}: {}",
            spool.root.join("error").display(),
            parked.join(", ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn access(number: usize, root: &Path) -> RepoAccess {
        RepoAccess {
            number,
            location: crate::storage::RepoLocation::Local(root.join(format!("repo{number}"))),
            stanza: "main".into(),
            cloud: Default::default(),
            unlock: crate::repo::access::Unlock::Passphrase(None, None),
        }
    }

    /// With several repositories, the async queues after the first hold a hard link
    /// to the first one's copy: the segment is written (and fsynced) once.
    #[tokio::test]
    async fn queues_of_several_repositories_share_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("000000010000000000000001");
        std::fs::write(&segment, vec![7u8; 1 << 16]).unwrap();
        let spool_path = dir.path().join("spool");
        // A drainer that does nothing, so the queues keep what was queued.
        let drainer = HelperCommand { program: "/bin/true".into(), args: vec![] };
        let queue = AsyncQueue { spool_path: spool_path.clone(), max: None, full: QueueFull::Fail, drainer };
        let repos = (1..=3).map(|n| access(n, dir.path())).collect();
        run_archive_push(&PushRequest { repos, level: 1, queue: Some(queue) }, &segment).await.unwrap();
        let queued: Vec<PathBuf> =
            (1..=3).map(|n| queue_root(&spool_path, "main", n).join("out/000000010000000000000001")).collect();
        let inode = std::fs::metadata(&queued[0]).unwrap().ino();
        for q in &queued {
            assert_eq!(std::fs::metadata(q).unwrap().ino(), inode, "{} is a copy of its own", q.display());
            assert_eq!(std::fs::read(q).unwrap(), std::fs::read(&segment).unwrap());
        }
    }
}
