//! Durable local writes: temp file → fsync → rename (or link, for create-only) →
//! fsync directory. Every local write that must survive a crash goes through here.
//! Files are created 0600 and directories 0700 whatever the umask: they hold WAL,
//! keys and repository objects (callers that restore a mode set it afterwards).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How the finished temp file takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Replace whatever is at the destination.
    Replace,
    /// Fail with `AlreadyExists` if the destination exists (atomic, via link(2)).
    CreateOnly,
}

/// A file being written under a temporary name next to its destination. Dropped
/// without [`DurableFile::commit`], the temp file is removed.
pub(crate) struct DurableFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl DurableFile {
    pub(crate) fn create(dest: &Path) -> io::Result<Self> {
        let name = dest.file_name().ok_or_else(|| io::Error::other("destination has no file name"))?;
        let tmp = dest.with_file_name(format!(
            ".{}.pgcairn-tmp.{}.{:08x}",
            name.to_string_lossy(),
            std::process::id(),
            rand::random::<u32>()
        ));
        Self::open(tmp, dest)
    }

    /// Like [`DurableFile::create`], with the temp file in `tmp_dir` (same filesystem
    /// as `dest`) under a name [`sweep_stale_temps`] can attribute to its writer.
    pub(crate) fn create_in(tmp_dir: &Path, dest: &Path) -> io::Result<Self> {
        Self::open(temp_name_in(tmp_dir), dest)
    }

    fn open(tmp: PathBuf, dest: &Path) -> io::Result<Self> {
        let file = private_file().write(true).create_new(true).open(&tmp)?;
        Ok(Self { tmp, dest: dest.to_path_buf(), file: Some(file) })
    }

    // Invariant: `file` is Some from `open` until `commit`, which consumes the handle.
    #[allow(clippy::expect_used)]
    pub(crate) fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is open until commit")
    }

    /// The open temp file, shared (e.g. handed to a child process as its stdout).
    // Invariant: as for `file`.
    #[allow(clippy::expect_used)]
    pub(crate) fn handle(&self) -> &File {
        self.file.as_ref().expect("file is open until commit")
    }

    /// fsync the data, move it into place, fsync the directory.
    // Invariant: `file` is Some from `open` on, and this is the only place that takes
    // it; `commit` consumes the handle, so it runs once.
    #[allow(clippy::expect_used)]
    pub(crate) fn commit(mut self, mode: Commit) -> io::Result<()> {
        let file = self.file.take().expect("commit once");
        file.sync_all()?;
        drop(file);
        match mode {
            Commit::Replace => fs::rename(&self.tmp, &self.dest)?,
            Commit::CreateOnly => {
                fs::hard_link(&self.tmp, &self.dest)?;
                fs::remove_file(&self.tmp)?;
            }
        }
        sync_parent_dir(&self.dest)
    }

    /// Move the file into place whole, without any fsync: only for files a process
    /// reads at once and never trusts after a crash (the WAL fetcher's spool, emptied
    /// by every new fetcher), where an fsync buys nothing and costs recovery time.
    // Invariant: as for `commit`.
    #[allow(clippy::expect_used)]
    pub(crate) fn publish_volatile(mut self) -> io::Result<()> {
        drop(self.file.take().expect("publish once"));
        fs::rename(&self.tmp, &self.dest)
    }
}

impl Drop for DurableFile {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Mode of every file pgcairn creates.
pub(crate) const PRIVATE_FILE: u32 = 0o600;
/// Mode of every directory pgcairn creates.
pub(crate) const PRIVATE_DIR: u32 = 0o700;

/// OpenOptions that create files 0600 (the umask can only take bits away).
pub(crate) fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(PRIVATE_FILE);
    o
}

