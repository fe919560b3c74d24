//! WAL objects: one per archived file, found from its name with one GET.
//!
//! ```text
//! object = "PGCWAL01" ‖ content id (32) ‖ seal(wal key, AAD = "pgcairn wal v1:" ‖ object key, zstd frames)
//! ```
//! The content id (keyed BLAKE3 of the plaintext) sits in the clear so a re-push can
//! be compared with one ranged read, without decrypting.

use bytes::Bytes;
use rayon::prelude::*;

use super::format::{ChunkId, INFO_WAL, WAL_MAGIC, WAL_PREFIX};
use super::{blob, Repository};
use crate::error::{Error, Result, StorageErrorKind};
use crate::pg::wal::WalFile;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// The same content was already archived (PostgreSQL retried after a crash).
    AlreadyArchived,
}

pub(crate) const WAL_HEADER_LEN: usize = WAL_MAGIC.len() + 32;
/// Compressed in independent 1 MiB frames so a 16 MiB segment uses every core.
const FRAME: usize = 1 << 20;

/// `wal/<timeline>/<file name>`.
pub(crate) fn wal_key(timeline: u32, name: &str) -> String {
    format!("{WAL_PREFIX}{timeline:08X}/{name}")
}

/// The content id stored in a WAL object's header.
pub(crate) fn object_content_id(object: &[u8]) -> Option<ChunkId> {
    if object.len() < WAL_HEADER_LEN || &object[..WAL_MAGIC.len()] != WAL_MAGIC {
        return None;
    }
    Some(ChunkId(object[WAL_MAGIC.len()..WAL_HEADER_LEN].try_into().ok()?))
}

impl Repository {
    fn wal_cipher(&self) -> crate::crypto::Cipher {
        self.purpose_cipher(INFO_WAL)
    }

    /// Keyed BLAKE3 of a WAL file's contents, kept in its object's header: verifies a
    /// read and recognises a re-push of the same file.
    pub fn wal_content_id(&self, data: &[u8]) -> ChunkId {
        let mut h = blake3::Hasher::new_keyed(self.chunk_key());
        h.update_rayon(data);
        ChunkId(*h.finalize().as_bytes())
    }

    /// Build the object for WAL file contents `data` stored under `key`.
    pub fn encode_wal(&self, key: &str, data: &[u8], level: i32) -> (ChunkId, Bytes) {
        let (id, frames) = rayon::join(
            || self.wal_content_id(data),
            || data.par_chunks(FRAME).map(|c| blob::compress(level, c)).collect::<Vec<_>>(),
        );
        (id, self.seal_wal_frames(key, id, &frames))
    }

    fn seal_wal(&self, key: &str, id: ChunkId, compressed: Vec<u8>) -> Bytes {
        self.seal_wal_frames(key, id, &[compressed])
    }

    /// The object: header, then the frames sealed as one (in place, one buffer).
    fn seal_wal_frames(&self, key: &str, id: ChunkId, frames: &[Vec<u8>]) -> Bytes {
        let mut out = Vec::new();
        out.extend_from_slice(WAL_MAGIC);
        out.extend_from_slice(&id.0);
        self.wal_cipher().seal_parts_into(wal_aad(key).as_bytes(), frames, &mut out);
        Bytes::from(out)
    }

    /// Open a WAL object and verify its contents against its content id.
    pub fn decode_wal(&self, key: &str, object: &[u8]) -> Result<Vec<u8>> {
        let corrupt = |detail: String| Error::Corrupt { what: format!("archived wal {key}"), detail };
        let id = object_content_id(object).ok_or_else(|| corrupt("no pgcairn wal header".into()))?;
        let compressed = self
            .wal_cipher()
            .open(wal_aad(key).as_bytes(), &object[WAL_HEADER_LEN..])
            .map_err(|e| corrupt(e.to_string()))?;
        // No archived file is larger than a segment (history and backup files are small).
        let limit = self.config().wal_segment_size as u64;
        let data = blob::decompress_bounded(&compressed, limit).map_err(|e| corrupt(format!("zstd: {e}")))?;
        if self.wal_content_id(&data) != id {
            return Err(corrupt("content does not match its id".into()));
        }
        Ok(data)
    }
}

/// The WAL archive: one object per file, found by name (§6.4). Callers validate
/// what they push (pg::wal); these methods own the keys, the encoding and the
/// create-only rule.
impl Repository {
    /// Store WAL file `name` of `timeline`; durable when this returns. A second push
    /// of the same content succeeds without writing; different content is refused
    /// and the archived copy kept.
    pub async fn put_wal(&self, timeline: u32, name: &str, data: &[u8], level: i32) -> Result<PushOutcome> {
        let key = wal_key(timeline, name);
        let (id, object) = tokio::task::block_in_place(|| self.encode_wal(&key, data, level));
        self.put_wal_object(&key, name, id, object).await
    }

