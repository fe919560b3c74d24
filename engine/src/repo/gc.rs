//! Deleting, in the order repository-format.md §8.2 fixes, so that a crash or a
//! refused delete at any point leaves a repository every reader accepts and the
//! next expire can finish the job.
//!
//! A backup goes: `manifest` first (it disappears at once), then the packs its
//! summary's index objects list and those index objects, then its block list parts
//! and `backup_manifest`, and its `summary` last — the summary is how a later run
//! finds the packs of a backup whose manifest is already gone.
//!
//! No pack is deleted that a surviving backup can reach: reachability is read from
//! every surviving backup's block list (blocks and delta bases), never inferred from
//! the catalog's chains (§8.3). A backup whose parent was removed outside pgcairn
//! still names the parent's packs, and they stay. When a surviving block list cannot
//! be read, nothing is known to be unreachable and no pack is deleted.

use std::collections::HashSet;
use std::time::Duration;

use futures::stream::{self, StreamExt};

use super::format::*;
use super::Repository;
use crate::error::{Error, Result, StorageErrorKind};

/// Block list parts read at once while computing reachability.
const PARTS_IN_FLIGHT: usize = 8;

/// The packs the surviving backups can reach.
#[derive(Debug, Default)]
pub(crate) struct Reachable {
    /// Hex ids of every pack a surviving block list names.
    packs: HashSet<String>,
    /// Surviving backups whose block list could not be read (label: why): while any
    /// is listed, no pack may be deleted.
    pub unreadable: Vec<String>,
}

impl Reachable {
    /// Whether `pack` (hex id) may be deleted.
    fn may_delete(&self, pack: &str) -> bool {
        self.unreadable.is_empty() && !self.packs.contains(pack)
    }

    /// After a failed delete of `label`: if its manifest is still there, what its
    /// block list names is kept for the rest of the run.
    pub(crate) async fn keep_visible(&mut self, repo: &Repository, label: &str) -> Result<()> {
        if repo.list_backups().await?.iter().any(|l| l == label) {
            let more = repo.reachable_packs(&[label.to_string()]).await?;
            self.packs.extend(more.packs);
            self.unreadable.extend(more.unreadable);
        }
        Ok(())
    }

