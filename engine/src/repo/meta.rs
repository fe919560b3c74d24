//! Sealed metadata objects (§6): JSON or binary payload → zstd → AES-256-GCM with
//! the object's key as associated data, so an object moved to another name fails.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use super::blocklist::{self, BlockPart};
use super::format::*;
use super::{blob, Repository};
use crate::error::{Error, Result};

/// Largest plaintext of a metadata object (a manifest of millions of files stays far
/// below): a bound on what a forged frame in an unencrypted stanza can make us allocate.
const MAX_METADATA_LEN: u64 = 4 << 30;

impl Repository {
    /// Write a metadata object: JSON → zstd → sealed with the object key as AAD.
    pub(crate) async fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let json = serde_json::to_vec(value).map_err(|e| Error::Internal(format!("{key} not serialisable: {e}")))?;
        self.put_meta_bytes(key, &json).await
    }

    /// Write a metadata object whose payload is already bytes.
    pub(crate) async fn put_meta_bytes(&self, key: &str, plain: &[u8]) -> Result<()> {
        let sealed = self.meta.seal(meta_aad(key).as_bytes(), &blob::compress(3, plain));
        self.storage.put_new(key, Bytes::from(sealed)).await
    }

    /// Read, authenticate and decompress a metadata object.
    pub(crate) async fn get_meta_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let sealed = self.storage.get(key).await?;
        let compressed = self
            .meta
            .open(meta_aad(key).as_bytes(), &sealed)
            .map_err(|e| Error::Corrupt { what: format!("repository object {key}"), detail: e.to_string() })?;
        blob::decompress_bounded(&compressed, MAX_METADATA_LEN)
            .map_err(|e| Error::Corrupt { what: format!("repository object {key}"), detail: format!("zstd: {e}") })
    }

    /// Read a metadata object and parse its JSON.
    pub(crate) async fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let plain = self.get_meta_bytes(key).await?;
        serde_json::from_slice(&plain)
            .map_err(|e| Error::Corrupt { what: format!("repository object {key}"), detail: e.to_string() })
    }

    /// Write block list part `n` of backup `label`.
    pub(crate) async fn put_block_part(&self, label: &str, n: u32, part: &BlockPart) -> Result<()> {
        self.put_meta_bytes(&blocklist::block_part_key(label, n), &part.encode()).await
    }

    /// Read and decode block list part `n` of backup `label`.
    pub(crate) async fn load_block_part(&self, label: &str, n: u32) -> Result<BlockPart> {
        let key = blocklist::block_part_key(label, n);
        let plain = self.get_meta_bytes(&key).await?;
        BlockPart::decode(&plain).map_err(|detail| Error::Corrupt { what: format!("repository object {key}"), detail })
    }
}

fn meta_aad(key: &str) -> String {
    format!("{AAD_METADATA_PREFIX}{key}")
}
