//! The backup's database list (manifest `databases`, format 6), which restore's
//! `--db-include` / `--db-exclude` select from: OIDs from the files streamed, names
//! from `pg_database` as the backup ends. Without a SQL connection (a role limited to
//! replication in pg_hba.conf) the list still has every OID, without names.

use std::time::Duration;

use crate::pg::datadir::SQL_DATABASES;
use crate::pg::ConnParams;
use crate::repo::format::{Database, FileEntry};

/// How long the query may take: a backup never hangs on it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every database that has files in the backup, named where the server said.
pub(super) async fn list(pg: &ConnParams, files: &[FileEntry]) -> Vec<Database> {
    let named = match tokio::time::timeout(QUERY_TIMEOUT, query(pg)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => unnamed(pg, &e.to_string()),
        Err(_) => unnamed(pg, "the query timed out"),
    };
    Database::with_files(&named, files)
}

fn unnamed(pg: &ConnParams, why: &str) -> Vec<Database> {
    tracing::warn!(
        "cannot read the database names from {} ({why}): this backup lists its databases by OID only, and restore --db-include/--db-exclude take OIDs for it; allow this role a normal connection (pg_hba.conf, CONNECT on its dbname) to record names",
        pg.target()
    );
    Vec::new()
}

async fn query(pg: &ConnParams) -> crate::error::Result<Vec<Database>> {
    let client = crate::pg::tls::sql_connect(pg).await?;
    let rows = client
        .simple_query(SQL_DATABASES)
        .await
        .map_err(|e| crate::pg::standby::sql_error(pg, e, "GRANT CONNECT on its dbname to the backup role"))?;
    Ok(rows.iter().filter_map(parse_row).collect())
}

fn parse_row(m: &tokio_postgres::SimpleQueryMessage) -> Option<Database> {
    let tokio_postgres::SimpleQueryMessage::Row(r) = m else { return None };
    Some(Database {
        oid: r.get(0)?.parse().ok()?,
        name: Some(r.get(1)?.to_string()),
        tablespace: r.get(2).and_then(|t| t.parse().ok()),
    })
}
