//! check: does archiving really work? Connects, checks the settings that make
//! archiving work, forces a WAL switch and waits for that segment in the repository.

use std::time::{Duration, Instant};

use crate::error::{Error, Misconfig, Result};
use crate::ops::archive::wait_for_segments;
use crate::ops::stanza::identify_stanza_cluster;
use crate::pg::archiving::{ArchivingSettings, SQL_IN_RECOVERY, SQL_RESTORE_POINT, SQL_SWITCH_WAL};
use crate::pg::wal::WalFile;
use crate::pg::{ConnParams, ReplicationConnection};
use crate::repo::Repository;

/// What `check` needs besides the repository.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// The PostgreSQL server whose archiving is checked.
    pub pg: ConnParams,
    /// How long to wait for the switched segment to reach the repository (`archive-timeout`).
    pub timeout: Duration,
    /// Problems of the local async archive queue (see archive_async::spool_problems).
    pub spool_problems: Vec<String>,
}

/// What a successful check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// The cluster's system identifier, the stanza's.
    pub system_identifier: u64,
    /// The server's archive_command setting.
    pub archive_command: String,
    /// The segment the check switched to and found in the repository.
    pub segment: String,
    /// How long the whole check took, in seconds.
    pub seconds: f64,
}

/// Checks that the server archives into this stanza: the cluster is the stanza's,
/// archiving is set up, and a freshly switched segment reaches the repository in time.
pub async fn check(repo: &Repository, req: &CheckRequest) -> Result<CheckReport> {
    let started = Instant::now();
    let cfg = repo.config();
    let stanza = &cfg.stanza;
    let mut conn = ReplicationConnection::connect(&req.pg).await?;
    let target = conn.target().to_string();
    let sys = identify_stanza_cluster(&mut conn, cfg).await?;
    let archiving = ArchivingSettings::read(&mut conn).await?;
    conn.close().await;
    if let Some((problem, hint)) = archiving.problem(stanza) {
        return Err(Error::misconfigured(Misconfig::Server, format!("{target}: {problem}"), hint));
    }

    // Force a segment switch (after a restore point, so there is something to switch).
    let (client, connection) = req
        .pg
        .sql_config()
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::Connect { target: target.clone(), detail: e.to_string() })?;
    tokio::spawn(connection);
    let sql_error = |e: tokio_postgres::Error| {
        let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
        Error::Server {
            target: target.clone(),
            code: e.code().map(|c| c.code().to_string()).unwrap_or_default(),
            message,
            hint: Some(format!(
                "the check needs pg_create_restore_point() and pg_switch_wal(): run it as a superuser, or GRANT EXECUTE on both to {}",
                req.pg.user
            )),
        }
    };
    let in_recovery: bool = client.query_one(SQL_IN_RECOVERY, &[]).await.map_err(sql_error)?.get(0);
    if in_recovery {
        let problem = format!("{target} is a standby");
        return Err(Error::misconfigured(Misconfig::Server, problem, "run check against the primary"));
    }
    client.query_one(SQL_RESTORE_POINT, &[]).await.map_err(sql_error)?;
    let segment: String = client.query_one(SQL_SWITCH_WAL, &[]).await.map_err(sql_error)?.get(0);
    let file =
        WalFile::parse(&segment).ok_or_else(|| Error::Internal(format!("unexpected wal file name {segment}")))?;
    let segno = file
        .segno(cfg.wal_segment_size)
        .ok_or_else(|| Error::Internal(format!("unexpected wal file name {segment}")))?;
    wait_for_segments(repo, file.timeline(), segno, segno, req.timeout).await?;
    if !req.spool_problems.is_empty() {
        let problem = format!("archiving works, but {}", req.spool_problems.join("; "));
        let hint = "see the async spool's problems above; the archive-push log in the server log says more";
        return Err(Error::misconfigured(Misconfig::Setting, problem, hint));
    }
    Ok(CheckReport {
        system_identifier: sys.system_identifier,
        archive_command: archiving.archive_command,
        segment,
        seconds: started.elapsed().as_secs_f64(),
    })
}
