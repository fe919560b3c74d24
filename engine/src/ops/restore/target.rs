//! Which backup a restore starts from, and whether the archive can take it to the
//! recovery target. PostgreSQL finds out only after the restore, by replaying to the
//! end of the archive and refusing to start ("recovery ended before configured
//! recovery target was reached"); here the same facts are read from the catalog
//! and the WAL archive before a byte is written.
//!
//! A backup reaches a target when the target timeline descends from it, its end
//! (consistency) is at or before the target, and the archive holds WAL without a gap
//! from the backup to a record at or after the target: for a time, a transaction
//! ending after it (PostgreSQL stops only at commit and abort records); for an xid
//! or restore point name, that record, found by scanning the archived WAL; for an
//! LSN, a record at or after it.

use crate::error::{Error, Misconfig, Result};
use crate::ops::wal_view::{scan, Stretch, WalView};
use crate::pg::recovery::{Recovery, RecoveryTarget};
use crate::pg::wal::segno_of;
use crate::pg::walrecords::RecordEvent;
use crate::repo::format::Summary;
use crate::repo::wal_archive::ArchiveOnce;
use crate::repo::Repository;

/// The backup chosen and why, for the operator.
pub(crate) struct Choice {
    pub label: String,
    pub why: String,
    /// The WAL archive, if choosing listed it (restore then does not list it again).
    pub archive: ArchiveOnce,
}

/// `--set` if it can reach the target, else the newest backup that can; refused
/// with the reason when none can.
pub(crate) async fn choose(repo: &Repository, set: Option<&str>, recovery: &Recovery) -> Result<Choice> {
    let labels = repo.list_backups().await?;
    if let Some(set) = set {
        if !labels.iter().any(|l| l == set) {
            return Ok(Choice { label: set.into(), why: "--set".into(), archive: ArchiveOnce::default() });
            // loading it names the missing backup
        }
    }
    let newest = labels.last().ok_or_else(|| Error::NoBackups { stanza: repo.config().stanza.clone() })?;
    // Without a point to reach, the newest backup (or --set) is the answer; whether
    // its own WAL is archived is checked when it is loaded (exit 8, naming the segment).
    let no_point =
        matches!(recovery.target, RecoveryTarget::None | RecoveryTarget::Immediate | RecoveryTarget::EndOfArchive);
    if no_point && recovery.timeline.is_none() {
        let label = set.unwrap_or(newest).to_string();
        let why = if set.is_some() { "--set" } else { "the newest backup" };
        return Ok(Choice { label, why: why.into(), archive: ArchiveOnce::default() });
    }
    let archive = ArchiveOnce::default();
    let view = WalView::of(repo, archive.get(repo).await?).await?;
    let mut finder = Finder { repo, view: &view, recovery, scanned: None };
    let candidates: Vec<&String> = match set {
        Some(s) => labels.iter().filter(|l| *l == s).collect(),
        None => labels.iter().rev().collect(),
    };
    let mut refusals = Vec::new();
    for label in candidates {
        let b = repo.load_summary(label).await?;
        match finder.reaches(&b).await? {
            Ok(how) => {
                let why = match (set, refusals.is_empty()) {
                    (Some(_), _) => format!("--set; {how}"),
                    (None, true) => format!("the newest backup; {how}"),
                    (None, false) => format!("the newest backup that can reach the target; {how}"),
                };
                return Ok(Choice { label: label.clone(), why, archive });
            }
            Err(why) => refusals.push((label.clone(), why)),
        }
    }
    Err(unreachable(recovery, set.is_some(), &refusals))
}

fn unreachable(recovery: &Recovery, with_set: bool, refusals: &[(String, String)]) -> Error {
    let target = recovery.target.describe();
    // Every backup ended after the target: say where the stanza's reach begins.
    if let Some((oldest, why)) =
        refusals.last().filter(|_| refusals.iter().all(|(_, w)| w.ends_with("after the target")))
    {
        let problem = format!("{target} is before backup {oldest} ended ({why}): recovery from it cannot stop there");
        let hint = if with_set {
            "choose an older backup with --set (`pgcairn info` lists them), or leave --set out to let restore choose"
                .to_string()
        } else {
            format!("the earliest point this stanza can restore to is the end of backup {oldest}")
        };
        return Error::misconfigured(Misconfig::Request, problem, hint);
    }
    let reasons: Vec<String> = refusals.iter().map(|(l, why)| format!("backup {l}: {why}")).collect();
    let problem = if with_set {
        format!("the chosen backup cannot reach {target}: {}", reasons.join("; "))
    } else {
        let shown: Vec<&String> = reasons.iter().take(3).collect();
        let more = reasons.len().saturating_sub(3);
        let more = if more > 0 { format!(" (and {more} older)") } else { String::new() };
        format!(
            "no backup can reach {target}: {}{more}",
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
        )
    };
    let hint = if with_set {
        "leave --set out to let restore choose, or pick another backup (`pgcairn info` lists them)"
    } else {
        "choose a target inside what `pgcairn info` shows as archived (after the oldest backup ended, before the last archived WAL); if the cluster is still running, `SELECT pg_switch_wal();` archives its current WAL"
    };
    Error::misconfigured(Misconfig::Request, problem, hint)
}

