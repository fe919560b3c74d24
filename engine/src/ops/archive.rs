//! WAL archive: archive-push (one file, durable before success), archive-get (with
//! prefetch into a spool directory), waiting for segments, and the archive summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::crypto::Secret;
use crate::error::{Error, IoContext, Misconfig, Result};
use crate::fsutil::{self, Commit};
use crate::pg::version;
use crate::pg::wal::{segment_name, segno_of, validate_backup_history, validate_history, validate_segment, WalFile};
pub(crate) use crate::repo::wal::PushOutcome;
use crate::repo::Repository;
use crate::storage::{s3::S3Settings, DynStorage, RepoLocation};

fn file_name(path: &Path) -> Result<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| {
        let problem = format!("{} is not a file path", path.display());
        Error::misconfigured(Misconfig::Request, problem, "archive_command must pass %p")
    })
}

/// Check a WAL file belongs to this stanza's cluster (segments and partials).
pub(crate) fn validate_wal_file(repo: &Repository, name: &str, data: &[u8]) -> Result<WalFile> {
    let refused = |reason: String| Error::WalRefused { name: name.to_string(), reason };
    let file = WalFile::parse(name)
        .ok_or_else(|| refused("the name is not a WAL segment, .partial, .history or .backup file".into()))?;
    let cfg = repo.config();
    match file {
        WalFile::Segment { .. } | WalFile::Partial { .. } => {
            let major = version::major_of(cfg.pg_version);
            validate_segment(&file, data, cfg.system_identifier, major, cfg.wal_segment_size)
        }
        WalFile::History { timeline } => validate_history(timeline, data),
        WalFile::BackupHistory { .. } => validate_backup_history(&file, data, cfg.wal_segment_size),
    }
    .map_err(refused)?;
    Ok(file)
}

/// Archive one WAL file. Returns only once the object is durable; never overwrites.
pub(crate) async fn archive_push(repo: &Repository, path: &Path, level: i32) -> Result<PushOutcome> {
    let name = file_name(path)?;
    let data = map_file(path)?;
    let file = validate_wal_file(repo, &name, &data)?;
    store_wal(repo, &name, file, &data, level).await
}

/// Map a WAL file read-only: no copy into our memory, no page zeroing — a third of
/// archive-push's time when it was read(). PostgreSQL does not change a segment while
/// archive_command runs on it.
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).ctx(|| format!("cannot read {}", path.display()))?;
    // SAFETY: the mapping is read-only and the file is not modified while mapped (above).
    // populate: map every page in one call instead of faulting 4 KiB at a time.
    unsafe { memmap2::MmapOptions::new().populate().map(&f) }.ctx(|| format!("cannot read {}", path.display()))
}

pub(crate) async fn store_wal(
    repo: &Repository,
    name: &str,
    file: WalFile,
    data: &[u8],
    level: i32,
) -> Result<PushOutcome> {
    let started = std::time::Instant::now();
    let outcome = repo.put_wal(file.timeline(), name, data, level).await?;
    if outcome == PushOutcome::AlreadyArchived {
        tracing::warn!("{name} is already archived with identical content; nothing to do");
    } else {
        let ms = started.elapsed().as_millis();
        tracing::info!("archived {name} ({} bytes) to stanza {} in {ms} ms", data.len(), repo.config().stanza);
    }
    Ok(outcome)
}

/// Where archive-get keeps segments fetched ahead, and how many.
#[derive(Debug, Clone)]
pub(crate) struct Prefetch {
    pub spool: PathBuf,
    pub segments: usize,
}

/// How archive-get fetches: prefetching, and how long it rides out a storage outage.
#[derive(Debug, Clone)]
pub(crate) struct GetOptions {
    pub prefetch: Option<Prefetch>,
    /// `archive-get-timeout`: retry transient storage errors this long, then fail.
    pub timeout: Duration,
}

