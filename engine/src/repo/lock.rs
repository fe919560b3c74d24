//! The stanza lock (repository-format.md §8.1): backup, expire and stanza-delete of
//! one stanza exclude each other, on any storage, with nothing but create-only
//! writes, reads, listings and deletes (S3 has no locks).
//!
//! `lock/holder` names the holder (owner id, host, pid, command, start); while it
//! runs, the holder writes `lock/beat-<owner>-<unix seconds>` every
//! [`HEARTBEAT`] and deletes the previous one. A holder is stale when its process is
//! gone (same host) or its newest heartbeat is older than its `stale_after`; a
//! contender then removes the stale lock and tries again. Both objects are sealed
//! metadata: a lock is authenticated like everything else read back.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::Repository;
use crate::error::{Error, LockedBy, Result, StorageErrorKind};

const HOLDER_KEY: &str = "lock/holder";
const BEAT_PREFIX: &str = "lock/beat-";
/// How often a holder proves it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long without a heartbeat makes a holder stale: ten missed beats, which also
/// absorbs clock skew between hosts of a few minutes.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(300);

/// `lock/holder`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockHolder {
    /// Random id of this holding (beats carry it).
    pub owner: String,
    pub host: String,
    pub pid: i32,
    /// The command that holds it: "backup", "expire", "stanza-delete".
    pub command: String,
    /// Unix seconds when it was taken.
    pub started: u64,
    /// Seconds without a heartbeat after which the holder counts as gone.
    pub stale_after: u64,
}

/// A heartbeat's payload: what the holder is doing now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Beat {
    /// The backup label, once chosen.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    label: Option<String>,
}

