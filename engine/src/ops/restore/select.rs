//! Selective restore (`--db-include`, `--db-exclude`), as pgBackRest does it: the
//! files of every database not chosen are written as sparse files of their size,
//! all zeros, so that PostgreSQL starts and replays WAL (full-page images rebuild
//! what it touches) and the operator can then DROP those databases. The system
//! databases (template0, template1, postgres, and any other below OID 16384) are
//! always restored whole; so are the shared catalogs and everything outside the
//! per-database directories.

use std::collections::BTreeSet;

use crate::error::{Error, Misconfig, Result};
use crate::pg::datadir::{database_of, FIRST_NORMAL_OID, SYSTEM_DATABASES};
use crate::repo::format::{Database, FileEntry, FileKind, Manifest};

/// Which databases to restore: names or OIDs, as the operator gave them.
#[derive(Debug, Clone, Default)]
pub struct DbSelection {
    /// Restore only these (and the system databases); empty: all.
    pub include: Vec<String>,
    /// Restore all but these.
    pub exclude: Vec<String>,
}

impl DbSelection {
    pub(crate) fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// The databases a selection leaves out, by OID, with how to name them in messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Zeroed {
    pub oids: BTreeSet<u32>,
    /// `name (oid)`, or the OID alone where the backup has no names.
    pub shown: Vec<String>,
}

impl Zeroed {
    /// Whether `f`'s contents are left out (written as zeros).
    pub(crate) fn covers(&self, f: &FileEntry) -> bool {
        !self.oids.is_empty()
            && f.kind == FileKind::File
            && database_of(&f.path, f.tablespace.is_some()).is_some_and(|oid| self.oids.contains(&oid))
    }
}

/// The backup's databases: its list (format 6), plus any found only in its files
/// (every database of a format 5 backup, which has no list), by OID.
pub(crate) fn databases_of(m: &Manifest) -> Vec<Database> {
    Database::with_files(&m.databases, &m.files)
}

fn is_system(d: &Database) -> bool {
    d.oid < FIRST_NORMAL_OID || d.name.as_deref().is_some_and(|n| SYSTEM_DATABASES.contains(&n))
}

fn shown(d: &Database) -> String {
    match &d.name {
        Some(n) => format!("{n} ({})", d.oid),
        None => d.oid.to_string(),
    }
}

/// The selection that restores database `token` (name or OID) and the system ones
/// only (a user database is included, a system one keeps every user database out),
/// with the database's OID.
pub(crate) fn only_database(m: &Manifest, token: &str) -> Result<(DbSelection, u32)> {
    let all = databases_of(m);
    let d = resolve(m, &all, token, "--db")?;
    if is_system(d) {
        let exclude = all.iter().filter(|o| !is_system(o)).map(|o| o.oid.to_string()).collect();
        return Ok((DbSelection { include: Vec::new(), exclude }, d.oid));
    }
    Ok((DbSelection { include: vec![d.oid.to_string()], exclude: Vec::new() }, d.oid))
}

/// What `sel` leaves out of backup `m`; refuses names the backup does not have, a
/// system database, and a database both included and excluded.
pub(crate) fn zeroed(m: &Manifest, sel: &DbSelection) -> Result<Zeroed> {
    if sel.is_empty() {
        return Ok(Zeroed::default());
    }
    let all = databases_of(m);
    let include = resolve_all(m, &all, &sel.include, "--db-include")?;
    let exclude = resolve_all(m, &all, &sel.exclude, "--db-exclude")?;
    if let Some(both) = include.iter().find(|d| exclude.contains(d)) {
        let problem = format!("database {} is both included and excluded", shown(both));
        return Err(Error::misconfigured(
            Misconfig::Request,
            problem,
            "name it in --db-include or --db-exclude, not both",
        ));
    }
    let left_out: Vec<&Database> = if include.is_empty() {
        exclude
    } else {
        all.iter().filter(|d| !is_system(d) && !include.contains(d)).collect()
    };
    Ok(Zeroed { oids: left_out.iter().map(|d| d.oid).collect(), shown: left_out.iter().map(|d| shown(d)).collect() })
}

