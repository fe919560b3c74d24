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
use crate::repo::block_reader::{BlockFault, BlockReader, ChunkHasher, Fetched, Scattered};
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

fn parent_fault(ctx: &BlockCtx, fault: BlockFault, place: impl Fn(usize) -> Option<(Arc<str>, u64)>) -> Error {
    match fault {
        BlockFault::Damaged { n, detail } => {
            let what = place(n).map_or(String::new(), |(path, block)| format!("{path} block {block} of "));
            Error::ParentCorrupt { what: format!("{what}parent backup {}", ctx.parent_label), detail }
        }
        BlockFault::Other(e) => e,
    }
}

/// Where block `n` of a batch is, for messages.
fn place_in(batch: &[PendingBlock], n: usize) -> Option<(Arc<str>, u64)> {
    batch.get(n).map(|b| (b.place.path.clone(), b.place.block))
}

/// Whether an incremental file's block is the parent's entry as it is.
fn unchanged(patch: &Patch, loc: &BlockLocation) -> bool {
    patch.pages.is_empty() && patch.keep == patch.len && loc.raw_length as usize == patch.len
}

/// The parent's entry when the block is that entry as it is (an incremental file's
/// block with no changed page): nothing to read, hash or store.
pub(super) fn parent_as_is(content: &Content, at_parent: Option<(ChunkId, BlockLocation)>) -> Option<BlockDone> {
    match (content, at_parent) {
        (Content::Patched(patch), Some((id, loc))) if patch.keep > 0 && unchanged(patch, &loc) => {
            Some(BlockDone { id, raw_len: loc.raw_length, outcome: Outcome::Parent(loc) })
        }
        _ => None,
    }
}

/// The parent's block a patch needs read: it keeps some of the parent's bytes and is
/// not the parent's entry as it is.
fn parent_to_read(block: &PendingBlock) -> Option<(ChunkId, BlockLocation)> {
    match &block.content {
        Content::Patched(patch) if patch.keep > 0 && parent_as_is(&block.content, block.at_parent).is_none() => {
            block.at_parent
        }
        _ => None,
    }
}

/// A block of an incremental file: the parent's plaintext (`parent`, read when the
/// block keeps any of it) with the changed pages laid over it, zeros elsewhere.
fn rebuild(patch: Patch, parent: Option<&Scattered>) -> Bytes {
    let mut block = vec![0u8; patch.len];
    if let Some(parent) = parent {
        let keep = patch.keep.min(parent.plain.len());
        block[..keep].copy_from_slice(&parent.plain[..keep]);
    }
    for (at, page) in &patch.pages {
        block[*at..*at + page.len()].copy_from_slice(page);
    }
    Bytes::from(block)
}

/// Hash a batch of blocks; reuse the parent's blob for each unchanged one, store the
/// others, as deltas over the parent's versions where there are some. Batches keep
/// the cost of task switches per block low (a task per block cost a fifth of the
/// CPU); the parents a batch's patches need are read together, and opening them,
/// rebuilding, hashing and sealing is one job on the CPU pool.
pub(super) async fn process_batch(ctx: Arc<BlockCtx>, batch: Vec<PendingBlock>) -> Result<Vec<BlockDone>> {
    let as_is: Option<Vec<BlockDone>> = batch.iter().map(|b| parent_as_is(&b.content, b.at_parent)).collect();
    if let Some(done) = as_is {
        return Ok(done);
    }
    let wanted: Vec<_> =
        batch.iter().enumerate().filter_map(|(i, b)| parent_to_read(b).map(|(id, loc)| (i, id, loc))).collect();
    let fetched = match wanted.is_empty() {
        true => None,
        false => {
            Some(ctx.reader.fetch_scattered(wanted).await.map_err(|f| parent_fault(&ctx, f, |n| place_in(&batch, n)))?)
        }
    };
    let c = ctx.clone();
    let steps = on_rayon(move || hash_and_seal(&c, batch, fetched)).await??;
    if steps.iter().all(|(_, _, step, _)| matches!(step, Step::Done(_))) {
        return Ok(steps
            .into_iter()
            .filter_map(|(id, raw_len, step, _)| step.done().map(|outcome| BlockDone { id, raw_len, outcome }))
            .collect());
    }
    let base_plains = read_bases(&ctx, &steps).await?;
    seal_changed(ctx, steps, base_plains).await
}

type Stepped = (ChunkId, u32, Step, Option<BlockPlace>);