/// Most time between two tries of a transient failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Fetch `name` into `dest` (temp + fsync + rename, so `dest` is never partial).
///
/// The restore_command contract (docs/config.md): `Ok(true)` delivered, `Ok(false)`
/// not in the archive (recovery may end there), `Err` anything else — a damaged
/// object, storage still failing after `timeout` — which the caller must turn into
/// an exit status that stops recovery. Only the requested file decides the outcome:
/// prefetching the following segments into the spool is best effort, logged.
pub(crate) async fn archive_get(repo: &Repository, name: &str, dest: &Path, opts: &GetOptions) -> Result<bool> {
    let Some(file) = WalFile::parse(name) else { return Ok(false) };
    let prefetch = opts.prefetch.as_ref().filter(|_| matches!(file, WalFile::Segment { .. }));
    if let Some(p) = prefetch {
        if serve_spooled(repo, p, name, dest)? {
            return Ok(true);
        }
    }
    let deadline = Instant::now() + opts.timeout;
    let requested = retry_transient(deadline, opts.timeout, name, || fetch(repo, name));
    let (data, ()) = match prefetch {
        Some(p) => tokio::join!(requested, prefetch_following(repo, p, file)),
        None => (requested.await, ()),
    };
    let Some(data) = data? else {
        if let Some(p) = prefetch {
            // The archive ends here: recovery is over (or waits as a standby); what
            // was fetched ahead is of no use and is fetched again if ever needed.
            let _ = std::fs::remove_dir_all(&p.spool);
        }
        return Ok(false);
    };
    tokio::task::block_in_place(|| fsutil::write_file(dest, &data, Commit::Replace))
        .ctx(|| format!("cannot write {}", dest.display()))?;
    Ok(true)
}

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

/// The spooled copy of `name` (file `<name>.<content id>`), verified against its
/// content id and its header before it is handed to PostgreSQL. A copy that fails
/// is removed and the segment fetched again from the repository.
fn serve_spooled(repo: &Repository, p: &Prefetch, name: &str, dest: &Path) -> Result<bool> {
    let Some((path, id)) = spooled(&p.spool, name) else { return Ok(false) };
    let verified = std::fs::read(&path)
        .ok()
        .filter(|data| hex::encode(repo.wal_content_id(data).0) == id && validate_wal_file(repo, name, data).is_ok());
    if verified.is_none() {
        tracing::warn!("prefetched {} does not match the archive; fetching {name} again", path.display());
        let _ = std::fs::remove_file(&path);
        return Ok(false);
    }
    // A rename fails across filesystems; then the segment is fetched again.
    if std::fs::rename(&path, dest).is_err() {
        return Ok(false);
    }
    fsutil::sync_parent_dir(dest).ctx(|| format!("cannot fsync {}", dest.display()))?;
    Ok(true)
}

/// The spool entry for `name`, with the hex content id its file name carries.
fn spooled(spool: &Path, name: &str) -> Option<(PathBuf, String)> {
    let prefix = format!("{name}.");
    std::fs::read_dir(spool).ok()?.flatten().find_map(|e| {
        let file = e.file_name().to_string_lossy().into_owned();
        let id = file.strip_prefix(&prefix)?.to_string();
        (id.len() == 64).then(|| (e.path(), id))
    })
}

