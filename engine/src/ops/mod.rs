//! Operations: one function each, composed from pg, repo and storage.

pub mod backup;
pub mod info;
pub mod restore;
pub mod stanza;

pub use backup::{backup, BackupRequest, BackupSummary};
pub use info::{info, BackupInfo, InfoReport};
pub use restore::{restore, RestoreRequest, RestoreSummary};
pub use stanza::{stanza_create, StanzaCreateRequest};
