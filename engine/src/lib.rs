//! pgcairn engine: physical backup and restore of PostgreSQL clusters into a
//! content-addressed, compressed and encrypted repository.
//!
//! Public API: [`ops`] (one function per operation), the request/summary types
//! they take and return, [`storage::RepoLocation`] to open a repository's storage,
//! [`repo::Repository`] to open or create a stanza, and [`Error`].
//!
//! Module map: [`pg`] knows PostgreSQL (protocol, tar, versions); [`repo`] knows
//! the repository format; [`crypto`] keys and AEAD; [`storage`] the object-store
//! seam; [`ops`] composes them.

pub mod crypto;
pub mod error;
pub mod fsutil;
pub mod ops;
pub mod pg;
pub mod progress;
pub mod repo;
pub mod storage;

#[cfg(test)]
mod hostile_input;

pub use error::{Error, Result};

/// Keep glibc's malloc from holding on to freed memory, so peak RSS follows what is
/// in use (benches/memory.sh, 17.5 GiB cluster). Arenas: one per core instead of
/// eight, each keeping what was freed into it (restore 85 → 60 MiB). A fixed mmap
/// threshold of 8 MiB: by default freeing a 16 MiB pack buffer raises the threshold,
/// and later pack buffers come from the heap and stay there (full backup 106 → 60 MiB
/// with a 1 MiB threshold). Smaller buffers (blocks, ranged reads ≤ 4 MiB) stay on the
/// heap, so no extra page faults on the hot paths. Call first thing in `main`.
pub fn limit_malloc_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        // SAFETY: mallopt only sets allocator parameters; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        }
    }
}
