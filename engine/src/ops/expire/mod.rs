//! expire: apply the retention policy (or `--set`) under the stanza lock — plan,
//! say what goes and why, then delete in the order repository-format.md §8.2 fixes.

mod policy;
mod stanza_delete;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use policy::{Candidate, Reason};
pub use policy::{FullRetention, RetentionPolicy};
pub use stanza_delete::{stanza_delete, stanza_delete_leftovers, StanzaDeleteReport, StanzaDeleteRequest};

use crate::error::{Error, Result};
use crate::ops::archive::push_async as archive_async;
use crate::ops::info::{info, BackupStatus, InfoReport};
use crate::ops::lineage::BackupType;
use crate::pg::wal::WalFile;
use crate::repo::gc::{Deleted, Reachable};
use crate::repo::lock::StanzaLock;
use crate::repo::Repository;

/// What `expire` takes.
#[derive(Debug, Clone)]
pub struct ExpireRequest {
    /// The retention policy (unset: nothing is expired by policy).
    pub policy: RetentionPolicy,
    /// Expire this backup (and the backups that depend on it) instead of applying
    /// the policy to backups; WAL still follows what is kept.
    pub set: Option<String>,
    /// Plan and report, delete nothing.
    pub dry_run: bool,
    /// The async archive spool on this host, if any: its parked and dropped entries
    /// about WAL before the kept window are forgotten with that WAL.
    pub spool_path: Option<std::path::PathBuf>,
    /// Which of the stanza's repositories this is (`repo-number`): whose async queue
    /// in `spool_path` is pruned.
    pub repo_number: usize,
    /// What a killed backup left is collected only once it is this old
    /// (`repo-gc-grace`): a backup still running elsewhere never loses a pack.
    pub gc_grace: std::time::Duration,
}

impl Default for ExpireRequest {
    fn default() -> Self {
        Self {
            policy: RetentionPolicy::default(),
            set: None,
            dry_run: false,
            spool_path: None,
            repo_number: 1,
            gc_grace: DEFAULT_GC_GRACE,
        }
    }
}

/// `repo-gc-grace`'s default: a day.
pub const DEFAULT_GC_GRACE: std::time::Duration = std::time::Duration::from_secs(86_400);

/// One backup's fate.
#[derive(Debug, Clone, Serialize)]
pub struct ExpireDecision {
    /// The backup's label.
    pub label: String,
    /// "full", "diff", "incr", or "unknown" when its summary cannot be read.
    #[serde(rename = "type")]
    pub backup_type: String,
    /// Expired (or, with dry-run, would be).
    pub expired: bool,
    /// The rule that keeps it, when kept.
    pub kept_by: Option<String>,
    /// Why it goes, when expired.
    pub expired_because: Option<String>,
}

/// The WAL expired on one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct WalExpiry {
    /// The timeline.
    pub timeline: u32,
    /// The first file removed.
    pub first: String,
    /// The last file removed.
    pub last: String,
    /// How many files.
    pub files: u64,
}

/// What expire did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    /// Nothing was deleted: a plan only.
    pub dry_run: bool,
    /// Whether a retention policy was set (without one, only `--set` expires backups).
    pub policy_set: bool,
    /// Every backup, oldest first.
    pub backups: Vec<ExpireDecision>,
    /// WAL removed, per timeline.
    pub wal: Vec<WalExpiry>,
    /// Objects deleted (backups, their packs and index objects, WAL, leftovers).
    pub deleted_objects: u64,
    /// Bytes those objects held.
    pub deleted_bytes: u64,
    /// Deletes that failed (object and why); the next expire retries them.
    pub failures: Vec<String>,
    /// Async spool entries (parked segments, dropped.log lines) about expired WAL.
    pub spool_pruned: Vec<String>,
}

/// `info`, with what the retention policy does with each backup.
pub async fn info_with_retention(repo: &Repository, policy: &RetentionPolicy) -> Result<InfoReport> {
    let mut report = info(repo).await?;
    if !policy.is_set() {
        return Ok(report);
    }
    let (candidates, _) = candidates(&report);
    let reasons = policy::decide(policy, &candidates, chrono::Utc::now())?;
    let by_label: HashMap<&str, &Reason> = candidates.iter().map(|c| c.label.as_str()).zip(&reasons).collect();
    for b in &mut report.backups {
        b.retention = Some(match by_label.get(b.label.as_str()) {
            Some(Some(rule)) => format!("kept: {rule}"),
            Some(None) => "expires at the next expire".into(),
            None => "kept: its summary cannot be read".into(),
        });
    }
    report.retention_policy = Some(policy.describe());
    Ok(report)
}

