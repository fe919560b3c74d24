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
