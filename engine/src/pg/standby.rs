//! A streaming standby and its primary, over SQL: what a backup taken on the standby
//! asks of each (ops/backup/standby.rs says why).

use tokio_postgres::Client;

use super::archiving::ArchivingSettings;
use super::{ConnParams, Lsn};
use crate::error::{Error, Result};

/// The last WAL position the standby replayed.
const SQL_REPLAY_LSN: &str = "SELECT pg_last_wal_replay_lsn()::text";
/// The primary's current write position.
const SQL_CURRENT_LSN: &str = "SELECT pg_current_wal_lsn()::text";
const SQL_SYSTEM_IDENTIFIER: &str = "SELECT system_identifier::text FROM pg_control_system()";
/// Needs superuser or, from PostgreSQL 15, the pg_checkpoint role.
pub(crate) const SQL_CHECKPOINT: &str = "CHECKPOINT";

/// The server's message for a failed query, naming the server and what fixes it.
pub(crate) fn sql_error(pg: &ConnParams, e: tokio_postgres::Error, hint: &str) -> Error {
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    Error::Server { target: pg.target(), code, message, hint: Some(hint.to_string()) }
}

fn lsn(text: &str, pg: &ConnParams) -> Result<Lsn> {
    text.parse().map_err(|e| Error::Protocol { target: pg.target(), detail: format!("unexpected LSN: {e}") })
}

/// What the standby has replayed; None when it is not in recovery (promoted).
pub(crate) async fn replay_lsn(client: &Client, pg: &ConnParams) -> Result<Option<Lsn>> {
    let row = client.query_one(SQL_REPLAY_LSN, &[]).await.map_err(|e| sql_error(pg, e, "see the server's log"))?;
    let text: Option<String> = row.get(0);
    text.map(|t| lsn(&t, pg)).transpose()
}

/// Where the primary writes WAL now.
pub(crate) async fn current_lsn(client: &Client, pg: &ConnParams) -> Result<Lsn> {
    let row = client.query_one(SQL_CURRENT_LSN, &[]).await.map_err(|e| sql_error(pg, e, "see the server's log"))?;
    lsn(&row.get::<_, String>(0), pg)
}

/// The cluster's system identifier.
pub(crate) async fn system_identifier(client: &Client, pg: &ConnParams) -> Result<u64> {
    let hint = "GRANT EXECUTE ON FUNCTION pg_control_system() to the role, or connect as a superuser";
    let row = client.query_one(SQL_SYSTEM_IDENTIFIER, &[]).await.map_err(|e| sql_error(pg, e, hint))?;
    let text: String = row.get(0);
    text.parse().map_err(|_| Error::Protocol { target: pg.target(), detail: format!("system identifier {text:?}") })
}

/// The archiving settings, read over SQL (the primary of a standby backup).
pub(crate) async fn archiving_settings(client: &Client, pg: &ConnParams) -> Result<ArchivingSettings> {
    let show = |name: &'static str| async move {
        let rows = client.simple_query(&format!("SHOW {name}")).await.map_err(|e| sql_error(pg, e, "see the log"))?;
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| Error::Protocol { target: pg.target(), detail: format!("SHOW {name} returned no row") })
    };
    Ok(ArchivingSettings {
        wal_level: show("wal_level").await?,
        archive_mode: show("archive_mode").await?,
        archive_command: show("archive_command").await?,
    })
}