/// Apply the retention policy to `repo` under the stanza lock.
pub async fn expire(repo: &Repository, req: &ExpireRequest) -> Result<ExpireReport> {
    req.policy.validate()?;
    let lock = StanzaLock::acquire(repo, "expire").await?;
    let result = tokio::select! {
        done = expire_locked(repo, req) => done,
        signal = crate::ops::interrupted() => Err(crate::ops::interrupted_error("expire", signal)),
    };
    lock.release_after(result).await
}

/// Expire with the lock already held (by expire, or by backup after its commit).
pub(crate) async fn expire_locked(repo: &Repository, req: &ExpireRequest) -> Result<ExpireReport> {
    let report = info(repo).await?;
    let plan = Plan::new(repo, &report, req).await?;
    let mut out = plan.report(req);
    if !req.dry_run {
        plan.execute(repo, &mut out).await;
    }
    Ok(out)
}

/// What will go: backups (with why the others stay) and WAL files.
struct Plan {
    gc_grace: std::time::Duration,
    labels: Vec<String>,
    types: Vec<String>,
    reasons: Vec<Reason>,
    /// Why each expired backup goes (None for kept ones).
    why: Vec<Option<String>>,
    wal: Vec<(String, u64)>,
    /// (spool path, the spool's WAL names wholly before the kept window).
    spool: Option<(std::path::PathBuf, usize, Vec<String>)>,
}

impl Plan {
    async fn new(repo: &Repository, report: &InfoReport, req: &ExpireRequest) -> Result<Plan> {
        let (candidates, unreadable) = candidates(report);
        let reasons = match &req.set {
            Some(label) => expire_set(&candidates, label)?,
            None if req.policy.is_set() => policy::decide(&req.policy, &candidates, chrono::Utc::now())?,
            None => vec![Some("no retention policy set".into()); candidates.len()],
        };
        let kept: Vec<&Candidate> =
            candidates.iter().zip(&reasons).filter(|(_, r)| r.is_some()).map(|(c, _)| c).collect();
        let seg_size = repo.config().wal_segment_size;
        // With no policy and no --set nothing goes, WAL included.
        let mut spool = None;
        let wal = if req.set.is_none() && !req.policy.is_set() {
            Vec::new()
        } else {
            let names = crate::repo::wal_archive::WalArchive::list(repo).await?.files;
            let sizes: HashMap<String, u64> = names.iter().cloned().collect();
            let all: Vec<String> = names.into_iter().map(|(n, _)| n).collect();
            let window = policy::window_start(&req.policy, &kept);
            spool = req.spool_path.as_ref().map(|path| {
                let names = archive_async::spool_wal_names(path, &repo.config().stanza, req.repo_number);
                (path.clone(), req.repo_number, policy::wal_to_delete(&names, &kept, window, seg_size))
            });
            let mut gone = policy::wal_to_delete(&all, &kept, window, seg_size);
            gone.sort();
            gone.into_iter().map(|n| (n.clone(), sizes.get(&n).copied().unwrap_or(0))).collect()
        };
        let mut why: Vec<Option<String>> = (0..candidates.len())
            .map(|i| {
                reasons[i].is_none().then(|| match &req.set {
                    Some(set) if *set == candidates[i].label => format!("--set={set}"),
                    Some(set) => format!("depends on --set={set}"),
                    None => policy::why_expired(&req.policy, &candidates, &reasons, i),
                })
            })
            .collect();
        let mut labels: Vec<String> = candidates.iter().map(|c| c.label.clone()).collect();
        let mut types: Vec<String> = candidates.iter().map(|c| c.kind.as_str().to_string()).collect();
        let mut reasons = reasons;
        for label in unreadable {
            labels.push(label);
            types.push("unknown".into());
            reasons.push(Some("its summary cannot be read: never expired unread (run verify)".into()));
            why.push(None);
        }
        Ok(Plan { gc_grace: req.gc_grace, labels, types, reasons, why, wal, spool })
    }

