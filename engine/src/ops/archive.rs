//! WAL archive: archive-push (one file, durable before success), archive-get (with
//! prefetch into a spool directory), waiting for segments, and the archive summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::fsutil::{self, Commit};
use crate::pg::version;
use crate::pg::wal::{segment_name, validate_segment, WalFile};
use crate::repo::format::WAL_PREFIX;
use crate::repo::wal::{object_content_id, wal_key, WAL_HEADER_LEN};
use crate::repo::Repository;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// The same content was already archived (PostgreSQL retried after a crash).
    AlreadyArchived,
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Config(format!("{} is not a file path: archive_command passes %p", path.display())))
}

/// Check a WAL file belongs to this stanza's cluster (segments and partials).
pub fn validate_wal_file(repo: &Repository, name: &str, data: &[u8]) -> Result<WalFile> {
    let refused = |reason: String| Error::WalRefused { name: name.to_string(), reason };
    let file = WalFile::parse(name)
        .ok_or_else(|| refused("the name is not a WAL segment, .partial, .history or .backup file".into()))?;
    if matches!(file, WalFile::Segment { .. } | WalFile::Partial { .. }) {
        let cfg = repo.config();
        validate_segment(&file, data, cfg.system_identifier, version::major_of(cfg.pg_version), cfg.wal_segment_size)
            .map_err(refused)?;
    }
    Ok(file)
}

