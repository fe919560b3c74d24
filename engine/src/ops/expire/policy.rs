//! The retention policy as a pure function: which backups it keeps and why, and
//! which archived WAL files no kept backup and no kept point in time needs.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Utc};

use crate::error::{Error, Result};
use crate::ops::lineage::BackupType;
use crate::pg::wal::{segno_of, WalFile};
use crate::pg::Lsn;

/// How `retention-full` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullRetention {
    /// Keep the newest N full backups.
    #[default]
    Count,
    /// Keep the full backups needed to restore to any point of the last N days.
    Time,
}

/// A retention policy: every field unset keeps everything.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// `retention-full`: full backups to keep (count or days, see `full_type`).
    pub full: Option<u32>,
    /// `retention-full-type`.
    pub full_type: FullRetention,
    /// `retention-diff`: differential backups to keep (of the kept fulls).
    pub diff: Option<u32>,
    /// `retention-keep-daily`: the newest backup of each of the last N days with one.
    pub keep_daily: Option<u32>,
    /// `retention-keep-weekly`: … of each of the last N ISO weeks with one.
    pub keep_weekly: Option<u32>,
    /// `retention-keep-monthly`: … of each of the last N months with one.
    pub keep_monthly: Option<u32>,
    /// `retention-keep-yearly`: … of each of the last N years with one.
    pub keep_yearly: Option<u32>,
    /// `retention-time-zone`: an IANA name (`Europe/Paris`) for the calendar tiers.
    pub time_zone: String,
    /// `retention-archive`: the point-in-time window starts at the Nth newest kept
    /// backup of `archive_type`; unset: at the oldest kept backup.
    pub archive: Option<u32>,
    /// `retention-archive-type`: which backups `archive` counts.
    pub archive_type: BackupType,
}

/// One backup as the policy sees it (from its summary).
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub label: String,
    pub kind: BackupType,
    pub parent: Option<String>,
    pub stop_time: DateTime<Utc>,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: u32,
    /// Restorable as far as info can tell: only those count for a rule.
    pub usable: bool,
}

/// Why a backup is kept; `None` in a plan means expired.
pub(crate) type Reason = Option<String>;

impl RetentionPolicy {
    /// Whether any rule is set (without one, expire removes nothing).
    pub fn is_set(&self) -> bool {
        self.full.is_some()
            || self.diff.is_some()
            || [self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly].iter().any(Option::is_some)
    }

    /// The rules that are set, as settings (`retention-full=2, retention-keep-daily=7`).
    pub fn describe(&self) -> String {
        let full = self.full.map(|n| match self.full_type {
            FullRetention::Count => format!("retention-full={n}"),
            FullRetention::Time => format!("retention-full={n} days"),
        });
        let diff = self.diff.map(|n| format!("retention-diff={n}"));
        let tiers = self.tiers().into_iter().filter_map(|(name, n, _)| n.map(|n| format!("{name}={n}")));
        let archive = self.archive.map(|n| format!("retention-archive={n} ({})", self.archive_type.as_str()));
        let rules: Vec<String> = full.into_iter().chain(diff).chain(tiers).chain(archive).collect();
        let zone = if self.keep_daily.or(self.keep_weekly).or(self.keep_monthly).or(self.keep_yearly).is_some() {
            format!(" in {}", self.time_zone)
        } else {
            String::new()
        };
        format!("{}{zone}", rules.join(", "))
    }

