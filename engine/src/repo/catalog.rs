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

    /// Why a visible backup's own objects are not all there (manifest and summary
    /// aside, which their loaders authenticate): its `backup_manifest` and every
    /// block list part the summary implies. One listing; no part is decrypted.
    pub(crate) async fn missing_backup_objects(&self, m: &Summary) -> Result<Option<String>> {
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

    /// A backup's manifest: everything needed to restore it, authenticated.
    pub(crate) async fn load_manifest(&self, label: &str) -> Result<Manifest> {
        let m: Manifest = self.load_backup_object(label, &manifest_key(label)).await?;
        self.check_backup_format(label, m.format_version)?;
        Ok(m)
    }

    /// A backup's summary (§6.5): what the catalog knows of it without its file list.
    /// A visible backup without one is damaged, not absent.
    pub(crate) async fn load_summary(&self, label: &str) -> Result<Summary> {
        let key = summary_key(label);
        let s: Summary = self.load_backup_object(label, &key).await.map_err(|e| match e {
            Error::BackupNotFound { .. } => Error::Corrupt { what: key.clone(), detail: "missing".into() },
            e => e,
        })?;
        self.check_backup_format(label, s.format_version)?;
        Ok(s)
    }

    async fn load_backup_object<T: serde::de::DeserializeOwned>(&self, label: &str, key: &str) -> Result<T> {
        check_label(label)?;
        self.get_meta(key).await.map_err(|e| match e.storage_kind() {
            Some(StorageErrorKind::NotFound) => {
                Error::BackupNotFound { stanza: self.config.stanza.clone(), label: label.to_string() }
            }
            _ => e,
        })
    }

    fn check_backup_format(&self, label: &str, found: u32) -> Result<()> {
        if crate::repo::format::readable_format(found.into()) {
            return Ok(());
        }
        Err(Error::UnsupportedFormat {
            location: format!("backup {label} in {}", self.location()),
            found,
            supported: FORMAT_VERSION,
            oldest: crate::repo::format::OLDEST_READABLE_FORMAT,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::repo::blocklist::BlockPart;
    use crate::repo::format::{summary_key, Summary, FORMAT_VERSION};
    use crate::repo::tests::test_repo;

    fn summary(label: &str, format_version: u32) -> Summary {
        serde_json::from_value(serde_json::json!({
            "format_version": format_version, "label": label, "backup_type": "full",
            "start_time": "2026-01-01T00:00:00Z", "stop_time": "2026-01-01T00:01:00Z",
            "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "timeline": 1, "pg_version": 170000,
            "size": 1, "stored_new": 1, "files": 1, "wal_included": true, "blocks": 1, "blocks_per_part": 8, "indexes": [],
        }))
        .unwrap()
    }

    /// A summary reads back as written; a missing one is damage named by its key,
    /// never "no such backup"; another format version is refused.
    #[tokio::test]
    async fn summaries_are_authenticated_and_never_guessed() {
        let (_mem, repo) = test_repo(false).await;
        let label = "20260101-000000F";
        let written = summary(label, FORMAT_VERSION);
        repo.put_meta(&summary_key(label), &written).await.unwrap();
        assert_eq!(repo.load_summary(label).await.unwrap(), written);

        let missing = repo.load_summary("20260102-000000F").await.unwrap_err();
        assert!(matches!(missing, Error::Corrupt { .. }), "{missing}");
        assert!(missing.to_string().contains("20260102-000000F/summary"), "{missing}");

        let old = "20260103-000000F";
        repo.put_meta(&summary_key(old), &summary(old, crate::repo::format::OLDEST_READABLE_FORMAT - 1)).await.unwrap();
        let refused = repo.load_summary(old).await.unwrap_err();
        assert!(matches!(refused, Error::UnsupportedFormat { .. }), "{refused}");
        // Version 6 only added the manifest's database list: version 5 still reads.
        let v5 = "20260104-000000F";
        repo.put_meta(&summary_key(v5), &summary(v5, 5)).await.unwrap();
        assert_eq!(repo.load_summary(v5).await.unwrap().format_version, 5);
    }

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