/// Fetch the segments after `file` that are not spooled yet, a few at a time, into
/// the spool. Failures are logged and left for the request that needs the segment.
async fn prefetch_following(repo: &Repository, p: &Prefetch, file: WalFile) {
    let (WalFile::Segment { timeline, .. }, Some(segno)) = (file, file.segno(repo.config().wal_segment_size)) else {
        return;
    };
    let seg_size = repo.config().wal_segment_size;
    let tmp = p.spool.join(".tmp");
    prune_spool(&p.spool, &segment_name(timeline, segno, seg_size));
    let names: Vec<String> = (1..=p.segments as u64)
        .map(|i| segment_name(timeline, segno + i, seg_size))
        .filter(|n| spooled(&p.spool, n).is_none())
        .collect();
    let mut fetches = futures::stream::iter(names.iter().map(|n| fetch(repo, n))).buffered(PARALLEL_PREFETCH);
    for n in &names {
        match fetches.next().await {
            Some(Ok(Some(data))) => {
                let id = hex::encode(repo.wal_content_id(&data).0);
                let dest = p.spool.join(format!("{n}.{id}"));
                let write = tokio::task::block_in_place(|| fsutil::write_file_via(&tmp, &dest, &data, Commit::Replace));
                if let Err(e) = write {
                    tracing::warn!("cannot prefetch {n} into {}: {e}", p.spool.display());
                }
            }
            Some(Ok(None)) | None => break, // the archive ends here
            Some(Err(e)) => tracing::warn!("prefetch of {n} failed (it is fetched again when needed): {e}"),
        }
    }
}

const PARALLEL_PREFETCH: usize = 8;

async fn fetch(repo: &Repository, name: &str) -> Result<Option<Vec<u8>>> {
    match WalFile::parse(name) {
        Some(file) => repo.get_wal(file.timeline(), name).await,
        None => Ok(None),
    }
}

/// Drop spooled segments that sort before `current`: recovery has moved past them.
fn prune_spool(spool: &Path, current: &str) {
    if let Ok(entries) = std::fs::read_dir(spool) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let segment = n.get(..24).filter(|s| WalFile::parse(s).is_some());
            if segment.is_some_and(|s| s < current) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// archive-get's prefetch: into `spool-path`/<stanza>/in, or, when run by PostgreSQL
/// (whose restore_command runs in the data directory), pg_wal/pgcairn-prefetch. As
/// many segments as fit in `queue_max` bytes (`archive-get-queue-max`).
pub(crate) fn prefetch_settings(
    spool_path: Option<&Path>,
    stanza: &str,
    queue_max: u64,
    seg_size: u32,
) -> Option<Prefetch> {
    let segments = (queue_max / seg_size as u64) as usize;
    let spool = prefetch_spool(spool_path, stanza)?;
    (segments > 0).then_some(Prefetch { spool, segments })
}

fn prefetch_spool(spool_path: Option<&Path>, stanza: &str) -> Option<PathBuf> {
    match spool_path {
        Some(p) => Some(p.join(stanza).join("in")),
        None if Path::new("PG_VERSION").is_file() && Path::new("pg_wal").is_dir() => {
            Some(PathBuf::from("pg_wal/pgcairn-prefetch"))
        }
        None => None,
    }
}

/// How to reach and unlock a stanza's repository, for operations that open it
/// themselves (archive-get riding out an outage, the async drainer). The caller
/// resolves it from its settings.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    /// Where the repository lives (`repo`).
    pub location: RepoLocation,
    /// The stanza, below the repository's root.
    pub stanza: String,
    /// S3 overrides, used when `location` is in S3.
    pub s3: S3Settings,
    /// How to obtain the stanza's master key.
    pub unlock: Unlock,
}

/// How to unlock a stanza: a key file, or a passphrase.
#[derive(Debug, Clone)]
pub enum Unlock {
    /// A key file from `pgcairn key-file`: no key derivation (the per-segment hot path).
    KeyFile(PathBuf),
    /// The passphrase; None for an unencrypted stanza.
    Passphrase(Option<Secret>),
}

impl RepoAccess {
    /// The stanza's storage (with retries), without opening the repository.
    pub fn storage(&self) -> Result<DynStorage> {
        self.location.open(&self.stanza, &self.s3)
    }

    /// Opens the stanza, unlocking it as `unlock` says.
    pub async fn open(&self) -> Result<Repository> {
        let storage = self.storage()?;
        let opened = match &self.unlock {
            Unlock::KeyFile(path) => Repository::open_with_key_file(storage, &self.stanza, path).await,
            Unlock::Passphrase(p) => Repository::open(storage, &self.stanza, p.as_ref()).await,
        };
        match opened {
            // A mistyped stanza: name the ones that exist (a failed listing keeps the error as it is).
            Err(Error::RepoNotInitialised { location, stanza, .. }) => {
                let existing = self.location.list_stanzas(&self.s3).await.unwrap_or_default();
                Err(Error::RepoNotInitialised { location, stanza, existing })
            }
            other => other,
        }
    }
}