fn resolve_all<'a>(m: &Manifest, all: &'a [Database], given: &[String], option: &str) -> Result<Vec<&'a Database>> {
    let mut out = Vec::new();
    for token in given {
        let d = resolve(m, all, token, option)?;
        if is_system(d) {
            let problem = format!("{option}={token}: {} is a system database, always restored", shown(d));
            let hint = format!("leave {} out of {option}", SYSTEM_DATABASES.join(", "));
            return Err(Error::misconfigured(Misconfig::Request, problem, hint));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// A database by name, or by OID (the only way for a backup without names).
fn resolve<'a>(m: &Manifest, all: &'a [Database], token: &str, option: &str) -> Result<&'a Database> {
    let by_name = all.iter().find(|d| d.name.as_deref() == Some(token));
    let by_oid = token.parse::<u32>().ok().and_then(|oid| all.iter().find(|d| d.oid == oid));
    match (by_name, by_oid) {
        // Review of issue 25: a database named "16390" and the one with OID 16390
        // are two databases; taking either one silently would zero the other.
        (Some(a), Some(b)) if a != b => {
            let problem =
                format!("{option}={token} names database {} by name and database {} by OID", shown(a), shown(b));
            return Err(Error::misconfigured(Misconfig::Request, problem, "rename one of them, or name the other"));
        }
        (Some(d), _) | (None, Some(d)) => return Ok(d),
        (None, None) => {}
    }
    let listed: Vec<String> = all.iter().filter(|d| !is_system(d)).map(shown).collect();
    let problem = format!(
        "{option}={token}: backup {} has no such database (its databases besides the system ones: {})",
        m.label,
        if listed.is_empty() { "none".to_string() } else { listed.join(", ") }
    );
    // Regression (issue 25's test of a replication-only role): a backup whose list
    // has OIDs but no names was told to "name a database the backup has".
    let hint = if !all.iter().any(|d| d.name.is_some()) {
        "this backup records its databases by OID only (written before format 6, or without a SQL connection): name them by OID"
    } else {
        "name a database the backup has (or its OID)"
    };
    Err(Error::misconfigured(Misconfig::Request, problem, hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup with template1 (1), template0 (4), postgres (5), app (16384), one in
    /// a tablespace (16390), and `names` says whether it recorded names.
    fn manifest(names: bool) -> Manifest {
        let file = |path: &str, ts: Option<u32>| serde_json::json!({"path": path, "tablespace": ts, "kind": "file", "mode": 384, "mtime": 0, "size": 8192});
        let files = vec![
            file("global/1262", None),
            file("base/1/1259", None),
            file("base/4/1259", None),
            file("base/5/1259", None),
            file("base/16384/PG_VERSION", None),
            file("base/16384/16385", None),
            file("PG_15_202209061/16390/16391", Some(16389)),
        ];
        let dbs = [(1, "template1"), (4, "template0"), (5, "postgres"), (16384, "app"), (16390, "ledger")];
        let databases: Vec<_> = if names {
            dbs.iter().map(|(oid, n)| serde_json::json!({"oid": oid, "name": n})).collect()
        } else {
            Vec::new()
        };
        serde_json::from_value(serde_json::json!({
            "format_version": 6, "label": "20260101-000000F", "backup_type": "full", "start_time": "", "stop_time": "",
            "start_lsn": "0/1", "stop_lsn": "0/2", "timeline": 1, "system_identifier": 1, "pg_version": 150000,
            "block_size": 32768, "wal_included": true, "backup_label": "", "tablespaces": [], "size": 0,
            "stored_new": 0, "indexes": [], "files": files, "blocks": 0, "blocks_per_part": 1, "databases": databases,
        }))
        .unwrap()
    }

    fn sel(include: &[&str], exclude: &[&str]) -> DbSelection {
        DbSelection {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn include_keeps_the_chosen_and_the_system_databases() {
        let m = manifest(true);
        let z = zeroed(&m, &sel(&["app"], &[])).unwrap();
        assert_eq!(z.oids, BTreeSet::from([16390]));
        assert_eq!(z.shown, vec!["ledger (16390)"]);
        let file = |path: &str, ts| m.files.iter().find(|f| f.path == path && f.tablespace == ts).unwrap().clone();
        assert!(z.covers(&file("PG_15_202209061/16390/16391", Some(16389))));
        assert!(!z.covers(&file("base/16384/16385", None)));
        assert!(!z.covers(&file("global/1262", None)));
        // Excluding instead zeroes only what is named; by OID works as well.
        assert_eq!(zeroed(&m, &sel(&[], &["16384"])).unwrap().oids, BTreeSet::from([16384]));
        assert_eq!(zeroed(&m, &DbSelection::default()).unwrap(), Zeroed::default());
    }

    #[test]
    fn bad_selections_are_refused_with_what_the_backup_has() {
        let m = manifest(true);
        let err = zeroed(&m, &sel(&["nosuch"], &[])).unwrap_err().to_string();
        assert!(err.contains("has no such database") && err.contains("app (16384), ledger (16390)"), "{err}");
        let err = zeroed(&m, &sel(&["postgres"], &[])).unwrap_err().to_string();
        assert!(err.contains("system database, always restored"), "{err}");
        let err = zeroed(&m, &sel(&[], &["template1"])).unwrap_err().to_string();
        assert!(err.contains("system database"), "{err}");
        let err = zeroed(&m, &sel(&["app"], &["16384"])).unwrap_err().to_string();
        assert!(err.contains("both included and excluded"), "{err}");
        // Review of issue 25: a database named like another's OID is ambiguous.
        let mut named_like_an_oid = m.clone();
        named_like_an_oid.databases[4].name = Some("16384".into());
        let err = zeroed(&named_like_an_oid, &sel(&["16384"], &[])).unwrap_err().to_string();
        assert!(err.contains("by name and database app (16384) by OID"), "{err}");
    }

    /// A format 5 backup has no names: its databases come from the files, by OID.
    #[test]
    fn a_backup_without_names_takes_oids() {
        let m = manifest(false);
        assert_eq!(databases_of(&m).iter().map(|d| d.oid).collect::<Vec<_>>(), vec![1, 4, 5, 16384, 16390]);
        assert_eq!(zeroed(&m, &sel(&["16390"], &[])).unwrap().oids, BTreeSet::from([16384]));
        let err = zeroed(&m, &sel(&["app"], &[])).unwrap_err().to_string();
        assert!(err.contains("by OID only") && err.contains("16384, 16390"), "{err}");
        // OIDs below 16384 are system databases even without a name.
        assert!(zeroed(&m, &sel(&["5"], &[])).unwrap_err().to_string().contains("system database"));
        // A format 6 backup whose writer could not query pg_database lists OIDs only.
        let mut listed = m.clone();
        listed.databases = databases_of(&m);
        let err = zeroed(&listed, &sel(&["app"], &[])).unwrap_err().to_string();
        assert!(err.contains("by OID only"), "{err}");
    }
}
