//! Block codec: chunk id, compress-then-seal, and the reverse with verification.
//! Pure CPU work, called from rayon.
//!
//! A changed block of a diff or incr may be stored as a *delta*: zstd with the base
//! blob's plaintext (the parent's version of the block) as a raw-content prefix.
//! PostgreSQL rewrites a few bytes of a page per change, so a delta is typically
//! 20–30x smaller than the block compressed alone. Its associated data binds both
//! ids, and the result is verified against the block's own chunk id.

use std::cell::RefCell;

use super::format::ChunkId;
use crate::crypto::Cipher;

/// Keyed BLAKE3 of a block's plaintext.
pub fn chunk_id(key: &[u8; 32], data: &[u8]) -> ChunkId {
    ChunkId(*blake3::keyed_hash(key, data).as_bytes())
}

thread_local! {
    // Compressor contexts are expensive to create; one per rayon thread and level.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    // Delta contexts too: creating one runs CPUID, which traps in a virtual machine; a
    // context per changed block cost a tenth of an incremental backup's CPU.
    static DELTA_CCTX: RefCell<Option<zstd::zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static DELTA_DCTX: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// `prefix` as if it lived for ever, for this thread's cached delta contexts.
///
/// SAFETY: the caller hands it to zstd for one frame and clears it from the context
/// (`disable_dictionary`) before returning, on every path, so no reference outlives
/// the borrow. zstd only reads a referenced prefix (ZSTD_CCtx_refPrefix and
/// ZSTD_DCtx_refPrefix: "prefix is only used once", for the next frame).
unsafe fn for_one_frame(prefix: &[u8]) -> &'static [u8] {
    // SAFETY: see the function's contract; the pointer and length come from a live slice.
    unsafe { std::slice::from_raw_parts(prefix.as_ptr(), prefix.len()) }
}

/// zstd at `level` of one block, with this thread's cached compressor.
// Invariant: zstd clamps an out-of-range level rather than refusing it, bulk
// compression into a buffer of compressBound bytes cannot run out of room, and the
// cached compressor is set just above.
#[allow(clippy::expect_used)]
pub fn compress(level: i32, data: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).expect("valid zstd level")));
        }
        c.as_mut().expect("set above").1.compress(data).expect("zstd compression of an in-memory buffer")
    })
}

// Invariant: the cached decompressor is set just above when missing.
#[allow(clippy::expect_used)]
pub(crate) fn decompress(data: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("set above").decompress(data, raw_len)
    })
}

/// Decompress one or more concatenated zstd frames of unknown total size, refusing
/// more than `limit` bytes of output: in an unencrypted stanza nothing authenticates
/// the input, and a small frame can claim gigabytes.
pub(crate) fn decompress_bounded(data: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(data)?.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!("decompresses to more than {limit} bytes")));
    }
    Ok(out)
}

/// Compress, then seal with the chunk id as associated data.
pub fn seal_block(cipher: &Cipher, level: i32, id: &ChunkId, data: &[u8]) -> Vec<u8> {
    cipher.seal(&id.0, &compress(level, data))
}

/// `data` compressed with `base` as zstd's raw-content prefix, with this thread's
/// context; None if zstd refuses (the block is then stored whole).
pub(crate) fn compress_delta(level: i32, base: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    DELTA_CCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        let cctx = cell.get_or_insert_with(CCtx::create);
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        // SAFETY: cleared below before `base`'s borrow ends (for_one_frame).
        let prefix = unsafe { for_one_frame(base) };
        let done = cctx
            .set_parameter(CParameter::CompressionLevel(level))
            .and_then(|_| cctx.ref_prefix(prefix))
            .and_then(|_| cctx.compress2(&mut out, data));
        if cctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly).and_then(|_| cctx.disable_dictionary()).is_err() {
            // A context that cannot forget the prefix is never used again.
            *cell = None;
        }
        done.ok().map(|_| out)
    })
}

/// A delta blob's plaintext: `data` decompressed with `base` as its raw prefix, with
/// this thread's context.
pub(crate) fn decompress_delta(base: &[u8], data: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::DCtx;
    DELTA_DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        let dctx = cell.get_or_insert_with(DCtx::create);
        let mut out = Vec::with_capacity(raw_len);
        // SAFETY: cleared below before `base`'s borrow ends (for_one_frame).
        let prefix = unsafe { for_one_frame(base) };
        let done = dctx.ref_prefix(prefix).and_then(|_| dctx.decompress(&mut out, data));
        if dctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly).and_then(|_| dctx.disable_dictionary()).is_err() {
            // A context that cannot forget the prefix is never used again.
            *cell = None;
        }
        done.map_err(|c| std::io::Error::other(zstd::zstd_safe::get_error_name(c)))?;
        Ok(out)
    })
}

