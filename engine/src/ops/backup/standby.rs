//! A backup taken on a streaming standby (`pg` names one; `pg-primary` its primary).
//! The data comes from the standby through BASE_BACKUP, which PostgreSQL runs there as
//! on a primary; the primary is asked only what a standby cannot do, in a few queries:
//! - before: a CHECKPOINT (with start-fast), so that the standby's restartpoint, where
//!   the backup starts, is recent; and its current WAL position, which the standby
//!   must replay within archive-timeout (a standby further behind is refused: its
//!   backup would be older than the operator thinks);
//! - its archiving settings, when the standby does not archive itself
//!   (archive_mode = always there);
//! - after: a WAL switch when the backup's last segment is still being written, so
//!   that it gets archived (by the primary, or by the standby with archive_mode = always).
//!
//! Refused: a `pg-primary` that is itself in recovery or another cluster, and a
//! standby backup whose WAL comes from the archive without `pg-primary`. A standby
//! promoted during the backup makes PostgreSQL fail BASE_BACKUP ("the standby was
//! promoted during online backup"): the backup fails with that message and is not
//! listed; run it again.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::BackupRequest;
use crate::error::{Error, Misconfig, Result};
use crate::pg::archiving::{ArchivingSettings, SQL_IN_RECOVERY, SQL_SWITCH_WAL};
use crate::pg::standby::{archiving_settings, current_lsn, replay_lsn, sql_error, system_identifier, SQL_CHECKPOINT};
use crate::pg::{wal, ConnParams, Lsn, ReplicationConnection};
use crate::repo::format::RepoConfig;

/// The standby a backup reads, and its primary.
pub(super) struct Standby {
    /// The standby over SQL, for its replay position.
    sql: Client,
    pg: ConnParams,
    /// None only for a backup that carries its WAL (archive-copy) without `pg-primary`.
    primary: Option<Primary>,
}

struct Primary {
    client: Client,
    pg: ConnParams,
}

/// Where the backup's WAL is archived from: the settings that decide it, and the
/// server whose pg_stat_archiver says whether it works.
pub(super) struct ArchivedBy {
    pub settings: ArchivingSettings,
    pub server: ConnParams,
}

impl Standby {
    /// Some when the server `conn` reaches is a standby in recovery (hot_standby on),
    /// with its primary connected and checked; None for a primary.
    pub(super) async fn detect(
        conn: &mut ReplicationConnection,
        req: &BackupRequest,
        cfg: &RepoConfig,
    ) -> Result<Option<Standby>> {
        if conn.show("in_hot_standby").await? != "on" {
            if let Some(p) = &req.primary {
                tracing::info!("{} is a primary: pg-primary ({}) is not needed", conn.target(), p.target());
            }
            return Ok(None);
        }
        let target = conn.target().to_string();
        tracing::info!("{target} is a standby: the backup reads it");
        let primary = match &req.primary {
            Some(p) => Some(Primary::connect(p, cfg).await?),
            None if req.archive_copy => None,
            None => {
                let problem = format!(
                    "{target} is a standby: a backup there needs its primary (a checkpoint, a WAL switch, its archiving settings)"
                );
                let hint = "set pg-primary to the primary's connection string (the data still comes from the standby), or pass --archive-copy to store the backup's WAL inside it";
                return Err(Error::misconfigured(Misconfig::Setting, problem, hint));
            }
        };
        let sql = crate::pg::tls::sql_connect(&req.pg).await?;
        Ok(Some(Standby { sql, pg: req.pg.clone(), primary }))
    }

    /// Who archives the backup's WAL: the standby when it archives itself
    /// (archive_mode = always), else the primary.
    pub(super) async fn archived_by(&self, standby: ArchivingSettings) -> Result<ArchivedBy> {
        match &self.primary {
            Some(p) if !(standby.archive_mode == "always" && standby.archives()) => {
                Ok(ArchivedBy { settings: archiving_settings(&p.client, &p.pg).await?, server: p.pg.clone() })
            }
            _ => Ok(ArchivedBy { settings: standby, server: self.pg.clone() }),
        }
    }

