//! Writing one backup into the repository, in the order that makes it visible only
//! when complete (repository-format.md §8): blobs into packs, packs uploaded a few
//! at a time, index objects naming only uploaded packs, block list parts, then —
//! in [`BackupWriter::commit`], which consumes the writer — the server's
//! `backup_manifest`, the `summary` and last the `manifest`.
//!
//! Memory is bounded: one pack and one block list part are being filled, at most
//! `PARALLEL_UPLOADS` packs are uploading, and index entries are flushed every
//! `INDEX_FLUSH_BLOBS` blobs.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::blocklist::{BlockLocation, BlockPart, DeltaBase, BLOCKS_PER_PART};
use super::format::PACK_KEY_ID_LEN;
use super::format::{
    index_key, manifest_key, pack_key, server_manifest_key, summary_key, ChunkId, IndexFile, IndexPack, Manifest,
    Summary,
};
use super::pack::PackWriter;
use super::Repository;
use crate::crypto::{self, Cipher};
use crate::error::{Error, Result};

const PARALLEL_UPLOADS: usize = 4;
/// Index entries kept in memory before they are written out as an index object, so
/// memory does not grow with the number of new blocks (~150 B of JSON each).
const INDEX_FLUSH_BLOBS: usize = 32 * 1024;

pub(crate) struct BackupWriter<'r> {
    repo: &'r Repository,
    label: String,
    /// The data key id of every pack this backup writes: one key per backup run.
    key_id: [u8; PACK_KEY_ID_LEN],
    pack: PackWriter,
    pack_size: u64,
    uploads: JoinSet<Result<()>>,
    upload_slots: Arc<Semaphore>,
    /// Uploaded or uploading packs not yet listed in an index object.
    packs: Vec<IndexPack>,
    unindexed_blobs: usize,
    index_flush_blobs: usize,
    /// Index objects this backup wrote.
    indexes: Vec<String>,
    /// The block list part being filled, and parts written.
    part: BlockPart,
    parts: u32,
    blocks: u64,
    stored_new: u64,
}

impl<'r> BackupWriter<'r> {
    pub(crate) fn new(repo: &'r Repository, label: &str) -> Self {
        let key_id = crypto::random_bytes::<PACK_KEY_ID_LEN>();
        let pack_size = repo.config().pack_size;
        BackupWriter {
            repo,
            label: label.to_string(),
            key_id,
            pack: PackWriter::new(key_id, pack_size as usize),
            pack_size,
            uploads: JoinSet::new(),
            upload_slots: Arc::new(Semaphore::new(PARALLEL_UPLOADS)),
            packs: Vec::new(),
            unindexed_blobs: 0,
            index_flush_blobs: INDEX_FLUSH_BLOBS,
            indexes: Vec::new(),
            part: BlockPart::default(),
            parts: 0,
            blocks: 0,
            stored_new: 0,
        }
    }

    /// The cipher that seals this backup's new blobs.
    pub(crate) fn cipher(&self) -> Arc<Cipher> {
        self.repo.data_ciphers().get(&self.key_id)
    }

    /// Bytes of blobs this backup added.
    #[cfg(test)]
    pub(crate) fn stored_new(&self) -> u64 {
        self.stored_new
    }

    /// Store a sealed blob (a delta over `base` when set); returns where it lives.
    pub(crate) async fn add_blob(
        &mut self,
        id: ChunkId,
        raw_len: u32,
        sealed: &[u8],
        base: Option<DeltaBase>,
    ) -> Result<BlockLocation> {
        self.stored_new += sealed.len() as u64;
        let loc = self.pack.add(id, raw_len, sealed, base);
        if self.pack.len() as u64 >= self.pack_size {
            self.flush_pack().await?;
            if self.unindexed_blobs >= self.index_flush_blobs {
                self.write_index().await?;
            }
        }
        Ok(loc)
    }

