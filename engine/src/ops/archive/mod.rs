//! WAL archive: archive-push (one file, durable before success; async in
//! [`push_async`]), archive-get ([`get`], served by the background [`fetcher`]),
//! waiting for segments, and the archive summary.

pub(crate) mod fetcher;
pub(crate) mod get;
pub(crate) mod push_async;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, IoContext, Misconfig, Result};
use crate::pg::version;
use crate::pg::wal::{segment_name, segno_of, validate_backup_history, validate_history, validate_segment, WalFile};
pub(crate) use crate::repo::wal::PushOutcome;
use crate::repo::wal_archive::WalArchive;
use crate::repo::Repository;

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
        WalFile::Segment { .. } | WalFile::Partial { .. } | WalFile::Streamed { .. } => {
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
    if let Some(WalFile::Streamed { .. }) = WalFile::parse(&name) {
        let reason = "it is wal-receive's own name for a segment being streamed, never a file PostgreSQL archives";
        return Err(Error::WalRefused { name, reason: reason.into() });
    }
    let data = map_file(path)?;
    let file = validate_wal_file(repo, &name, &data)?;
    store_wal(repo, &name, file, &data, level).await
}

/// Map a WAL file read-only: no copy into our memory, no page zeroing — a third of
/// archive-push's time when it was read(). PostgreSQL does not change a segment while
/// archive_command runs on it.
pub(super) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
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
    /// Where wal-receive's newest streamed object of this timeline ends (an LSN),
    /// when it is past the last archived segment: recovery reads up to there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed_to: Option<crate::pg::Lsn>,
}

/// The first segment a backup needs to become consistent that the archive lacks,
/// as a sentence; None when it carries its WAL or the archive has it all.
pub(crate) fn missing_wal(m: &crate::repo::format::Summary, archived: &WalArchive, seg_size: u32) -> Option<String> {
    if m.wal_included {
        return None;
    }
    let parse = |n: &Option<String>| n.as_deref().and_then(WalFile::parse);
    let (Some(start), Some(stop)) = (parse(&m.wal_start), parse(&m.wal_stop)) else {
        return Some("its manifest names no WAL range".into());
    };
    let (from, to) = (start.segno(seg_size)?, stop.segno(seg_size)?);
    let timeline = start.timeline();
    let first_missing = (from..=to).find(|n| !archived.has(timeline, *n))?;
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
    archived: &WalArchive,
    seg_size: u32,
    earlier_than: Option<(u32, crate::pg::Lsn)>,
) -> Vec<TimelineArchive> {
    let timelines: std::collections::BTreeSet<u32> =
        archived.segments.keys().chain(archived.history.iter()).chain(archived.streamed.keys()).copied().collect();
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
                streamed_to: archived
                    .streamed
                    .get(&timeline)
                    .filter(|(segno, _)| segs.last().is_none_or(|last| segno > last))
                    .map(|(segno, upto)| crate::pg::Lsn(segno * seg_size as u64 + *upto as u64)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::get::archive_get;
    use super::*;
    use crate::error::StorageErrorKind;
    use crate::repo::format::WAL_PREFIX;
    use crate::repo::tests::test_repo;
    use crate::storage::fault::FaultStorage;

    pub(super) fn segment(repo: &Repository, segno: u64, fill: u8) -> Vec<u8> {
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

    /// Streamed objects (wal-receive): archive-get serves the newest past the archive's
    /// end, not one whose timeline another branched off, and never in place of the
    /// archived segment; archive-push refuses the name; the summary says where it ends.
    #[tokio::test(flavor = "multi_thread")]
    async fn streamed_segments_end_the_archive_unless_abandoned() {
        let (_s, repo) = test_repo(true).await;
        let seg_size = repo.config().wal_segment_size;
        let (dir, timeout) = (tempfile::tempdir().unwrap(), Duration::from_secs(2));
        let out = dir.path().join("RECOVERYXLOG");
        let name = segment_name(1, 4, seg_size);
        for (upto, fill) in [(0x2000usize, 7u8), (0x6000, 8)] {
            let streamed = crate::pg::wal::streamed_name(1, 4, upto as u32, seg_size);
            repo.put_wal(1, &streamed, &segment(&repo, 4, fill)[..upto], 1).await.unwrap();
        }
        assert!(archive_get(&repo, &name, &out, timeout).await.unwrap());
        let mut newest = segment(&repo, 4, 8);
        newest[0x6000..].fill(0);
        assert_eq!(std::fs::read(&out).unwrap(), newest, "the newest streamed part, zeros after it");
        let listed = WalArchive::list(&repo).await.unwrap();
        let streamed = listed.names().filter(|n| n.ends_with(".stream")).collect::<Vec<_>>();
        for n in streamed {
            let data = repo.get_wal(1, n).await.unwrap().unwrap();
            validate_wal_file(&repo, n, &data).unwrap();
            assert!(validate_wal_file(&repo, n, &segment(&repo, 4, 1)).is_err(), "a length its name does not say");
        }
        let summary = archive_summary(&WalArchive::list(&repo).await.unwrap(), seg_size, None);
        assert_eq!(summary[0].streamed_to, Some(crate::pg::Lsn(4 * seg_size as u64 + 0x6000)));

        let p = dir.path().join(crate::pg::wal::streamed_name(1, 4, 0x8000, seg_size));
        std::fs::write(&p, segment(&repo, 4, 9)).unwrap();
        assert!(matches!(archive_push(&repo, &p, 1).await, Err(Error::WalRefused { .. })));

        let archived = dir.path().join(&name);
        std::fs::write(&archived, segment(&repo, 4, 1)).unwrap();
        archive_push(&repo, &archived, 1).await.unwrap();
        assert!(archive_get(&repo, &name, &out, timeout).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 4, 1), "the archived segment wins");

        let five = segment_name(1, 5, seg_size);
        let five_streamed = crate::pg::wal::streamed_name(1, 5, 0x100, seg_size);
        repo.put_wal(1, &five_streamed, &segment(&repo, 5, 3)[..0x100], 1).await.unwrap();
        repo.put_wal(2, "00000002.history", b"1\t0/5000100\tno recovery target specified\n", 1).await.unwrap();
        assert!(!archive_get(&repo, &five, &out, timeout).await.unwrap(), "timeline 1 was abandoned");
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
        let timeout = Duration::from_secs(2);
        assert!(archive_get(&repo, &name, &out, timeout).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 1, 1), "original content kept");
        assert!(!archive_get(&repo, "000000010000000000000009", &out, timeout).await.unwrap());

        let summary = archive_summary(&WalArchive::list(&repo).await.unwrap(), repo.config().wal_segment_size, None);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].segments, 3);
        assert_eq!(summary[0].gaps, vec!["000000010000000000000003-000000010000000000000004".to_string()]);
    }

    /// A repository over a fault-injecting store holding segments 1..=4.
    pub(super) async fn faulty_archive(dir: &Path) -> (Arc<FaultStorage>, Repository) {
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
        let err = archive_get(&repo, &seg1, &out, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, Error::StorageUnavailable { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(1500), "retried for the timeout");
        assert!(!out.exists());
        // The store comes back within the timeout: delivered.
        let healer = fault.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            healer.heal_reads();
        });
        assert!(archive_get(&repo, &seg1, &out, Duration::from_secs(2)).await.unwrap());
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
