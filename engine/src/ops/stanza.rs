//! stanza-create: connect to the cluster, record its identity, initialise the repository.

use crate::crypto::KeySlotKdf;
use crate::crypto::Secret;
use crate::error::{Error, Misconfig, Result};
use crate::pg::replication::SystemInfo;
use crate::pg::version;
use crate::pg::{ConnParams, ReplicationConnection};
use crate::repo::format::RepoConfig;
use crate::repo::{CreateOptions, Repository, DEFAULT_BLOCK_SIZE, DEFAULT_PACK_SIZE};
use crate::storage::DynStorage;

/// What `stanza-create` needs besides the stanza's storage.
#[derive(Debug, Clone)]
pub struct StanzaCreateRequest {
    /// The stanza's name, recorded in its config.
    pub stanza: String,
    /// The cluster whose identity (system identifier, version, WAL segment size) is recorded.
    pub pg: ConnParams,
    /// Encrypt the stanza; false only with `--no-encryption`.
    pub encrypted: bool,
    /// The passphrase of the first key slot; required when `encrypted`.
    pub passphrase: Option<Secret>,
    /// Block size in bytes, a multiple of 8 KiB; None: the default (32 KiB).
    pub block_size: Option<u32>,
    /// Argon2id costs of the key slot.
    pub kdf: KeySlotKdf,
}

/// What stanza-create did.
#[derive(Debug)]
pub struct StanzaCreated {
    /// The stanza, open.
    pub repo: Repository,
    /// False when it already existed for this very cluster (nothing was changed).
    pub created: bool,
}

/// Creates the stanza for the cluster `req.pg` reaches. Run again for the same
/// cluster it changes nothing and succeeds, as pgBackRest's does; for another
/// cluster it is refused.
pub async fn stanza_create(storage: DynStorage, req: &StanzaCreateRequest) -> Result<StanzaCreated> {
    let mut conn = ReplicationConnection::connect(&req.pg).await?;
    let sys = conn.identify_system().await?;
    let pg_version = conn.server_version_num();
    let wal_segment_size = conn.wal_segment_size().await?;
    conn.close().await;
    let opts = CreateOptions {
        encrypted: req.encrypted,
        block_size: req.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
        pack_size: DEFAULT_PACK_SIZE,
        kdf: req.kdf,
        system_identifier: sys.system_identifier,
        pg_version,
        wal_segment_size,
    };
    match Repository::create(storage.clone(), &req.stanza, req.passphrase.as_ref(), opts).await {
        Err(Error::RepoAlreadyInitialised { .. }) => {
            let passphrase = if req.encrypted { req.passphrase.as_ref() } else { None };
            let repo = Repository::open(storage, &req.stanza, passphrase).await?;
            same_cluster(&repo, sys.system_identifier, pg_version)?;
            Ok(StanzaCreated { repo, created: false })
        }
        created => Ok(StanzaCreated { repo: created?, created: true }),
    }
}

/// The stanza `repo` belongs to the cluster with this identity.
fn same_cluster(repo: &Repository, system_identifier: u64, pg_version: u32) -> Result<()> {
    let cfg = repo.config();
    if cfg.system_identifier == system_identifier && version::major_of(cfg.pg_version) == version::major_of(pg_version)
    {
        return Ok(());
    }
    let problem = format!(
        "stanza {} in {} belongs to system {} (PostgreSQL {}), not to this cluster (system {system_identifier}, PostgreSQL {})",
        cfg.stanza,
        repo.location(),
        cfg.system_identifier,
        version::major_of(cfg.pg_version),
        version::major_of(pg_version)
    );
    let hint = "give this cluster its own --stanza, or remove the old stanza with stanza-delete --force";
    Err(Error::misconfigured(Misconfig::WrongCluster, problem, hint))
}

/// Check that `conn` reaches the cluster the stanza was created for (same system
/// identifier, same major version).
pub(crate) async fn identify_stanza_cluster(conn: &mut ReplicationConnection, cfg: &RepoConfig) -> Result<SystemInfo> {
    let sys = conn.identify_system().await?;
    if sys.system_identifier != cfg.system_identifier {
        let problem = format!(
            "{} has system identifier {} but stanza {} belongs to system {}",
            conn.target(),
            sys.system_identifier,
            cfg.stanza,
            cfg.system_identifier
        );
        return Err(Error::misconfigured(Misconfig::WrongCluster, problem, "check the `pg` and `stanza` settings"));
    }
    let major = version::major_of(conn.server_version_num());
    if major != version::major_of(cfg.pg_version) {
        let problem = format!(
            "{} runs PostgreSQL {major} but stanza {} was created for PostgreSQL {}",
            conn.target(),
            cfg.stanza,
            version::major_of(cfg.pg_version)
        );
        let hint = "a major upgrade needs a new stanza: run stanza-create with a new --stanza";
        return Err(Error::misconfigured(Misconfig::WrongCluster, problem, hint));
    }
    Ok(sys)
}