/// `pgcairn archive-get` as restore_command runs it.
#[derive(Debug, Clone)]
pub struct GetRequest {
    /// The stanza to fetch from.
    pub repo: RepoAccess,
    /// `archive-get-timeout`: how long to ride out a repository that cannot be reached.
    pub timeout: Duration,
    /// `spool-path`: where prefetched segments go (see [`prefetch_settings`]).
    pub spool_path: Option<PathBuf>,
    /// `archive-get-queue-max`: bytes of WAL to fetch ahead; 0 turns prefetch off.
    pub queue_max: u64,
}

/// Open the repository (riding out a storage outage up to the timeout) and fetch;
/// the result as [`archive_get`]'s.
pub async fn run_archive_get(req: &GetRequest, name: &str, dest: &Path) -> Result<bool> {
    let deadline = Instant::now() + req.timeout;
    let repo = retry_transient(deadline, req.timeout, "opening the repository", || req.repo.open()).await?;
    let seg_size = repo.config().wal_segment_size;
    let prefetch = prefetch_settings(req.spool_path.as_deref(), &req.repo.stanza, req.queue_max, seg_size);
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    archive_get(&repo, name, dest, &GetOptions { prefetch, timeout: remaining }).await
}

/// A backup starts a new history: segments prefetched for an earlier recovery on
/// this host (spool-path/<stanza>/in) are of no further use.
pub fn clear_prefetch_spool(spool_path: &Path, stanza: &str) {
    let _ = std::fs::remove_dir_all(spool_path.join(stanza).join("in"));
}

