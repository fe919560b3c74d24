//! Block workers of a backup: hash a batch of blocks on rayon, decide for each whether
//! the parent's blob, an earlier one of this backup or a new blob holds it, read the
//! parent's version of changed blocks and store those as deltas.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::crypto::Cipher;
use crate::error::{Error, Result};
use crate::ops::dedup::RecentChunks;
use crate::ops::on_rayon;
use crate::repo::blob;
use crate::repo::block_reader::{BlockFault, BlockReader, ChunkHasher};
use crate::repo::blocklist::{BlockLocation, DeltaBase};
use crate::repo::format::ChunkId;

pub(super) struct BlockDone {
    pub id: ChunkId,
    pub raw_len: u32,
    pub outcome: Outcome,
}

pub(super) enum Outcome {
    /// Same as the parent's block at this position: reuse its blob.
    Parent(BlockLocation),
    /// An earlier block of this backup has (or is storing) the same content.
    Repeat(Bytes),
    /// New: compressed and sealed (a delta over `base` when set), to be packed.
    New(Vec<u8>, Option<DeltaBase>),
}

/// What a block worker needs, shared by all of them.
pub(super) struct BlockCtx {
    pub hasher: ChunkHasher,
    pub level: i32,
    pub cipher: Arc<Cipher>,
    /// Reads the parent's blobs back (sealed with other packs' keys).
    pub reader: BlockReader,
    pub recent: Arc<Mutex<RecentChunks>>,
    pub parent_label: String,
}

/// A block's place in the cluster, for messages.
pub(super) struct BlockPlace {
    pub path: Arc<str>,
    pub block: u64,
}

/// A block waiting for a worker, with the parent's entry at its position.
pub(super) struct PendingBlock {
    pub block: Bytes,
    pub at_parent: Option<(ChunkId, BlockLocation)>,
    pub place: BlockPlace,
}

/// A spawned batch of blocks, cancelled if the backup stops waiting for it (an error
/// elsewhere): it must not go on reading and compressing after the backup failed.
pub(super) struct BatchTask(pub JoinHandle<Result<Vec<BlockDone>>>);

impl Drop for BatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for BatchTask {
    type Output = std::result::Result<Result<Vec<BlockDone>>, tokio::task::JoinError>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The parent's blob that a changed block's delta is compressed against, opened.
async fn fetch_base(ctx: &BlockCtx, base: &DeltaBase, place: &BlockPlace) -> Result<Vec<u8>> {
    ctx.reader.read_base(base).await.map_err(|fault| match fault {
        BlockFault::Damaged { detail, .. } => Error::ParentCorrupt {
            what: format!("{} block {} of parent backup {}", place.path, place.block, ctx.parent_label),
            detail,
        },
        BlockFault::Other(e) => e,
    })
}

/// Hash a batch of blocks; reuse the parent's blob for each unchanged one, store the
/// others, as deltas over the parent's versions where there are some. Batches keep
/// the cost of task switches per block low (a task per block cost a fifth of the CPU).
pub(super) async fn process_batch(ctx: Arc<BlockCtx>, batch: Vec<PendingBlock>) -> Result<Vec<BlockDone>> {
    enum Step {
        Done(Outcome),
        Changed(Bytes, DeltaBase),
    }
    let c = ctx.clone();
    let steps = on_rayon(move || {
        batch
            .into_iter()
            .map(|PendingBlock { block, at_parent, place }| {
                let id = c.hasher.id(&block);
                let raw_len = block.len() as u32;
                let step = match at_parent {
                    Some((parent_id, loc)) if parent_id == id => Step::Done(Outcome::Parent(loc)),
                    _ if !c.recent.lock().unwrap_or_else(PoisonError::into_inner).claim(id) => {
                        Step::Done(Outcome::Repeat(block))
                    }
                    Some((parent_id, loc)) => Step::Changed(block, loc.delta_base(parent_id)),
                    None => Step::Done(Outcome::New(blob::seal_block(&c.cipher, c.level, &id, &block), None)),
                };
                (id, raw_len, step, place)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let base_reads = steps.iter().map(|(_, _, step, place)| async {
        match step {
            Step::Changed(_, base) => fetch_base(&ctx, base, place).await.map(Some),
            Step::Done(_) => Ok(None),
        }
    });
    let base_plains = futures::future::try_join_all(base_reads).await?;
    on_rayon(move || {
        steps
            .into_iter()
            .zip(base_plains)
            .map(|((id, raw_len, step, _place), base_plain)| {
                let outcome = match (step, base_plain) {
                    (Step::Changed(block, base), Some(plain)) => {
                        let (sealed, is_delta) =
                            blob::seal_changed_block(&ctx.cipher, ctx.level, &id, &block, (&base.id, &plain));
                        Outcome::New(sealed, is_delta.then_some(base))
                    }
                    (Step::Changed(block, _), None) => {
                        Outcome::New(blob::seal_block(&ctx.cipher, ctx.level, &id, &block), None)
                    }
                    (Step::Done(outcome), _) => outcome,
                };
                Ok(BlockDone { id, raw_len, outcome })
            })
            .collect()
    })
    .await?
}
