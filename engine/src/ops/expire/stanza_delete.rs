//! stanza-delete: remove a whole stanza, under its lock, `config` first so that
//! archive-push stops writing into it (it then fails, and PostgreSQL keeps its WAL).

use serde::Serialize;

use crate::error::{Error, Misconfig, Result};
use crate::pg::archiving::ArchivingSettings;
use crate::pg::{ConnParams, ReplicationConnection};
use crate::repo::lock::StanzaLock;
use crate::repo::Repository;
use crate::storage::DynStorage;

/// What `stanza-delete` takes.
#[derive(Debug, Clone)]
pub struct StanzaDeleteRequest {
    /// The operator confirmed: without it nothing is deleted.
    pub force: bool,
    /// The cluster, if configured: a stanza it still archives into is named in the
    /// refusal (and in a warning when forced).
    pub pg: Option<ConnParams>,
    /// The async archive spool on this host: `<spool>/<stanza>` is removed too.
    pub spool_path: Option<std::path::PathBuf>,
}

/// What stanza-delete removed.
#[derive(Debug, Clone, Serialize)]
pub struct StanzaDeleteReport {
    /// Objects deleted.
    pub deleted_objects: u64,
    /// Bytes they held.
    pub deleted_bytes: u64,
    /// Set when the cluster still archives into the deleted stanza.
    pub still_archiving: Option<String>,
}

/// Delete the stanza `repo` is open on.
pub async fn stanza_delete(repo: &Repository, req: &StanzaDeleteRequest) -> Result<StanzaDeleteReport> {
    let still_archiving = match &req.pg {
        Some(pg) => archives_into(pg, &repo.config().stanza).await,
        None => None,
    };
    if !req.force {
        let objects = repo.storage().list("").await?;
        let bytes: u64 = objects.iter().map(|o| o.size).sum();
        let problem = format!(
            "stanza-delete removes stanza {} and every backup and WAL file in it ({} objects, {bytes} bytes){}",
            repo.config().stanza,
            objects.len(),
            still_archiving.as_deref().map(|w| format!("; {w}")).unwrap_or_default()
        );
        return Err(Error::misconfigured(Misconfig::Request, problem, "pass --force to delete it"));
    }
    let lock = StanzaLock::acquire(repo, "stanza-delete").await?;
    let result = delete_everything(repo).await;
    let deleted = lock.release_after(result).await?;
    if let Some(spool) = &req.spool_path {
        let dir = spool.join(&repo.config().stanza);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("stanza deleted, but not its spool {}", dir.display()), e))
            }
            _ => {}
        }
    }
    Ok(StanzaDeleteReport { deleted_objects: deleted.objects, deleted_bytes: deleted.bytes, still_archiving })
}

/// Finish a stanza-delete that stopped after removing `config`: without a config
/// there is no key to take the lock with, and nothing left is readable anyway.
pub async fn stanza_delete_leftovers(storage: DynStorage, stanza: &str) -> Result<StanzaDeleteReport> {
    let objects = storage.list("").await?;
    if objects.is_empty() {
        return Err(Error::RepoNotInitialised {
            location: storage.location(),
            stanza: stanza.into(),
            existing: Vec::new(),
        });
    }
    // The bulk delete the repository's GC uses (no repository to call it through).
    let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
    storage.delete_many(&keys).await?;
    let deleted_bytes = objects.iter().map(|o| o.size).sum();
    Ok(StanzaDeleteReport { deleted_objects: keys.len() as u64, deleted_bytes, still_archiving: None })
}

/// `config` first: from then on archive-push and backup refuse the stanza.
async fn delete_everything(repo: &Repository) -> Result<crate::repo::gc::Deleted> {
    let objects = repo.storage().list("").await?;
    let config = crate::repo::format::CONFIG_KEY;
    let mut deleted =
        repo.delete_all(objects.iter().filter(|o| o.key == config).map(|o| (o.key.clone(), o.size))).await?;
    let rest = objects.iter().filter(|o| o.key != config && !o.key.starts_with("lock/"));
    deleted += repo.delete_all(rest.map(|o| (o.key.clone(), o.size))).await?;
    // WAL pushed between the listing and the config's removal.
    let late = repo.storage().list("").await?;
    deleted +=
        repo.delete_all(late.iter().filter(|o| !o.key.starts_with("lock/")).map(|o| (o.key.clone(), o.size))).await?;
    Ok(deleted)
}

/// Whether the cluster's archive_command writes into `stanza`; unreachable: no.
async fn archives_into(pg: &ConnParams, stanza: &str) -> Option<String> {
    let mut conn = ReplicationConnection::connect(pg).await.ok()?;
    let settings = ArchivingSettings::read(&mut conn).await.ok();
    conn.close().await;
    let settings = settings?;
    (settings.archives() && settings.problem(stanza, "").is_none())
        .then(|| format!("the cluster at {} still archives into it: change its archive_command first", pg.target()))
}
