//! Operations: one function each, composed from pg, repo and storage.

pub(crate) mod archive;
pub mod backup;
pub mod check;
pub mod copy;
mod dedup;
pub mod drill;
mod drill_leftovers;
pub mod expire;
pub mod extract;
pub mod info;
pub(crate) mod keys;
pub(crate) mod lineage;
pub mod restore;
pub(crate) mod stanza;
pub mod verify;
pub mod wal_receive;
pub(crate) mod wal_view;

pub use archive::get::{run_archive_get, GetRequest};
pub use archive::push_async::{run_archive_push, AsyncQueue, HelperCommand, PushRequest, QueueFull};
pub use backup::{backup, BackupRequest, BackupSummary};
pub use check::{
    check, check_archive, check_archive_summary, ArchiveCheck, CheckReport, CheckRequest, Level, WalSummaries,
    BACKLOG_WARNING,
};
pub use copy::{copy, CopyReport, CopyRequest};
pub use drill::{drill, DrillReport, DrillRequest};
pub use expire::{
    expire, info_with_retention, stanza_delete, stanza_delete_leftovers, ExpireDecision, ExpireReport, ExpireRequest,
    FullRetention, RetentionPolicy, StanzaDeleteReport, StanzaDeleteRequest, WalExpiry,
};
pub use extract::{extract, DumpOutput, ExtractReport, ExtractRequest};
pub use info::{
    info, BackupDetails, BackupInfo, BackupStatus, InfoReport, LastBackup, StanzaStatus, INFO_SCHEMA_VERSION,
};
pub use keys::{key_add, key_list, key_remove};
pub use lineage::BackupType;
pub use restore::{
    restore, DbSelection, Recovery, RecoveryTarget, RestoreRequest, RestoreSummary, TargetAction, TimelineTarget,
};
pub use stanza::{stanza_create, StanzaCreateRequest, StanzaCreated};
pub use verify::{verify, BackupVerdict, Damage, TimelineVerdict, VerifyReport, VerifyRequest, WalGap};
pub use wal_receive::{wal_receive, ReceiveRequest};

/// Run CPU work on rayon and await its result without holding a tokio thread.
pub(crate) async fn on_rayon<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> crate::error::Result<T> {
    crate::cpu::Cpu::global().run(work).await
}

/// The first SIGINT or SIGTERM, by name; never, where signals cannot be watched.
pub(crate) async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// Regression (issue 21, item 14): Ctrl-C or SIGTERM ended a backup or expire with
/// no message, and its stanza lock waited to be taken over by the next run. Now the
/// work stops, the lock is released, and the operator is told.
pub(crate) fn interrupted_error(command: &str, signal: &str) -> crate::Error {
    crate::Error::misconfigured(
        crate::Misconfig::Request,
        format!("{command} was interrupted by {signal} and stopped; the stanza lock was released"),
        "run it again; what an interrupted backup wrote is never read and is collected by a later expire (after repo-gc-grace)",
    )
}
