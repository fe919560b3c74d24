//! Micro benchmarks of the block pipeline, one core, 32 KiB blocks (the default).
//!
//!   cargo bench -p pgcairn-engine --bench pipeline
//!   PGCAIRN_BENCH_DATA=/path/to/relation/file cargo bench -p pgcairn-engine --bench pipeline
//!
//! Backup side: keyed BLAKE3, zstd 1 and 3, AES-256-GCM, and the whole per-block path
//! (hash + compress + seal + append to a pack). Restore side: open + decompress +
//! verify. A diff's changed block (a few bytes of each page differ from the parent's
//! version): open the parent's blob and store a delta over it; restore opens both.
//! Each iteration handles one block, cycling through the data set, so the
//! figures are per core and average over the data's mix of compressibility.
//! Throughput is in decimal MB/s of raw (uncompressed) block bytes.
//!
//! Data: the first 64 MiB of the file named by PGCAIRN_BENCH_DATA (e.g. a pgbench
//! table's relation file, `SELECT pg_relation_filepath('pgbench_accounts')`), else
//! synthetic heap-like pages that zstd shrinks about 2x.

// Test code: a failed unwrap is a failed test, and nothing here is an API.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, missing_docs)]

use std::hint::black_box;
use std::io::Read;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgcairn::testing::{
    chunk_id, compress, open_block, open_delta_block, random_bytes, seal_block, seal_changed_block, BasePlain, ChunkId,
    Cipher, PackWriter,
};
use rand::{Rng, SeedableRng};

const BLOCK: usize = 32 * 1024;
const PAGE: usize = 8192;
const MAX_DATA: usize = 64 << 20;
const PACK_SIZE: usize = 16 << 20;

fn load_blocks() -> Vec<Vec<u8>> {
    let (data, origin) = match std::env::var_os("PGCAIRN_BENCH_DATA").filter(|p| !p.is_empty()) {
        Some(path) => {
            let mut d = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_DATA as u64).read_to_end(&mut d))
                .unwrap_or_else(|e| panic!("PGCAIRN_BENCH_DATA={path:?}: {e}"));
            (d, path.to_string_lossy().into_owned())
        }
        None => (synthetic_pages(16 << 20), "synthetic heap-like pages".to_string()),
    };
    let blocks: Vec<Vec<u8>> = data.chunks(BLOCK).filter(|b| b.len() == BLOCK).map(<[u8]>::to_vec).collect();
    assert!(!blocks.is_empty(), "need at least one full {BLOCK}-byte block of data");
    let raw = (blocks.len() * BLOCK) as f64;
    let ratio = |level| raw / blocks.iter().map(|b| compress(level, b).len()).sum::<usize>() as f64;
    eprintln!(
        "data: {} blocks of {} KiB from {origin}; zstd ratio {:.2}x at level 1, {:.2}x at level 3",
        blocks.len(),
        BLOCK / 1024,
        ratio(1),
        ratio(3)
    );
    blocks
}

/// Pages shaped like a heap: 24-byte header, line pointers from the front, 128-byte
/// tuples from the back, each a tuple header, rising integer keys, and 64 random bytes
/// then blank padding (so about half of every tuple is incompressible).
fn synthetic_pages(len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut out = vec![0u8; len];
    let mut key = 0u32;
    for (n, page) in out.chunks_mut(PAGE).enumerate() {
        page[0..8].copy_from_slice(&(n as u64).to_le_bytes()); // pd_lsn stand-in
        let tuples = 56;
        let lower = 24 + 4 * tuples;
        page[12..14].copy_from_slice(&(lower as u16).to_le_bytes());
        for t in 0..tuples {
            let off = PAGE - (t + 1) * 128;
            page[24 + 4 * t..28 + 4 * t].copy_from_slice(&((off as u32) | (128 << 17)).to_le_bytes());
            let tup = &mut page[off..off + 128];
            tup[0..4].copy_from_slice(&(n as u32).to_le_bytes()); // xmin-like
            tup[18..20].copy_from_slice(&4u16.to_le_bytes());
            tup[24..28].copy_from_slice(&key.to_le_bytes());
            tup[28..32].copy_from_slice(&(key / 100_000).to_le_bytes());
            rng.fill(&mut tup[32..96]);
            tup[96..].fill(b' ');
            key += 1;
        }
    }
    out
}