    fn tiers(&self) -> [(&'static str, Option<u32>, Period); 4] {
        [
            ("retention-keep-daily", self.keep_daily, Period::Day),
            ("retention-keep-weekly", self.keep_weekly, Period::Week),
            ("retention-keep-monthly", self.keep_monthly, Period::Month),
            ("retention-keep-yearly", self.keep_yearly, Period::Year),
        ]
    }

    /// Refuse a policy that cannot mean what it says (a count of 0, retention-diff
    /// alone, an unknown time zone), before anything is read.
    pub fn check(&self) -> Result<()> {
        self.validate().map(|_| ())
    }

    pub(crate) fn validate(&self) -> Result<chrono_tz::Tz> {
        let counts =
            [("retention-full", self.full), ("retention-diff", self.diff), ("retention-archive", self.archive)];
        let tiers = self.tiers().map(|(name, n, _)| (name, n));
        if let Some((name, _)) = counts.iter().chain(tiers.iter()).find(|(_, n)| *n == Some(0)) {
            return Err(Error::setting(format!("{name} = 0 would keep nothing"), "use 1 or more, or leave it unset"));
        }
        let tiers_set = tiers.iter().any(|(_, n)| n.is_some());
        if self.diff.is_some() && self.full.is_none() && !tiers_set {
            let hint =
                "set retention-full (or a retention-keep-* tier) as well: it decides which fulls the diffs hang on";
            return Err(Error::setting("retention-diff alone does not say which full backups to keep", hint));
        }
        self.time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
            Error::setting(
                format!("retention-time-zone {:?} is not a time zone", self.time_zone),
                "use an IANA name such as UTC, Europe/Paris or America/New_York",
            )
        })
    }
}

/// Which backups the policy keeps (oldest first, as `backups` are), each with why.
pub(crate) fn decide(policy: &RetentionPolicy, backups: &[Candidate], now: DateTime<Utc>) -> Result<Vec<Reason>> {
    let tz = policy.validate()?;
    let mut keep: Vec<Reason> = vec![None; backups.len()];
    let Some(newest) = backups.len().checked_sub(1) else { return Ok(keep) };
    keep[newest] = Some("newest backup".into());
    keep_fulls(policy, backups, now, &mut keep);
    keep_diffs_and_incrs(policy, backups, now, &mut keep);
    for (name, count, period) in policy.tiers() {
        if let Some(n) = count {
            keep_calendar(backups, n, period, tz, name, &mut keep);
        }
    }
    keep_chains(backups, &mut keep);
    Ok(keep)
}

fn keep_fulls(policy: &RetentionPolicy, backups: &[Candidate], now: DateTime<Utc>, keep: &mut [Reason]) {
    let Some(n) = policy.full else { return };
    let fulls: Vec<usize> =
        (0..backups.len()).filter(|&i| backups[i].usable && backups[i].kind == BackupType::Full).collect();
    let chosen: Vec<usize> = match policy.full_type {
        FullRetention::Count => fulls.iter().rev().take(n as usize).copied().collect(),
        FullRetention::Time => {
            // Every full that stopped inside the window, and the newest one before
            // it: the window's first moments are restored from that one.
            let start = now - chrono::Duration::days(n as i64);
            let inside: Vec<usize> = fulls.iter().copied().filter(|&i| backups[i].stop_time >= start).collect();
            let before = fulls.iter().rev().copied().find(|&i| backups[i].stop_time < start);
            inside.into_iter().chain(before).collect()
        }
    };
    let rule = match policy.full_type {
        FullRetention::Count => format!("retention-full={n}"),
        FullRetention::Time => format!("retention-full={n} days"),
    };
    for i in chosen {
        keep[i].get_or_insert_with(|| rule.clone());
    }
}

/// Diffs and incrs hang on a kept full: without `retention-diff` all of them are kept
/// with it; with it, the newest N diffs, and an incr stays while its parent does.
///
/// Regression (issue 21, item 1): with a full's directory removed by hand, a
/// keep-everything `retention-full=10` expired its diff and incr, which restored
/// exactly. A backup whose full is gone is kept when the policy would have kept
/// that full.
fn keep_diffs_and_incrs(policy: &RetentionPolicy, backups: &[Candidate], now: DateTime<Utc>, keep: &mut [Reason]) {
    if policy.full.is_none() {
        return;
    }
    let index: HashMap<&str, usize> = backups.iter().enumerate().map(|(i, b)| (b.label.as_str(), i)).collect();
    for i in 0..backups.len() {
        let orphan = backups[i].kind != BackupType::Full && full_of(backups, &index, i).is_none();
        let root_orphan = orphan && backups[i].parent.as_deref().is_none_or(|p| !index.contains_key(p));
        if root_orphan && missing_full_kept(policy, backups, i, now) {
            let rule = format!("{} (its full is gone; it restores on its own)", full_rule(policy));
            keep[i].get_or_insert(rule);
        }
    }
    let full_kept = |i: usize| full_of(backups, &index, i).is_some_and(|f| keep[f].is_some());
    let diffs: Vec<usize> =
        (0..backups.len()).filter(|&i| backups[i].kind == BackupType::Diff && full_kept(i)).collect();
    let kept_diffs: Vec<usize> = match policy.diff {
        Some(n) => diffs.iter().rev().filter(|&&i| backups[i].usable).take(n as usize).copied().collect(),
        None => diffs,
    };
    let rule = policy.diff.map_or("retention-full (with its full)".to_string(), |n| format!("retention-diff={n}"));
    for i in kept_diffs {
        keep[i].get_or_insert_with(|| rule.clone());
    }
    // Oldest first, so an incr's parent is decided before it.
    for i in 0..backups.len() {
        let parent = backups[i].parent.as_deref().and_then(|p| index.get(p)).copied();
        if backups[i].kind == BackupType::Incr && parent.is_some_and(|p| keep[p].is_some()) {
            keep[i].get_or_insert_with(|| "retention-full (with its parent)".into());
        }
    }
}