/// Answers "can this backup reach the target?", reusing WAL already scanned for
/// newer backups (candidates come newest first, so each scans only what is older).
struct Finder<'a> {
    repo: &'a Repository,
    view: &'a WalView,
    recovery: &'a Recovery,
    /// Target timeline, first segment scanned, and the events found from there on.
    scanned: Option<(u32, u64, Vec<RecordEvent>)>,
}

type Reach = std::result::Result<String, String>;

impl Finder<'_> {
    async fn reaches(&mut self, b: &Summary) -> Result<Reach> {
        let (tli, path) = match self.view.target_path(self.recovery.timeline, b) {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        let seg = self.view.seg_size;
        // Replay needs the archive from the backup's start, or from its end when it
        // carries its own WAL.
        let first = segno_of(if b.wal_included { b.stop_lsn.0 } else { b.start_lsn.0 }, seg);
        let Some(last) = self.view.contiguous_end(&path, first) else {
            let no_point = matches!(self.recovery.target, RecoveryTarget::Immediate | RecoveryTarget::EndOfArchive);
            if b.wal_included && no_point {
                return Ok(Ok(format!("it carries its WAL; no WAL after it is archived (timeline {tli})")));
            }
            let (_, name) = self.view.segment(&path, first);
            if b.wal_included {
                // Issue 21, item 9: the segment is the backup's last, which it carries only
                // up to its end; what follows in that segment comes from the archive.
                return Ok(Err(format!(
                    "it carries its WAL only up to its end ({}); WAL segment {name}, which holds what follows, is not in the archive (recovery past the backup's end cannot continue; --type=immediate stops at its end)",
                    b.stop_lsn
                )));
            }
            return Ok(Err(format!("WAL segment {name}, which replay from it needs first, is not in the archive")));
        };
        let (_, last_name) = self.view.segment(&path, last);
        let end = format!("archived WAL runs without a gap to {last_name} on timeline {tli}");
        match &self.recovery.target {
            RecoveryTarget::EndOfArchive | RecoveryTarget::Immediate | RecoveryTarget::None => {
                Ok(Ok(format!("replays to timeline {tli}; {end}")))
            }
            RecoveryTarget::Lsn(l) => self.reaches_lsn(b, &path, last, *l, &end).await,
            RecoveryTarget::Time(t) => self.reaches_time(b, &path, (first, last), *t, &end).await,
            RecoveryTarget::Xid(_) | RecoveryTarget::Name(_) => self.reaches_record(b, tli, &path, (first, last)).await,
        }
    }

    async fn reaches_lsn(
        &self,
        b: &Summary,
        path: &[Stretch],
        last: u64,
        l: crate::pg::Lsn,
        end: &str,
    ) -> Result<Reach> {
        if b.stop_lsn > l {
            return Ok(Err(format!("it ended at {}, after the target", b.stop_lsn)));
        }
        let tail =
            scan(self.repo, self.view, path, (last.saturating_sub(1).max(b_first(b, self.view)), last), |_| false)
                .await?;
        if let Some((_, why)) = tail.damaged.filter(|(d, _)| l.0 >= *d * self.view.seg_size as u64) {
            return Ok(Err(format!("{why}: recovery cannot pass it to reach the target")));
        }
        if l.0 >= tail.end_lsn {
            let end_lsn = crate::pg::Lsn(tail.end_lsn);
            return Ok(Err(format!("the target is past the end of the archived WAL ({end_lsn}; {end})")));
        }
        Ok(Ok(format!("it ended at {}, before the target; {end}", b.stop_lsn)))
    }

    /// A time target needs a transaction that ended after it (before it, with
    /// --target-exclusive): scan back from the end of the archive to find the last one.
    async fn reaches_time(
        &self,
        b: &Summary,
        path: &[Stretch],
        (first, last): (u64, u64),
        t: chrono::DateTime<chrono::Utc>,
        end: &str,
    ) -> Result<Reach> {
        let stopped = chrono::DateTime::parse_from_rfc3339(&b.stop_time).map(|s| s.to_utc());
        if stopped.map_or(true, |s| s > t) {
            return Ok(Err(format!("it ended at {}, after the target", b.stop_time)));
        }
        let (latest, damaged) = self.last_commit_time(b, path, (first, last)).await?;
        if let (Some(why), false) = (&damaged, latest.is_some()) {
            return Ok(Err(format!("{why}: no transaction ended after it before that ({end})")));
        }
        let past = |x: chrono::DateTime<chrono::Utc>| if self.recovery.exclusive { x >= t } else { x > t };
        match latest {
            Some(x) if past(x) => Ok(Ok(format!("it ended at {}, before the target; {end}", b.stop_time))),
            Some(x) => Ok(Err(format!(
                "the last transaction in the archived WAL ended at {x}, before the target: recovery would end without reaching it ({end})"
            ))),
            None => Ok(Err(format!("no transaction ended in the archived WAL after it: recovery cannot stop at a time ({end})"))),
        }
    }

    /// The time of the last transaction end after the backup, scanning back from
    /// the end of the archive two segments at a time (linear, not quadratic); a
    /// damaged segment ends the archive there, and is returned.
    async fn last_commit_time(
        &self,
        b: &Summary,
        path: &[Stretch],
        (first, mut last): (u64, u64),
    ) -> Result<(Option<chrono::DateTime<chrono::Utc>>, Option<String>)> {
        let mut damaged = None;
        let mut segno = last;
        loop {
            let is_commit = |e: &RecordEvent| matches!(e, RecordEvent::XactEnd { lsn, .. } if *lsn >= b.stop_lsn.0);
            let found = scan(self.repo, self.view, path, (segno, (segno + 1).min(last)), is_commit).await?;
            if let Some((d, why)) = found.damaged {
                // The archive ends before a damaged segment: look before it.
                damaged = Some(why);
                (last, segno) = (d.saturating_sub(1).max(first), d.saturating_sub(1).max(first));
                if d == first {
                    return Ok((None, damaged));
                }
                continue;
            }
            let times = found.events.iter().filter_map(|e| match e {
                RecordEvent::XactEnd { time, .. } => Some(*time),
                RecordEvent::RestorePoint { .. } => None,
            });
            if let Some(latest) = times.max() {
                return Ok((Some(latest), damaged));
            }
            if segno == first {
                return Ok((None, damaged));
            }
            segno -= 1;
        }
    }

    /// An xid or restore point: the first matching record replay meets from the
    /// backup's start must come after the backup's end.
    async fn reaches_record(
        &mut self,
        b: &Summary,
        tli: u32,
        path: &[Stretch],
        (first, last): (u64, u64),
    ) -> Result<Reach> {
        let start = first;
        let events = self.events_from(tli, path, start, last).await?;
        let matching =
            events.iter().filter(|e| self.matches(e)).map(event_lsn).filter(|lsn| *lsn >= b.start_lsn.0).min();
        let target = self.recovery.target.describe();
        match matching {
            None => Ok(Err(format!(
                "no record of {target} in the archived WAL from its start on (segments {} to {})",
                self.view.segment(path, start).1,
                self.view.segment(path, last).1
            ))),
            Some(lsn) if lsn < b.stop_lsn.0 => Ok(Err(format!(
                "{target} is at {}, while the backup was being taken (it ended at {})",
                crate::pg::Lsn(lsn),
                b.stop_lsn
            ))),
            Some(lsn) => Ok(Ok(format!("{target} is at {}, after it ended ({})", crate::pg::Lsn(lsn), b.stop_lsn))),
        }
    }

    /// Events of segments `start..=last`, scanning only what earlier calls did not.
    async fn events_from(&mut self, tli: u32, path: &[Stretch], start: u64, last: u64) -> Result<Vec<RecordEvent>> {
        match self.scanned.take() {
            Some((t, from, mut events)) if t == tli && from <= last + 1 => {
                if start < from {
                    // One segment of overlap completes a record that spans into `from`.
                    let older = scan(self.repo, self.view, path, (start, from.min(last)), |e| self.matches(e)).await?;
                    let known: std::collections::HashSet<u64> = events.iter().map(event_lsn).collect();
                    events.extend(older.events.into_iter().filter(|e| !known.contains(&event_lsn(e))));
                }
                self.scanned = Some((t, start.min(from), events.clone()));
                Ok(events)
            }
            _ => {
                let found = scan(self.repo, self.view, path, (start, last), |e| self.matches(e)).await?;
                self.scanned = Some((tli, start, found.events.clone()));
                Ok(found.events)
            }
        }
    }

    fn matches(&self, e: &RecordEvent) -> bool {
        match (&self.recovery.target, e) {
            (RecoveryTarget::Xid(x), RecordEvent::XactEnd { xid, .. }) => *xid as u64 == x & 0xffff_ffff,
            (RecoveryTarget::Name(n), RecordEvent::RestorePoint { name, .. }) => name == n,
            _ => false,
        }
    }
}

/// The first segment replay from `b` reads from the archive.
fn b_first(b: &Summary, view: &WalView) -> u64 {
    segno_of(if b.wal_included { b.stop_lsn.0 } else { b.start_lsn.0 }, view.seg_size)
}

fn event_lsn(e: &RecordEvent) -> u64 {
    match e {
        RecordEvent::XactEnd { lsn, .. } | RecordEvent::RestorePoint { lsn, .. } => *lsn,
    }
}