    /// The next entry of the block list.
    pub(crate) async fn add_block(&mut self, id: ChunkId, loc: &BlockLocation) -> Result<()> {
        self.part.push(id, loc);
        self.blocks += 1;
        if self.part.len() >= BLOCKS_PER_PART as usize {
            self.write_part().await?;
        }
        Ok(())
    }

    /// Block list parts may name packs still uploading: only the manifest, written
    /// after every upload, makes them reachable.
    async fn write_part(&mut self) -> Result<()> {
        if !self.part.is_empty() {
            self.repo.put_block_part(&self.label, self.parts, &std::mem::take(&mut self.part)).await?;
            self.parts += 1;
        }
        Ok(())
    }

    async fn flush_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.pack, PackWriter::new(self.key_id, self.pack_size as usize));
        let (bytes, record) = full.finish();
        let key = pack_key(&record.id);
        tracing::debug!("pack {key}: {} blobs, {} bytes, uploading", record.blobs.len(), bytes.len());
        self.unindexed_blobs += record.blobs.len();
        self.packs.push(record);
        // Reap finished uploads so errors surface early and the set stays small.
        while let Some(r) = self.uploads.try_join_next() {
            r.map_err(|e| Error::Internal(format!("upload task failed: {e}")))??;
        }
        let permit = self
            .upload_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(format!("upload semaphore closed: {e}")))?;
        let storage = self.repo.storage().clone();
        self.uploads.spawn(async move {
            let _permit = permit;
            storage.put_new(&key, bytes).await
        });
        Ok(())
    }

    /// Wait for every upload, then list the uploaded packs in a new index object:
    /// an index only ever names durable packs.
    async fn write_index(&mut self) -> Result<()> {
        while let Some(r) = self.uploads.join_next().await {
            r.map_err(|e| Error::Internal(format!("upload task failed: {e}")))??;
        }
        if self.packs.is_empty() {
            return Ok(());
        }
        let id = hex::encode(crypto::random_bytes::<32>());
        let packs = self.packs.len();
        self.repo.put_meta(&index_key(&id), &IndexFile { packs: std::mem::take(&mut self.packs) }).await?;
        tracing::info!("{} packs written and durable, listed in index {}", packs, &id[..12]);
        self.indexes.push(id);
        self.unindexed_blobs = 0;
        Ok(())
    }

    /// Upload the last pack, index everything, write the last block list part: after
    /// this every object the manifest will name is durable.
    pub(crate) async fn finish_data(&mut self) -> Result<()> {
        self.flush_pack().await?;
        self.write_index().await?;
        self.write_part().await
    }

    /// Make the backup visible: everything durable first, then the server's manifest,
    /// the summary, then `manifest` — completed with what only the writer knows (indexes, block
    /// count, bytes stored). Consuming the writer, this is the last write of a backup.
    pub(crate) async fn commit(mut self, server_manifest: &[u8], mut manifest: Manifest) -> Result<Manifest> {
        self.finish_data().await?;
        self.repo.put_meta_bytes(&server_manifest_key(&self.label), server_manifest).await?;
        manifest.indexes = std::mem::take(&mut self.indexes);
        manifest.blocks = self.blocks;
        manifest.blocks_per_part = BLOCKS_PER_PART;
        manifest.stored_new = self.stored_new;
        self.repo.put_meta(&summary_key(&self.label), &Summary::of(&manifest)).await?;
        self.repo.put_meta(&manifest_key(&self.label), &manifest).await?;
        Ok(manifest)
    }
}

#[cfg(test)]
impl BackupWriter<'_> {
    pub(crate) fn set_limits_for_tests(&mut self, pack_size: u64, index_flush_blobs: usize) {
        self.pack_size = pack_size;
        self.index_flush_blobs = index_flush_blobs;
    }
    pub(crate) fn counts_for_tests(&self) -> (usize, u64, u32) {
        (self.indexes.len(), self.blocks, self.parts)
    }
}
