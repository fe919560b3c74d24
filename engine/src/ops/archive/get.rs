//! archive-get, as restore_command runs it. When the prefetch spool can be used, the
//! requested file comes from the background fetcher ([`super::fetcher`]): it holds
//! the opened repository (one key derivation per recovery, not one per segment) and
//! keeps the following segments fetched ahead, so a call returns as soon as the
//! requested segment is renamed into place. Without a spool, or when no fetcher can
//! be reached, the call fetches the requested file itself, without prefetch.
//!
//! The restore_command contract (docs/config.md): `Ok(true)` delivered, `Ok(false)`
//! not in the archive (recovery may end there), `Err` anything else — a damaged
//! object, storage still failing after `archive-get-timeout` — which the caller turns
//! into an exit status that stops recovery. Only the requested file decides.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fetcher;
use super::push_async::HelperCommand;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, Commit};
use crate::pg::wal::WalFile;
use crate::repo::access::RepoAccess;
use crate::repo::Repository;

/// `pgcairn archive-get` as restore_command runs it.
#[derive(Debug, Clone)]
pub struct GetRequest {
    /// The stanza to fetch from.
    pub repo: RepoAccess,
    /// `archive-get-timeout`: how long to ride out a repository that cannot be reached.
    pub timeout: Duration,
    /// `spool-path`: where prefetched segments go (see [`prefetch_spool`]).
    pub spool_path: Option<PathBuf>,
    /// `archive-get-queue-max`: bytes of WAL to fetch ahead; 0 turns prefetch off.
    pub queue_max: u64,
    /// How to start the background fetcher: this program with the caller's own
    /// arguments (it resolves the same settings).
    pub fetcher: HelperCommand,
}

/// Deliver `name` to `dest`; the result as the module comment says. In the process
/// started as the fetcher, serve calls until it is time to go instead.
pub async fn run_archive_get(req: &GetRequest, name: &str, dest: &Path) -> Result<bool> {
    let spool = prefetch_spool(req.spool_path.as_deref(), &req.repo.stanza).filter(|_| req.queue_max > 0);
    if fetcher::is_fetcher() {
        let spool = spool.ok_or_else(|| Error::Internal("the WAL fetcher was started without a spool".into()))?;
        fetcher::run(req, &spool).await?;
        return Ok(true);
    }
    if WalFile::parse(name).is_none() {
        return Ok(false);
    }
    if let Some(spool) = &spool {
        if let Some(answer) = fetcher::ask(spool, req, name, dest).await {
            return answer;
        }
        tracing::info!("no background WAL fetcher answers in {}: fetching {name} without it", spool.display());
    }
    let deadline = Instant::now() + req.timeout;
    let repo = retry_transient(deadline, req.timeout, "opening the repository", || req.repo.open()).await?;
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    archive_get(&repo, name, dest, remaining).await
}

/// Fetch `name` into `dest` (temp + fsync + rename, so `dest` is never partial),
/// riding out a storage outage for up to `timeout`.
pub(crate) async fn archive_get(repo: &Repository, name: &str, dest: &Path, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let Some(data) = retry_transient(deadline, timeout, name, || fetch(repo, name)).await? else {
        return Ok(false);
    };
    tokio::task::block_in_place(|| fsutil::write_file(dest, &data, Commit::Replace))
        .ctx(|| format!("cannot write {}", dest.display()))?;
    Ok(true)
}

/// Most time between two tries of a transient failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Run `op` until it succeeds, fails for good, or `deadline` passes while it keeps
/// failing transiently (then a [`Error::StorageUnavailable`] naming `what`).
pub(crate) async fn retry_transient<T, F, Fut>(deadline: Instant, timeout: Duration, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(250);
    let unavailable =
        |last: String| Error::StorageUnavailable { what: what.to_string(), seconds: timeout.as_secs(), last };
    loop {
        // One attempt may itself retry for long (the S3 client does): the deadline
        // bounds the attempt too, not only the pauses between attempts (the fault
        // matrix saw 20 s for a 1 s timeout).
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(left, op()).await.map_err(|_| unavailable("no answer in time".into()))?;
        match attempt {
            Err(e) if e.is_transient() => {
                if Instant::now() + delay >= deadline {
                    return Err(unavailable(e.to_string()));
                }
                tracing::warn!("{what}: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            other => return other,
        }
    }
}

/// One WAL file from the repository, authenticated; None when it is not archived.
pub(crate) async fn fetch(repo: &Repository, name: &str) -> Result<Option<Vec<u8>>> {
    match WalFile::parse(name) {
        Some(file) => repo.get_wal(file.timeline(), name).await,
        None => Ok(None),
    }
}

/// archive-get's prefetch spool: `spool-path`/<stanza>/in, or, when run by
/// PostgreSQL (whose restore_command runs in the data directory),
/// pg_wal/pgcairn-prefetch. None where neither applies (no prefetch).
pub(crate) fn prefetch_spool(spool_path: Option<&Path>, stanza: &str) -> Option<PathBuf> {
    match spool_path {
        Some(p) => Some(p.join(stanza).join("in")),
        None if Path::new("PG_VERSION").is_file() && Path::new("pg_wal").is_dir() => {
            Some(PathBuf::from(fetcher::DEFAULT_SPOOL))
        }
        None => None,
    }
}

/// A backup starts a new history: segments prefetched for an earlier recovery on
/// this host (spool-path/<stanza>/in) are of no further use.
pub fn clear_prefetch_spool(spool_path: &Path, stanza: &str) {
    let _ = std::fs::remove_dir_all(spool_path.join(stanza).join("in"));
}