fn full_rule(policy: &RetentionPolicy) -> String {
    let n = policy.full.unwrap_or(0);
    match policy.full_type {
        FullRetention::Count => format!("retention-full={n}"),
        FullRetention::Time => format!("retention-full={n} days"),
    }
}

/// Whether the policy would keep the (unlisted) full of backup `i`. No full is ever
/// taken between a diff or incr and the full of its chain, so the fulls newer than
/// that full are the fulls newer than `i`.
fn missing_full_kept(policy: &RetentionPolicy, backups: &[Candidate], i: usize, now: DateTime<Utc>) -> bool {
    let Some(n) = policy.full else { return false };
    let newer_fulls = || backups[i + 1..].iter().filter(|b| b.usable && b.kind == BackupType::Full);
    match policy.full_type {
        FullRetention::Count => newer_fulls().count() < n as usize,
        FullRetention::Time => {
            let start = now - chrono::Duration::days(n as i64);
            backups[i].stop_time >= start || !newer_fulls().any(|f| f.stop_time < start)
        }
    }
}

/// Why backup `i` is expired (`keep[i]` is None), for the report and `--dry-run`.
pub(crate) fn why_expired(policy: &RetentionPolicy, backups: &[Candidate], keep: &[Reason], i: usize) -> String {
    let b = &backups[i];
    let index: HashMap<&str, usize> = backups.iter().enumerate().map(|(i, b)| (b.label.as_str(), i)).collect();
    let parent = b.parent.as_deref();
    if !b.usable {
        return "not restorable (see info): it counts for no rule".into();
    }
    match (b.kind, parent.and_then(|p| index.get(p))) {
        (BackupType::Full, _) => {
            match (policy.full, policy.full_type) {
                (Some(n), FullRetention::Count) => {
                    format!("older than the {n} newest full backups retention-full={n} keeps")
                }
                (Some(n), FullRetention::Time) => {
                    format!("stopped before the {n}-day window of retention-full={n} days, and a newer full covers its start")
                }
                (None, _) => "no retention-keep-* period keeps it, and no kept backup depends on it".into(),
            }
        }
        (_, Some(&p)) if keep[p].is_none() => format!("its parent {} is expired", backups[p].label),
        (BackupType::Diff, Some(_)) if policy.diff.is_some() => {
            let n = policy.diff.unwrap_or(0);
            format!("older than the {n} newest differential backups retention-diff={n} keeps")
        }
        (_, None) => format!(
            "its parent {} is gone and {} would not have kept that backup's full",
            parent.unwrap_or("?"),
            full_rule(policy)
        ),
        _ => "no rule keeps it, and no kept backup depends on it".into(),
    }
}

/// The full at the root of `i`'s chain, if every parent on the way is listed.
fn full_of(backups: &[Candidate], index: &HashMap<&str, usize>, mut i: usize) -> Option<usize> {
    for _ in 0..backups.len() {
        if backups[i].kind == BackupType::Full {
            return Some(i);
        }
        i = *index.get(backups[i].parent.as_deref()?)?;
    }
    None
}

