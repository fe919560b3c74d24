//! info: the stanza's repository and its backup sets. One damaged backup never
//! hides the others: it is listed with what is wrong with it.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ops::archive::{archive_summary, archived_segments, missing_wal, TimelineArchive};
use crate::repo::format::{Encryption, Summary};
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
}

/// The stanza as `info` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InfoReport {
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
    /// Every visible backup, oldest first.
    pub backups: Vec<BackupInfo>,
    /// Archived WAL per timeline, with gaps.
    pub archive: Vec<TimelineArchive>,
}

/// List the stanza: its settings, every backup with its status, the WAL archive.
pub async fn info(repo: &Repository) -> Result<InfoReport> {
    let cfg = repo.config();
    let archived = archived_segments(repo).await?;
    let mut backups = Vec::new();
    for label in repo.list_backups().await? {
        backups.push(backup_info(repo, label, &archived).await?);
    }
    Ok(InfoReport {
        stanza: cfg.stanza.clone(),
        repo: repo.location(),
        format_version: cfg.format_version,
        encrypted: cfg.encryption == Encryption::Aes256Gcm,
        system_identifier: cfg.system_identifier,
        pg_version: cfg.pg_version,
        block_size: cfg.block_size,
        backups,
        archive: archive_summary(&archived, cfg.wal_segment_size),
    })
}

/// One backup's line: damage of its own objects is reported, not returned; only
/// trouble reaching the storage at all fails `info`.
async fn backup_info(
    repo: &Repository,
    label: String,
    archived: &crate::ops::archive::ArchivedSegments,
) -> Result<BackupInfo> {
    let damaged = |problem: String| BackupInfo {
        label: label.clone(),
        status: BackupStatus::Damaged,
        problem: Some(problem),
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
    Ok(BackupInfo { label, status, problem, details: Some(details(m)) })
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
    }
}
