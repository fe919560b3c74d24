//! info: the stanza's repository and its backup sets. One damaged backup never
//! hides the others: it is listed with what is wrong with it.

use serde::Serialize;

use crate::error::{Error, LockedBy, Result};
use crate::ops::archive::{archive_summary, missing_wal, TimelineArchive};
use crate::repo::format::{Encryption, Summary};
use crate::repo::results::ResultKind;
use crate::repo::wal_archive::WalArchive;
use crate::repo::Repository;

/// Whether a backup can be restored, as far as info can tell without reading blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupStatus {
    /// Its objects and the WAL it needs are there.
    Ok,
    /// Its manifest or block list cannot be read: it cannot be restored.
    Damaged,
    /// Its objects are there but WAL it needs to become consistent is not archived.
    NotRestorable,
}

/// One backup as info lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    /// The backup's label.
    pub label: String,
    /// Whether it can be restored.
    pub status: BackupStatus,
    /// What is wrong, for a backup that is not `ok`.
    pub problem: Option<String>,
    /// Something the operator should know that does not stop a restore (its parent
    /// is gone: it still restores, its block list names every block).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What the retention policy does with it: "kept: <rule>" or "expires at the next
    /// expire"; absent without a policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// What its summary says; absent when the summary cannot be read.
    #[serde(flatten)]
    pub details: Option<BackupDetails>,
}

/// A backup's summary (repository-format.md §6.6).
#[derive(Debug, Clone, Serialize)]
pub struct BackupDetails {
    /// "full", "diff" or "incr".
    #[serde(rename = "type")]
    pub backup_type: String,
    /// The backup a diff or incr was compared with.
    pub parent: Option<String>,
    /// When the backup started (RFC 3339, UTC).
    pub start_time: String,
    /// When it was complete.
    pub stop_time: String,
    /// Its start position in the WAL.
    pub start_lsn: crate::pg::Lsn,
    /// The position recovery must reach to be consistent.
    pub stop_lsn: crate::pg::Lsn,
    /// The timeline the backup was taken on.
    pub timeline: u32,
    /// The server's `server_version_num`.
    pub pg_version: u32,
    /// Bytes of regular files.
    pub size: u64,
    /// Bytes of new pack data it wrote.
    pub stored_new: u64,
    /// Regular files.
    pub files: u64,
    /// It carries the WAL it needs to become consistent.
    pub wal_included: bool,
    /// Otherwise, the first archived segment it needs.
    pub wal_start: Option<String>,
    /// And the last.
    pub wal_stop: Option<String>,
    /// Where it was read from: the role ("primary" or "standby") and the server;
    /// absent for backups taken before pgcairn recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::repo::format::BackupSource>,
    /// How it read the cluster: WAL summaries (changed pages only) or the whole
    /// cluster, with the reason a diff or incr could not use summaries; absent
    /// for backups written before format 7.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<crate::repo::format::ReadMethod>,
}

/// The stanza as `info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InfoReport {
    /// The JSON schema's version (docs/operations.md "info --output=json"): bumped
    /// when a field changes meaning or goes; new fields may appear in any version.
    pub schema_version: u32,
    /// The stanza's state in one word and a sentence.
    pub status: StanzaStatus,
    /// Who holds the stanza lock now (a backup, expire or stanza-delete running).
    pub lock: Option<crate::error::LockedBy>,
    /// The newest backup of each type (`full`, `diff`, `incr`) whose status is ok.
    pub last_backup: std::collections::BTreeMap<String, LastBackup>,
    /// The stanza's name.
    pub stanza: String,
    /// The repository's location (never with credentials).
    pub repo: String,
    /// The stanza's repository format version.
    pub format_version: u32,
    /// Whether data and metadata are encrypted.
    pub encrypted: bool,
    /// The cluster the stanza belongs to.
    pub system_identifier: u64,
    /// `server_version_num` at stanza-create.
    pub pg_version: u32,
    /// Bytes per stored block.
    pub block_size: u32,
    /// Bytes of every object of the stanza (one listing).
    pub repo_size: u64,
    /// The retention policy in force, when one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<String>,
    /// Every visible backup, oldest first.
    pub backups: Vec<BackupInfo>,
    /// Archived WAL per timeline, with gaps.
    pub archive: Vec<TimelineArchive>,
    /// The last `pgcairn verify` run's result, if any was recorded.
    pub last_verify: Option<crate::ops::verify::VerifyReport>,
    /// The last restore drills, newest first (at most [`DRILLS_SHOWN`]).
    pub last_drills: Vec<crate::ops::drill::DrillReport>,
}

/// The version of `info --output=json`'s schema.
pub const INFO_SCHEMA_VERSION: u32 = 1;

