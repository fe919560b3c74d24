//! Delta restore: bring an existing data directory to a backup's state by hashing
//! what is there and fetching only the blocks that differ.
//!
//! Every block on disk is compared by its keyed BLAKE3 id with the manifest's (never
//! by size or time), so the result is the same as a restore into an empty directory:
//! files the backup does not list are removed, links are recreated.

use std::collections::HashMap;
use std::fs::File;

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::repo::block_reader::ChunkHasher;
use crate::repo::format::{ChunkId, FileEntry, FileKind};

/// Blocks hashed per job: large reads, and work for both cores even in one big file.
const BLOCKS_PER_JOB: usize = 256;

/// What a delta restore does with one regular file of the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Already identical (only its mode is set).
    Keep,
    /// Rewrite these blocks in place and cut the file to its size.
    Patch(Vec<usize>),
    /// Restore the whole file (absent, or nothing in it matches).
    Write,
    /// A left-out database's file (selective restore): zeros of its size, nothing fetched.
    Zero,
}

/// A non-empty delta target must look like what it will be overwritten with: a data
/// directory or a tablespace directory. A mistyped --pg-data or --tablespace-map
/// must not wipe an unrelated directory.
pub(super) fn check_target(dir: &Path, tablespace: bool) -> Result<()> {
    if crate::pg::datadir::looks_like_postgres(dir, tablespace)? {
        return Ok(());
    }
    let what = if tablespace { "a PG_<version> directory" } else { "PG_VERSION" };
    Err(Error::RestoreTarget {
        path: dir.to_path_buf(),
        reason: format!(
            "is not empty and has no {what}, so it is not a PostgreSQL directory --delta may overwrite: check the path, or empty it"
        ),
    })
}

/// Relative path → kind of every entry of one root, with the parents the archive did
/// not list as directories of their own.
pub(super) fn listed<'m>(files: impl Iterator<Item = &'m FileEntry>) -> HashMap<&'m str, FileKind> {
    let mut keep = HashMap::new();
    for f in files {
        // Sets taken before paths were normalised may name "./pg_wal/summaries".
        let mut path = f.path.strip_prefix("./").unwrap_or(&f.path);
        keep.insert(path, f.kind);
        while let Some((parent, _)) = path.rsplit_once('/') {
            keep.entry(parent).or_insert(FileKind::Dir);
            path = parent;
        }
    }
    keep
}

/// Remove everything under `root` that `keep` (relative path → kind) does not list
/// with the same kind. Symlinks are always removed: restore recreates them.
pub(super) fn remove_extras(root: &Path, keep: &HashMap<&str, FileKind>) -> Result<usize> {
    fn walk(root: &Path, rel: &str, keep: &HashMap<&str, FileKind>, removed: &mut usize) -> Result<()> {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("cannot read {}", dir.display()))?;
            let path = entry.path();
            let ft = entry.file_type().ctx(|| format!("cannot stat {}", path.display()))?;
            let child =
                entry.file_name().to_str().map(|n| if rel.is_empty() { n.to_string() } else { format!("{rel}/{n}") });
            let kind = if ft.is_dir() {
                Some(FileKind::Dir)
            } else if ft.is_file() {
                Some(FileKind::File)
            } else {
                None // symlink, socket, fifo, device: never kept
            };
            let wanted = child.as_deref().and_then(|c| keep.get(c)).copied();
            match (kind, wanted) {
                (Some(FileKind::Dir), Some(FileKind::Dir)) => {
                    if let Some(c) = child.as_deref() {
                        walk(root, c, keep, removed)?
                    }
                }
                (Some(k), Some(w)) if k == w => {}
                _ => {
                    let gone = if ft.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                    gone.ctx(|| format!("cannot remove {} (not in the backup)", path.display()))?;
                    tracing::debug!("delta restore: removed {}", path.display());
                    *removed += 1;
                }
            }
        }
        Ok(())
    }
    let mut removed = 0;
    walk(root, "", keep, &mut removed)?;
    Ok(removed)
}

/// A file of the backup as a delta restore compares it: where it goes, its size and
/// its blocks' chunk ids.
pub(super) struct Compared<'a> {
    pub dest: &'a Path,
    pub size: u64,
    pub ids: Vec<ChunkId>,
}

/// Compare each existing file with its blocks in the backup, block by block, on rayon.
pub(super) fn compare(
    files: &[Compared],
    block_size: u64,
    hasher: &ChunkHasher,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<Action>> {
    // (file, its length on disk, first block, end block) for every existing regular file.
    let mut jobs = Vec::new();
    let mut actions = Vec::with_capacity(files.len());
    for (n, file) in files.iter().enumerate() {
        match std::fs::symlink_metadata(file.dest) {
            Ok(m) if m.is_file() => {
                actions.push(Action::Patch(Vec::new()));
                let blocks = file.ids.len();
                let len = m.len();
                jobs.extend((0..blocks).step_by(BLOCKS_PER_JOB).map(|b| (n, len, b, (b + BLOCKS_PER_JOB).min(blocks))));
            }
            _ => actions.push(Action::Write),
        }
    }
    let differing: Vec<(usize, Vec<usize>)> = jobs
        .into_par_iter()
        .map(|(n, disk_len, first, end)| {
            let job = BlockRun { file: &files[n], disk_len, first, end, block_size };
            Ok((n, job.changed_blocks(hasher, progress)?))
        })
        .collect::<Result<_>>()?;
    for (n, changed) in differing {
        if let Action::Patch(list) = &mut actions[n] {
            list.extend(changed);
        }
    }
    for (file, action) in files.iter().zip(actions.iter_mut()) {
        settle(file, action);
    }
    Ok(actions)
}

/// A patch that changes every block is a rewrite; one that changes none, of a file
/// of the right length, is a keep.
fn settle(file: &Compared, action: &mut Action) {
    if let Action::Patch(list) = action {
        list.sort_unstable();
        let len = std::fs::metadata(file.dest).map(|m| m.len()).unwrap_or(u64::MAX);
        if !file.ids.is_empty() && list.len() == file.ids.len() {
            *action = Action::Write;
        } else if list.is_empty() && len == file.size {
            *action = Action::Keep;
        }
    }
}

/// Blocks `first..end` of one existing file, compared in one job.
struct BlockRun<'a> {
    file: &'a Compared<'a>,
    disk_len: u64,
    first: usize,
    end: usize,
    block_size: u64,
}