    /// Before BASE_BACKUP: a checkpoint on the primary (start-fast), then wait until
    /// the standby has replayed the primary's current position.
    pub(super) async fn catch_up(&self, req: &BackupRequest) -> Result<()> {
        let Some(p) = &self.primary else { return Ok(()) };
        if req.fast_checkpoint {
            if let Err(e) = p.client.batch_execute(SQL_CHECKPOINT).await {
                tracing::warn!(
                    "CHECKPOINT on the primary {} failed ({e}): the backup starts at the standby's last restartpoint; GRANT pg_checkpoint TO the role of pg-primary",
                    p.pg.target()
                );
            }
        }
        let wanted = current_lsn(&p.client, &p.pg).await?;
        let deadline = Instant::now() + req.archive_timeout;
        loop {
            // pg_last_wal_replay_lsn() stays set once recovery ends: ask first.
            self.still_standby().await?;
            let Some(replayed) = replay_lsn(&self.sql, &self.pg).await? else {
                return Err(self.promoted());
            };
            if replayed >= wanted {
                tracing::info!("the standby has replayed {replayed}, the primary's position at the start");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.behind(replayed, wanted, req.archive_timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn behind(&self, replayed: Lsn, wanted: Lsn, waited: Duration) -> Error {
        let problem = format!(
            "{} has replayed WAL up to {replayed}, {} MiB behind its primary's {wanted}, and did not catch up within archive-timeout ({} s): a backup there would be older than its primary",
            self.pg.target(),
            (wanted.0 - replayed.0) >> 20,
            waited.as_secs()
        );
        let hint = "check replication (pg_stat_replication on the primary, the standby's log), or take the backup on the primary";
        Error::misconfigured(Misconfig::Server, problem, hint)
    }

    fn promoted(&self) -> Error {
        let problem = format!("{} is no longer in recovery: it was promoted during the backup", self.pg.target());
        Error::misconfigured(Misconfig::Server, problem, "run the backup again: pg now names a primary")
    }

    /// The standby is still in recovery. After the stream too: PostgreSQL refuses a
    /// promotion during BASE_BACKUP itself, this catches one just before it.
    pub(super) async fn still_standby(&self) -> Result<()> {
        let in_recovery = self.sql.query_one(SQL_IN_RECOVERY, &[]).await;
        let in_recovery: bool = in_recovery.map_err(|e| sql_error(&self.pg, e, "see the server's log"))?.get(0);
        if in_recovery {
            Ok(())
        } else {
            Err(self.promoted())
        }
    }

    /// After the stream: when the primary still writes the backup's last segment,
    /// switch it so that the segment is archived.
    pub(super) async fn close_last_segment(&self, stop: Lsn, seg_size: u32) -> Result<()> {
        let Some(p) = &self.primary else { return Ok(()) };
        let last = wal::segno_of(stop.0.saturating_sub(1), seg_size);
        if wal::segno_of(current_lsn(&p.client, &p.pg).await?.0, seg_size) > last {
            return Ok(());
        }
        let hint = "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the role of pg-primary, or connect as a superuser";
        let row = p.client.query_one(SQL_SWITCH_WAL, &[]).await.map_err(|e| sql_error(&p.pg, e, hint))?;
        tracing::info!("switched WAL on the primary: segment {} completes the backup", row.get::<_, String>(0));
        Ok(())
    }
}

impl Primary {
    async fn connect(pg: &ConnParams, cfg: &RepoConfig) -> Result<Primary> {
        let client = crate::pg::tls::sql_connect(pg).await?;
        check_primary(&client, pg, cfg).await?;
        Ok(Primary { client, pg: pg.clone() })
    }
}

/// `pg-primary` (connected as `client`) is the stanza's cluster and not in recovery.
pub(crate) async fn check_primary(client: &Client, pg: &ConnParams, cfg: &RepoConfig) -> Result<()> {
    let hint = "see the server's log";
    let in_recovery: bool = client.query_one(SQL_IN_RECOVERY, &[]).await.map_err(|e| sql_error(pg, e, hint))?.get(0);
    if in_recovery {
        let problem = format!("pg-primary ({}) is in recovery too", pg.target());
        let hint = "set pg-primary to the primary the standby streams from (primary_conninfo on the standby)";
        return Err(Error::misconfigured(Misconfig::Setting, problem, hint));
    }
    let id = system_identifier(client, pg).await?;
    if id != cfg.system_identifier {
        let problem = format!(
            "pg-primary ({}) has system identifier {id} but stanza {} belongs to system {}",
            pg.target(),
            cfg.stanza,
            cfg.system_identifier
        );
        let hint = "set pg-primary to the primary of the standby that pg names";
        return Err(Error::misconfigured(Misconfig::WrongCluster, problem, hint));
    }
    Ok(())
}
