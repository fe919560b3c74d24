//! pgcairn engine: physical backup and restore of PostgreSQL clusters into a
//! content-addressed, compressed and encrypted repository.
//!
//! The public API is the `pub use` list below and nothing else: one function per
//! operation with its request and summary types, [`RepoLocation`] to reach a
//! repository's storage, [`Repository`] to open or create a stanza, and [`Error`]
//! with its exit-code table. Everything else is crate-private, so the repository
//! format, keys and the PostgreSQL protocol can change without breaking callers.
//! The `testing` feature adds [`testing`]: decoders and codecs for the fuzz
//! targets and benchmarks, and the storage test doubles with the conformance suite.
//!
//! Module map (docs/architecture.md has the reasons): `pg` knows PostgreSQL
//! (protocol, tar, WAL, data directory, recovery settings); `repo` owns the
//! repository format (keys, sealed metadata, index, catalog, packs, WAL archive);
//! `crypto` keys and AEAD; `storage` the object-store seam; `ops` composes them.

mod cpu;
mod crypto;
mod error;
mod fsutil;
mod ops;
mod pg;
mod progress;
mod repo;
mod storage;

#[cfg(test)]
mod hostile_input;

pub use cpu::limit_cores;
pub use crypto::{KeySlotKdf, Secret};
pub use error::{exit, Error, LockedBy, Misconfig, Result, StorageErrorKind, EXIT_CODES};
pub use fsutil::private_umask;
pub use ops::archive::fetcher::archive_get_fast;
pub use ops::archive::get::clear_prefetch_spool;
pub use ops::archive::push_async::spool_problems;
pub use ops::{
    backup, check, check_archive, check_archive_summary, drill, expire, info, info_with_retention, restore,
    run_archive_get, run_archive_push, stanza_create, stanza_delete, stanza_delete_leftovers, verify, AsyncQueue,
    BackupDetails, BackupInfo, BackupRequest, BackupStatus, BackupSummary, BackupType, BackupVerdict, CheckReport,
    CheckRequest, Damage, DbSelection, DrillReport, DrillRequest, ExpireDecision, ExpireReport, ExpireRequest,
    FullRetention, GetRequest, HelperCommand, InfoReport, PushRequest, QueueFull, Recovery, RecoveryTarget,
    RestoreRequest, RestoreSummary, RetentionPolicy, StanzaCreateRequest, StanzaCreated, StanzaDeleteReport,
    StanzaDeleteRequest, TargetAction, TimelineTarget, TimelineVerdict, VerifyReport, VerifyRequest, WalExpiry, WalGap,
};
pub use ops::{copy, CopyReport, CopyRequest};
pub use ops::{extract, DumpOutput, ExtractReport, ExtractRequest};
pub use ops::{key_add, key_list, key_remove};
pub use ops::{wal_receive, ReceiveRequest};
pub use ops::{ArchiveCheck, LastBackup, Level, StanzaStatus, WalSummaries, BACKLOG_WARNING, INFO_SCHEMA_VERSION};
pub use pg::archiving::ArchiverStats;
pub use pg::instance::DumpFormat;
pub use pg::tls::{ChannelBindingMode, RootCert, SslMode, TlsParams};
pub use pg::walstream::{default_slot, SlotState};
pub use pg::{ConnParams, Lsn};
pub use progress::{NoProgress, Progress};
pub use repo::access::{RepoAccess, Unlock};
pub use repo::format::{check_stanza_name, BackupSource, Database, ReadMethod, FORMAT_VERSION, OLDEST_READABLE_FORMAT};
pub use repo::keys::KeySlotInfo;
pub use repo::KeyCache;
pub use repo::Repository;
pub use storage::azure::{AzureKeyType, AzureSettings};
pub use storage::gcs::{GcsKeyType, GcsSettings};
pub use storage::object::Cloud;
pub use storage::throttle::limit_bandwidth;
pub use storage::{s3::S3Settings, CloudSettings, DynStorage, ObjectInfo, RepoLocation, Storage};

/// Internals for fuzz targets, benchmarks and integration tests: decoders of
/// outside bytes and the block codec, and with the `testing` feature the storage
/// test doubles and the conformance suite. Hidden, and not a stable API.
#[doc(hidden)]
pub mod testing {
    pub use crate::crypto::{random_bytes, Cipher};
    pub use crate::pg::replication::{parse_data_row, ServerMessage};
    pub use crate::pg::tar::TarReader;
    pub use crate::pg::wal::{validate_backup_history, validate_history, validate_segment, WalFile};
    pub use crate::repo::blob::{
        chunk_id, compress, open_block, open_delta_block, seal_block, seal_changed_block, BasePlain,
    };
    pub use crate::repo::blocklist::BlockPart;
    pub use crate::repo::format::ChunkId;
    pub use crate::repo::pack::PackWriter;
    pub use crate::repo::synthetic::synthetic_repository;
    pub use crate::storage::check_key;
    pub use crate::storage::object::ObjectStorage;
    #[cfg(feature = "testing")]
    pub use crate::storage::{conformance, fault, memory};
}

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
