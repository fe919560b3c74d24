//! Block codec: chunk id, compress-then-seal, and the reverse with verification.
//! Pure CPU work, called from rayon.

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
}

pub fn compress(level: i32, data: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).expect("valid zstd level")));
        }
        c.as_mut().unwrap().1.compress(data).expect("zstd compression of an in-memory buffer")
    })
}

pub fn decompress(data: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().unwrap().decompress(data, raw_len)
    })
}

/// Compress, then seal with the chunk id as associated data.
pub fn seal_block(cipher: &Cipher, level: i32, id: &ChunkId, data: &[u8]) -> Vec<u8> {
    cipher.seal(&id.0, &compress(level, data))
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
}
