//! info: the stanza's repository and its backup sets.

use serde::Serialize;

use crate::error::Result;
use crate::repo::format::{Encryption, FileKind};
use crate::repo::Repository;

#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    pub label: String,
    #[serde(rename = "type")]
    pub backup_type: String,
    /// The backup a diff or incr was compared with.
    pub parent: Option<String>,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub pg_version: u32,
    pub size: u64,
    pub stored_new: u64,
    pub files: usize,
    pub wal_included: bool,
    pub wal_start: Option<String>,
    pub wal_stop: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InfoReport {
    pub stanza: String,
    pub repo: String,
    pub format_version: u32,
    pub encrypted: bool,
    pub system_identifier: u64,
    pub pg_version: u32,
    pub block_size: u32,
    pub backups: Vec<BackupInfo>,
    pub archive: Vec<crate::ops::archive::TimelineArchive>,
}

pub async fn info(repo: &Repository) -> Result<InfoReport> {
    let cfg = repo.config();
    let mut backups = Vec::new();
    for label in repo.list_backups().await? {
        let m = repo.load_manifest(&label).await?;
        backups.push(BackupInfo {
            label: m.label,
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
            files: m.files.iter().filter(|f| f.kind == FileKind::File).count(),
            wal_included: m.wal_included,
            wal_start: m.wal_start,
            wal_stop: m.wal_stop,
        });
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
        archive: crate::ops::archive::archive_summary(repo).await?,
    })
}
