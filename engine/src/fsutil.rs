//! Durable local writes: temp file → fsync → rename (or link, for create-only) →
//! fsync directory. Every local write that must survive a crash goes through here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How the finished temp file takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Replace whatever is at the destination.
    Replace,
    /// Fail with `AlreadyExists` if the destination exists (atomic, via link(2)).
    CreateOnly,
}

/// A file being written under a temporary name next to its destination. Dropped
/// without [`DurableFile::commit`], the temp file is removed.
pub struct DurableFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl DurableFile {
    pub fn create(dest: &Path) -> io::Result<Self> {
        let name = dest.file_name().ok_or_else(|| io::Error::other("destination has no file name"))?;
        let tmp = dest.with_file_name(format!(
            ".{}.pgcairn-tmp.{}.{:08x}",
            name.to_string_lossy(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(Self { tmp, dest: dest.to_path_buf(), file: Some(file) })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is open until commit")
    }

    /// fsync the data, move it into place, fsync the directory.
    pub fn commit(mut self, mode: Commit) -> io::Result<()> {
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
}

impl Drop for DurableFile {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write `data` to `dest` durably.
pub fn write_file(dest: &Path, data: &[u8], mode: Commit) -> io::Result<()> {
    let mut f = DurableFile::create(dest)?;
    f.file().write_all(data)?;
    f.commit(mode)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Create `dir` and any missing parents, fsyncing each parent that gained an entry
/// so the new directories survive a crash.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_durable(parent)?;
        }
    }
    match fs::create_dir(dir) {
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
