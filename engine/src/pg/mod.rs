//! Everything PostgreSQL: connection settings, the replication protocol client,
//! BASE_BACKUP, its tar stream, LSNs and per-major-version constants. No other
//! module knows PostgreSQL byte formats.

pub mod basebackup;
pub mod conninfo;
pub mod lsn;
pub mod replication;
pub mod tar;
pub mod version;
pub mod wal;

pub use conninfo::ConnParams;
pub use lsn::Lsn;
pub use replication::ReplicationConnection;