/// Associated data of a delta: its chunk id, then its base's.
fn delta_aad(id: &ChunkId, base: &ChunkId) -> [u8; 64] {
    let mut aad = [0u8; 64];
    aad[..32].copy_from_slice(&id.0);
    aad[32..].copy_from_slice(&base.0);
    aad
}

/// The version of a block that a changed block is stored against: its id, its
/// plaintext, and its stored (sealed) size when known.
pub struct BasePlain<'a> {
    /// The base's chunk id (bound into the delta's AAD).
    pub id: ChunkId,
    /// The base's plaintext (zstd's prefix).
    pub plain: &'a [u8],
    /// The base's sealed size in the repository, when the caller knows it.
    pub stored_len: Option<usize>,
}

/// A changed block, sealed whole or as a delta over `base`: the delta when it is tiny
/// or at most half the whole blob, since restoring it costs a second read. The whole
/// blob is compressed only when the delta might lose: a block this close to its base
/// compresses to about the base's stored size, so a delta at most a third of that
/// wins untried. Returns the sealed bytes and whether they are a delta.
pub fn seal_changed_block(
    cipher: &Cipher,
    level: i32,
    id: &ChunkId,
    data: &[u8],
    base: BasePlain<'_>,
) -> (Vec<u8>, bool) {
    // Below this a whole blob cannot be enough smaller to be worth compressing for.
    const TINY_DELTA: usize = 64;
    let Some(delta) = compress_delta(level, base.plain, data) else {
        return (seal_block(cipher, level, id, data), false);
    };
    let clearly_smaller = base.stored_len.is_some_and(|stored| delta.len() * 3 <= stored);
    if delta.len() > TINY_DELTA && !clearly_smaller {
        let whole = compress(level, data);
        if delta.len() * 2 > whole.len() {
            return (cipher.seal(&id.0, &whole), false);
        }
    }
    (cipher.seal(&delta_aad(id, &base.id), &delta), true)
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("decryption failed: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("decompression failed: {0}")]
    Decompress(std::io::Error),
    #[error("decompressed to {got} bytes, index says {want}")]
    Length { got: usize, want: usize },
    #[error("content does not match its chunk id")]
    IdMismatch,
}

/// Open, decompress and verify a stored block against its id.
pub fn open_block(
    cipher: &Cipher,
    chunk_key: &[u8; 32],
    id: &ChunkId,
    sealed: &[u8],
    raw_len: usize,
) -> Result<Vec<u8>, BlockError> {
    let compressed = cipher.open(&id.0, sealed)?;
    let data = decompress(&compressed, raw_len).map_err(BlockError::Decompress)?;
    if data.len() != raw_len {
        return Err(BlockError::Length { got: data.len(), want: raw_len });
    }
    if chunk_id(chunk_key, &data) != *id {
        return Err(BlockError::IdMismatch);
    }
    Ok(data)
}

/// Open, decompress against its base's plaintext and verify a delta blob.
pub fn open_delta_block(
    cipher: &Cipher,
    chunk_key: &[u8; 32],
    id: &ChunkId,
    base: (&ChunkId, &[u8]),
    sealed: &[u8],
    raw_len: usize,
) -> Result<Vec<u8>, BlockError> {
    let compressed = cipher.open(&delta_aad(id, base.0), sealed)?;
    let data = decompress_delta(base.1, &compressed, raw_len).map_err(BlockError::Decompress)?;
    if data.len() != raw_len {
        return Err(BlockError::Length { got: data.len(), want: raw_len });
    }
    if chunk_id(chunk_key, &data) != *id {
        return Err(BlockError::IdMismatch);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random_bytes;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn block_round_trip(data in proptest::collection::vec(any::<u8>(), 0..70_000), level in 1i32..4, encrypted in any::<bool>()) {
            let key = random_bytes();
            let cipher = if encrypted { Cipher::aes(&random_bytes()) } else { Cipher::Plain };
            let id = chunk_id(&key, &data);
            let sealed = seal_block(&cipher, level, &id, &data);
            prop_assert_eq!(open_block(&cipher, &key, &id, &sealed, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn ids_are_keyed() {
        assert_ne!(chunk_id(&[1; 32], b"page"), chunk_id(&[2; 32], b"page"));
        assert_eq!(chunk_id(&[1; 32], b"page"), chunk_id(&[1; 32], b"page"));
    }

    #[test]
    fn swapped_block_is_refused() {
        let key = random_bytes();
        let cipher = Cipher::aes(&random_bytes());
        let (a, b) = (vec![1u8; 8192], vec![2u8; 8192]);
        let (ida, idb) = (chunk_id(&key, &a), chunk_id(&key, &b));
        let sealed_b = seal_block(&cipher, 3, &idb, &b);
        // Presenting b's blob under a's id fails authentication.
        assert!(matches!(open_block(&cipher, &key, &ida, &sealed_b, 8192), Err(BlockError::Crypto(_))));
        // Unencrypted: the id check catches it.
        let sealed_b = seal_block(&Cipher::Plain, 3, &idb, &b);
        assert!(matches!(open_block(&Cipher::Plain, &key, &ida, &sealed_b, 8192), Err(BlockError::IdMismatch)));
    }

    /// A page with a few bytes changed is stored as a small delta that opens only
    /// against its own base; a rewritten block is stored whole.
    #[test]
    fn deltas_are_small_and_bound_to_their_base() {
        let key = random_bytes();
        let cipher = Cipher::aes(&random_bytes());
        let old: Vec<u8> = (0..32768).map(|_| rand::random::<u8>()).collect();
        let mut new = old.clone();
        new[100..108].copy_from_slice(b"changed!");
        let (old_id, id) = (chunk_id(&key, &old), chunk_id(&key, &new));
        let base = BasePlain { id: old_id, plain: &old, stored_len: None };
        let (sealed, is_delta) = seal_changed_block(&cipher, 3, &id, &new, base);
        assert!(is_delta && sealed.len() < 200, "{} bytes", sealed.len());
        assert_eq!(open_delta_block(&cipher, &key, &id, (&old_id, &old), &sealed, new.len()).unwrap(), new);
        // Another base, even one claiming the right id, does not reproduce the block.
        let other = vec![0u8; 32768];
        assert!(matches!(
            open_delta_block(&cipher, &key, &id, (&old_id, &other), &sealed, new.len()),
            Err(BlockError::Decompress(_) | BlockError::Length { .. } | BlockError::IdMismatch)
        ));
        assert!(matches!(
            open_delta_block(&cipher, &key, &id, (&id, &old), &sealed, new.len()),
            Err(BlockError::Crypto(_))
        ));
        // Nothing in common with the base: stored whole.
        let fresh: Vec<u8> = (0..32768).map(|_| rand::random::<u8>()).collect();
        let fresh_id = chunk_id(&key, &fresh);
        let base = BasePlain { id: old_id, plain: &old, stored_len: None };
        let (sealed, is_delta) = seal_changed_block(&cipher, 3, &fresh_id, &fresh, base);
        assert!(!is_delta);
        assert_eq!(open_block(&cipher, &key, &fresh_id, &sealed, fresh.len()).unwrap(), fresh);
    }

    /// One thread's zstd contexts over many blocks: each delta is bound to its own
    /// base, never to the previous block's (the contexts are reused, prefixes not).
    #[test]
    fn reused_contexts_bind_each_delta_to_its_own_base() {
        let key = random_bytes();
        let cipher = Cipher::aes(&random_bytes());
        let bases: Vec<Vec<u8>> = (0..3).map(|_| (0..32768).map(|_| rand::random::<u8>()).collect()).collect();
        let base_ids: Vec<ChunkId> = bases.iter().map(|b| chunk_id(&key, b)).collect();
        for (base, base_id) in bases.iter().zip(&base_ids) {
            let mut new = base.clone();
            new[5000..5010].copy_from_slice(b"0123456789");
            let id = chunk_id(&key, &new);
            let (sealed, is_delta) =
                seal_changed_block(&cipher, 3, &id, &new, BasePlain { id: *base_id, plain: base, stored_len: None });
            assert!(is_delta && sealed.len() < 200, "{} bytes", sealed.len());
            assert_eq!(open_delta_block(&cipher, &key, &id, (base_id, base), &sealed, new.len()).unwrap(), new);
        }
    }

    /// The base's stored size decides for a clearly small delta; otherwise the whole
    /// blob is compressed and the smaller kept, as without the size.
    #[test]
    fn the_base_size_spares_the_whole_compression_only_when_the_delta_clearly_wins() {
        let key = random_bytes();
        let cipher = Cipher::Plain;
        // A block of zeros with a random page: its delta against an all-zero base is
        // about a page, the whole blob about the same, so whole wins on its own.
        let base = vec![0u8; 32768];
        let mut new = base.clone();
        new[..8192].copy_from_slice(&(0..8192).map(|_| rand::random::<u8>()).collect::<Vec<_>>());
        let (base_id, id) = (chunk_id(&key, &base), chunk_id(&key, &new));
        let plain = |stored_len| BasePlain { id: base_id, plain: &base, stored_len };
        let (_, is_delta) = seal_changed_block(&cipher, 3, &id, &new, plain(None));
        assert!(!is_delta, "without the size, the smaller whole blob is kept");
        let (_, is_delta) = seal_changed_block(&cipher, 3, &id, &new, plain(Some(9000)));
        assert!(!is_delta, "a base of 9000 bytes: the delta may lose, so the whole blob is compared");
        let (sealed, is_delta) = seal_changed_block(&cipher, 3, &id, &new, plain(Some(30000)));
        assert!(is_delta, "a base of 30000 bytes: a delta of a third of it wins untried");
        assert_eq!(open_delta_block(&cipher, &key, &id, (&base_id, &base), &sealed, new.len()).unwrap(), new);
    }
}
