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
use crate::repo::block_reader::{BlockFault, BlockReader, ChunkHasher, Scattered};
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

impl Content {
    /// Whether a worker has anything to do for it: a block of an incremental file
    /// with no changed page is the parent's (or zeros, or the parent's cut short).
    pub(super) fn is_work(&self) -> bool {
        match self {
            Content::Whole(_) => true,
            Content::Patched(patch) => !patch.pages.is_empty(),
        }
    }
}

/// A block rebuilt from the parent's: its first `keep` bytes, the changed `pages`
/// (offset in the block, bytes) laid over them, zeros elsewhere, `len` bytes long.
pub(super) struct Patch {
    pub len: usize,
    pub keep: usize,
    pub pages: Vec<(usize, Bytes)>,
}

/// A block of a batch before hashing: done (the parent's entry as it is) or ready.
enum Prepared {
    Done(BlockDone),
    Ready(Ready),
}

/// A block ready to be hashed, with the plaintext of the parent's delta base when it
/// was read already (for a patch).
struct Ready {
    block: Bytes,
    at_parent: Option<(ChunkId, BlockLocation)>,
    place: BlockPlace,
    base_plain: Option<Bytes>,
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

fn parent_fault(ctx: &BlockCtx, fault: BlockFault, place: Option<&BlockPlace>) -> Error {
    match fault {
        BlockFault::Damaged { detail, .. } => {
            let what = place.map_or(String::new(), |p| format!("{} block {} of ", p.path, p.block));
            Error::ParentCorrupt { what: format!("{what}parent backup {}", ctx.parent_label), detail }
        }
        BlockFault::Other(e) => e,
    }
}

/// Read the parent's blobs of `wanted` (a batch's blocks), each with the plaintext a
/// delta of it is compressed against, in one scattered read.
async fn read_parents(
    ctx: &BlockCtx,
    wanted: Vec<(usize, ChunkId, BlockLocation)>,
    places: &[Option<&BlockPlace>],
) -> Result<Vec<Scattered>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    ctx.reader.read_scattered(wanted).await.map_err(|fault| {
        let n = match &fault {
            BlockFault::Damaged { n, .. } => Some(*n),
            BlockFault::Other(_) => None,
        };
        parent_fault(ctx, fault, n.and_then(|n| places.get(n).copied().flatten()))
    })
}

/// Whether an incremental file's block is the parent's entry as it is.
fn unchanged(patch: &Patch, loc: &BlockLocation) -> bool {
    patch.pages.is_empty() && patch.keep == patch.len && loc.raw_length as usize == patch.len
}

/// The parent's block a patch needs read: it keeps some of the parent's bytes and is
/// not the parent's entry as it is.
fn parent_to_read(block: &PendingBlock) -> Option<(ChunkId, BlockLocation)> {
    match (&block.content, block.at_parent) {
        (Content::Patched(patch), Some((id, loc))) if patch.keep > 0 && !unchanged(patch, &loc) => Some((id, loc)),
        _ => None,
    }
}

/// A block of an incremental file: the parent's entry as it is when nothing in it
/// changed, else the parent's plaintext (`parent`, read when it keeps any of it) with
/// the changed pages laid over it.
fn rebuild(
    patch: Patch,
    at_parent: Option<(ChunkId, BlockLocation)>,
    place: BlockPlace,
    parent: Option<Scattered>,
) -> Prepared {
    if let Some((id, loc)) = at_parent.filter(|(_, loc)| patch.keep > 0 && unchanged(&patch, loc)) {
        return Prepared::Done(BlockDone { id, raw_len: loc.raw_length, outcome: Outcome::Parent(loc) });
    }
    let mut block = vec![0u8; patch.len];
    if let Some(parent) = &parent {
        let keep = patch.keep.min(parent.plain.len());
        block[..keep].copy_from_slice(&parent.plain[..keep]);
    }
    for (at, page) in &patch.pages {
        block[*at..*at + page.len()].copy_from_slice(page);
    }
    Prepared::Ready(Ready { block: Bytes::from(block), at_parent, place, base_plain: parent.map(|p| p.base_plain) })
}

/// Rebuild the batch's patched blocks over their parents' (read together); the
/// parent's unchanged blocks are done already.
async fn prepare(ctx: &BlockCtx, batch: Vec<PendingBlock>) -> Result<Vec<Prepared>> {
    let wanted: Vec<_> =
        batch.iter().enumerate().filter_map(|(i, b)| parent_to_read(b).map(|(id, loc)| (i, id, loc))).collect();
    let places: Vec<Option<&BlockPlace>> = batch.iter().map(|b| Some(&b.place)).collect();
    let mut parents = read_parents(ctx, wanted, &places).await?.into_iter().peekable();
    let prepared = batch.into_iter().enumerate().map(|(i, PendingBlock { content, at_parent, place })| {
        let parent = parents.next_if(|p| p.n == i);
        match content {
            Content::Whole(block) => Prepared::Ready(Ready { block, at_parent, place, base_plain: None }),
            Content::Patched(patch) => rebuild(patch, at_parent, place, parent),
        }
    });
    Ok(prepared.collect())
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
                let Ready { block, at_parent, place, base_plain } = match item {
                    Prepared::Done(done) => return (done.id, done.raw_len, Step::Done(done.outcome), None),
                    Prepared::Ready(ready) => ready,
                };
                let id = c.hasher.id(&block);
                let raw_len = block.len() as u32;
                let step = match at_parent {
                    Some((parent_id, loc)) if parent_id == id => Step::Done(Outcome::Parent(loc)),
                    _ if !c.recent.lock().unwrap_or_else(PoisonError::into_inner).claim(id) => {
                        Step::Done(Outcome::Repeat(block))
                    }
                    Some((parent_id, loc)) => Step::Changed(block, loc.delta_base(parent_id), base_plain),
                    None => Step::Done(Outcome::New(blob::seal_block(&c.cipher, c.level, &id, &block), None)),
                };
                (id, raw_len, step, Some(place))
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let base_plains = read_bases(&ctx, &steps).await?;
    seal_changed(ctx, steps, base_plains).await
}

/// The plaintext of each changed block's delta base, by position: known already for
/// patches, else read (together) from the parent's packs.
async fn read_bases(ctx: &BlockCtx, steps: &[(ChunkId, u32, Step, Option<BlockPlace>)]) -> Result<Vec<Option<Bytes>>> {
    let mut plains: Vec<Option<Bytes>> = steps
        .iter()
        .map(|(_, _, step, _)| match step {
            Step::Changed(_, _, known) => known.clone(),
            Step::Done(_) => None,
        })
        .collect();
    let wanted: Vec<(usize, ChunkId, BlockLocation)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, step, _))| match step {
            Step::Changed(_, base, None) => Some((i, base.id, base.whole_location())),
            _ => None,
        })
        .collect();
    let places: Vec<Option<&BlockPlace>> = steps.iter().map(|(_, _, _, place)| place.as_ref()).collect();
    for base in read_parents(ctx, wanted, &places).await? {
        plains[base.n] = Some(base.plain);
    }
    Ok(plains)
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
                        let stored_len = Some(base.length as usize);
                        let against = blob::BasePlain { id: base.id, plain: &plain, stored_len };
                        let (sealed, is_delta) = blob::seal_changed_block(&ctx.cipher, ctx.level, &id, &block, against);
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
