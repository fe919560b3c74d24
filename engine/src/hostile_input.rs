//! Every decoder of bytes from outside — the server, the storage, the command line,
//! the environment — fed arbitrary and mutated input: it returns an error, never
//! panics, and never allocates by a length it has not checked (a test process that
//! tried would abort, failing the test). The fuzz targets in fuzz/ drive the same
//! entry points for longer where a nightly toolchain exists.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use proptest::prelude::*;

use crate::crypto::Cipher;
use crate::pg::replication::{parse_data_row, ServerMessage};
use crate::pg::tar::TarReader;
use crate::pg::wal::{validate_backup_history, validate_history, validate_segment, WalFile};
use crate::repo::blocklist::BlockPart;
use crate::repo::format::{ChunkId, Manifest};
use crate::repo::Repository;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// `valid` with a few bytes overwritten and possibly cut short: input that gets past
/// the first checks of a decoder, where arbitrary bytes rarely do.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len().max(1);
    (proptest::collection::vec((0..len, any::<u8>()), 1..8), 0..=len).prop_map(move |(edits, keep)| {
        let mut v = valid.clone();
        for (at, b) in edits {
            if at < v.len() {
                v[at] = b;
            }
        }
        v.truncate(keep);
        v
    })
}

/// An unencrypted repository: the worst case, where nothing authenticates what the
/// decoders see.
fn plain_repo() -> &'static Repository {
    static REPO: OnceLock<Repository> = OnceLock::new();
    REPO.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let storage = Arc::new(crate::storage::memory::MemoryStorage::new());
            let opts = crate::repo::CreateOptions {
                encrypted: false,
                block_size: 32768,
                pack_size: 1 << 24,
                kdf: crate::crypto::KeySlotKdf { m_cost: 256, t_cost: 1, p_cost: 1 },
                system_identifier: 42,
                pg_version: 170000,
                wal_segment_size: 1 << 24,
            };
            Repository::create(storage, "main", None, opts).await.unwrap()
        })
    })
}

/// A part that decodes must be safe to read entry by entry (its numbers index tables).
fn decode_and_walk(data: &[u8]) {
    if let Ok(part) = BlockPart::decode(data) {
        for i in 0..part.len() {
            let _ = part.get(i);
        }
    }
}

fn valid_part() -> Vec<u8> {
    use crate::repo::blocklist::{BlockLocation, DeltaBase, PackRef};
    let mut part = BlockPart::default();
    let pack = PackRef { id: [1; 32], key_id: [2; 16] };
    let whole = BlockLocation { pack, offset: 24, length: 100, raw_length: 32768, base: None };
    part.push(ChunkId([3; 32]), &whole);
    let base = DeltaBase { id: ChunkId([3; 32]), pack, offset: 24, length: 100, raw_length: 32768 };
    part.push(ChunkId([4; 32]), &BlockLocation { offset: 124, length: 20, base: Some(base), ..whole });
    part.encode()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn protocol_messages(body in bytes(256)) {
        let _ = parse_data_row(&body);
        let _ = ServerMessage::parse(&body);
    }

    #[test]
    fn data_row_counts_never_size_allocations(n in any::<i16>(), rest in bytes(64)) {
        let mut body = n.to_be_bytes().to_vec();
        body.extend(rest);
        let _ = parse_data_row(&body);
    }

    #[test]
    fn tar_streams(data in bytes(4096), piece in 1usize..1024) {
        let mut r = TarReader::new();
        for chunk in data.chunks(piece) {
            if r.feed(Bytes::copy_from_slice(chunk), &mut |_| -> Result<(), String> { Ok(()) }).is_err() {
                break;
            }
        }
        let _ = r.finish();
    }

    #[test]
    fn wal_files(name in "\\PC{0,40}", data in bytes(2048), timeline in any::<u32>()) {
        if let Some(f) = WalFile::parse(&name) {
            let _ = validate_segment(&f, &data, 42, 17, 1 << 24);
            let _ = validate_backup_history(&f, &data, 1 << 24);
        }
        let _ = validate_history(timeline, &data);
    }

    #[test]
    fn block_list_parts(data in bytes(512)) {
        decode_and_walk(&data);
    }

    #[test]
    fn mutated_block_list_parts(data in mutated(valid_part())) {
        decode_and_walk(&data);
    }

    #[test]
    fn blobs_and_wal_objects(data in bytes(1024), raw_len in 0usize..100_000) {
        let repo = plain_repo();
        let _ = crate::repo::blob::open_block(&Cipher::Plain, &[0; 32], &ChunkId([0; 32]), &data, raw_len);
        let _ = crate::repo::blob::open_delta_block(&Cipher::Plain, &[0; 32], &ChunkId([0; 32]), (&ChunkId([1; 32]), &data), &data, raw_len);
        let _ = repo.decode_wal("wal/00000001/000000010000000000000001", &data);
    }

    #[test]
    fn mutated_wal_objects(data in mutated(plain_repo().encode_wal("wal/00000001/x", &[7u8; 5000], 1).1.to_vec())) {
        let _ = plain_repo().decode_wal("wal/00000001/x", &data);
    }

    #[test]
    fn json_objects(data in bytes(512)) {
        let _ = crate::repo::parse_config("test", &data);
        let _ = serde_json::from_slice::<Manifest>(&data);
        let _ = serde_json::from_slice::<crate::repo::format::KeySlot>(&data);
    }

    #[test]
    fn settings_text(text in "\\PC{0,80}") {
        let _ = crate::pg::ConnParams::resolve_with(&text, &|_| None);
        let _ = crate::storage::RepoLocation::parse(&text);
        let _ = text.parse::<crate::pg::lsn::Lsn>();
        let _ = crate::repo::format::check_stanza_name(&text);
        let _ = crate::repo::format::check_label(&text);
        let _ = crate::storage::check_key("get", &text, false);
    }
}

/// A zstd frame that claims far more output than the stanza allows is refused
/// without allocating it (unencrypted stanzas authenticate nothing).
#[test]
fn decompression_bombs_are_bounded() {
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    assert!(bomb.len() < 64 << 10);
    let err = crate::repo::blob::decompress_bounded(&bomb, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
}
