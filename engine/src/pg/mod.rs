//! Everything PostgreSQL: connection settings, the replication protocol client,
//! BASE_BACKUP, its tar stream, WAL files, the data directory, recovery settings,
//! LSNs and per-major-version constants. No other module knows PostgreSQL's files
//! or byte formats.

pub(crate) mod archiving;
pub(crate) mod basebackup;
pub(crate) mod conninfo;
pub(crate) mod datadir;
pub(crate) mod incremental;
pub(crate) mod instance;
pub(crate) mod lsn;
pub(crate) mod recovery;
pub(crate) mod replication;
pub(crate) mod server_manifest;
pub(crate) mod standby;
pub(crate) mod tar;
pub(crate) mod tls;
pub(crate) mod version;
pub(crate) mod wal;
pub(crate) mod walrecords;
pub(crate) mod walstream;

pub use conninfo::ConnParams;
pub use lsn::Lsn;
pub(crate) use replication::ReplicationConnection;
