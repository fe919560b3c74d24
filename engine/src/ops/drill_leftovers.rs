//! What a killed drill leaves: its directory and, often, its PostgreSQL server.
//!
//! Regression (issue 21, item 12): a drill killed with kill -9 left its server
//! running (parent pid 1) on a promoted copy of production, and its directory; the
//! next drill neither cleaned up nor mentioned them. Each drill directory now holds
//! an owner file (pid, host, whether it is kept on purpose); the next drill of the
//! stanza stops the server of a dead owner's directory and removes it, and says so.

use std::path::Path;
use std::time::{Duration, Instant};

/// The owner file in a drill's directory: `pid host keep`.
pub(crate) const OWNER_FILE: &str = "drill.owner";

/// Write the owner file of a new drill directory.
pub(crate) fn mark(dir: &Path, keep: bool) -> std::io::Result<()> {
    let text = format!("{} {} {}\n", std::process::id(), crate::fsutil::hostname(), keep);
    crate::fsutil::write_file(&dir.join(OWNER_FILE), text.as_bytes(), crate::fsutil::Commit::CreateOnly)
}

/// Clean up what killed drills of `stanza` left in `parent`; return one line per
/// directory for the log and the report.
pub(crate) fn clean(parent: &Path, stanza: &str) -> Vec<String> {
    let prefix = format!("pgcairn-drill-{stanza}-");
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    let dirs = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)) && p.is_dir());
    dirs.filter_map(|dir| clean_one(&dir)).collect()
}

fn clean_one(dir: &Path) -> Option<String> {
    let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    let mut words = owner.split_whitespace();
    let (pid, host, keep) = (words.next()?.parse::<i32>().ok()?, words.next()?, words.next() == Some("true"));
    if keep {
        return Some(format!("drill directory {} was kept with --drill-keep: remove it when done", dir.display()));
    }
    if host != crate::fsutil::hostname() || crate::fsutil::process_alive(pid) {
        return None; // a drill running now, or one of another host sharing this path
    }
    let data = dir.join("data");
    let stopped = match stop_server(&data) {
        Ok(Some(server)) => format!("; its server (pid {server}) was stopped"),
        Ok(None) => String::new(),
        Err(why) => {
            return Some(format!(
                "a killed drill left {} and its server, which could not be stopped ({why}): stop it with pg_ctl -D {} stop -m immediate, then remove the directory",
                dir.display(),
                data.display()
            ))
        }
    };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Some(format!("removed {}, left by a drill that was killed (pid {pid}){stopped}", dir.display())),
        Err(e) => Some(format!("a killed drill left {}{stopped}; it cannot be removed: {e}", dir.display())),
    }
}

/// Stop the postmaster of `data` if one runs there: immediate shutdown (SIGQUIT),
/// then SIGKILL. Ok(None) when none runs.
fn stop_server(data: &Path) -> Result<Option<i32>, String> {
    let Ok(pidfile) = std::fs::read_to_string(data.join("postmaster.pid")) else { return Ok(None) };
    let mut lines = pidfile.lines();
    let pid: i32 = lines.next().and_then(|l| l.trim().parse().ok()).ok_or("unreadable postmaster.pid")?;
    if !crate::fsutil::process_alive(pid) {
        return Ok(None);
    }
    // Only a postmaster of this very directory is signalled, never a recycled pid; one
    // alive that cannot be confirmed keeps its directory (a review finding).
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let its_dir = lines.next().map(|l| canonical(Path::new(l.trim())));
    if its_dir != Some(canonical(data)) || !runs_in(pid, data) {
        return Err(format!("pid {pid} runs, but it cannot be confirmed to be this directory's server"));
    }
    for (signal, wait) in [(libc::SIGQUIT, Duration::from_secs(10)), (libc::SIGKILL, Duration::from_secs(5))] {
        if !runs_in(pid, data) {
            break; // gone, or the pid now belongs to another process
        }
        // SAFETY: kill has no memory preconditions; the pid was checked just above.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + wait;
        while crate::fsutil::process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !crate::fsutil::process_alive(pid) {
            return Ok(Some(pid));
        }
    }
    Err(format!("pid {pid} survived SIGKILL"))
}

/// Whether process `pid` has `data` as its working directory (a postmaster chdirs
/// into its data directory).
fn runs_in(pid: i32, data: &Path) -> bool {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    cwd.is_ok_and(|c| c == data || std::fs::canonicalize(data).is_ok_and(|d| d == c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead owner's directory goes, a live or kept one stays (the kept one named).
    #[test]
    fn dead_owners_directories_go_live_and_kept_ones_stay() {
        let parent = tempfile::tempdir().unwrap();
        let make = |name: &str, pid: u32, keep: bool| {
            let dir = parent.path().join(format!("pgcairn-drill-main-{name}"));
            std::fs::create_dir(&dir).unwrap();
            let text = format!("{pid} {} {keep}\n", crate::fsutil::hostname());
            std::fs::write(dir.join(OWNER_FILE), text).unwrap();
            dir
        };
        let dead = make("dead", i32::MAX as u32 - 1, false);
        let live = make("live", std::process::id(), false);
        let kept = make("kept", i32::MAX as u32 - 1, true);
        let other = parent.path().join("pgcairn-drill-other-x");
        std::fs::create_dir(&other).unwrap();
        let said = clean(parent.path(), "main");
        assert!(!dead.exists() && live.exists() && kept.exists() && other.exists(), "{said:?}");
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said.iter().any(|s| s.contains("killed")) && said.iter().any(|s| s.contains("--drill-keep")));
    }
}