/// A held lock. Callers pass the result of their work to
/// [`StanzaLock::release_after`], so it is released on every path; if the process
/// dies instead, the lock goes stale.
pub(crate) struct StanzaLock {
    repo: Repository,
    holder: LockHolder,
    label: Arc<Mutex<Option<String>>>,
    beats: JoinHandle<()>,
    stop_beats: tokio::sync::oneshot::Sender<()>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn beat_key(owner: &str, secs: u64) -> String {
    format!("{BEAT_PREFIX}{owner}-{secs:012}")
}

/// (owner, seconds) of a heartbeat key.
fn parse_beat(key: &str) -> Option<(&str, u64)> {
    let (owner, secs) = key.strip_prefix(BEAT_PREFIX)?.rsplit_once('-')?;
    Some((owner, secs.parse().ok()?))
}

impl StanzaLock {
    /// Take the lock, or fail with [`Error::Locked`] naming the live holder.
    pub(crate) async fn acquire(repo: &Repository, command: &str) -> Result<Self> {
        let stale_after = STALE_AFTER;
        let holder = LockHolder {
            owner: hex::encode(crate::crypto::random_bytes::<8>()),
            host: crate::fsutil::hostname(),
            pid: std::process::id() as i32,
            command: command.to_string(),
            started: unix_now(),
            stale_after: stale_after.as_secs(),
        };
        // Two rounds: the second after removing a stale holder (or one that let go).
        for _ in 0..2 {
            match repo.put_meta(HOLDER_KEY, &holder).await {
                Ok(()) => return Ok(Self::started(repo, holder).await),
                Err(e) if e.storage_kind() == Some(StorageErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
            let other = match read_holder_state(repo).await? {
                HolderState::Absent => continue,
                HolderState::Valid(h) => h,
                HolderState::Damaged(d) => {
                    take_over_damaged(repo, &d).await?;
                    continue;
                }
            };
            let last_beat = newest_beat(repo, &other).await?;
            match staleness(&other, &last_beat) {
                Some(why) => {
                    tracing::warn!(
                        "stanza {}: removing the stale lock of {} (pid {} on {}): {why}",
                        repo.config().stanza,
                        other.command,
                        other.pid,
                        other.host
                    );
                    remove_lock(repo, &other.owner).await?;
                }
                None => return Err(locked_error(repo, other, last_beat).await),
            }
        }
        Err(Error::Internal("the stanza lock changed hands twice while being taken".into()))
    }

    async fn started(repo: &Repository, holder: LockHolder) -> Self {
        let label = Arc::new(Mutex::new(None::<String>));
        let (stop_beats, stop) = tokio::sync::oneshot::channel();
        let beats = tokio::spawn(heartbeats(repo.clone(), holder.owner.clone(), label.clone(), stop));
        StanzaLock { repo: repo.clone(), holder, label, beats, stop_beats }
    }

    /// Say which backup the holder is taking (shown to anyone the lock refuses).
    pub(crate) fn set_label(&self, label: &str) {
        *self.label.lock().unwrap_or_else(PoisonError::into_inner) = Some(label.to_string());
    }

    /// Release the lock and hand back `result` (a failed release only matters when
    /// the work itself succeeded: the lock then goes stale on its own).
    pub(crate) async fn release_after<T>(self, result: Result<T>) -> Result<T> {
        let released = self.release().await;
        let value = result?;
        released.map(|()| value)
    }

    /// Stop the heartbeats and remove the lock.
    pub(crate) async fn release(self) -> Result<()> {
        // Stopped between beats, never aborted mid-write: an aborted write of a local
        // object still lands (its blocking half runs on) after the beats were removed.
        let _ = self.stop_beats.send(());
        let _ = self.beats.await;
        remove_lock(&self.repo, &self.holder.owner).await
    }
}

/// Write a heartbeat now and every [`HEARTBEAT`], keeping the one before too.
///
/// Regression (review of the listing fix): a local listing leaves out a file deleted
/// between its directory read and its stat. Had the previous beat been deleted as
/// soon as the new one was written, a contender listing in between could see neither,
/// judge a live holder stale by its start time and break its lock. With two beats
/// kept, the older one outlives a whole heartbeat interval after the newer appears.
async fn heartbeats(
    repo: Repository,
    owner: String,
    label: Arc<Mutex<Option<String>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut kept: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    loop {
        let beat = Beat { label: label.lock().unwrap_or_else(PoisonError::into_inner).clone() };
        let key = beat_key(&owner, unix_now());
        if kept.back() != Some(&key) {
            match repo.put_meta(&key, &beat).await {
                Ok(()) => {
                    kept.push_back(key);
                    while kept.len() > 2 {
                        if let Some(old) = kept.pop_front() {
                            let _ = repo.storage().delete(&old).await;
                        }
                    }
                }
                Err(e) => tracing::warn!("stanza lock heartbeat not written: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = &mut stop => return,
        }
    }
}

async fn read_holder(repo: &Repository) -> Result<Option<LockHolder>> {
    match read_holder_state(repo).await? {
        HolderState::Valid(h) => Ok(Some(h)),
        HolderState::Absent | HolderState::Damaged(_) => Ok(None),
    }
}

/// What `lock/holder` holds.
enum HolderState {
    Absent,
    Valid(LockHolder),
    /// It does not authenticate or parse (garbage, empty, forged): who wrote it is
    /// unknown, so it is judged by silence alone.
    Damaged(DamagedHolder),
}

struct DamagedHolder {
    /// Why it was refused.
    detail: String,
    /// Seconds since anything of the lock (the holder or any heartbeat) was written;
    /// None when the store gives no times.
    silent: Option<u64>,
}

async fn read_holder_state(repo: &Repository) -> Result<HolderState> {
    match repo.get_meta::<LockHolder>(HOLDER_KEY).await {
        Ok(h) => Ok(HolderState::Valid(h)),
        Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => Ok(HolderState::Absent),
        Err(Error::Corrupt { detail, .. }) => {
            let listed = repo.storage().list("lock/").await?;
            let newest = listed.iter().map(|o| o.modified).try_fold(0u64, |acc, m| m.map(|m| acc.max(m)));
            let silent = newest.map(|t| unix_now().saturating_sub(t));
            Ok(HolderState::Damaged(DamagedHolder { detail, silent }))
        }
        Err(e) => Err(e),
    }
}

/// Regression (issue 21, item 4): garbage or an empty `lock/holder` made backup,
/// expire and info exit 8 ("restore from another backup set") forever. A holder that
/// does not authenticate is stale once nothing under `lock/` was written for
/// [`STALE_AFTER`]: then it is removed; before that the error says when, and which
/// object to delete by hand if nothing runs.
async fn take_over_damaged(repo: &Repository, damaged: &DamagedHolder) -> Result<()> {
    let stale = STALE_AFTER.as_secs();
    match damaged.silent {
        Some(silent) if silent > stale => {
            tracing::warn!(
                "stanza {}: removing a damaged lock ({HOLDER_KEY} does not authenticate: {}; nothing written under lock/ for {silent} s)",
                repo.config().stanza,
                damaged.detail
            );
            // Re-read: a live taker may have replaced it since.
            if matches!(read_holder_state(repo).await?, HolderState::Damaged(_)) {
                delete_if_present(repo, HOLDER_KEY).await?;
            }
            Ok(())
        }
        silent => {
            let wait = silent.map_or("its age is unknown (the store gives no times)".to_string(), |s| {
                format!("it is treated as stale in {} s", stale.saturating_sub(s) + 1)
            });
            Err(Error::misconfigured(
                crate::error::Misconfig::Request,
                format!(
                    "stanza {}: the lock object {HOLDER_KEY} is damaged ({}); {wait}",
                    repo.config().stanza,
                    damaged.detail
                ),
                format!(
                    "wait and run again; or, if no backup, expire or stanza-delete of this stanza is running anywhere, delete {}/{HOLDER_KEY} and run again",
                    repo.location()
                ),
            ))
        }
    }
}

/// The newest heartbeat of `holder`: (unix seconds, key).
async fn newest_beat(repo: &Repository, holder: &LockHolder) -> Result<Option<(u64, String)>> {
    let listed = repo.storage().list(BEAT_PREFIX).await?;
    Ok(listed
        .into_iter()
        .filter_map(|o| {
            let (owner, secs) = parse_beat(&o.key)?;
            (owner == holder.owner).then_some((secs, o.key.clone()))
        })
        .max())
}

/// Why `holder` no longer holds the lock, or `None` while it may be alive.
fn staleness(holder: &LockHolder, last_beat: &Option<(u64, String)>) -> Option<String> {
    if holder.host == crate::fsutil::hostname() && !crate::fsutil::process_alive(holder.pid) {
        return Some("its process is gone".into());
    }
    let alive_at = last_beat.as_ref().map_or(holder.started, |(secs, _)| (*secs).max(holder.started));
    let silent = unix_now().saturating_sub(alive_at);
    (silent > holder.stale_after).then(|| format!("no heartbeat for {silent} s"))
}

/// Remove `owner`'s heartbeats, then its holder object (only if it is still theirs).
async fn remove_lock(repo: &Repository, owner: &str) -> Result<()> {
    for o in repo.storage().list(BEAT_PREFIX).await? {
        if parse_beat(&o.key).is_some_and(|(o_owner, _)| o_owner == owner) {
            delete_if_present(repo, &o.key).await?;
        }
    }
    if read_holder(repo).await?.is_some_and(|h| h.owner == owner) {
        delete_if_present(repo, HOLDER_KEY).await?;
    }
    Ok(())
}

async fn delete_if_present(repo: &Repository, key: &str) -> Result<()> {
    match repo.storage().delete(key).await {
        Err(e) if e.storage_kind() != Some(StorageErrorKind::NotFound) => Err(e),
        _ => Ok(()),
    }
}

/// Who holds the stanza lock now (a stale holder does not count): what `info` and
/// `metrics` report.
pub(crate) async fn current_holder(repo: &Repository) -> Result<Option<LockedBy>> {
    let Some(holder) = read_holder(repo).await? else { return Ok(None) };
    let last_beat = newest_beat(repo, &holder).await?;
    if staleness(&holder, &last_beat).is_some() {
        return Ok(None);
    }
    Ok(Some(locked_by(repo, holder, last_beat).await))
}

async fn locked_error(repo: &Repository, holder: LockHolder, last_beat: Option<(u64, String)>) -> Error {
    Error::Locked(Box::new(locked_by(repo, holder, last_beat).await))
}

async fn locked_by(repo: &Repository, holder: LockHolder, last_beat: Option<(u64, String)>) -> LockedBy {
    let label = match &last_beat {
        Some((_, key)) => repo.get_meta::<Beat>(key).await.ok().and_then(|b| b.label),
        None => None,
    };
    let started = chrono::DateTime::from_timestamp(holder.started as i64, 0)
        .map_or_else(|| holder.started.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    LockedBy {
        stanza: repo.config().stanza.clone(),
        command: holder.command,
        host: holder.host,
        pid: holder.pid,
        label,
        started,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tests::test_repo;
    use crate::storage::Storage;

    /// A second taker is refused with the holder's details; after release the lock
    /// is free again, and nothing of the first holding is left.
    #[tokio::test]
    async fn excludes_then_releases() {
        let (mem, repo) = test_repo(false).await;
        let first = StanzaLock::acquire(&repo, "backup").await.unwrap();
        first.set_label("20260101-000000F");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = StanzaLock::acquire(&repo, "expire").await.err().unwrap();
        let text = refused.to_string();
        assert!(matches!(refused, Error::Locked(_)), "{text}");
        assert!(text.contains("backup") && text.contains(&std::process::id().to_string()), "{text}");
        first.release().await.unwrap();
        let left = mem.list("lock/").await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        StanzaLock::acquire(&repo, "expire").await.unwrap().release().await.unwrap();
    }

    /// Regression (found by the stanza-delete integration test): release aborted the
    /// heartbeat task mid-write; on local storage the write's blocking half still
    /// landed a beat object after the beats were removed, so a released lock left
    /// an object behind. Taken and released at once, many times: nothing is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_leaves_nothing_even_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let location = crate::storage::RepoLocation::Local(dir.path().to_path_buf());
        let storage = location.open("main", &crate::storage::CloudSettings::default()).unwrap();
        let repo = crate::repo::synthetic::synthetic_repository(storage.clone(), 0, 1, 0, 0).await.unwrap();
        for _ in 0..30 {
            StanzaLock::acquire(&repo, "backup").await.unwrap().release().await.unwrap();
            let left = storage.list("lock/").await.unwrap();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    /// A holder on another host that stopped beating is taken over after its
    /// stale_after; one that beats is not.
    #[tokio::test]
    async fn a_silent_holder_on_another_host_goes_stale() {
        let (_mem, repo) = test_repo(false).await;
        let old = unix_now() - 1000;
        let holder = LockHolder {
            owner: "feedfeedfeedfeed".into(),
            host: "elsewhere.example".into(),
            pid: 1,
            command: "backup".into(),
            started: old,
            stale_after: 300,
        };
        repo.put_meta(HOLDER_KEY, &holder).await.unwrap();
        repo.put_meta(&beat_key(&holder.owner, unix_now()), &Beat::default()).await.unwrap();
        assert!(matches!(StanzaLock::acquire(&repo, "expire").await, Err(Error::Locked(_))));

        remove_lock(&repo, &holder.owner).await.unwrap();
        repo.put_meta(HOLDER_KEY, &holder).await.unwrap();
        repo.put_meta(&beat_key(&holder.owner, old + 10), &Beat::default()).await.unwrap();
        let taken = StanzaLock::acquire(&repo, "expire").await.unwrap();
        assert_eq!(read_holder(&repo).await.unwrap().unwrap().command, "expire");
        taken.release().await.unwrap();
    }

    /// Same host, process gone (kill -9): stale at once.
    #[tokio::test]
    async fn a_dead_local_holder_is_stale_at_once() {
        let (_mem, repo) = test_repo(false).await;
        let holder = LockHolder {
            owner: "0123456789abcdef".into(),
            host: crate::fsutil::hostname(),
            pid: i32::MAX - 1,
            command: "backup".into(),
            started: unix_now(),
            stale_after: 300,
        };
        repo.put_meta(HOLDER_KEY, &holder).await.unwrap();
        StanzaLock::acquire(&repo, "backup").await.unwrap().release().await.unwrap();
    }

    /// Regression (issue 21, item 4): garbage in `lock/holder` blocked backup, expire
    /// and info for good with "restore from another backup set". Now info ignores it,
    /// a taker is told when it goes stale and which object to delete, and once
    /// nothing under lock/ was written for the stale window it is taken over.
    #[tokio::test]
    async fn a_damaged_holder_is_stale_after_silence() {
        let (mem, repo) = test_repo(true).await;
        mem.put_new(HOLDER_KEY, bytes::Bytes::from_static(b"garbage")).await.unwrap();
        assert!(current_holder(&repo).await.unwrap().is_none(), "info must not fail on a damaged lock");
        let refused = StanzaLock::acquire(&repo, "backup").await.err().unwrap().to_string();
        assert!(
            refused.contains("lock/holder") && refused.contains("damaged") && refused.contains("stale in"),
            "{refused}"
        );
        let damaged = DamagedHolder { detail: "test".into(), silent: Some(STALE_AFTER.as_secs() + 1) };
        take_over_damaged(&repo, &damaged).await.unwrap();
        StanzaLock::acquire(&repo, "backup").await.unwrap().release().await.unwrap();
        mem.put_new(HOLDER_KEY, bytes::Bytes::new()).await.unwrap();
        let refused = StanzaLock::acquire(&repo, "expire").await.err().unwrap().to_string();
        assert!(refused.contains("damaged"), "{refused}");
    }
}
