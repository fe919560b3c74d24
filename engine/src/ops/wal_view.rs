//! The WAL archive as recovery sees it: the segments of each timeline, each
//! timeline's history, the path of timelines PostgreSQL follows to a target
//! timeline, and how far the archive goes along it without a gap. Restore uses it
//! to refuse targets PostgreSQL could not reach; verify to report continuity.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::pg::recovery::TimelineTarget;
use crate::pg::wal::{parse_history, segment_name, segno_of};
use crate::pg::walrecords::{RecordEvent, RecordScanner};
use crate::pg::Lsn;
use crate::repo::format::Summary;
use crate::repo::wal_archive::WalArchive;
use crate::repo::Repository;

/// Segments fetched ahead of the one being scanned.
const SCAN_AHEAD: usize = 4;

/// One stretch of a timeline path: timeline `tli` from `begin` up to `end` (where
/// the next timeline branched off; `None` for the path's own timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stretch {
    pub tli: u32,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// What the archive holds, listed once; history files read and authenticated.
#[derive(Debug, Default)]
pub(crate) struct WalView {
    pub seg_size: u32,
    /// Timeline → its archived segment numbers (`.partial` files aside).
    pub segments: BTreeMap<u32, BTreeSet<u64>>,
    /// Timeline → its parents from its history file.
    pub histories: BTreeMap<u32, Vec<(u32, Lsn)>>,
    /// History files that are listed but could not be read: timeline → why.
    pub damaged_histories: BTreeMap<u32, String>,
    /// Every archived file's name, as listed (verify reads them from here).
    pub files: Vec<String>,
    /// Segments only wal-receive's streamed object holds (each timeline's newest,
    /// past its archived segments, unless a later timeline branched off): recovery
    /// reads them as the end of the archive, so targets inside them are reachable.
    pub streamed: BTreeSet<(u32, u64)>,
}

