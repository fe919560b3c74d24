//! How a diff or incr reads the cluster. On PostgreSQL 17+ with `summarize_wal = on`
//! the parent's backup_manifest goes up with UPLOAD_MANIFEST and
//! `BASE_BACKUP ( INCREMENTAL )` sends only the pages changed since the parent
//! (ops/backup/incremental_file.rs rebuilds the whole files over the parent's blocks).
//! Otherwise — an older server, summaries off, missing or too short, a parent from
//! another timeline — the whole cluster is read and compared with the parent, as
//! before, and the reason goes to the log and to the manifest (`read.fallback`).

use crate::error::{Error, Result};
use crate::ops::lineage::Lineage;
use crate::pg::basebackup::upload_manifest;
use crate::pg::incremental::Geometry;
use crate::pg::replication::parse_guc_bytes;
use crate::pg::{version, ReplicationConnection};
use crate::repo::format::{server_manifest_key, ReadMethod};
use crate::repo::Repository;

/// The first major with WAL summaries.
const FIRST_MAJOR: u32 = 17;

/// How the next BASE_BACKUP reads the cluster.
pub(super) enum Plan {
    /// Every file (a full; or a diff or incr, for the reason given).
    Whole(Option<String>),
    /// Changed pages only, against the parent's manifest; PostgreSQL's page and
    /// segment sizes.
    Summaries { manifest: Vec<u8>, geometry: Geometry },
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
        let geometry = geometry(conn).await?;
        let block_size = repo.config().block_size;
        if !(block_size as usize).is_multiple_of(geometry.page_size) || parent.block_size != block_size {
            let why = format!(
                "the parent's blocks ({} bytes) are not the repository's ({block_size}) or not whole {}-byte pages",
                parent.block_size, geometry.page_size
            );
            return Ok(whole(&parent.label, why));
        }
        match repo.get_meta_bytes(&server_manifest_key(&parent.label)).await {
            Ok(manifest) => Ok(Plan::Summaries { manifest, geometry }),
            // The backup goes on; verify reports the damaged parent.
            Err(e) => Ok(whole(&parent.label, format!("its backup_manifest cannot be read: {e}"))),
        }
    }

    /// Hand the parent's manifest to the server; the page size when it took it, or
    /// the plan to read everything when the server refused it.
    pub(super) async fn prepare(self, conn: &mut ReplicationConnection, parent: &str) -> Result<Plan> {
        let Plan::Summaries { manifest, geometry } = self else {
            return Ok(self);
        };
        match upload_manifest(conn, &manifest).await {
            Ok(()) => {
                tracing::info!("asking the server for the pages changed since {parent} only (WAL summaries)");
                Ok(Plan::Summaries { manifest: Vec::new(), geometry })
            }
            // A manifest the server cannot use (its own checks); not a lost connection.
            Err(Error::Server { code, message, .. }) if !connection_lost(&code) => {
                Ok(whole(parent, refused(parent, &message)))
            }
            Err(e) => Err(e),
        }
    }

    /// The server's geometry when it is to send changed pages only.
    pub(super) fn geometry(&self) -> Option<Geometry> {
        match self {
            Plan::Summaries { geometry, .. } => Some(*geometry),
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

/// `block_size` and `segment_size` of the server.
async fn geometry(conn: &mut ReplicationConnection) -> Result<Geometry> {
    let (page, segment) = (conn.show("block_size").await?, conn.show("segment_size").await?);
    let bad = || Error::Protocol {
        target: conn.target().to_string(),
        detail: format!("SHOW block_size, segment_size returned {page:?}, {segment:?}"),
    };
    let page_size: usize = page.parse().map_err(|_| bad())?;
    let segment_bytes = parse_guc_bytes(&segment).ok_or_else(bad)?;
    let segment_pages = u32::try_from(segment_bytes / page_size.max(1) as u64).map_err(|_| bad())?;
    if page_size == 0 || segment_pages == 0 {
        return Err(bad());
    }
    Ok(Geometry { page_size, segment_pages })
}

/// SQLSTATE classes of a server that ended the session (57: shut down or
/// cancelled; 08: connection) — retrying on that connection cannot work.
fn connection_lost(code: &str) -> bool {
    code.starts_with("57") || code.starts_with("08")
}

/// Whether BASE_BACKUP's error says the WAL summaries cannot serve this backup
/// (basebackup_incremental.c and walsummarizer.c: missing or incomplete summaries,
/// summarization off or not progressing, a timeline the manifest does not fit):
/// then the whole cluster is read instead. Anything else is the backup's error.
pub(super) fn summaries_refused(code: &str, message: &str) -> bool {
    code == "55000" || message.contains("WAL summar")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the server's "summaries cannot serve this" falls back; a cancel, a
    /// shutdown or anything else is the backup's own error.
    #[test]
    fn only_summary_refusals_fall_back() {
        let missing = "WAL summaries are required on timeline 1 from 0/2000028 to 0/9000028, but no summaries for that timeline and LSN range exist";
        assert!(summaries_refused("55000", missing));
        assert!(summaries_refused("XX000", "WAL summarization is not progressing"));
        assert!(!summaries_refused("57014", "canceling statement due to user request"));
        assert!(!summaries_refused("53100", "could not write to file: No space left on device"));
        assert!(connection_lost("57P01") && connection_lost("08006") && !connection_lost("XX000"));
    }
}
