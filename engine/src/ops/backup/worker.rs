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
    pub content: Content,
    pub at_parent: Option<(ChunkId, BlockLocation)>,
    pub place: BlockPlace,
}

/// What a block holds.
pub(super) enum Content {
    /// The block as the server streamed it.
    Whole(Bytes),
    /// A block of a file the server sent incrementally (pg/incremental.rs).
    Patched(Patch),
}

/// A block rebuilt from the parent's: its first `keep` bytes, the changed `pages`
/// (offset in the block, bytes) laid over them, zeros elsewhere, `len` bytes long.
pub(super) struct Patch {
    pub len: usize,
    pub keep: usize,
    pub pages: Vec<(usize, Bytes)>,
}

/// A block ready to be hashed: the parent's plaintext comes along when it was read
/// for a patch and is the delta base too.
struct Ready {
    block: Bytes,
    at_parent: Option<(ChunkId, BlockLocation)>,
    place: BlockPlace,
    parent_plain: Option<Bytes>,
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
async fn fetch_base(ctx: &BlockCtx, base: &DeltaBase, place: &BlockPlace) -> Result<Bytes> {
    ctx.reader.read_base(base).await.map(Bytes::from).map_err(|fault| parent_fault(ctx, fault, place))
}

/// The parent's block at a place, opened (a delta over its base resolved).
async fn fetch_parent(ctx: &BlockCtx, id: ChunkId, loc: BlockLocation, place: &BlockPlace) -> Result<Bytes> {
    let runs = BlockReader::runs(std::iter::once((0, id, loc)));
    let mut opened = Vec::new();
    for run in runs {
        opened.extend(ctx.reader.read_run(run).await.map_err(|fault| parent_fault(ctx, fault, place))?);
    }
    opened.pop().map(|(_, plain)| plain).ok_or_else(|| Error::Internal("a read of one block returned none".into()))
}

fn parent_fault(ctx: &BlockCtx, fault: BlockFault, place: &BlockPlace) -> Error {
    match fault {
        BlockFault::Damaged { detail, .. } => Error::ParentCorrupt {
            what: format!("{} block {} of parent backup {}", place.path, place.block, ctx.parent_label),
            detail,
        },
        BlockFault::Other(e) => e,
    }
}

/// A block of an incremental file: the parent's entry as it is when nothing in it
/// changed, else the parent's plaintext with the changed pages laid over it.
async fn rebuild(
    ctx: &BlockCtx,
    patch: Patch,
    at_parent: Option<(ChunkId, BlockLocation)>,
    place: BlockPlace,
) -> Result<Result<BlockDone, Ready>> {
    let parent = at_parent.filter(|_| patch.keep > 0);
    if let Some((id, loc)) = parent {
        if patch.pages.is_empty() && patch.keep == patch.len && loc.raw_length as usize == patch.len {
            return Ok(Ok(BlockDone { id, raw_len: loc.raw_length, outcome: Outcome::Parent(loc) }));
        }
    }
    let parent_plain = match parent {
        Some((id, loc)) => Some(fetch_parent(ctx, id, loc, &place).await?),
        None => None,
    };
    let mut block = vec![0u8; patch.len];
    if let Some(plain) = &parent_plain {
        let keep = patch.keep.min(plain.len());
        block[..keep].copy_from_slice(&plain[..keep]);
    }
    for (at, page) in &patch.pages {
        block[*at..*at + page.len()].copy_from_slice(page);
    }
    Ok(Err(Ready { block: Bytes::from(block), at_parent, place, parent_plain }))
}

/// Rebuild the batch's patched blocks (reading the parents' concurrently); the
/// parent's unchanged blocks are done already.
async fn prepare(ctx: &BlockCtx, batch: Vec<PendingBlock>) -> Result<Vec<Result<BlockDone, Ready>>> {
    let jobs = batch.into_iter().map(|PendingBlock { content, at_parent, place }| async move {
        match content {
            Content::Whole(block) => Ok(Err(Ready { block, at_parent, place, parent_plain: None })),
            Content::Patched(patch) => rebuild(ctx, patch, at_parent, place).await,
        }
    });
    futures::future::try_join_all(jobs).await
}

/// Hash a batch of blocks; reuse the parent's blob for each unchanged one, store the
/// others, as deltas over the parent's versions where there are some. Batches keep
/// the cost of task switches per block low (a task per block cost a fifth of the CPU).
pub(super) async fn process_batch(ctx: Arc<BlockCtx>, batch: Vec<PendingBlock>) -> Result<Vec<BlockDone>> {
    let prepared = prepare(&ctx, batch).await?;
    let c = ctx.clone();
    let steps = on_rayon(move || {
        prepared
            .into_iter()
            .map(|item| {
                let Ready { block, at_parent, place, parent_plain } = match item {
                    Ok(done) => return (done.id, done.raw_len, Step::Done(done.outcome), None),
                    Err(ready) => ready,
                };
                let id = c.hasher.id(&block);
                let raw_len = block.len() as u32;
                let step = match at_parent {
                    Some((parent_id, loc)) if parent_id == id => Step::Done(Outcome::Parent(loc)),
                    _ if !c.recent.lock().unwrap_or_else(PoisonError::into_inner).claim(id) => {
                        Step::Done(Outcome::Repeat(block))
                    }
                    // The parent's plaintext is the delta base only when it is stored whole.
                    Some((parent_id, loc)) => {
                        Step::Changed(block, loc.delta_base(parent_id), parent_plain.filter(|_| loc.base.is_none()))
                    }
                    None => Step::Done(Outcome::New(blob::seal_block(&c.cipher, c.level, &id, &block), None)),
                };
                (id, raw_len, step, Some(place))
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let reader = &*ctx;
    let base_reads = steps.iter().map(|(_, _, step, place)| async move {
        match (step, place) {
            (Step::Changed(_, _, Some(plain)), _) => Ok(Some(plain.clone())),
            (Step::Changed(_, base, None), Some(place)) => fetch_base(reader, base, place).await.map(Some),
            _ => Ok(None),
        }
    });
    let base_plains = futures::future::try_join_all(base_reads).await?;
    seal_changed(ctx, steps, base_plains).await
}

/// What hashing decided for a block.
enum Step {
    Done(Outcome),
    /// Changed since the parent: a delta over `DeltaBase`, whose plaintext may be known.
    Changed(Bytes, DeltaBase, Option<Bytes>),
}

/// Compress and seal the changed blocks, as deltas over their bases' plaintext.
async fn seal_changed(
    ctx: Arc<BlockCtx>,
    steps: Vec<(ChunkId, u32, Step, Option<BlockPlace>)>,
    base_plains: Vec<Option<Bytes>>,
) -> Result<Vec<BlockDone>> {
    on_rayon(move || {
        steps
            .into_iter()
            .zip(base_plains)
            .map(|((id, raw_len, step, _place), base_plain)| {
                let outcome = match (step, base_plain) {
                    (Step::Changed(block, base, _), Some(plain)) => {
                        let (sealed, is_delta) =
                            blob::seal_changed_block(&ctx.cipher, ctx.level, &id, &block, (&base.id, &plain));
                        Outcome::New(sealed, is_delta.then_some(base))
                    }
                    (Step::Changed(block, _, _), None) => {
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
