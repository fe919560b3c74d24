//! How a diff or incr reads the cluster. On PostgreSQL 17+ with `summarize_wal = on`
//! the parent's backup_manifest goes up with UPLOAD_MANIFEST and
//! `BASE_BACKUP ( INCREMENTAL )` sends only the pages changed since the parent
//! (ops/backup/incremental.rs rebuilds the whole files over the parent's blocks).
//! Otherwise — an older server, summaries off, missing or too short, a parent from
//! another timeline — the whole cluster is read and compared with the parent, as
//! before, and the reason goes to the log and to the manifest (`read.fallback`).

use crate::error::{Error, Result};
use crate::ops::lineage::Lineage;
use crate::pg::basebackup::upload_manifest;
use crate::pg::{version, ReplicationConnection};
use crate::repo::format::{server_manifest_key, ReadMethod};
use crate::repo::Repository;

/// The first major with WAL summaries.
const FIRST_MAJOR: u32 = 17;

/// How the next BASE_BACKUP reads the cluster.
pub(super) enum Plan {
    /// Every file (a full; or a diff or incr, for the reason given).
    Whole(Option<String>),
    /// Changed pages only, against the parent's manifest; PostgreSQL's page size.
    Summaries { manifest: Vec<u8>, page_size: usize },
}

impl Plan {
    /// The plan for `lineage`: summaries when the server and the parent allow them.
    pub(super) async fn choose(
        repo: &Repository,
        conn: &mut ReplicationConnection,
        lineage: &Lineage,
        timeline: u32,
    ) -> Result<Plan> {
        let Some(parent) = &lineage.parent else {
            return Ok(Plan::Whole(None));
        };
        let major = version::major_of(conn.server_version_num());
        if major < FIRST_MAJOR {
            let why = format!("PostgreSQL {major} has no WAL summaries (they came with 17)");
            tracing::info!("reading the whole cluster to compare with {}: {why}", parent.label);
            return Ok(Plan::Whole(Some(why)));
        }
        let summarize = conn.show("summarize_wal").await?;
        if summarize != "on" {
            let target = conn.target().to_string();
            let why = format!("summarize_wal is {summarize} on {target} (set summarize_wal = on and reload to read only what changed)");
            return Ok(whole(&parent.label, why));
        }
        if parent.timeline != timeline {
            let why =
                format!("parent backup {} is on timeline {}, the server on {timeline}", parent.label, parent.timeline);
            return Ok(whole(&parent.label, why));
        }
        let page_size = conn.show("block_size").await?;
        let page_size: usize = page_size.parse().map_err(|_| Error::Protocol {
            target: conn.target().to_string(),
            detail: format!("SHOW block_size returned {page_size:?}"),
        })?;
        if page_size == 0 || repo.config().block_size as usize % page_size != 0 {
            let why = format!("the repository's block size is not a multiple of the server's {page_size}-byte pages");
            return Ok(whole(&parent.label, why));
        }
        let manifest = repo.get_meta_bytes(&server_manifest_key(&parent.label)).await?;
        Ok(Plan::Summaries { manifest, page_size })
    }

    /// Hand the parent's manifest to the server; the page size when it took it, or
    /// the plan to read everything when the server refused it.
    pub(super) async fn prepare(self, conn: &mut ReplicationConnection, parent: &str) -> Result<Plan> {
        let Plan::Summaries { manifest, page_size } = self else {
            return Ok(self);
        };
        match upload_manifest(conn, &manifest).await {
            Ok(()) => Ok(Plan::Summaries { manifest: Vec::new(), page_size }),
            Err(Error::Server { message, .. }) => Ok(whole(parent, refused(parent, &message))),
            Err(e) => Err(e),
        }
    }

    /// The page size when the server is to send changed pages only.
    pub(super) fn page_size(&self) -> Option<usize> {
        match self {
            Plan::Summaries { page_size, .. } => Some(*page_size),
            Plan::Whole(_) => None,
        }
    }

    /// What the manifest records, once `streamed` bytes came.
    pub(super) fn read_method(self, streamed: u64) -> ReadMethod {
        match self {
            Plan::Summaries { .. } => ReadMethod { method: ReadMethod::SUMMARIES.into(), fallback: None, streamed },
            Plan::Whole(fallback) => ReadMethod { method: ReadMethod::WHOLE.into(), fallback, streamed },
        }
    }
}

/// The fallback reason when the server refused changes since `parent`.
pub(super) fn refused(parent: &str, message: &str) -> String {
    format!("the server cannot send the changes since {parent}: {message}")
}

/// Read everything, for a reason the operator can act on: a warning.
pub(super) fn whole(parent: &str, why: String) -> Plan {
    tracing::warn!("reading the whole cluster to compare with {parent}: {why}");
    Plan::Whole(Some(why))
}
