//! What a data directory is made of, as far as restore needs to know: which files
//! say "this is PostgreSQL", which one PostgreSQL cannot start without, whether a
//! postmaster still uses it, and how tablespaces are linked in.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Written last by a restore (and removed first by a delta restore): without it
/// PostgreSQL refuses to start, so it never starts on a partial restore.
pub(crate) const PG_CONTROL: &str = "global/pg_control";
/// The data directory's own tablespace map: regenerated at restore with the
/// (possibly remapped) locations, so the backed-up one is never restored.
pub(crate) const TABLESPACE_MAP: &str = "tablespace_map";

/// Refuse a directory a live postmaster uses (a stale postmaster.pid is fine).
pub(crate) fn check_not_running(dir: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("postmaster.pid")) else { return Ok(()) };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else { return Ok(()) };
    // SAFETY: kill with signal 0 only checks that the process exists.
    if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
        return Err(Error::RestoreTarget {
            path: dir.to_path_buf(),
            reason: format!("PostgreSQL (pid {pid}) is running in it: stop it, then restore"),
        });
    }
    Ok(())
}

/// Whether a non-empty directory looks like what a delta restore would overwrite: a
/// data directory (PG_VERSION) or a tablespace directory (a `PG_<major>_<catalog>`
/// entry). Empty or absent directories are fine too, and so is a tree of directories
/// and pgcairn temp files only: what a restore killed before its first file leaves.
pub(crate) fn looks_like_postgres(dir: &Path, tablespace: bool) -> Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io(format!("cannot read restore target {}", dir.display()), e)),
    };
    let names: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into()).collect();
    let marker = |n: &String| if tablespace { n.starts_with("PG_") } else { n == "PG_VERSION" };
    Ok(names.iter().any(marker) || !holds_files(dir))
}

/// Whether anything but directories and pgcairn temp files lies below `dir`.
fn holds_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return true };
    entries.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => holds_files(&e.path()),
        _ => !e.file_name().to_string_lossy().contains(".pgcairn-tmp."),
    })
}

/// Where the link of tablespace `oid` lives in a data directory.
/// Database OIDs below this are the ones initdb made (template1, template0,
/// postgres): `FirstNormalObjectId`. A restore always keeps them whole.
pub(crate) const FIRST_NORMAL_OID: u32 = 16384;
/// The databases every cluster has, by name (pgBackRest's list too).
pub(crate) const SYSTEM_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// The database a file belongs to: `base/<oid>/…` in the data directory, or
/// `PG_<major>_<catversion>/<oid>/…` in a tablespace directory. None for the rest
/// (global/, pg_wal/, the per-database directories themselves, …).
pub(crate) fn database_of(path: &str, in_tablespace: bool) -> Option<u32> {
    let mut parts = path.split('/');
    let top = parts.next()?;
    let matches_top = if in_tablespace { top.starts_with("PG_") } else { top == "base" };
    let oid = parts.next()?;
    // A file inside the database's directory, not the directory itself.
    parts.next()?;
    if !matches_top || oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    oid.parse().ok()
}

/// The query that names the databases: run at the end of a backup.
pub(crate) const SQL_DATABASES: &str = "SELECT oid::text, datname, dattablespace::text FROM pg_database";

pub(crate) fn tablespace_link(data_dir: &Path, oid: u32) -> PathBuf {
    data_dir.join("pg_tblspc").join(oid.to_string())
}

/// The text of `tablespace_map` for these (oid, location) pairs: one line each,
/// backslash, CR and LF in paths escaped with a backslash as PostgreSQL reads them.
pub(crate) fn tablespace_map(locations: &[(u32, &Path)]) -> String {
    let mut sorted = locations.to_vec();
    sorted.sort_by_key(|(oid, _)| *oid);
    sorted.iter().map(|(oid, dir)| format!("{oid} {}\n", escape_tablespace_path(&dir.to_string_lossy()))).collect()
}

fn escape_tablespace_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '\\' | '\n' | '\r') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_running_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).unwrap();
        let err = check_not_running(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is running in it"), "{err}");
    }

    #[test]
    fn finds_the_database_of_a_file() {
        assert_eq!(database_of("base/16384/16385", false), Some(16384));
        assert_eq!(database_of("base/5/PG_VERSION", false), Some(5));
        assert_eq!(database_of("PG_17_202406281/16390/16391_fsm", true), Some(16390));
        // The directory itself, other trees, and names that are not OIDs.
        assert_eq!(database_of("base/16384", false), None);
        assert_eq!(database_of("global/1262", false), None);
        assert_eq!(database_of("base/pgsql_tmp/x", false), None);
        assert_eq!(database_of("PG_17_202406281/16390/16391", false), None);
        assert_eq!(database_of("base/16384/16385", true), None);
        assert_eq!(database_of("base/99999999999/1", false), None);
    }

    #[test]
    fn escapes_tablespace_paths() {
        assert_eq!(escape_tablespace_path("/a b/c"), "/a b/c");
        assert_eq!(escape_tablespace_path("/a\\b\nc"), "/a\\\\b\\\nc");
        let map = tablespace_map(&[(20000, Path::new("/t2")), (16384, Path::new("/t1"))]);
        assert_eq!(map, "16384 /t1\n20000 /t2\n");
    }

    #[test]
    fn recognises_postgres_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(looks_like_postgres(dir.path(), false).unwrap(), "empty");
        // Regression (fault matrix): a restore killed before its first file left
        // directories and a temp file; both restore and --delta refused to go on.
        std::fs::create_dir_all(dir.path().join("base/1")).unwrap();
        std::fs::write(dir.path().join("base/1/.1259.pgcairn-tmp.77.0000abcd"), b"x").unwrap();
        assert!(looks_like_postgres(dir.path(), false).unwrap(), "only what a killed restore leaves");
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        assert!(!looks_like_postgres(dir.path(), false).unwrap());
        std::fs::write(dir.path().join("PG_VERSION"), b"17").unwrap();
        assert!(looks_like_postgres(dir.path(), false).unwrap());
        let ts = tempfile::tempdir().unwrap();
        std::fs::write(ts.path().join("notes.txt"), b"x").unwrap();
        assert!(!looks_like_postgres(ts.path(), true).unwrap());
        std::fs::create_dir(ts.path().join("PG_17_202406281")).unwrap();
        assert!(looks_like_postgres(ts.path(), true).unwrap());
    }
}
