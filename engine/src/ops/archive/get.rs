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
//! into an exit status that stops recovery. Only the requested file decides. With
//! several repositories the file comes from the first that has a valid copy
//! ([`RepoSet::get_wal`]); the contract applies when none has.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fetcher;
use super::push_async::HelperCommand;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, Commit};
use crate::pg::wal::WalFile;
use crate::repo::access::RepoAccess;
use crate::repo::set::{RepoSet, WalSource};

/// `pgcairn archive-get` as restore_command runs it.
#[derive(Debug, Clone)]
pub struct GetRequest {
    /// The stanza's repositories, in the order they are read (`repo` first, then
    /// `repo2`…): a file missing or damaged in one is fetched from the next.
    pub repos: Vec<RepoAccess>,
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
    let spool = prefetch_spool(req.spool_path.as_deref(), req.stanza()?).filter(|_| req.queue_max > 0);
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
    archive_get(&RepoSet::new(req.repos.clone())?, name, dest, req.timeout).await
}

impl GetRequest {
    /// The stanza (the same in every repository).
    pub(crate) fn stanza(&self) -> Result<&str> {
        let first = self.repos.first().ok_or_else(|| Error::Internal("archive-get without a repository".into()))?;
        Ok(&first.stanza)
    }
}

/// Fetch `name` into `dest` (temp + fsync + rename, so `dest` is never partial),
/// riding out a storage outage for up to `timeout`.
pub(crate) async fn archive_get(source: &dyn WalSource, name: &str, dest: &Path, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let data = match retry_transient(deadline, timeout, name, || source.wal(name)).await? {
        Some(data) => data,
        None => match retry_transient(deadline, timeout, name, || source.streamed(name)).await? {
            Some(data) => data,
            None => return Ok(false),
        },
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