/// The stanza's state, worst first: error, lock-held, no-backups, ok.
#[derive(Debug, Clone, Serialize)]
pub struct StanzaStatus {
    /// `ok`, `error` (a backup is damaged or not restorable, or the archive has a gap
    /// after the oldest backup), `no-backups` or `lock-held` (something is running).
    pub code: &'static str,
    /// What it means, for people.
    pub message: String,
}

/// The newest usable backup of one type, for monitoring.
#[derive(Debug, Clone, Serialize)]
pub struct LastBackup {
    /// Its label.
    pub label: String,
    /// When it started and stopped (RFC 3339, UTC).
    pub start_time: String,
    /// When it stopped.
    pub stop_time: String,
    /// Seconds from start to stop.
    pub duration_seconds: i64,
    /// Bytes of the cluster it holds.
    pub size: u64,
    /// New bytes it added to the repository.
    pub stored_new: u64,
    /// Regular files it holds.
    pub files: u64,
}

/// Drills `info` shows.
pub const DRILLS_SHOWN: usize = 3;

/// The newest results of a kind; a damaged result object is reported in the log and
/// skipped (it must not hide the backups).
async fn latest<T: serde::de::DeserializeOwned>(repo: &Repository, kind: ResultKind, n: usize) -> Result<Vec<T>> {
    match repo.latest_results(kind, n).await {
        Ok(r) => Ok(r),
        Err(e @ Error::Corrupt { .. }) => {
            tracing::warn!("{e}: run verify or drill again to record a new result");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// List the stanza: its settings, every backup with its status, the WAL archive.
pub async fn info(repo: &Repository) -> Result<InfoReport> {
    let cfg = repo.config();
    let archived = WalArchive::list(repo).await?;
    let mut backups = Vec::new();
    for label in repo.list_backups().await? {
        backups.push(backup_info(repo, label, &archived).await?);
    }
    note_missing_parents(&mut backups);
    let repo_size = repo.storage().list("").await?.iter().map(|o| o.size).sum();
    let archive = archive_summary(&archived, cfg.wal_segment_size, newest_restorable_start(&backups));
    let lock = crate::repo::lock::current_holder(repo).await?;
    Ok(InfoReport {
        schema_version: INFO_SCHEMA_VERSION,
        status: stanza_status(&backups, &archive, lock.as_ref()),
        lock,
        last_backup: last_backups(&backups),
        stanza: cfg.stanza.clone(),
        repo: repo.location(),
        format_version: cfg.format_version,
        encrypted: cfg.encryption == Encryption::Aes256Gcm,
        system_identifier: cfg.system_identifier,
        pg_version: cfg.pg_version,
        block_size: cfg.block_size,
        repo_size,
        retention_policy: None,
        backups,
        archive,
        last_verify: latest(repo, ResultKind::Verify, 1).await?.into_iter().next(),
        last_drills: latest(repo, ResultKind::Drill, DRILLS_SHOWN).await?,
    })
}

/// Regression (issue 21, item 2): after `expire --retention-archive=1` thinned old
/// WAL exactly as documented, info said "error (3 gaps … take a full backup)" and the
/// shipped alert fired forever. Gaps that end before the newest restorable backup
/// starts (its timeline and LSN, returned here) break only old point-in-time windows.
fn newest_restorable_start(backups: &[BackupInfo]) -> Option<(u32, crate::pg::Lsn)> {
    backups
        .iter()
        .filter(|b| b.status == BackupStatus::Ok)
        .filter_map(|b| b.details.as_ref())
        .map(|d| (d.timeline, d.start_lsn))
        .max()
}

/// Worst first: a backup that is not ok or a gap in the archive, a running holder of
/// the lock, no backups at all.
fn stanza_status(backups: &[BackupInfo], archive: &[TimelineArchive], lock: Option<&LockedBy>) -> StanzaStatus {
    let bad: Vec<&str> = backups.iter().filter(|b| b.status != BackupStatus::Ok).map(|b| b.label.as_str()).collect();
    let gaps: usize = archive.iter().map(|t| t.gaps.len()).sum();
    let (code, message) = if !bad.is_empty() {
        ("error", format!("backups not restorable: {} (see each one's problem; run `pgcairn verify`)", bad.join(", ")))
    } else if gaps > 0 {
        (
            "error",
            format!("the WAL archive has {gaps} gap(s): point-in-time recovery cannot cross them; take a full backup"),
        )
    } else if let Some(l) = lock {
        ("lock-held", format!("{} running (pid {} on {}, since {})", l.command, l.pid, l.host, l.started))
    } else if backups.is_empty() {
        ("no-backups", "no backups yet: take one with `pgcairn backup --type=full`".to_string())
    } else {
        let earlier: usize = archive.iter().map(|t| t.earlier_gaps.len()).sum();
        let note = if earlier > 0 {
            format!("; {earlier} earlier WAL gap(s) before the newest backup (thinned by retention-archive, or lost) limit point-in-time recovery to after them")
        } else {
            String::new()
        };
        ("ok", format!("{} backups, all restorable{note}", backups.len()))
    };
    StanzaStatus { code, message }
}

/// The newest ok backup of each type.
fn last_backups(backups: &[BackupInfo]) -> std::collections::BTreeMap<String, LastBackup> {
    let seconds = |a: &str, b: &str| -> Option<i64> {
        let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
        Some((parse(b)? - parse(a)?).num_seconds())
    };
    let mut out = std::collections::BTreeMap::new();
    for b in backups.iter().filter(|b| b.status == BackupStatus::Ok) {
        let Some(d) = &b.details else { continue };
        let last = LastBackup {
            label: b.label.clone(),
            start_time: d.start_time.clone(),
            stop_time: d.stop_time.clone(),
            duration_seconds: seconds(&d.start_time, &d.stop_time).unwrap_or(0),
            size: d.size,
            stored_new: d.stored_new,
            files: d.files,
        };
        // Backups are listed oldest first: the last one of a type wins.
        out.insert(d.backup_type.clone(), last);
    }
    out
}

/// A diff or incr whose parent is no longer listed still restores (its block list
/// locates every block), but the operator deserves to know.
fn note_missing_parents(backups: &mut [BackupInfo]) {
    let labels: std::collections::HashSet<String> = backups.iter().map(|b| b.label.clone()).collect();
    for b in backups.iter_mut() {
        if let Some(parent) = b.details.as_ref().and_then(|d| d.parent.as_ref()) {
            if !labels.contains(parent) {
                b.note = Some(format!(
                    "its parent {parent} is gone (expired or deleted); it still restores on its own, its block list names every block"
                ));
            }
        }
    }
}

/// One backup's line: damage of its own objects is reported, not returned; only
/// trouble reaching the storage at all fails `info`.
async fn backup_info(repo: &Repository, label: String, archived: &WalArchive) -> Result<BackupInfo> {
    let damaged = |problem: String| BackupInfo {
        label: label.clone(),
        status: BackupStatus::Damaged,
        problem: Some(problem),
        note: None,
        retention: None,
        details: None,
    };
    let m = match repo.load_summary(&label).await {
        Ok(m) => m,
        Err(e @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. } | Error::BackupNotFound { .. })) => {
            return Ok(damaged(e.to_string()))
        }
        Err(e) => return Err(e),
    };
    let (status, problem) = if let Some(missing) = repo.missing_backup_objects(&m).await? {
        (BackupStatus::Damaged, Some(missing))
    } else if let Some(gap) = missing_wal(&m, archived, repo.config().wal_segment_size) {
        (BackupStatus::NotRestorable, Some(gap))
    } else {
        (BackupStatus::Ok, None)
    };
    Ok(BackupInfo { label, status, problem, note: None, retention: None, details: Some(details(m)) })
}

fn details(m: Summary) -> BackupDetails {
    BackupDetails {
        files: m.files,
        backup_type: m.backup_type,
        parent: m.parent,
        start_time: m.start_time,
        stop_time: m.stop_time,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        timeline: m.timeline,
        pg_version: m.pg_version,
        size: m.size,
        stored_new: m.stored_new,
        wal_included: m.wal_included,
        wal_start: m.wal_start,
        wal_stop: m.wal_stop,
        source: m.source,
        read: m.read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(label: &str, parent: Option<&str>) -> BackupInfo {
        let details = BackupDetails {
            backup_type: if parent.is_some() { "diff" } else { "full" }.into(),
            parent: parent.map(str::to_string),
            start_time: String::new(),
            stop_time: String::new(),
            start_lsn: crate::pg::Lsn(0),
            stop_lsn: crate::pg::Lsn(0),
            timeline: 1,
            pg_version: 170000,
            size: 0,
            stored_new: 0,
            files: 0,
            wal_included: true,
            wal_start: None,
            wal_stop: None,
            source: None,
            read: None,
        };
        BackupInfo {
            label: label.into(),
            status: BackupStatus::Ok,
            problem: None,
            note: None,
            retention: None,
            details: Some(details),
        }
    }

    /// Issue 12: with a full's directory removed by hand, info listed its diff as
    /// "based on" a backup that no longer existed, without a word. Now it says so.
    #[test]
    fn a_gone_parent_is_named() {
        let mut backups = vec![listed("F2", None), listed("F1_D", Some("F1")), listed("F2_D", Some("F2"))];
        note_missing_parents(&mut backups);
        assert!(backups[1].note.as_deref().is_some_and(|n| n.contains("its parent F1 is gone")));
        assert!(backups[0].note.is_none() && backups[2].note.is_none());
    }
}
