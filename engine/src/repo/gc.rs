//! Deleting, in the order repository-format.md §8.2 fixes, so that a crash or a
//! refused delete at any point leaves a repository every reader accepts and the
//! next expire can finish the job.
//!
//! A backup goes: `manifest` first (it disappears at once), then the packs its
//! summary's index objects list and those index objects, then its block list parts
//! and `backup_manifest`, and its `summary` last — the summary is how a later run
//! finds the packs of a backup whose manifest is already gone. Only packs written
//! by the backup itself are deleted: a kept backup keeps its whole chain, and only
//! descendants ever name an ancestor's packs, so no kept backup names them.

use std::collections::HashSet;
use std::time::Duration;

use super::format::*;
use super::Repository;
use crate::error::{Result, StorageErrorKind};

/// Keys per bulk delete (S3's DeleteObjects takes up to 1000).
const DELETE_BATCH: usize = 1000;

/// What a deletion removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deleted {
    pub objects: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Deleted {
    fn add_assign(&mut self, other: Deleted) {
        self.objects += other.objects;
        self.bytes += other.bytes;
    }
}

impl Repository {
    /// Delete one object; an object already gone counts as deleted (a retry of an
    /// interrupted expire meets those).
    async fn delete_object(&self, key: &str, size: u64) -> Result<Deleted> {
        match self.storage.delete(key).await {
            Ok(()) => Ok(Deleted { objects: 1, bytes: size }),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => Ok(Deleted::default()),
            Err(e) => Err(e),
        }
    }

    /// Expire a visible backup: its manifest first, then everything else of it.
    pub(crate) async fn delete_backup(&self, label: &str) -> Result<Deleted> {
        check_label(label)?;
        let mut deleted = self.delete_object(&manifest_key(label), 0).await?;
        deleted += self.delete_backup_leftovers(label).await?;
        Ok(deleted)
    }

    /// Delete what is left of a backup without a manifest: one being expired when a
    /// previous expire stopped, or one killed before it committed. Its packs are
    /// found through its summary; a backup killed before writing one leaves packs
    /// that this cannot find (they are never read: no index a backup names lists them).
    pub(crate) async fn delete_backup_leftovers(&self, label: &str) -> Result<Deleted> {
        check_label(label)?;
        let mut deleted = Deleted::default();
        let summary_key = summary_key(label);
        let summary: Option<Summary> = match self.get_meta(&summary_key).await {
            Ok(s) => Some(s),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => None,
            Err(e) => return Err(e),
        };
        for index in summary.iter().flat_map(|s| s.indexes.iter()) {
            deleted += self.delete_index_and_packs(index).await?;
        }
        let prefix = format!("{BACKUP_PREFIX}{label}/");
        let objects = self.storage.list(&prefix).await?;
        let others = objects.iter().filter(|o| o.key != summary_key && o.key != manifest_key(label));
        deleted += self.delete_all(others.map(|o| (o.key.clone(), o.size))).await?;
        deleted += self.delete_object(&summary_key, 0).await?;
        Ok(deleted)
    }

    /// Record that backup `label` started: its first object, so that whatever a kill
    /// leaves of it, expire finds the label (§6.7).
    pub(crate) async fn mark_backup_started(&self, label: &str) -> Result<()> {
        let marker = serde_json::json!({ "host": crate::fsutil::hostname(), "pid": std::process::id() });
        self.put_meta(&started_key(label), &marker).await
    }

    /// Whether a label without a manifest has its summary (then its packs are known).
    pub(crate) async fn has_summary(&self, label: &str) -> Result<bool> {
        let key = summary_key(label);
        Ok(self.storage.list(&key).await?.iter().any(|o| o.key == key))
    }

    /// How long ago the newest object of `label` was written; None if a backend
    /// cannot say (then it is never collected).
    pub(crate) async fn label_age(&self, label: &str) -> Result<Option<Duration>> {
        let objects = self.storage.list(&format!("{BACKUP_PREFIX}{label}/")).await?;
        let newest = objects.iter().map(|o| o.modified).try_fold(0u64, |acc, m| m.map(|m| acc.max(m)));
        Ok(newest.map(|t| Duration::from_secs(unix_now().saturating_sub(t))))
    }

    /// Packs and index objects no visible backup names and older than `grace`: what
    /// backups killed before their summary existed left (§8.2). Reads every index
    /// object the visible backups name, so expire runs it only after such a kill.
    pub(crate) async fn collect_unreferenced(&self, grace: Duration) -> Result<Deleted> {
        let mut named: HashSet<String> = HashSet::new();
        for label in self.list_backups().await? {
            named.extend(self.load_summary(&label).await?.indexes);
        }
        let old = |o: &crate::storage::ObjectInfo| {
            o.modified.is_some_and(|t| unix_now().saturating_sub(t) >= grace.as_secs())
        };
        let mut referenced_packs: HashSet<String> = HashSet::new();
        for id in &named {
            let file: IndexFile = self.get_meta(&index_key(id)).await?;
            referenced_packs.extend(file.packs.into_iter().map(|p| p.id));
        }
        let packs = self.storage.list(DATA_PREFIX).await?;
        let unreferenced = packs.iter().filter(|o| {
            let id = o.key.rsplit('/').next().unwrap_or_default();
            old(o) && !referenced_packs.contains(id)
        });
        let mut deleted = self.delete_all(unreferenced.map(|o| (o.key.clone(), o.size))).await?;
        let indexes = self.storage.list(INDEX_PREFIX).await?;
        let unnamed = indexes.iter().filter(|o| {
            let id = o.key.strip_prefix(INDEX_PREFIX).unwrap_or_default();
            old(o) && !named.contains(id)
        });
        deleted += self.delete_all(unnamed.map(|o| (o.key.clone(), o.size))).await?;
        Ok(deleted)
    }

    /// The packs an index object lists, then the index object itself.
    async fn delete_index_and_packs(&self, index: &str) -> Result<Deleted> {
        let key = index_key(index);
        let file: IndexFile = match self.get_meta(&key).await {
            Ok(f) => f,
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => return Ok(Deleted::default()),
            Err(e) => return Err(e),
        };
        let mut deleted = self.delete_all(file.packs.iter().map(|p| (pack_key(&p.id), p.size))).await?;
        deleted += self.delete_object(&key, 0).await?;
        Ok(deleted)
    }

    /// Delete `objects` (key, size) in batches (one bulk request each on S3); the
    /// first failure stops it.
    pub(crate) async fn delete_all(&self, objects: impl Iterator<Item = (String, u64)>) -> Result<Deleted> {
        let objects: Vec<(String, u64)> = objects.collect();
        let mut deleted = Deleted::default();
        for batch in objects.chunks(DELETE_BATCH) {
            let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
            self.storage.delete_many(&keys).await?;
            deleted += Deleted { objects: batch.len() as u64, bytes: batch.iter().map(|(_, s)| s).sum() };
        }
        Ok(deleted)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