    fn report(&self, req: &ExpireRequest) -> ExpireReport {
        let backups = (0..self.labels.len())
            .map(|i| ExpireDecision {
                label: self.labels[i].clone(),
                backup_type: self.types[i].clone(),
                expired: self.reasons[i].is_none(),
                kept_by: self.reasons[i].clone(),
                expired_because: self.why[i].clone(),
            })
            .collect();
        ExpireReport {
            dry_run: req.dry_run,
            policy_set: req.policy.is_set(),
            backups,
            wal: wal_ranges(&self.wal),
            deleted_objects: 0,
            deleted_bytes: 0,
            failures: Vec::new(),
            spool_pruned: Vec::new(),
        }
    }

    /// Newest expired backup first (a child goes before its parent), then what
    /// killed backups and interrupted expires left, then the WAL. A failure is
    /// recorded and the rest goes on: what failed stays consistent and is retried.
    async fn execute(&self, repo: &Repository, out: &mut ExpireReport) {
        let mut deleted = Deleted::default();
        let Some(mut reach) = self.reachable(repo, out).await else { return };
        if self.delete_backups(repo, &mut reach, out, &mut deleted).await {
            self.delete_leftovers(repo, &reach, out, &mut deleted).await;
            record(repo.delete_wal(&self.wal).await, "WAL", out, &mut deleted);
            if let Some((path, number, moot)) = &self.spool {
                match archive_async::prune_spool(path, &repo.config().stanza, *number, moot) {
                    Ok(gone) => out.spool_pruned = gone,
                    Err(e) => out.failures.push(format!("async spool: {e}")),
                }
            }
        }
        out.deleted_objects = deleted.objects;
        out.deleted_bytes = deleted.bytes;
    }

    /// What survives is read before anything goes: no pack a kept backup's block list
    /// names is deleted, whatever the catalog says of chains. None (and nothing is
    /// deleted) when that cannot be known.
    async fn reachable(&self, repo: &Repository, out: &mut ExpireReport) -> Option<Reachable> {
        let survivors: Vec<String> =
            self.labels.iter().zip(&self.reasons).filter(|(_, r)| r.is_some()).map(|(l, _)| l.clone()).collect();
        match repo.reachable_packs(&survivors).await {
            Err(e) => {
                out.failures.push(format!("reading the kept backups' block lists: {e}; nothing deleted"));
                None
            }
            // A review found expired manifests and WAL going while only packs were
            // held back: with a survivor's references unknown, nothing goes.
            Ok(reach) => match reach.blocked_by() {
                Some(why) => {
                    out.failures.push(why);
                    None
                }
                None => Some(reach),
            },
        }
    }

    /// The expired backups, newest first; false when the run must stop (what a
    /// backup that could not be deleted names became unknown).
    async fn delete_backups(
        &self,
        repo: &Repository,
        reach: &mut Reachable,
        out: &mut ExpireReport,
        deleted: &mut Deleted,
    ) -> bool {
        for (label, _) in self.labels.iter().zip(&self.reasons).rev().filter(|(_, r)| r.is_none()) {
            tracing::info!("expiring backup {label}");
            let result = repo.delete_backup(label, reach).await;
            if result.is_err() {
                // Still visible if its manifest stayed: its parents' packs stay too.
                if let Err(e) = reach.keep_visible(repo, label).await {
                    out.failures.push(format!("backup {label}: {e}; nothing more deleted"));
                    return false;
                }
            }
            record(result, &format!("backup {label}"), out, deleted);
            if let Some(why) = reach.blocked_by() {
                out.failures.push(why);
                return false;
            }
        }
        true
    }

    /// What interrupted expires left (labels with a summary), and what backups killed
    /// before their summary left: their packs found by a scan, their label removed
    /// only after it (a crash redoes the scan).
    async fn delete_leftovers(
        &self,
        repo: &Repository,
        reach: &Reachable,
        out: &mut ExpireReport,
        deleted: &mut Deleted,
    ) {
        let (finish, killed) = match leftovers(repo, self.gc_grace).await {
            Ok(found) => found,
            Err(e) => return out.failures.push(format!("listing leftovers: {e}")),
        };
        for label in finish {
            record(repo.delete_backup_leftovers(&label, reach).await, &format!("leftovers of {label}"), out, deleted);
        }
        if killed.is_empty() {
            return;
        }
        record(repo.collect_unreferenced(self.gc_grace, reach).await, "unreferenced packs", out, deleted);
        for label in killed {
            record(repo.delete_backup_leftovers(&label, reach).await, &format!("leftovers of {label}"), out, deleted);
        }
    }
}