impl WalView {
    /// The archive as recovery sees it: `archive`'s segments, with every history
    /// file read and authenticated (a few hundred bytes each).
    pub(crate) async fn of(repo: &Repository, archive: &WalArchive) -> Result<WalView> {
        let mut view = WalView {
            seg_size: archive.seg_size,
            segments: archive.segments.clone(),
            files: archive.names().map(str::to_string).collect(),
            ..WalView::default()
        };
        let history_timelines: Vec<u32> = archive.history.iter().copied().collect();
        let reads = history_timelines.into_iter().map(|tli| async move {
            let name = format!("{tli:08X}.history");
            (tli, repo.get_wal(tli, &name).await)
        });
        let mut reads = futures::stream::iter(reads).buffer_unordered(8);
        while let Some((tli, read)) = reads.next().await {
            match read {
                Ok(Some(data)) => match parse_history(tli, &data) {
                    Ok(parents) => {
                        view.histories.insert(tli, parents);
                    }
                    Err(why) => {
                        view.damaged_histories.insert(tli, why);
                    }
                },
                Ok(None) => {} // deleted since the listing: as if never there
                Err(e @ Error::Corrupt { .. }) => {
                    view.damaged_histories.insert(tli, e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        view.add_streamed(archive);
        Ok(view)
    }

    /// Each timeline's newest streamed segment, when it is past the timeline's
    /// archived segments and no timeline branched off it (what it received after the
    /// switch is not the end of the archive).
    fn add_streamed(&mut self, archive: &WalArchive) {
        for (&tli, &(segno, _)) in &archive.streamed {
            let past = archive.segments.get(&tli).and_then(|s| s.last()).is_none_or(|last| segno > *last);
            let abandoned = archive.history.contains(&(tli + 1))
                || self.histories.values().any(|parents| parents.iter().any(|(p, _)| *p == tli));
            if past && !abandoned {
                self.segments.entry(tli).or_default().insert(segno);
                self.streamed.insert((tli, segno));
            }
        }
    }

    /// Every timeline the archive knows, by segments or history.
    pub(crate) fn timelines(&self) -> BTreeSet<u32> {
        self.segments.keys().chain(self.histories.keys()).chain(self.damaged_histories.keys()).copied().collect()
    }

    /// The stretches PostgreSQL replays to end on `tli`, oldest first; `None` when
    /// `tli` is above 1 and its history file is missing or damaged.
    pub(crate) fn path(&self, tli: u32) -> Option<Vec<Stretch>> {
        let parents = match self.histories.get(&tli) {
            Some(p) => p.as_slice(),
            None if tli == 1 => &[],
            None => return None,
        };
        let mut path = Vec::with_capacity(parents.len() + 1);
        let mut begin = Lsn(0);
        for &(parent, switch) in parents {
            path.push(Stretch { tli: parent, begin, end: Some(switch) });
            begin = switch;
        }
        path.push(Stretch { tli, begin, end: None });
        Some(path)
    }

    /// PostgreSQL's "latest": from `tli` upwards while the next timeline has a
    /// history file (findNewestTimeLine).
    pub(crate) fn latest_from(&self, tli: u32) -> u32 {
        let mut newest = tli;
        while self.histories.contains_key(&(newest + 1)) || self.damaged_histories.contains_key(&(newest + 1)) {
            newest += 1;
        }
        newest
    }

    /// The timeline whose segment file PostgreSQL reads for `segno` on `path`: the
    /// newest stretch that begins in or before it.
    pub(crate) fn timeline_at(&self, path: &[Stretch], segno: u64) -> u32 {
        path.iter().rev().find(|s| segno_of(s.begin.0, self.seg_size) <= segno).map_or(1, |s| s.tli)
    }

    /// Whether segment `segno` of `path` is archived.
    pub(crate) fn has(&self, path: &[Stretch], segno: u64) -> bool {
        let tli = self.timeline_at(path, segno);
        self.segments.get(&tli).is_some_and(|s| s.contains(&segno))
    }

    /// The last segment archived without a gap from `from` along `path`; `None`
    /// when `from` itself is missing.
    pub(crate) fn contiguous_end(&self, path: &[Stretch], from: u64) -> Option<u64> {
        if !self.has(path, from) {
            return None;
        }
        let mut last = from;
        while self.has(path, last + 1) {
            last += 1;
        }
        Some(last)
    }

    /// The target timeline for a backup and the path to it, or why PostgreSQL could
    /// not follow it from that backup.
    pub(crate) fn target_path(
        &self,
        wanted: Option<TimelineTarget>,
        b: &Summary,
    ) -> std::result::Result<(u32, Vec<Stretch>), String> {
        let tli = match wanted {
            None | Some(TimelineTarget::Latest) => self.latest_from(b.timeline),
            Some(TimelineTarget::Current) => b.timeline,
            Some(TimelineTarget::Id(n)) => n,
        };
        if tli != b.timeline && !self.timelines().contains(&tli) {
            return Err(format!("timeline {tli} is not in the archive (it has {})", list(&self.timelines())));
        }
        if let Some(why) = self.damaged_histories.get(&tli) {
            return Err(format!("the history file of timeline {tli} is damaged: {why}"));
        }
        // PostgreSQL reads only the target timeline's history, and a missing one on the
        // backup's own timeline means "no parents": replay stays on it.
        let own = || (tli == b.timeline).then(|| vec![Stretch { tli, begin: Lsn(0), end: None }]);
        let path = self
            .path(tli)
            .or_else(own)
            .ok_or_else(|| format!("the history file of timeline {tli} is not in the archive"))?;
        let on_path = path.iter().find(|s| s.tli == b.timeline);
        match on_path {
            None => Err(format!("timeline {tli} does not descend from timeline {}", b.timeline)),
            Some(Stretch { end: Some(end), .. }) if b.stop_lsn > *end => Err(format!(
                "timeline {tli} branched off timeline {} at {end}, before the backup ended ({})",
                b.timeline, b.stop_lsn
            )),
            Some(_) => Ok((tli, path)),
        }
    }

    /// The object name of segment `segno` along `path`.
    pub(crate) fn segment(&self, path: &[Stretch], segno: u64) -> (u32, String) {
        let tli = self.timeline_at(path, segno);
        (tli, segment_name(tli, segno, self.seg_size))
    }
}

/// Timelines as "1, 2, 3".
fn list(timelines: &BTreeSet<u32>) -> String {
    let names: Vec<String> = timelines.iter().map(u32::to_string).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What a scan of archived WAL found: the kept events of records that begin in the
/// scanned range, where the last complete record ended, and the segment that stopped
/// the scan early (missing or damaged): recovery could not pass it either.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    pub events: Vec<RecordEvent>,
    pub end_lsn: u64,
    pub damaged: Option<(u64, String)>,
}

/// Read segments `from..=to` along `path` in order (a few fetched ahead), decode their
/// records and keep the events `keep` wants (so memory holds matches, not every
/// commit). A segment that cannot be read or decoded ends the scan; a storage error
/// (retried already) fails it.
pub(crate) async fn scan(
    repo: &Repository,
    view: &WalView,
    path: &[Stretch],
    (from, to): (u64, u64),
    keep: impl Fn(&RecordEvent) -> bool,
) -> Result<Scanned> {
    let fetches = (from..=to).map(|segno| {
        let (tli, name) = view.segment(path, segno);
        let streamed = view.streamed.contains(&(tli, segno));
        async move {
            let data = if streamed { repo.streamed_wal(&name).await } else { repo.get_wal(tli, &name).await };
            (segno, name.clone(), data)
        }
    });
    let mut segments = futures::stream::iter(fetches).buffered(SCAN_AHEAD);
    let mut scanner = RecordScanner::new(view.seg_size);
    let mut out = Scanned::default();
    while let Some((segno, name, data)) = segments.next().await {
        let fed = match data {
            Ok(Some(data)) => tokio::task::block_in_place(|| scanner.feed(segno, &data)),
            Ok(None) => Err("it was listed in the archive but is gone".into()),
            Err(Error::Corrupt { detail, .. }) => Err(detail),
            Err(e) => return Err(e),
        };
        match fed {
            Ok(events) => out.events.extend(events.into_iter().filter(|e| keep(e))),
            Err(detail) => {
                tracing::warn!("WAL segment {name} cannot be read ({detail}): recovery cannot pass it");
                out.damaged = Some((segno, format!("WAL segment {name} is damaged ({detail})")));
                break;
            }
        }
        out.end_lsn = scanner.end_lsn();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(histories: &[(u32, &[(u32, u64)])], segments: &[(u32, &[u64])]) -> WalView {
        WalView {
            seg_size: 16 << 20,
            segments: segments.iter().map(|(t, s)| (*t, s.iter().copied().collect())).collect(),
            histories: histories.iter().map(|(t, p)| (*t, p.iter().map(|(a, l)| (*a, Lsn(*l))).collect())).collect(),
            damaged_histories: BTreeMap::new(),
            files: Vec::new(),
            streamed: BTreeSet::new(),
        }
    }

    /// A streamed segment counts for recovery only past its timeline's archived
    /// segments and when no timeline branched off it.
    #[test]
    fn streamed_segments_end_a_timeline_unless_stale_or_abandoned() {
        let mut archive = WalArchive { seg_size: 16 << 20, ..WalArchive::default() };
        archive.segments.insert(1, [3u64, 4].into_iter().collect());
        archive.segments.insert(2, [7u64].into_iter().collect());
        archive.streamed.insert(1, (5, 0x100));
        archive.streamed.insert(2, (6, 0x100)); // older than the archived 7: stale
        let mut v = view(&[], &[]);
        v.segments = archive.segments.clone();
        v.add_streamed(&archive);
        assert_eq!(v.streamed, [(1, 5)].into_iter().collect());
        assert!(v.segments[&1].contains(&5) && !v.segments[&2].contains(&6));
        // Timeline 3 branched off timeline 1: its streamed tail is not the end.
        let mut v = view(&[(3, &[(1, 0x4800000)])], &[]);
        v.segments = archive.segments.clone();
        v.add_streamed(&archive);
        assert!(v.streamed.is_empty(), "{:?}", v.streamed);
    }

    #[test]
    fn paths_follow_history_and_gaps_end_them() {
        let seg = 16u64 << 20;
        let v = view(&[(2, &[(1, 3 * seg + 100)])], &[(1, &[1, 2, 3, 4]), (2, &[3, 4, 6])]);
        let path = v.path(2).unwrap();
        assert_eq!(path.len(), 2);
        assert_eq!(v.timeline_at(&path, 2), 1);
        assert_eq!(v.timeline_at(&path, 3), 2, "the switch segment is read from the new timeline");
        assert_eq!(v.contiguous_end(&path, 1), Some(4), "segment 5 of timeline 2 is missing");
        assert_eq!(v.contiguous_end(&path, 5), None);
        assert_eq!(v.latest_from(1), 2);
        assert!(v.path(3).is_none());
        let mut b = Summary::for_tests("L", 1, Lsn(seg), Lsn(2 * seg));
        assert_eq!(v.target_path(None, &b).unwrap().0, 2);
        b.stop_lsn = Lsn(4 * seg);
        let why = v.target_path(None, &b).unwrap_err();
        assert!(why.contains("branched off timeline 1"), "{why}");
        assert_eq!(v.target_path(Some(TimelineTarget::Current), &b).unwrap().0, 1);
        // Review of issue 13: a stanza created on a long-promoted cluster (timeline 3)
        // never archives 00000003.history; PostgreSQL reads a missing history of its
        // own timeline as "no parents", so restores from it must not be refused.
        let v3 = view(&[], &[(3, &[1, 2])]);
        let mut b3 = b.clone();
        b3.timeline = 3;
        assert_eq!(v3.target_path(None, &b3).unwrap(), (3, vec![Stretch { tli: 3, begin: Lsn(0), end: None }]));
        assert!(v3.target_path(Some(TimelineTarget::Id(4)), &b3).is_err());
        let why = v.target_path(Some(TimelineTarget::Id(7)), &b).unwrap_err();
        assert!(why.contains("timeline 7 is not in the archive (it has 1, 2)"), "{why}");
    }
}
