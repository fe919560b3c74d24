//! Everything PostgreSQL: connection settings, the replication protocol client,
//! BASE_BACKUP, its tar stream, WAL files, the data directory, recovery settings,
//! LSNs and per-major-version constants. No other module knows PostgreSQL's files
//! or byte formats.

pub mod archiving;
pub mod basebackup;
pub mod conninfo;
pub mod datadir;
pub mod lsn;
pub mod recovery;
pub mod replication;
pub mod tar;
pub mod version;
pub mod wal;

pub use conninfo::ConnParams;
pub use lsn::Lsn;
pub use replication::ReplicationConnection;