    /// Store a growing WAL file (wal-receive's streamed objects) with `encoder`, which
    /// compresses and hashes only what was added since its last call.
    pub(crate) async fn put_wal_growing(
        &self,
        timeline: u32,
        name: &str,
        data: &[u8],
        encoder: &mut GrowingWal,
        level: i32,
    ) -> Result<PushOutcome> {
        let key = wal_key(timeline, name);
        let (id, compressed) = tokio::task::block_in_place(|| encoder.encode(self, data, level));
        let object = tokio::task::block_in_place(|| self.seal_wal(&key, id, compressed));
        self.put_wal_object(&key, name, id, object).await
    }

    async fn put_wal_object(&self, key: &str, name: &str, id: ChunkId, object: Bytes) -> Result<PushOutcome> {
        match self.storage().put_new(key, object).await {
            Ok(()) => Ok(PushOutcome::Stored),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::AlreadyExists) => {
                let head = self.storage().get_range(key, 0..WAL_HEADER_LEN as u64).await?;
                if object_content_id(&head) == Some(id) {
                    Ok(PushOutcome::AlreadyArchived)
                } else {
                    Err(Error::WalMismatch { name: name.to_string(), location: self.location() })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The archived file, verified; None when it is not in the archive.
    pub async fn get_wal(&self, timeline: u32, name: &str) -> Result<Option<Vec<u8>>> {
        let key = wal_key(timeline, name);
        match self.storage().get(&key).await {
            Ok(object) => Ok(Some(tokio::task::block_in_place(|| self.decode_wal(&key, &object))?)),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the file is archived (one ranged read of its header).
    pub async fn wal_exists(&self, timeline: u32, name: &str) -> Result<bool> {
        match self.storage().get_range(&wal_key(timeline, name), 0..WAL_HEADER_LEN as u64).await {
            Ok(_) => Ok(true),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete archived WAL files by name (expiry), a few at a time.
    pub(crate) async fn delete_wal(&self, names: &[(String, u64)]) -> Result<super::gc::Deleted> {
        let mut keys = Vec::with_capacity(names.len());
        for (name, size) in names {
            let file = WalFile::parse(name).ok_or_else(|| Error::Internal(format!("{name} is not a WAL file name")))?;
            keys.push((wal_key(file.timeline(), name), *size));
        }
        self.delete_all(keys.into_iter()).await
    }
}

/// The encoding of a WAL file that only grows (the segment wal-receive is receiving):
/// its whole 1 MiB frames are compressed and hashed once, then only the tail, so a
/// store costs what was added, not the whole file. Its output is what
/// [`Repository::encode_wal`] makes of the same bytes (same frames, same id).
pub(crate) struct GrowingWal {
    frames: Vec<u8>,
    hasher: blake3::Hasher,
    /// Bytes of the file in `frames` and `hasher` (whole frames).
    done: usize,
}

impl GrowingWal {
    pub(crate) fn new(repo: &Repository) -> Self {
        GrowingWal { frames: Vec::new(), hasher: blake3::Hasher::new_keyed(repo.chunk_key()), done: 0 }
    }

    /// Content id and compressed frames of `data`, which must extend what the
    /// previous call saw (else everything is encoded again).
    fn encode(&mut self, repo: &Repository, data: &[u8], level: i32) -> (ChunkId, Vec<u8>) {
        if data.len() < self.done {
            *self = GrowingWal::new(repo);
        }
        let whole = data.len() / FRAME * FRAME;
        for frame in data[self.done..whole].chunks(FRAME) {
            self.frames.extend_from_slice(&blob::compress(level, frame));
            self.hasher.update(frame);
        }
        self.done = whole;
        let tail = &data[whole..];
        let id = ChunkId(*self.hasher.clone().update(tail).finalize().as_bytes());
        let mut compressed = self.frames.clone();
        if !tail.is_empty() {
            compressed.extend_from_slice(&blob::compress(level, tail));
        }
        (id, compressed)
    }
}

/// How often a streamed object that vanished while read is looked up again.
const STREAMED_TRIES: usize = 5;

/// Streamed objects (§6.4): wal-receive's refreshed copy of the segment it is
/// receiving. Recovery reads one only past the archive's last segment.
impl Repository {
    /// Every streamed object of `segment` (a segment file name) of `timeline`: name,
    /// bytes received, stored size; fewest bytes first.
    pub(crate) async fn streamed_parts(&self, timeline: u32, segment: &str) -> Result<Vec<(String, u32, u64)>> {
        let mut parts = Vec::new();
        for o in self.storage().list(&wal_key(timeline, &format!("{segment}."))).await? {
            let name = o.key.rsplit('/').next().unwrap_or_default();
            if let Some(WalFile::Streamed { upto, .. }) = WalFile::parse(name) {
                parts.push((name.to_string(), upto, o.size));
            }
        }
        parts.sort_by_key(|p| p.1);
        Ok(parts)
    }

    /// The newest streamed copy of `segment`, for recovery past the last archived
    /// segment; None when there is none, or when its timeline was abandoned (a history
    /// file of the next timeline is archived: what the old timeline streamed after
    /// the switch is not the end of the archive).
    pub(crate) async fn streamed_wal(&self, segment: &str) -> Result<Option<Vec<u8>>> {
        let Some(WalFile::Segment { timeline, .. }) = WalFile::parse(segment) else { return Ok(None) };
        let next = timeline + 1;
        if self.wal_exists(next, &format!("{next:08X}.history")).await? {
            tracing::info!("{segment} is not read from wal-receive: timeline {next} branched off timeline {timeline}");
            return Ok(None);
        }
        // wal-receive replaces its object while we read: the one listed may be gone
        // (a newer one, or the whole segment, took its place). List again, a few times,
        // before saying the segment is absent: that would end recovery early.
        for _ in 0..STREAMED_TRIES {
            let Some((name, upto, _)) = self.streamed_parts(timeline, segment).await?.pop() else {
                return self.get_wal(timeline, segment).await;
            };
            if let Some(mut data) = self.get_wal(timeline, &name).await? {
                // What PostgreSQL reads: the segment with zeros after the streamed part.
                data.resize(self.config().wal_segment_size as usize, 0);
                tracing::info!(
                    "{segment} is not archived yet: serving its first {upto} bytes as streamed by wal-receive"
                );
                return Ok(Some(data));
            }
            if let Some(data) = self.get_wal(timeline, segment).await? {
                return Ok(Some(data));
            }
        }
        // Transient: archive-get tries again within archive-get-timeout.
        Err(Error::Storage {
            op: "get",
            key: wal_key(timeline, segment),
            kind: StorageErrorKind::Transient,
            detail: format!("its streamed copy was replaced {STREAMED_TRIES} times while being read"),
        })
    }
}

fn wal_aad(key: &str) -> String {
    format!("pgcairn wal v1:{key}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::tests::test_repo;

    #[tokio::test]
    async fn wal_objects_round_trip_and_bind_to_their_key() {
        let (_s, repo) = test_repo(true).await;
        let data: Vec<u8> = (0..3 * FRAME + 17).map(|i| (i % 251) as u8).collect();
        let key = wal_key(1, "000000010000000000000001");
        let (id, obj) = repo.encode_wal(&key, &data, 3);
        assert_eq!(object_content_id(&obj), Some(id));
        assert!(obj.len() < data.len() / 10, "compressible data compressed");
        assert_eq!(repo.decode_wal(&key, &obj).unwrap(), data);
        let other = wal_key(1, "000000010000000000000002");
        assert!(matches!(repo.decode_wal(&other, &obj), Err(Error::Corrupt { .. })));
        let mut bad = obj.to_vec();
        let n = bad.len();
        bad[n - 100] ^= 1;
        assert!(repo.decode_wal(&key, &bad).is_err());
        let _ = Arc::new(());
    }

    /// The growing encoding (wal-receive) makes what encode_wal makes of the same
    /// bytes, however the file grew between calls.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_growing_file_encodes_as_a_whole_one() {
        let (_s, repo) = test_repo(true).await;
        let data: Vec<u8> = (0..(5 * FRAME / 2) as u32).map(|i| (i % 251) as u8).collect();
        let mut growing = GrowingWal::new(&repo);
        for upto in [100, FRAME - 1, FRAME, FRAME + 7, 2 * FRAME + 5, data.len()] {
            let (id, compressed) = growing.encode(&repo, &data[..upto], 1);
            assert_eq!(id, repo.wal_content_id(&data[..upto]), "id at {upto}");
            let key = wal_key(1, "x");
            let object = repo.seal_wal(&key, id, compressed);
            assert_eq!(repo.decode_wal(&key, &object).unwrap(), &data[..upto], "content at {upto}");
        }
        // Shorter than before (a new segment): encoded from scratch, still right.
        let (id, _) = growing.encode(&repo, &data[..10], 1);
        assert_eq!(id, repo.wal_content_id(&data[..10]));
    }
}
