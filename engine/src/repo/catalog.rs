//! The catalog: which backups are visible, their manifests, and whether their own
//! objects are all there.

use super::blocklist;
use super::format::*;
use super::Repository;
use crate::error::{Error, Result, StorageErrorKind};

impl Repository {
    /// Keys below `backup/`, without that prefix, sorted (one listing).
    async fn backup_objects(&self) -> Result<Vec<String>> {
        let objects = self.storage.list(BACKUP_PREFIX).await?;
        Ok(objects.into_iter().filter_map(|o| Some(o.key.strip_prefix(BACKUP_PREFIX)?.to_string())).collect())
    }

    /// Labels of every visible backup (those whose manifest exists), oldest first
    /// (by the time in the label, so a diff sorts after a later full it does not belong to).
    pub async fn list_backups(&self) -> Result<Vec<String>> {
        let mut labels: Vec<String> = self
            .backup_objects()
            .await?
            .into_iter()
            .filter_map(|k| k.strip_suffix("/manifest").map(str::to_string))
            .collect();
        labels.sort_by(|a, b| label_timestamp(a).cmp(label_timestamp(b)).then(a.cmp(b)));
        Ok(labels)
    }

    /// Every label that names any object: visible backups and the leftovers of
    /// interrupted ones (block list parts written before a kill). A new label must
    /// differ from all of them, or its create-only writes would meet the leftovers.
    pub async fn labels_in_use(&self) -> Result<Vec<String>> {
        let mut labels: Vec<String> =
            self.backup_objects().await?.iter().filter_map(|k| k.split('/').next().map(str::to_string)).collect();
        labels.dedup();
        Ok(labels)
    }

    /// Why a visible backup's own objects are not all there (manifest aside, which
    /// [`Repository::load_manifest`] authenticates): its `backup_manifest` and every
    /// block list part the manifest implies. One listing; no part is decrypted.
    pub async fn missing_backup_objects(&self, m: &Manifest) -> Result<Option<String>> {
        let prefix = format!("{BACKUP_PREFIX}{}/", m.label);
        let present: std::collections::HashSet<String> =
            self.storage.list(&prefix).await?.into_iter().map(|o| o.key).collect();
        let parts = m.blocks.div_ceil(m.blocks_per_part.max(1) as u64) as u32;
        let wanted = std::iter::once(("server manifest", server_manifest_key(&m.label)))
            .chain((0..parts).map(|n| ("block list part", blocklist::block_part_key(&m.label, n))));
        for (what, key) in wanted {
            if !present.contains(&key) {
                return Ok(Some(format!("its {what} {key} is missing")));
            }
        }
        Ok(None)
    }

    pub async fn load_manifest(&self, label: &str) -> Result<Manifest> {
        check_label(label)?;
        let m: Manifest = self.get_meta(&manifest_key(label)).await.map_err(|e| match e.storage_kind() {
            Some(StorageErrorKind::NotFound) => {
                Error::BackupNotFound { stanza: self.config.stanza.clone(), label: label.to_string() }
            }
            _ => e,
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                location: format!("backup {label} in {}", self.location()),
                found: m.format_version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use crate::repo::blocklist::BlockPart;
    use crate::repo::tests::test_repo;

    /// Regression (issue 10's fault matrix): a backup killed after writing a block
    /// list part left its label in use without a manifest; the next backup in the
    /// same second chose the same label and failed with "File exists".
    #[tokio::test]
    async fn leftovers_of_killed_backups_keep_their_label() {
        let (_mem, repo) = test_repo(false).await;
        repo.put_block_part("20260101-000000F", 0, &BlockPart::default()).await.unwrap();
        assert!(repo.list_backups().await.unwrap().is_empty(), "not visible");
        assert_eq!(repo.labels_in_use().await.unwrap(), vec!["20260101-000000F".to_string()]);
    }
}