impl BlockRun<'_> {
    /// The blocks whose content on disk differs from the backup's (or is missing).
    fn changed_blocks(&self, hasher: &ChunkHasher, progress: &Arc<dyn Progress>) -> Result<Vec<usize>> {
        let Compared { dest, size, ids } = self.file;
        let (first, block_size) = (self.first, self.block_size);
        let start = first as u64 * block_size;
        let want = (self.end as u64 * block_size).min(*size) - start;
        // Mapped, not read: no copy of every byte into our memory. Never past the
        // end of the file (a mapping beyond it faults); the target is not in use.
        let got = want.min(self.disk_len.saturating_sub(start)) as usize;
        let map = if got == 0 {
            None
        } else {
            let f = File::open(dest).map_err(|e| Error::io(format!("cannot read {}", dest.display()), e))?;
            // SAFETY: read-only mapping of a file no running PostgreSQL uses (checked).
            let m = unsafe { memmap2::MmapOptions::new().offset(start).len(got).populate().map(&f) };
            Some(m.map_err(|e| Error::io(format!("cannot read {}", dest.display()), e))?)
        };
        let buf: &[u8] = map.as_deref().unwrap_or(&[]);
        progress.advance(want);
        Ok((first..self.end)
            .filter(|&b| {
                let from = ((b - first) as u64 * block_size) as usize;
                let to = (from + block_size as usize).min(want as usize);
                to > got || hasher.id(&buf[from..to]) != ids[b]
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn ids(data: &[u8], bs: usize, key: &ChunkHasher) -> Vec<ChunkId> {
        data.chunks(bs).map(|c| key.id(c)).collect()
    }

    #[test]
    fn finds_exactly_the_changed_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let key = ChunkHasher::new(&[3u8; 32]);
        let bs = 8192usize;
        let data: Vec<u8> = (0..bs * 600 + 100).map(|i| (i * 7 % 251) as u8).collect();
        let mut paths = Vec::new();
        let mut write = |name: &str, content: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            paths.push(p);
        };
        write("same", &data);
        let mut changed = data.clone();
        changed[5] ^= 1; // block 0
        changed[bs * 300] ^= 1; // block 300, in the second job
        changed[bs * 600 + 50] ^= 1; // the short last block
        write("changed", &changed);
        write("short", &data[..bs * 2 + 10]);
        let mut long = data.clone();
        long.extend_from_slice(b"tail");
        write("long", &long);
        write("other", &vec![0u8; data.len()]);
        paths.push(dir.path().join("absent"));
        let files: Vec<Compared> =
            paths.iter().map(|p| Compared { dest: p, size: data.len() as u64, ids: ids(&data, bs, &key) }).collect();

        let progress: Arc<dyn Progress> = Arc::new(NoProgress);
        let actions = compare(&files, bs as u64, &key, &progress).unwrap();
        assert_eq!(actions[0], Action::Keep);
        assert_eq!(actions[1], Action::Patch(vec![0, 300, 600]));
        assert_eq!(actions[2], Action::Patch((2..=600).collect()));
        assert_eq!(actions[3], Action::Patch(vec![]), "only cut to size");
        assert_eq!(actions[4], Action::Write);
        assert_eq!(actions[5], Action::Write);
    }

    #[test]
    fn removes_what_the_backup_does_not_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("base/1")).unwrap();
        std::fs::create_dir_all(root.join("stray_dir/x")).unwrap();
        std::fs::write(root.join("base/1/100"), b"kept").unwrap();
        std::fs::write(root.join("base/1/101"), b"stray").unwrap();
        std::fs::write(root.join("postmaster.pid"), b"1").unwrap();
        std::fs::create_dir(root.join("pg_wal")).unwrap(); // a directory where the backup has a file
        std::os::unix::fs::symlink("/nonexistent", root.join("link")).unwrap();
        let keep: HashMap<&str, FileKind> = [
            ("base", FileKind::Dir),
            ("base/1", FileKind::Dir),
            ("base/1/100", FileKind::File),
            ("pg_wal", FileKind::File),
            ("link", FileKind::Symlink),
        ]
        .into_iter()
        .collect();
        assert_eq!(remove_extras(root, &keep).unwrap(), 5);
        assert!(root.join("base/1/100").is_file());
        for gone in ["base/1/101", "stray_dir", "postmaster.pid", "pg_wal", "link"] {
            assert!(root.join(gone).symlink_metadata().is_err(), "{gone} still there");
        }
    }

    #[test]
    fn refuses_a_directory_that_is_not_postgres() {
        let dir = tempfile::tempdir().unwrap();
        check_target(dir.path(), false).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let err = check_target(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("has no PG_VERSION"), "{err}");
        assert!(check_target(dir.path(), true).is_err());
        std::fs::write(dir.path().join("PG_VERSION"), b"17").unwrap();
        check_target(dir.path(), false).unwrap();
        std::fs::create_dir(dir.path().join("PG_17_202406281")).unwrap();
        check_target(dir.path(), true).unwrap();
    }
}
