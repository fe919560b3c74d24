//! A synthetic repository for the expire benchmark (benches/expire.rs): many backups
//! with many small packs each, written through the real format (sealed summaries,
//! manifests and index objects), without a PostgreSQL cluster. Not for production.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::format::*;
use super::{CreateOptions, Repository, DEFAULT_BLOCK_SIZE, DEFAULT_PACK_SIZE};
use crate::crypto::KeySlotKdf;
use crate::error::Result;
use crate::pg::Lsn;
use crate::storage::DynStorage;

/// Create an unencrypted stanza `main` in `storage` holding `backups` backups, one
/// hour apart and ending now: a full every `chain` backups and incrs between, each
/// with `packs` packs of `pack_bytes` bytes listed by one index object.
pub async fn synthetic_repository(
    storage: DynStorage,
    backups: usize,
    chain: usize,
    packs: usize,
    pack_bytes: usize,
) -> Result<Repository> {
    let opts = CreateOptions {
        encrypted: false,
        block_size: DEFAULT_BLOCK_SIZE,
        pack_size: DEFAULT_PACK_SIZE,
        kdf: KeySlotKdf::default(),
        system_identifier: 1,
        pg_version: 170000,
        wal_segment_size: 16 << 20,
    };
    let repo = Repository::create(storage, "main", None, opts).await?;
    let start = chrono::Utc::now() - chrono::Duration::hours(backups as i64);
    let (mut full, mut parent) = (String::new(), None::<String>);
    for n in 0..backups {
        let t = start + chrono::Duration::hours(n as i64);
        let stamp = t.format("%Y%m%d-%H%M%S").to_string();
        let label = if n % chain.max(1) == 0 {
            full = format!("{stamp}F");
            full.clone()
        } else {
            format!("{full}_{stamp}I")
        };
        let manifest = manifest(&label, parent.as_deref(), t, n as u64);
        write_backup(&repo, manifest, packs, pack_bytes).await?;
        parent = Some(label);
    }
    Ok(repo)
}

fn manifest(label: &str, parent: Option<&str>, t: chrono::DateTime<chrono::Utc>, n: u64) -> Manifest {
    let time = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Manifest {
        format_version: FORMAT_VERSION,
        label: label.into(),
        backup_type: if parent.is_some() && label.ends_with('I') { "incr" } else { "full" }.into(),
        parent: parent.filter(|_| label.ends_with('I')).map(str::to_string),
        start_time: time.clone(),
        stop_time: time,
        start_lsn: Lsn((n + 1) << 24),
        stop_lsn: Lsn(((n + 1) << 24) + 100),
        timeline: 1,
        system_identifier: 1,
        pg_version: 170000,
        block_size: DEFAULT_BLOCK_SIZE,
        wal_included: true,
        wal_start: None,
        wal_stop: None,
        backup_label: String::new(),
        tablespaces: Vec::new(),
        size: 0,
        stored_new: 0,
        indexes: Vec::new(),
        files: Vec::new(),
        blocks: 0,
        blocks_per_part: 1,
        source: None,
        databases: Vec::new(),
        read: None,
    }
}

/// Packs, their index object, `backup_manifest`, summary, manifest: the §8 order.
async fn write_backup(repo: &Repository, mut m: Manifest, packs: usize, pack_bytes: usize) -> Result<()> {
    let records: Vec<IndexPack> = (0..packs)
        .map(|_| IndexPack {
            id: hex::encode(crate::crypto::random_bytes::<32>()),
            key_id: "00".repeat(16),
            size: pack_bytes as u64,
            blobs: Vec::new(),
        })
        .collect();
    let body = Bytes::from(vec![0x5a; pack_bytes]);
    let storage = repo.storage();
    futures::stream::iter(records.iter().map(|p| {
        let (key, body) = (pack_key(&p.id), body.clone());
        async move { storage.put_new(&key, body).await }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    let index = hex::encode(crate::crypto::random_bytes::<32>());
    repo.put_meta(&index_key(&index), &IndexFile { packs: records }).await?;
    m.indexes = vec![index];
    m.stored_new = (packs * pack_bytes) as u64;
    repo.put_meta_bytes(&server_manifest_key(&m.label), b"{}").await?;
    repo.put_meta(&summary_key(&m.label), &Summary::of(&m)).await?;
    repo.put_meta(&manifest_key(&m.label), &m).await
}
