//! Backup types and labels: which earlier backup a diff or incr is compared with,
//! and the pgBackRest-style label that records it.
//!
//! Every manifest is self-contained (restore never walks a chain); the type only
//! decides which blocks count as already stored (see `dedup`). A full stores every distinct block
//! of the cluster again, so it shares no pack with earlier backups; a diff reuses
//! the blocks of the newest full; an incr those of the newest backup of any type.

use crate::error::Result;
use crate::repo::format::{label_timestamp, Manifest};
use crate::repo::Repository;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
/// Which backup type, pgBackRest's three.
pub enum BackupType {
    /// Every block stored or reused from the repository, no parent.
    #[default]
    Full,
    /// Blocks changed since the newest full.
    Diff,
    /// Blocks changed since the newest backup of any type.
    Incr,
}

impl BackupType {
    /// The name used in manifests, info and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }

    fn letter(self) -> char {
        match self {
            BackupType::Full => 'F',
            BackupType::Diff => 'D',
            BackupType::Incr => 'I',
        }
    }
}

/// The full backup a label belongs to (itself for a full).
fn full_of(label: &str) -> &str {
    label.split('_').next().unwrap_or(label)
}

/// What a new backup is based on.
pub(crate) struct Lineage {
    /// The type actually taken (a diff or incr without a usable parent becomes full).
    pub backup_type: BackupType,
    pub parent: Option<Manifest>,
}

impl Lineage {
    /// A new label, unique in the stanza (waits for the next second if needed).
    pub(crate) async fn new_label(&self, existing: &[String]) -> String {
        loop {
            let ts = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
            if !existing.iter().any(|l| label_timestamp(l) == ts) {
                let own = format!("{ts}{}", self.backup_type.letter());
                return match &self.parent {
                    None => own,
                    Some(p) => format!("{}_{own}", full_of(&p.label)),
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

/// Pick the parent of a `wanted` backup among `labels` (oldest first). A parent from
/// another PostgreSQL major version (after pg_upgrade) is not used.
pub(crate) async fn choose(
    repo: &Repository,
    wanted: BackupType,
    labels: &[String],
    pg_version: u32,
) -> Result<Lineage> {
    let full = Lineage { backup_type: BackupType::Full, parent: None };
    let candidate = match wanted {
        BackupType::Full => return Ok(full),
        BackupType::Diff => labels.iter().rev().find(|l| l.ends_with('F')),
        BackupType::Incr => labels.last(),
    };
    let Some(label) = candidate else {
        tracing::warn!(
            "no prior full backup in stanza {}: taking a full backup instead of the requested {}",
            repo.config().stanza,
            wanted.as_str()
        );
        return Ok(full);
    };
    let parent = repo.load_manifest(label).await?;
    if parent.pg_version / 10000 != pg_version / 10000 {
        tracing::warn!(
            "backup {label} is of PostgreSQL {}, the cluster runs {}: taking a full backup instead of the requested {}",
            parent.pg_version / 10000,
            pg_version / 10000,
            wanted.as_str()
        );
        return Ok(full);
    }
    Ok(Lineage { backup_type: wanted, parent: Some(parent) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_parts() {
        assert_eq!(label_timestamp("20261122-101010F"), "20261122-101010");
        assert_eq!(label_timestamp("20261122-101010F_20261122-111111D"), "20261122-111111");
        assert_eq!(full_of("20261122-101010F_20261122-111111I"), "20261122-101010F");
        assert_eq!(full_of("20261122-101010F"), "20261122-101010F");
    }
}