/// Wait until segments `from..=to` of `timeline` are archived.
pub(crate) async fn wait_for_segments(
    repo: &Repository,
    timeline: u32,
    from: u64,
    to: u64,
    timeout: Duration,
) -> Result<()> {
    let seg_size = repo.config().wal_segment_size;
    let deadline = Instant::now() + timeout;
    let started = Instant::now();
    tracing::info!(
        "waiting up to {}s for WAL {}..{} in the repository",
        timeout.as_secs(),
        segment_name(timeline, from, seg_size),
        segment_name(timeline, to, seg_size)
    );
    for segno in from..=to {
        let name = segment_name(timeline, segno, seg_size);
        while !repo.wal_exists(timeline, &name).await? {
            if Instant::now() >= deadline {
                let (what, stanza) = (format!("wal segment {name}"), repo.config().stanza.clone());
                return Err(Error::ArchiveTimeout { what, stanza, seconds: timeout.as_secs() });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tracing::info!("the WAL reached the repository after {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What the archive holds for one timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TimelineArchive {
    pub timeline: u32,
    pub first: Option<String>,
    pub last: Option<String>,
    pub segments: u64,
    /// Missing ranges between first and last that point-in-time recovery from the
    /// newest restorable backup would have to cross, as "FIRST-LAST" segment names.
    pub gaps: Vec<String>,
    /// Missing ranges wholly before the newest restorable backup: old point-in-time
    /// windows thinned by `retention-archive` (or lost); nothing that restores needs
    /// them, so they are reported, not counted as damage.
    pub earlier_gaps: Vec<String>,
    pub history: bool,
    /// When the newest object of this timeline reached the repository (unix
    /// seconds, the store's clock); None where the store does not say.
    pub last_arrived: Option<u64>,
}

/// The archive's segments by timeline (segment numbers), and the timelines that
/// have a history file.
#[derive(Debug, Default)]
pub(crate) struct ArchivedSegments {
    segments: BTreeMap<u32, std::collections::BTreeSet<u64>>,
    history: std::collections::BTreeSet<u32>,
    /// Newest write time per timeline (unix seconds).
    arrived: BTreeMap<u32, u64>,
}

/// List the WAL archive once.
pub(crate) async fn archived_segments(repo: &Repository) -> Result<ArchivedSegments> {
    let seg_size = repo.config().wal_segment_size;
    let mut out = ArchivedSegments::default();
    for (name, modified) in repo.list_wal_modified().await? {
        let timeline = match WalFile::parse(&name) {
            Some(f @ WalFile::Segment { timeline, .. }) => {
                out.segments.entry(timeline).or_default().extend(f.segno(seg_size));
                timeline
            }
            Some(WalFile::History { timeline }) => {
                out.history.insert(timeline);
                timeline
            }
            _ => continue,
        };
        if let Some(m) = modified {
            let newest = out.arrived.entry(timeline).or_default();
            *newest = (*newest).max(m);
        }
    }
    Ok(out)
}

/// The first segment a backup needs to become consistent that the archive lacks,
/// as a sentence; None when it carries its WAL or the archive has it all.
pub(crate) fn missing_wal(
    m: &crate::repo::format::Summary,
    archived: &ArchivedSegments,
    seg_size: u32,
) -> Option<String> {
    if m.wal_included {
        return None;
    }
    let parse = |n: &Option<String>| n.as_deref().and_then(WalFile::parse);
    let (Some(start), Some(stop)) = (parse(&m.wal_start), parse(&m.wal_stop)) else {
        return Some("its manifest names no WAL range".into());
    };
    let (from, to) = (start.segno(seg_size)?, stop.segno(seg_size)?);
    let timeline = start.timeline();
    let have = archived.segments.get(&timeline);
    let first_missing = (from..=to).find(|n| !have.is_some_and(|s| s.contains(n)))?;
    Some(format!(
        "WAL segment {} is not in the archive (the backup needs {} to {} to become consistent)",
        segment_name(timeline, first_missing, seg_size),
        m.wal_start.as_deref().unwrap_or("?"),
        m.wal_stop.as_deref().unwrap_or("?")
    ))
}

/// The archive per timeline. A gap that ends before `earlier_than` (the start of the
/// newest restorable backup: its timeline and LSN) goes to `earlier_gaps`: it breaks
/// only old point-in-time windows (issue 21, item 2).
pub(crate) fn archive_summary(
    archived: &ArchivedSegments,
    seg_size: u32,
    earlier_than: Option<(u32, crate::pg::Lsn)>,
) -> Vec<TimelineArchive> {
    let timelines: std::collections::BTreeSet<u32> =
        archived.segments.keys().chain(archived.history.iter()).copied().collect();
    timelines
        .into_iter()
        .map(|timeline| {
            let segs: Vec<u64> =
                archived.segments.get(&timeline).map(|s| s.iter().copied().collect()).unwrap_or_default();
            let earlier =
                |last: u64| earlier_than.is_some_and(|(tli, lsn)| timeline <= tli && last < segno_of(lsn.0, seg_size));
            let name = |w: &[u64]| {
                format!("{}-{}", segment_name(timeline, w[0] + 1, seg_size), segment_name(timeline, w[1] - 1, seg_size))
            };
            let (earlier_gaps, gaps): (Vec<&[u64]>, Vec<&[u64]>) =
                segs.windows(2).filter(|w| w[1] > w[0] + 1).partition(|w| earlier(w[1] - 1));
            TimelineArchive {
                timeline,
                first: segs.first().map(|s| segment_name(timeline, *s, seg_size)),
                last: segs.last().map(|s| segment_name(timeline, *s, seg_size)),
                segments: segs.len() as u64,
                gaps: gaps.into_iter().map(name).collect(),
                earlier_gaps: earlier_gaps.into_iter().map(name).collect(),
                history: archived.history.contains(&timeline),
                last_arrived: archived.arrived.get(&timeline).copied(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::StorageErrorKind;
    use crate::repo::format::WAL_PREFIX;
    use crate::repo::tests::test_repo;
    use crate::repo::wal::wal_key;
    use crate::storage::fault::FaultStorage;

    fn segment(repo: &Repository, segno: u64, fill: u8) -> Vec<u8> {
        let cfg = repo.config();
        let magic = version::constants(version::major_of(cfg.pg_version)).unwrap().wal_page_magic;
        let mut d = vec![fill; cfg.wal_segment_size as usize];
        d[0..2].copy_from_slice(&magic.to_le_bytes());
        d[2..4].copy_from_slice(&2u16.to_le_bytes());
        d[8..16].copy_from_slice(&(segno * cfg.wal_segment_size as u64).to_le_bytes());
        d[24..32].copy_from_slice(&cfg.system_identifier.to_le_bytes());
        d[32..36].copy_from_slice(&cfg.wal_segment_size.to_le_bytes());
        d[36..40].copy_from_slice(&8192u32.to_le_bytes());
        d
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn push_get_duplicate_mismatch_and_summary() {
        let (_s, repo) = test_repo(true).await;
        let dir = tempfile::tempdir().unwrap();
        for segno in [1u64, 2, 5] {
            let name = segment_name(1, segno, repo.config().wal_segment_size);
            let p = dir.path().join(&name);
            std::fs::write(&p, segment(&repo, segno, segno as u8)).unwrap();
            assert_eq!(archive_push(&repo, &p, 1).await.unwrap(), PushOutcome::Stored);
        }
        let name = segment_name(1, 1, repo.config().wal_segment_size);
        let p = dir.path().join(&name);
        assert_eq!(archive_push(&repo, &p, 1).await.unwrap(), PushOutcome::AlreadyArchived);
        std::fs::write(&p, segment(&repo, 1, 0xEE)).unwrap();
        assert!(matches!(archive_push(&repo, &p, 1).await, Err(Error::WalMismatch { .. })));

        let out = dir.path().join("RECOVERYXLOG");
        assert!(archive_get(&repo, &name, &out, &no_prefetch()).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 1, 1), "original content kept");
        assert!(!archive_get(&repo, "000000010000000000000009", &out, &no_prefetch()).await.unwrap());

        let spool = GetOptions {
            prefetch: Some(Prefetch { spool: dir.path().join("spool"), segments: 3 }),
            timeout: Duration::from_secs(5),
        };
        let spool_dir = dir.path().join("spool");
        assert!(archive_get(&repo, &name, &out, &spool).await.unwrap());
        let second = segment_name(1, 2, repo.config().wal_segment_size);
        assert!(spooled(&spool_dir, &second).is_some(), "next segment prefetched");
        assert!(archive_get(&repo, &second, &out, &spool).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 2, 2));
        assert!(spooled(&spool_dir, &second).is_none(), "served from the spool");
        // The end of the archive ends recovery: the spool goes.
        assert!(!archive_get(&repo, &segment_name(1, 3, repo.config().wal_segment_size), &out, &spool).await.unwrap());
        assert!(!spool_dir.exists(), "prefetch spool removed when the archive ends");

        let summary = archive_summary(&archived_segments(&repo).await.unwrap(), repo.config().wal_segment_size, None);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].segments, 3);
        assert_eq!(summary[0].gaps, vec!["000000010000000000000003-000000010000000000000004".to_string()]);
    }

    fn no_prefetch() -> GetOptions {
        GetOptions { prefetch: None, timeout: Duration::from_secs(2) }
    }

    /// A repository over a fault-injecting store holding segments 1..=4.
    async fn faulty_archive(dir: &Path) -> (Arc<FaultStorage>, Repository) {
        let (mem, repo) = test_repo(true).await;
        for segno in 1..=4u64 {
            let p = dir.join(segment_name(1, segno, repo.config().wal_segment_size));
            std::fs::write(&p, segment(&repo, segno, segno as u8)).unwrap();
            archive_push(&repo, &p, 1).await.unwrap();
        }
        let fault = Arc::new(FaultStorage::new(mem));
        let repo = Repository::open(fault.clone(), "main", Some(&crate::crypto::Secret::new("pw"))).await.unwrap();
        (fault, repo)
    }

    /// Regression (issue 10, defect 2): with a later segment corrupt in the
    /// repository, fetching an earlier intact one failed because its prefetch failed,
    /// and any failure below 126 let PostgreSQL end recovery early. Now only the
    /// requested segment decides, and damage is an error (stop), never "absent".
    #[tokio::test(flavor = "multi_thread")]
    async fn only_the_requested_segment_decides() {
        let dir = tempfile::tempdir().unwrap();
        let (fault, repo) = faulty_archive(dir.path()).await;
        let seg = |n| segment_name(1, n, repo.config().wal_segment_size);
        fault.inject(crate::storage::fault::Fault::CorruptReads { prefix: wal_key(1, &seg(3)) });
        let opts = GetOptions {
            prefetch: Some(Prefetch { spool: dir.path().join("spool"), segments: 4 }),
            timeout: Duration::from_secs(2),
        };
        let out = dir.path().join("RECOVERYXLOG");
        assert!(archive_get(&repo, &seg(1), &out, &opts).await.unwrap(), "segment 1 is intact");
        assert!(archive_get(&repo, &seg(2), &out, &opts).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 2, 2));
        let err = archive_get(&repo, &seg(3), &out, &opts).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&seg(3)), "names the segment: {err}");
        // A spooled copy that was altered on disk is not served: fetched again.
        fault.heal_reads();
        assert!(archive_get(&repo, &seg(1), &out, &opts).await.unwrap());
        let (path, _) = spooled(&dir.path().join("spool"), &seg(2)).expect("segment 2 prefetched");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(archive_get(&repo, &seg(2), &out, &opts).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 2, 2), "the archive's copy, not the altered one");
    }

    /// A storage outage is retried up to the timeout, then an error (stop recovery),
    /// never "not in the archive".
    #[tokio::test(flavor = "multi_thread")]
    async fn outage_is_retried_then_fails_without_claiming_absence() {
        let dir = tempfile::tempdir().unwrap();
        let (fault, repo) = faulty_archive(dir.path()).await;
        let seg1 = segment_name(1, 1, repo.config().wal_segment_size);
        fault.inject(crate::storage::fault::Fault::FailReads {
            prefix: WAL_PREFIX.into(),
            kind: StorageErrorKind::Transient,
        });
        let out = dir.path().join("RECOVERYXLOG");
        let started = Instant::now();
        let err = archive_get(&repo, &seg1, &out, &no_prefetch()).await.unwrap_err();
        assert!(matches!(err, Error::StorageUnavailable { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(1500), "retried for the timeout");
        assert!(!out.exists());
        // The store comes back within the timeout: delivered.
        let healer = fault.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            healer.heal_reads();
        });
        assert!(archive_get(&repo, &seg1, &out, &no_prefetch()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn foreign_wal_is_refused_and_nothing_written() {
        let (s, repo) = test_repo(false).await;
        let dir = tempfile::tempdir().unwrap();
        let name = segment_name(1, 7, repo.config().wal_segment_size);
        let mut data = segment(&repo, 7, 0);
        data[24..32].copy_from_slice(&999u64.to_le_bytes());
        let p = dir.path().join(&name);
        std::fs::write(&p, data).unwrap();
        let err = archive_push(&repo, &p, 1).await.unwrap_err();
        assert!(err.to_string().contains("another cluster"), "{err}");
        assert!(crate::storage::Storage::list(&*s, WAL_PREFIX).await.unwrap().is_empty());
        let p = dir.path().join("notwal");
        std::fs::write(&p, b"x").unwrap();
        assert!(matches!(archive_push(&repo, &p, 1).await, Err(Error::WalRefused { .. })));
    }
}