#[derive(Debug, Clone, Copy)]
enum Period {
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// The calendar period `t` falls in, in `tz`, as a sortable key and a name.
    fn of(self, t: DateTime<Utc>, tz: chrono_tz::Tz) -> (i64, String) {
        let local = t.with_timezone(&tz).date_naive();
        match self {
            Period::Day => (local.num_days_from_ce() as i64, local.format("%Y-%m-%d").to_string()),
            Period::Week => {
                let w = local.iso_week();
                (w.year() as i64 * 100 + w.week() as i64, format!("{}-W{:02}", w.year(), w.week()))
            }
            Period::Month => (local.year() as i64 * 100 + local.month() as i64, local.format("%Y-%m").to_string()),
            Period::Year => (local.year() as i64, local.year().to_string()),
        }
    }
}

/// The newest usable backup of each of the newest `n` periods that have one.
fn keep_calendar(backups: &[Candidate], n: u32, period: Period, tz: chrono_tz::Tz, rule: &str, keep: &mut [Reason]) {
    let mut newest_per_period: BTreeMap<i64, (usize, String)> = BTreeMap::new();
    for (i, b) in backups.iter().enumerate().filter(|(_, b)| b.usable) {
        let (key, name) = period.of(b.stop_time, tz);
        let entry = newest_per_period.entry(key).or_insert((i, name));
        if backups[entry.0].stop_time <= b.stop_time {
            entry.0 = i;
        }
    }
    for (_, (i, name)) in newest_per_period.into_iter().rev().take(n as usize) {
        keep[i].get_or_insert_with(|| format!("{rule}={n} ({name})"));
    }
}

/// A kept backup keeps its whole chain: block lists name its ancestors' packs.
fn keep_chains(backups: &[Candidate], keep: &mut [Reason]) {
    let index: HashMap<&str, usize> = backups.iter().enumerate().map(|(i, b)| (b.label.as_str(), i)).collect();
    for i in (0..backups.len()).rev() {
        if keep[i].is_none() {
            continue;
        }
        let mut child = i;
        while let Some(&p) = backups[child].parent.as_deref().and_then(|p| index.get(p)) {
            if keep[p].is_none() {
                keep[p] = Some(format!("parent of {}", backups[i].label));
            }
            child = p;
        }
    }
}

/// Where the kept point-in-time window starts: the start of the Nth newest kept
/// backup of `archive_type` (fewer: the oldest kept backup).
pub(crate) fn window_start(policy: &RetentionPolicy, kept: &[&Candidate]) -> Option<Lsn> {
    let oldest = kept.iter().map(|b| b.start_lsn).min()?;
    let Some(n) = policy.archive else { return Some(oldest) };
    let counts = |b: &&&Candidate| match policy.archive_type {
        BackupType::Full => b.kind == BackupType::Full,
        BackupType::Diff => b.kind != BackupType::Incr,
        BackupType::Incr => true,
    };
    let mut of_type: Vec<Lsn> = kept.iter().filter(counts).map(|b| b.start_lsn).collect();
    of_type.sort_unstable();
    Some(of_type.len().checked_sub(n as usize).map_or(oldest, |i| of_type[i]))
}

/// The archived WAL files nothing kept needs: segments (and `.partial`, `.backup`
/// files) wholly before the window and outside every kept backup's own start..stop
/// range, and `.history` files of timelines before every kept backup's.
pub(crate) fn wal_to_delete(names: &[String], kept: &[&Candidate], window: Option<Lsn>, seg_size: u32) -> Vec<String> {
    let (Some(window), Some(min_timeline)) = (window, kept.iter().map(|b| b.timeline).min()) else {
        return Vec::new(); // nothing kept: keep all WAL
    };
    let first_kept_segno = segno_of(window.0, seg_size);
    let own_ranges: Vec<(u64, u64)> = kept
        .iter()
        .map(|b| (segno_of(b.start_lsn.0, seg_size), segno_of(b.stop_lsn.0.saturating_sub(1), seg_size)))
        .collect();
    names
        .iter()
        .filter(|name| match WalFile::parse(name) {
            Some(WalFile::History { timeline }) => timeline < min_timeline,
            Some(file) => file.segno(seg_size).is_some_and(|segno| {
                segno < first_kept_segno && !own_ranges.iter().any(|&(a, b)| (a..=b).contains(&segno))
            }),
            None => false, // not ours to judge
        })
        .cloned()
        .collect()
}