    /// Why packs are held back, if they are.
    pub(crate) fn blocked_by(&self) -> Option<String> {
        (!self.unreadable.is_empty()).then(|| {
            format!(
                "no pack deleted: the block list of {} cannot be read, so what it references is unknown (run `pgcairn verify`; expire that backup with --set if it is lost)",
                self.unreadable.join("; ")
            )
        })
    }
}

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

    /// The packs that the block lists of `survivors` name. A block list that is
    /// damaged or missing is recorded, not skipped: then nothing is unreachable.
    pub(crate) async fn reachable_packs(&self, survivors: &[String]) -> Result<Reachable> {
        let mut reach = Reachable::default();
        let mut parts: Vec<(String, u32)> = Vec::new();
        for label in survivors {
            match self.load_summary(label).await {
                Ok(s) => {
                    let n = s.blocks.div_ceil(s.blocks_per_part.max(1) as u64) as u32;
                    parts.extend((0..n).map(|i| (label.clone(), i)));
                }
                Err(e @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                    reach.unreadable.push(format!("{label} ({e})"))
                }
                Err(e) => return Err(e),
            }
        }
        let loaded: Vec<(String, Result<super::blocklist::BlockPart>)> = stream::iter(parts)
            .map(|(label, n)| async move { (label.clone(), self.load_block_part(&label, n).await) })
            .buffer_unordered(PARTS_IN_FLIGHT)
            .collect()
            .await;
        for (label, part) in loaded {
            match part {
                Ok(part) => reach.packs.extend(part.packs.iter().map(|p| p.hex_id())),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => reach.unreadable.push(format!("{label} ({e})")),
            }
        }
        Ok(reach)
    }

    /// Expire a visible backup: its manifest first, then everything else of it that
    /// no survivor reaches.
    pub(crate) async fn delete_backup(&self, label: &str, reach: &Reachable) -> Result<Deleted> {
        check_label(label)?;
        let mut deleted = self.delete_object(&manifest_key(label), 0).await?;
        deleted += self.delete_backup_leftovers(label, reach).await?;
        Ok(deleted)
    }

    /// Delete what is left of a backup without a manifest: one being expired when a
    /// previous expire stopped, or one killed before it committed. Its packs are
    /// found through its summary; a backup killed before writing one leaves packs
    /// that this cannot find (they are never read: no index a backup names lists them).
    /// While reachability is incomplete, it is left for a later expire (its summary
    /// still finds its packs).
    pub(crate) async fn delete_backup_leftovers(&self, label: &str, reach: &Reachable) -> Result<Deleted> {
        check_label(label)?;
        let mut deleted = Deleted::default();
        if !reach.unreadable.is_empty() {
            return Ok(deleted);
        }
        let summary_key = summary_key(label);
        let summary: Option<Summary> = match self.get_meta(&summary_key).await {
            Ok(s) => Some(s),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => None,
            Err(e) => return Err(e),
        };
        for index in summary.iter().flat_map(|s| s.indexes.iter()) {
            deleted += self.delete_index_and_packs(index, reach).await?;
        }
        let prefix = format!("{BACKUP_PREFIX}{label}/");
        let objects = self.storage.list(&prefix).await?;
        let others = objects.iter().filter(|o| o.key != summary_key && o.key != manifest_key(label));
        deleted += self.delete_all(others.map(|o| (o.key.clone(), o.size))).await?;
        deleted += self.delete_object(&summary_key, 0).await?;
        Ok(deleted)
    }

    /// Remove what an unfinished run left under `label` (its started marker, block
    /// list parts, summary, server manifest) so the label can be written again: a
    /// copy resumed after a kill. Refused when the backup is visible (has its
    /// manifest). The caller holds the stanza lock; the packs of the killed run are
    /// left to garbage collection.
    pub(crate) async fn discard_unfinished(&self, label: &str) -> Result<u64> {
        let objects = self.storage.list(&format!("{BACKUP_PREFIX}{label}/")).await?;
        if objects.iter().any(|o| o.key == manifest_key(label)) {
            return Err(Error::Internal(format!("backup {label} is complete; not discarding it")));
        }
        let keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
        self.storage.delete_many(&keys).await?;
        Ok(keys.len() as u64)
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

    /// Packs and index objects no visible backup names or reaches, older than
    /// `grace`: what backups killed before their summary existed left, and what a
    /// backup removed outside pgcairn left (§8.2). An index object stays while any
    /// pack it lists is kept.
    pub(crate) async fn collect_unreferenced(&self, grace: Duration, reach: &Reachable) -> Result<Deleted> {
        if !reach.unreadable.is_empty() {
            return Ok(Deleted::default());
        }
        let mut named: HashSet<String> = HashSet::new();
        for label in self.list_backups().await? {
            named.extend(self.load_summary(&label).await?.indexes);
        }
        let old = |o: &crate::storage::ObjectInfo| {
            o.modified.is_some_and(|t| unix_now().saturating_sub(t) >= grace.as_secs())
        };
        let mut kept_packs: HashSet<String> = reach.packs.clone();
        for id in &named {
            let file: IndexFile = self.get_meta(&index_key(id)).await?;
            kept_packs.extend(file.packs.into_iter().map(|p| p.id));
        }
        let packs = self.storage.list(DATA_PREFIX).await?;
        let unreferenced = packs.iter().filter(|o| {
            let id = o.key.rsplit('/').next().unwrap_or_default();
            old(o) && !kept_packs.contains(id)
        });
        let mut deleted = self.delete_all(unreferenced.map(|o| (o.key.clone(), o.size))).await?;
        let indexes = self.storage.list(INDEX_PREFIX).await?;
        let mut unnamed = Vec::new();
        for o in indexes.iter().filter(|o| old(o)) {
            let id = o.key.strip_prefix(INDEX_PREFIX).unwrap_or_default();
            if named.contains(id) || self.index_lists_any(&o.key, &kept_packs).await? {
                continue;
            }
            unnamed.push((o.key.clone(), o.size));
        }
        deleted += self.delete_all(unnamed.into_iter()).await?;
        Ok(deleted)
    }

    /// Whether the index object `key` lists any of `packs`; one that cannot be read
    /// counts as listing them (it is never deleted unread).
    async fn index_lists_any(&self, key: &str, packs: &HashSet<String>) -> Result<bool> {
        match self.get_meta::<IndexFile>(key).await {
            Ok(file) => Ok(file.packs.iter().any(|p| packs.contains(&p.id))),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => Ok(false),
            Err(e) if e.is_transient() => Err(e),
            Err(_) => Ok(true),
        }
    }

    /// The packs an index object lists, then the index object itself.
    /// A pack a survivor reaches stays, and so does the index object listing it.
    async fn delete_index_and_packs(&self, index: &str, reach: &Reachable) -> Result<Deleted> {
        let key = index_key(index);
        let file: IndexFile = match self.get_meta(&key).await {
            Ok(f) => f,
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => return Ok(Deleted::default()),
            Err(e) => return Err(e),
        };
        let (doomed, kept): (Vec<_>, Vec<_>) = file.packs.iter().partition(|p| reach.may_delete(&p.id));
        let mut deleted = self.delete_all(doomed.iter().map(|p| (pack_key(&p.id), p.size))).await?;
        if kept.is_empty() {
            deleted += self.delete_object(&key, 0).await?;
        } else {
            tracing::info!("index object {index} kept: {} of its packs are still reached by kept backups", kept.len());
        }
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
