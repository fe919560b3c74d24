//! The WAL archive as one catalog, listed once per command: each timeline's
//! archived segment numbers, the timelines with a history file, when each timeline
//! last received a file, and every file with its size. info, check, restore,
//! verify and expire all read the archive through it; [`ArchiveOnce`] lists it when
//! a command first needs it, and never twice.

use std::collections::{BTreeMap, BTreeSet};

use super::format::WAL_PREFIX;
use super::Repository;
use crate::error::Result;
use crate::pg::wal::WalFile;

/// What one listing of the archive found.
#[derive(Debug, Default, Clone)]
pub(crate) struct WalArchive {
    pub seg_size: u32,
    /// Timeline → its archived segment numbers (`.partial` files aside).
    pub segments: BTreeMap<u32, BTreeSet<u64>>,
    /// Timelines with a history file.
    pub history: BTreeSet<u32>,
    /// Timeline → the newest streamed object (§6.4): its segment and bytes received.
    pub streamed: BTreeMap<u32, (u64, u32)>,
    /// Timeline → the newest write time of its files (unix seconds, the store's clock).
    pub arrived: BTreeMap<u32, u64>,
    /// Every archived file: name and stored size.
    pub files: Vec<(String, u64)>,
}

impl WalArchive {
    /// List the archive (one listing of its prefix).
    pub(crate) async fn list(repo: &Repository) -> Result<WalArchive> {
        let seg_size = repo.config().wal_segment_size;
        let mut out = WalArchive { seg_size, ..WalArchive::default() };
        for o in repo.storage().list(WAL_PREFIX).await? {
            let Some(name) = o.key.rsplit('/').next().map(str::to_string) else { continue };
            let timeline = match WalFile::parse(&name) {
                Some(f @ WalFile::Segment { timeline, .. }) => {
                    out.segments.entry(timeline).or_default().extend(f.segno(seg_size));
                    Some(timeline)
                }
                Some(f @ WalFile::Streamed { timeline, upto, .. }) => {
                    let at = (f.segno(seg_size).unwrap_or_default(), upto);
                    let newest = out.streamed.entry(timeline).or_default();
                    *newest = (*newest).max(at);
                    Some(timeline)
                }
                Some(WalFile::History { timeline }) => {
                    out.history.insert(timeline);
                    Some(timeline)
                }
                _ => None,
            };
            if let (Some(timeline), Some(m)) = (timeline, o.modified) {
                let newest = out.arrived.entry(timeline).or_default();
                *newest = (*newest).max(m);
            }
            out.files.push((name, o.size));
        }
        Ok(out)
    }

    /// Whether segment `segno` of `timeline` is archived.
    pub(crate) fn has(&self, timeline: u32, segno: u64) -> bool {
        self.segments.get(&timeline).is_some_and(|s| s.contains(&segno))
    }

    /// Every archived file's name.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|(n, _)| n.as_str())
    }
}

/// The archive listed at most once per command, when first needed.
#[derive(Default)]
pub(crate) struct ArchiveOnce(tokio::sync::OnceCell<WalArchive>);

impl ArchiveOnce {
    pub(crate) async fn get(&self, repo: &Repository) -> Result<&WalArchive> {
        self.0.get_or_try_init(|| WalArchive::list(repo)).await
    }
}