/// What one row update does to each page of a block: a new page LSN and a few bytes
/// of a tuple header rewritten.
fn touch_pages(block: &[u8], round: u8) -> Vec<u8> {
    let mut out = block.to_vec();
    for page in out.chunks_mut(PAGE) {
        page[0] = page[0].wrapping_add(round);
        for b in &mut page[PAGE / 2..PAGE / 2 + 6] {
            *b ^= 0x5a;
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let blocks = load_blocks();
    let chunk_key: [u8; 32] = random_bytes();
    let cipher = Cipher::aes(&random_bytes());
    let ids: Vec<ChunkId> = blocks.iter().map(|b| chunk_id(&chunk_key, b)).collect();
    let sealed: Vec<Vec<u8>> = blocks.iter().zip(&ids).map(|(b, id)| seal_block(&cipher, 3, id, b)).collect();
    let n = blocks.len();

    let mut g = c.benchmark_group("block");
    g.throughput(Throughput::BytesDecimal(BLOCK as u64));
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));

    // Cycle through the data set, one block per iteration.
    let mut i = 0;
    let mut next = move || {
        i = (i + 1) % n;
        i
    };

    g.bench_function("hash/blake3-keyed", |b| b.iter(|| chunk_id(&chunk_key, black_box(&blocks[next()]))));
    for level in [1, 3] {
        g.bench_function(format!("compress/zstd-{level}"), |b| b.iter(|| compress(level, black_box(&blocks[next()]))));
    }
    g.bench_function("seal/aes-256-gcm", |b| b.iter(|| cipher.seal(&ids[0].0, black_box(&blocks[next()]))));

    // Backup path for a new block: id, compress, seal, append to a 16 MiB pack (a full
    // pack is finished, which draws its random name, and a new one started).
    for level in [1, 3] {
        g.bench_function(format!("backup/hash+zstd-{level}+seal+pack"), |b| {
            let mut pack = PackWriter::new([7; 16], PACK_SIZE);
            b.iter(|| {
                let block = black_box(&blocks[next()]);
                let id = chunk_id(&chunk_key, block);
                let blob = seal_block(&cipher, level, &id, block);
                pack.add(id, BLOCK as u32, &blob, None);
                if pack.len() >= PACK_SIZE {
                    black_box(std::mem::replace(&mut pack, PackWriter::new([7; 16], PACK_SIZE)).into_bytes());
                }
            })
        });
    }

    // A diff's changed block, and its restore.
    let changed: Vec<Vec<u8>> = blocks.iter().map(|b| touch_pages(b, 1)).collect();
    let changed_ids: Vec<ChunkId> = changed.iter().map(|b| chunk_id(&chunk_key, b)).collect();
    let deltas: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            let base = BasePlain { id: ids[k], plain: &blocks[k], stored_len: Some(sealed[k].len()) };
            let (blob, is_delta) = seal_changed_block(&cipher, 3, &changed_ids[k], &changed[k], base);
            assert!(is_delta, "a few changed bytes per page make a delta");
            blob
        })
        .collect();
    eprintln!(
        "changed blocks: deltas {:.1}x smaller than whole blobs",
        sealed.iter().map(Vec::len).sum::<usize>() as f64 / deltas.iter().map(Vec::len).sum::<usize>() as f64
    );
    g.bench_function("diff/open-parent+zstd-3-delta+seal", |b| {
        b.iter(|| {
            let k = next();
            let plain = open_block(&cipher, &chunk_key, &ids[k], &sealed[k], BLOCK).expect("block opens");
            let base = BasePlain { id: ids[k], plain: &plain, stored_len: Some(sealed[k].len()) };
            seal_changed_block(&cipher, 3, &changed_ids[k], black_box(&changed[k]), base)
        })
    });
    g.bench_function("restore/open-base+open-delta+verify", |b| {
        b.iter(|| {
            let k = next();
            let base = open_block(&cipher, &chunk_key, &ids[k], &sealed[k], BLOCK).expect("block opens");
            open_delta_block(&cipher, &chunk_key, &changed_ids[k], (&ids[k], &base), black_box(&deltas[k]), BLOCK)
                .expect("delta opens")
        })
    });

    // Restore path: decrypt, decompress, check the length and the keyed id.
    g.bench_function("restore/open+unzstd+verify", |b| {
        b.iter(|| {
            let k = next();
            open_block(&cipher, &chunk_key, &ids[k], black_box(&sealed[k]), BLOCK).expect("block opens")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