/// The CPU part of a batch: open the parents fetched for its patches, rebuild those,
/// hash every block, decide, and seal the changed blocks whose delta base is known.
fn hash_and_seal(ctx: &BlockCtx, batch: Vec<PendingBlock>, fetched: Option<Fetched>) -> Result<Vec<Stepped>> {
    let parents = match fetched {
        Some(f) => ctx.reader.open_fetched(f).map_err(|f| parent_fault(ctx, f, |n| place_in(&batch, n)))?,
        None => Vec::new(),
    };
    let mut parents = parents.into_iter().peekable();
    let steps = batch.into_iter().enumerate().map(|(i, PendingBlock { content, at_parent, place })| {
        if let Some(done) = parent_as_is(&content, at_parent) {
            return (done.id, done.raw_len, Step::Done(done.outcome), None);
        }
        let (block, base_plain) = match content {
            Content::Whole(block) => (block, None),
            Content::Patched(patch) => {
                let parent = parents.next_if(|p| p.n == i);
                (rebuild(patch, parent.as_ref()), parent.map(|p| p.base_plain))
            }
        };
        let (id, raw_len, step) = decide(ctx, block, at_parent, base_plain);
        (id, raw_len, step, Some(place))
    });
    Ok(steps.collect())
}

/// Hash a block and decide where it is kept; a changed block whose delta base is
/// known is sealed at once.
fn decide(
    c: &BlockCtx,
    block: Bytes,
    at_parent: Option<(ChunkId, BlockLocation)>,
    base_plain: Option<Bytes>,
) -> (ChunkId, u32, Step) {
    let id = c.hasher.id(&block);
    let raw_len = block.len() as u32;
    let step = match at_parent {
        Some((parent_id, loc)) if parent_id == id => Step::Done(Outcome::Parent(loc)),
        _ if !c.recent.lock().unwrap_or_else(PoisonError::into_inner).claim(id) => Step::Done(Outcome::Repeat(block)),
        Some((parent_id, loc)) => match base_plain {
            Some(plain) => Step::Done(seal(c, &id, &block, loc.delta_base(parent_id), Some(&plain))),
            None => Step::Changed(block, loc.delta_base(parent_id)),
        },
        None => Step::Done(Outcome::New(blob::seal_block(&c.cipher, c.level, &id, &block), None)),
    };
    (id, raw_len, step)
}

/// A changed block sealed as a delta over `base` (whole when its plaintext is unknown
/// or the delta would not pay).
fn seal(c: &BlockCtx, id: &ChunkId, block: &[u8], base: DeltaBase, base_plain: Option<&Bytes>) -> Outcome {
    let Some(plain) = base_plain else {
        return Outcome::New(blob::seal_block(&c.cipher, c.level, id, block), None);
    };
    let against = blob::BasePlain { id: base.id, plain, stored_len: Some(base.length as usize) };
    let (sealed, is_delta) = blob::seal_changed_block(&c.cipher, c.level, id, block, against);
    Outcome::New(sealed, is_delta.then_some(base))
}

/// The plaintext of each changed block's delta base, by position, read together
/// from the parent's packs (the blocks the server sent whole).
async fn read_bases(ctx: &BlockCtx, steps: &[Stepped]) -> Result<Vec<Option<Bytes>>> {
    let mut plains: Vec<Option<Bytes>> = vec![None; steps.len()];
    let wanted: Vec<(usize, ChunkId, BlockLocation)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, step, _))| match step {
            Step::Changed(_, base) => Some((i, base.id, base.whole_location())),
            Step::Done(_) => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(plains);
    }
    let place = |n: usize| steps.get(n).and_then(|(_, _, _, p)| p.as_ref()).map(|p| (p.path.clone(), p.block));
    for base in ctx.reader.read_scattered(wanted).await.map_err(|f| parent_fault(ctx, f, place))? {
        plains[base.n] = Some(base.plain);
    }
    Ok(plains)
}

/// What hashing decided for a block.
enum Step {
    Done(Outcome),
    /// Changed since the parent: a delta over `DeltaBase`, whose plaintext is still to
    /// be read.
    Changed(Bytes, DeltaBase),
}

impl Step {
    fn done(self) -> Option<Outcome> {
        match self {
            Step::Done(outcome) => Some(outcome),
            Step::Changed(..) => None,
        }
    }
}

/// Compress and seal the changed blocks, as deltas over their bases' plaintext.
async fn seal_changed(
    ctx: Arc<BlockCtx>,
    steps: Vec<Stepped>,
    base_plains: Vec<Option<Bytes>>,
) -> Result<Vec<BlockDone>> {
    on_rayon(move || {
        steps
            .into_iter()
            .zip(base_plains)
            .map(|((id, raw_len, step, _place), base_plain)| {
                let outcome = match step {
                    Step::Changed(block, base) => seal(&ctx, &id, &block, base, base_plain.as_ref()),
                    Step::Done(outcome) => outcome,
                };
                BlockDone { id, raw_len, outcome }
            })
            .collect()
    })
    .await
}