/// Make this process create private files whatever umask it was started with
/// (cron and shells often run with 022): the binaries call it first thing.
pub fn private_umask() {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Write `data` to `dest` durably.
pub(crate) fn write_file(dest: &Path, data: &[u8], mode: Commit) -> io::Result<()> {
    let mut f = DurableFile::create(dest)?;
    f.file().write_all(data)?;
    f.commit(mode)
}

/// Temp files older than this are removed whoever wrote them: no write takes a day.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Remove the temp files in `tmp_dir` that no write will ever finish: those of dead
/// processes on this host (a writer killed with -9) and any older than a day (a
/// writer on another host sharing the directory). Best effort: a file that cannot
/// be removed now is tried again by the next sweep. Returns how many were removed.
pub(crate) fn sweep_stale_temps(tmp_dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(tmp_dir) else { return 0 };
    let host = hostname();
    let mut removed = 0;
    for e in entries.flatten() {
        let dead = written_by_dead_process(&e.file_name().to_string_lossy(), &host);
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_TEMP_AGE));
        if (dead || old) && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Remove only the temp files of dead processes of this host in `dir`, whatever
/// their age: for a directory whose other files must stay (the key cache's entries).
pub(crate) fn sweep_dead_writers(dir: &Path) {
    let host = hostname();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if written_by_dead_process(&e.file_name().to_string_lossy(), &host) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Whether `name` is a temp name of [`temp_name_in`] (`<pid>.<random>.<host>`) whose
/// writer ran on `host` and is gone.
fn written_by_dead_process(name: &str, host: &str) -> bool {
    let mut parts = name.splitn(3, '.');
    let (pid, _, writer_host) = (parts.next(), parts.next(), parts.next());
    let pid: Option<i32> = pid.and_then(|p| p.parse().ok());
    pid.is_some_and(|pid| writer_host == Some(host) && !process_alive(pid))
}

pub(crate) fn process_alive(pid: i32) -> bool {
    if pid <= 0 || pid as u32 == std::process::id() {
        return pid > 0;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This host's name (for temp file names); "localhost" if it cannot be read.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(h) if rc == 0 && !h.is_empty() => h.replace(['/', '.'], "_"),
        _ => "localhost".into(),
    }
}

/// Write `data` to `dest` durably through a temp file in `tmp_dir` (created if
/// needed, on the same filesystem as `dest`), first sweeping the temp files that
/// killed writers left there: what a kill -9 leaves never outlives the next write.
pub(crate) fn write_file_via(tmp_dir: &Path, dest: &Path, data: &[u8], mode: Commit) -> io::Result<()> {
    create_dir_all_durable(tmp_dir)?;
    sweep_stale_temps(tmp_dir);
    let mut f = DurableFile::create_in(tmp_dir, dest)?;
    f.file().write_all(data)?;
    f.commit(mode)
}

/// A temp name in `tmp_dir` that [`sweep_stale_temps`] can attribute to this process.
fn temp_name_in(tmp_dir: &Path) -> PathBuf {
    tmp_dir.join(format!("{}.{:08x}.{}", std::process::id(), rand::random::<u32>(), hostname()))
}

/// Give the durable file `src` the name `dest` too, without writing its data again:
/// a hard link made under a temp name in `tmp_dir` (same file system), renamed over
/// `dest`, then `dest`'s directory fsynced. Fails when `src` is gone or on another
/// file system; the caller then writes a copy.
pub(crate) fn link_via(tmp_dir: &Path, src: &Path, dest: &Path) -> io::Result<()> {
    create_dir_all_durable(tmp_dir)?;
    sweep_stale_temps(tmp_dir);
    let tmp = temp_name_in(tmp_dir);
    fs::hard_link(src, &tmp)?;
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent_dir(dest)
}

/// [`write_file_via`] without the fsyncs (see [`DurableFile::publish_volatile`]):
/// readers see the whole file or none of it, but a crash may lose it.
pub(crate) fn write_file_volatile(tmp_dir: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    create_dir_all_durable(tmp_dir)?;
    let mut f = DurableFile::create_in(tmp_dir, dest)?;
    f.file().write_all(data)?;
    f.publish_volatile()
}

/// An exclusive, non-blocking flock on `path` (created 0600 if missing), held while
/// the returned file is open; None if another process holds it.
pub(crate) fn try_flock(path: &Path) -> io::Result<Option<File>> {
    let f = private_file().create(true).write(true).truncate(false).open(path)?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((rc == 0).then_some(f))
}

/// Make everything written to the file system holding `path` durable (syncfs(2)):
/// one call instead of an fsync per file, for a restore that writes many files
/// before the one that makes them usable (pg_control).
pub(crate) fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    // SAFETY: syncfs on a descriptor we own.
    let rc = unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&dir)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Create `dir` and any missing parents, fsyncing each parent that gained an entry
/// so the new directories survive a crash.
pub(crate) fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_durable(parent)?;
        }
    }
    match fs::DirBuilder::new().mode(PRIVATE_DIR).create(dir) {
        Ok(()) => sync_parent_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_only_refuses_existing_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("obj");
        write_file(&dest, b"one", Commit::CreateOnly).unwrap();
        let err = write_file(&dest, b"two", Commit::CreateOnly).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&dest).unwrap(), b"one");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn replace_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        write_file(&dest, b"one", Commit::Replace).unwrap();
        write_file(&dest, b"two", Commit::Replace).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
    }

    /// Regression (issue 10, defect 7): pushes killed with -9 left temp files that
    /// nothing removed. A sweep removes those of dead writers and keeps live ones.
    #[test]
    fn sweep_removes_temps_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(".tmp");
        fs::create_dir(&tmp).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let host = hostname();
        fs::write(tmp.join(format!("{dead_pid}.0000abcd.{host}")), b"partial").unwrap();
        fs::write(tmp.join(format!("{dead_pid}.0000abcd.other-host")), b"partial").unwrap();
        let mut live = DurableFile::create_in(&tmp, &dir.path().join("obj")).unwrap();
        live.file().write_all(b"in flight").unwrap();
        assert_eq!(sweep_stale_temps(&tmp), 1, "only the dead local writer's temp goes");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 2);
        live.commit(Commit::CreateOnly).unwrap();
        assert_eq!(fs::read(dir.path().join("obj")).unwrap(), b"in flight");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 1, "a commit leaves no temp");
    }

    #[test]
    fn created_files_and_dirs_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask only sets this process's creation mask; restored below.
        let old = unsafe { libc::umask(0o022) };
        let sub = dir.path().join("a/b");
        create_dir_all_durable(&sub).unwrap();
        write_file(&sub.join("f"), b"x", Commit::CreateOnly).unwrap();
        unsafe { libc::umask(old) };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&sub.join("f")), 0o600);
    }

    #[test]
    fn a_link_shares_the_data_and_leaves_no_temp() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (src, dest, tmp) = (dir.path().join("a"), dir.path().join("b"), dir.path().join(".tmp"));
        write_file(&src, b"segment", Commit::CreateOnly).unwrap();
        link_via(&tmp, &src, &dest).unwrap();
        assert_eq!(fs::metadata(&src).unwrap().ino(), fs::metadata(&dest).unwrap().ino());
        fs::remove_file(&src).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"segment", "each name keeps the data");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "no temp left");
        let gone = link_via(&tmp, &src, &dir.path().join("c")).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "no temp left after a failure");
    }

    #[test]
    fn dropped_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = DurableFile::create(&dir.path().join("x")).unwrap();
            f.file().write_all(b"partial").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