/// Count what a deletion removed, or record why it failed (the run goes on).
fn record(result: Result<Deleted>, what: &str, out: &mut ExpireReport, deleted: &mut Deleted) {
    match result {
        Ok(d) => *deleted += d,
        Err(e) => out.failures.push(format!("{what}: {e}")),
    }
}

/// The policy's view of each backup with a readable summary, and the labels of
/// those without one.
fn candidates(report: &InfoReport) -> (Vec<Candidate>, Vec<String>) {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for b in &report.backups {
        let Some(d) = &b.details else {
            unreadable.push(b.label.clone());
            continue;
        };
        let kind = match d.backup_type.as_str() {
            "diff" => BackupType::Diff,
            "incr" => BackupType::Incr,
            _ => BackupType::Full,
        };
        let stop_time =
            chrono::DateTime::parse_from_rfc3339(&d.stop_time).map_or_else(|_| chrono::Utc::now(), |t| t.to_utc());
        out.push(Candidate {
            label: b.label.clone(),
            kind,
            parent: d.parent.clone(),
            stop_time,
            start_lsn: d.start_lsn,
            stop_lsn: d.stop_lsn,
            timeline: d.timeline,
            usable: b.status == BackupStatus::Ok,
        });
    }
    (out, unreadable)
}

/// `--set=LABEL`: that backup and every backup that depends on it; never the newest.
fn expire_set(backups: &[Candidate], label: &str) -> Result<Vec<Reason>> {
    let Some(target) = backups.iter().position(|b| b.label == label) else {
        let listed = backups.iter().map(|b| b.label.as_str()).collect::<Vec<_>>().join(", ");
        return Err(Error::misconfigured(
            crate::error::Misconfig::Request,
            format!("--set={label}: no such backup"),
            format!("backups: {listed}"),
        ));
    };
    let mut doomed: HashSet<&str> = HashSet::from([label]);
    for b in &backups[target..] {
        if b.parent.as_deref().is_some_and(|p| doomed.contains(p)) {
            doomed.insert(&b.label);
        }
    }
    if backups.last().is_some_and(|newest| doomed.contains(newest.label.as_str())) {
        let problem = format!("--set={label} would expire the newest backup");
        let hint = "take a new backup first; the newest backup is never expired";
        return Err(Error::misconfigured(crate::error::Misconfig::Request, problem, hint));
    }
    Ok(backups.iter().map(|b| (!doomed.contains(b.label.as_str())).then(|| format!("not --set={label}"))).collect())
}

/// Labels with objects but no manifest: (those with a summary, to finish; those of
/// backups killed before it, old enough to collect). Younger ones are left alone.
async fn leftovers(repo: &Repository, grace: std::time::Duration) -> Result<(Vec<String>, Vec<String>)> {
    let visible: HashSet<String> = repo.list_backups().await?.into_iter().collect();
    let (mut finish, mut killed) = (Vec::new(), Vec::new());
    for label in repo.labels_in_use().await?.into_iter().filter(|l| !visible.contains(l)) {
        if repo.has_summary(&label).await? {
            finish.push(label);
        } else if repo.label_age(&label).await?.is_some_and(|age| age >= grace) {
            killed.push(label);
        }
    }
    Ok((finish, killed))
}

fn wal_ranges(files: &[(String, u64)]) -> Vec<WalExpiry> {
    let mut per: BTreeMap<u32, WalExpiry> = BTreeMap::new();
    for (name, _) in files {
        let Some(f) = WalFile::parse(name) else { continue };
        let e = per.entry(f.timeline()).or_insert_with(|| WalExpiry {
            timeline: f.timeline(),
            first: name.clone(),
            last: name.clone(),
            files: 0,
        });
        e.files += 1;
        e.last.clone_from(name);
    }
    per.into_values().collect()
}

#[cfg(test)]
mod tests;