/// Archive one WAL file. Returns only once the object is durable; never overwrites.
pub async fn archive_push(repo: &Repository, path: &Path, level: i32) -> Result<PushOutcome> {
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

pub async fn store_wal(repo: &Repository, name: &str, file: WalFile, data: &[u8], level: i32) -> Result<PushOutcome> {
    let key = wal_key(file.timeline(), name);
    let (id, object) = tokio::task::block_in_place(|| repo.encode_wal(&key, data, level));
    match repo.storage().put_new(&key, object).await {
        Ok(()) => Ok(PushOutcome::Stored),
        Err(e) if e.storage_kind() == Some(StorageErrorKind::AlreadyExists) => {
            let head = repo.storage().get_range(&key, 0..WAL_HEADER_LEN as u64).await?;
            if object_content_id(&head) == Some(id) {
                tracing::warn!("{name} is already archived with identical content; nothing to do");
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(Error::WalMismatch { name: name.to_string(), location: repo.location() })
            }
        }
        Err(e) => Err(e),
    }
}

/// Where archive-get keeps segments fetched ahead, and how many.
#[derive(Debug, Clone)]
pub struct Prefetch {
    pub spool: PathBuf,
    pub segments: usize,
}

/// Fetch `name` into `dest` (temp + fsync + rename, so `dest` is never partial).
/// `Ok(false)`: not in the archive (recovery then ends cleanly). With `prefetch`, the
/// following segments are fetched in parallel into the spool and later requests are
/// served from there.
pub async fn archive_get(repo: &Repository, name: &str, dest: &Path, prefetch: Option<&Prefetch>) -> Result<bool> {
    let Some(file) = WalFile::parse(name) else { return Ok(false) };
    let seg_size = repo.config().wal_segment_size;
    let mut wanted = vec![name.to_string()];
    if let (Some(p), WalFile::Segment { timeline, .. }) = (prefetch, file) {
        let spooled = p.spool.join(name);
        // A rename fails across filesystems; then the segment is fetched again below.
        if spooled.is_file() && std::fs::rename(&spooled, dest).is_ok() {
            fsutil::sync_parent_dir(dest).ctx(|| format!("cannot fsync {}", dest.display()))?;
            return Ok(true);
        }
        let segno = file.segno(seg_size).expect("segment");
        wanted.extend((1..=p.segments as u64).map(|i| segment_name(timeline, segno + i, seg_size)));
        fsutil::create_dir_all_durable(&p.spool).ctx(|| format!("cannot create spool {}", p.spool.display()))?;
        prune_spool(&p.spool, name);
    }
    let fetches = wanted.iter().map(|n| fetch(repo, n)).collect::<Vec<_>>();
    let mut results = futures::stream::iter(fetches).buffered(8);
    let mut first = true;
    while let Some(r) = results.next().await {
        let (n, data) = match r? {
            Some(x) => x,
            None if first => return Ok(false),
            None => break, // the archive ends here; nothing more to prefetch
        };
        let target = if first { dest.to_path_buf() } else { prefetch.expect("prefetching").spool.join(&n) };
        tokio::task::block_in_place(|| fsutil::write_file(&target, &data, Commit::Replace))
            .ctx(|| format!("cannot write {}", target.display()))?;
        first = false;
    }
    Ok(true)
}

async fn fetch(repo: &Repository, name: &str) -> Result<Option<(String, Vec<u8>)>> {
    let file = WalFile::parse(name).expect("valid name");
    let key = wal_key(file.timeline(), name);
    match repo.storage().get(&key).await {
        Ok(object) => Ok(Some((name.to_string(), tokio::task::block_in_place(|| repo.decode_wal(&key, &object))?))),
        Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Drop spooled segments that sort before `current`: recovery has moved past them.
fn prune_spool(spool: &Path, current: &str) {
    if let Ok(entries) = std::fs::read_dir(spool) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if WalFile::parse(&n).is_some() && n.as_str() < current {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// archive-get's prefetch: into `spool-path`/<stanza>/in, or, when run by PostgreSQL
/// (whose restore_command runs in the data directory), pg_wal/pgcairn-prefetch. As
/// many segments as fit in `archive-get-queue-max` (default 128 MiB).
pub fn prefetch_settings(s: &crate::config::Settings, seg_size: u32) -> Result<Option<Prefetch>> {
    let bytes = s.get_size("archive-get-queue-max", 128 << 20)?;
    let segments = (bytes / seg_size as u64) as usize;
    let spool = match s.get("spool-path") {
        Some(p) => Path::new(&p).join(s.stanza()).join("in"),
        None if Path::new("PG_VERSION").is_file() && Path::new("pg_wal").is_dir() => {
            PathBuf::from("pg_wal/pgcairn-prefetch")
        }
        None => return Ok(None),
    };
    Ok((segments > 0).then_some(Prefetch { spool, segments }))
}

/// Wait until segments `from..=to` of `timeline` are archived.
pub async fn wait_for_segments(repo: &Repository, timeline: u32, from: u64, to: u64, timeout: Duration) -> Result<()> {
    let seg_size = repo.config().wal_segment_size;
    let deadline = Instant::now() + timeout;
    for segno in from..=to {
        let name = segment_name(timeline, segno, seg_size);
        let key = wal_key(timeline, &name);
        loop {
            match repo.storage().get_range(&key, 0..WAL_HEADER_LEN as u64).await {
                Ok(_) => break,
                Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => {
                    if Instant::now() >= deadline {
                        return Err(Error::ArchiveTimeout {
                            what: format!("wal segment {name}"),
                            seconds: timeout.as_secs(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// What the archive holds for one timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TimelineArchive {
    pub timeline: u32,
    pub first: Option<String>,
    pub last: Option<String>,
    pub segments: u64,
    /// Missing ranges between first and last, as "FIRST-LAST" segment names.
    pub gaps: Vec<String>,
    pub history: bool,
}

pub async fn archive_summary(repo: &Repository) -> Result<Vec<TimelineArchive>> {
    let seg_size = repo.config().wal_segment_size;
    let mut by_tli: BTreeMap<u32, (Vec<u64>, bool)> = BTreeMap::new();
    for o in repo.storage().list(WAL_PREFIX).await? {
        let Some(name) = o.key.rsplit('/').next() else { continue };
        match WalFile::parse(name) {
            Some(f @ WalFile::Segment { timeline, .. }) => {
                by_tli.entry(timeline).or_default().0.push(f.segno(seg_size).unwrap())
            }
            Some(WalFile::History { timeline }) => by_tli.entry(timeline).or_default().1 = true,
            _ => {}
        }
    }
    Ok(by_tli
        .into_iter()
        .map(|(timeline, (mut segs, history))| {
            segs.sort_unstable();
            let gaps = segs
                .windows(2)
                .filter(|w| w[1] > w[0] + 1)
                .map(|w| {
                    format!(
                        "{}-{}",
                        segment_name(timeline, w[0] + 1, seg_size),
                        segment_name(timeline, w[1] - 1, seg_size)
                    )
                })
                .collect();
            TimelineArchive {
                timeline,
                first: segs.first().map(|s| segment_name(timeline, *s, seg_size)),
                last: segs.last().map(|s| segment_name(timeline, *s, seg_size)),
                segments: segs.len() as u64,
                gaps,
                history,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tests::test_repo;

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
        assert!(archive_get(&repo, &name, &out, None).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 1, 1), "original content kept");
        assert!(!archive_get(&repo, "000000010000000000000009", &out, None).await.unwrap());

        let spool = Prefetch { spool: dir.path().join("spool"), segments: 3 };
        assert!(archive_get(&repo, &name, &out, Some(&spool)).await.unwrap());
        let second = segment_name(1, 2, repo.config().wal_segment_size);
        assert!(spool.spool.join(&second).is_file(), "next segment prefetched");
        assert!(archive_get(&repo, &second, &out, Some(&spool)).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), segment(&repo, 2, 2));
        assert!(!spool.spool.join(&second).exists(), "served from the spool");

        let summary = archive_summary(&repo).await.unwrap();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].segments, 3);
        assert_eq!(summary[0].gaps, vec!["000000010000000000000003-000000010000000000000004".to_string()]);
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
