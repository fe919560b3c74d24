//! Restore a backup set into an empty directory — or, with `delta`, over an existing
//! data directory, fetching only the blocks that differ (see `delta`). Ranged reads of
//! the packs, decrypt + decompress + verify on rayon (the repository's block reader),
//! new files written temp → rename, one syncfs per file system, then pg_control
//! (fsynced) last, tablespace links, modes.
//!
//! Four phases: [`plan`] (which backup, where each file goes; nothing touched),
//! [`prepare`] (targets checked, a delta compared, directories made), [`execute`]
//! (files fetched and written, pg_control last), [`finalize`] (tablespaces, links,
//! modes, recovery settings).

mod delta;
mod fetch;
mod select;
mod server_env;
mod target;

pub use select::DbSelection;
pub(crate) use select::{only_database, zeroed as zeroed_by};

pub(crate) use target::{choose, Choice};

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, IoContext, Misconfig, Result};
use crate::fsutil::{self, Commit};
use crate::pg::datadir::{self, PG_CONTROL, TABLESPACE_MAP};
use crate::pg::recovery::write_recovery;
pub use crate::pg::recovery::{Recovery, RecoveryTarget, TargetAction, TimelineTarget};
use crate::progress::Progress;
use crate::repo::blocklist::{block_count, BlockListReader, BLOCKS_PER_PART};
use crate::repo::format::{FileEntry, FileKind, Manifest, Summary};
use crate::repo::wal_archive::ArchiveOnce;
use crate::repo::Repository;
use delta::{Action, Compared};
use fetch::{Ctx, FileJob, PARALLEL_FILES};

/// Block list parts kept decoded (each up to ~3.4 MiB): about one per file being restored.
const PARTS_KEPT: usize = 4;

/// What to restore, where, and how recovery should proceed.
pub struct RestoreRequest {
    /// The data directory to restore into: empty or new, or existing with `delta`.
    pub target: PathBuf,
    /// Backup label; the newest when None.
    pub set: Option<String>,
    /// Tablespace OID → directory; unmapped tablespaces go to their original location.
    pub tablespace_map: HashMap<u32, PathBuf>,
    /// Told how many bytes are restored as they are written.
    pub progress: Arc<dyn Progress>,
    /// The recovery settings written for PostgreSQL.
    pub recovery: Recovery,
    /// Restore over an existing data directory, rewriting only what differs.
    pub delta: bool,
    /// Run the restore_command written as the server will (its OS user, none of this
    /// process's PGCAIRN_*/AWS_* variables) and refuse when it cannot open the
    /// repository. Off for a drill, whose server pgcairn starts in its own environment.
    pub check_server_environment: bool,
    /// Which databases to restore whole; the others' files are written as zeros.
    pub databases: DbSelection,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    /// The backup set restored.
    pub label: String,
    /// Why that backup: `--set` or the newest that reaches the target, and how.
    pub chosen_because: String,
    /// Regular files of the backup set, as backup and info count them (with `delta`, unchanged ones too).
    pub files: usize,
    /// The backup's size: the sum of its regular files' sizes.
    pub bytes: u64,
    /// Files a delta restore found identical and left alone.
    pub files_unchanged: usize,
    /// Restored bytes fetched from the repository.
    pub bytes_fetched: u64,
    /// How long the restore took, in seconds.
    pub seconds: f64,
    /// Databases left out by --db-include/--db-exclude (their files are zeros):
    /// `name (oid)`, or the OID where the backup has no names.
    pub databases_zeroed: Vec<String>,
    /// Their OIDs.
    #[serde(skip)]
    pub zeroed_oids: Vec<u32>,
}

/// What a restore will do, decided before anything is touched.
struct Plan {
    label: String,
    chosen_because: String,
    manifest: Manifest,
    /// Tablespace OID → the directory it is restored into.
    ts_dirs: HashMap<u32, PathBuf>,
    /// Every regular file but tablespace_map, with where its blocks start.
    jobs: Vec<FileJob>,
    /// Databases left out (their files written as zeros).
    zeroed: select::Zeroed,
}

impl Plan {
    fn dest_of(&self, target: &Path, f: &FileEntry) -> PathBuf {
        match f.tablespace {
            None => target.join(&f.path),
            Some(oid) => self.ts_dirs[&oid].join(&f.path),
        }
    }

    /// The restore target and every tablespace directory, with whether it is one.
    /// Where each tablespace is restored, as tablespace_map lists them.
    fn tablespace_locations(&self) -> Vec<(u32, &Path)> {
        self.ts_dirs.iter().map(|(oid, d)| (*oid, d.as_path())).collect()
    }

    fn roots<'a>(&'a self, target: &'a PathBuf) -> impl Iterator<Item = (&'a PathBuf, Option<u32>)> {
        std::iter::once((target, None)).chain(self.ts_dirs.iter().map(|(oid, d)| (d, Some(*oid))))
    }
}

/// Restores a backup set: plan, prepare the target, fetch and write the files, then
/// tablespaces, modes and recovery settings. Refuses before writing anything when the
/// backup or the target cannot work.
pub async fn restore(repo: &Repository, req: &RestoreRequest) -> Result<RestoreSummary> {
    req.recovery.check()?;
    let choice = choose(repo, req.set.as_deref(), &req.recovery).await?;
    restore_chosen(repo, req, choice).await
}

/// Restore the backup `choice` names (see [`choose`]).
pub(crate) async fn restore_chosen(repo: &Repository, req: &RestoreRequest, choice: Choice) -> Result<RestoreSummary> {
    let started = std::time::Instant::now();
    let owner = server_env::server_user(&req.target)?;
    let mut plan = plan(repo, req, choice).await?;
    let block_list = BlockListReader::new(repo, &plan.manifest, PARTS_KEPT);
    let actions = prepare(repo, req, &plan, &block_list).await?;
    let unchanged = actions.iter().filter(|a| **a == Action::Keep).count();
    let ctx = Arc::new(Ctx {
        reader: repo.block_reader(crate::cpu::Cpu::global()),
        blocks: block_list,
        label: plan.label.clone(),
        progress: req.progress.clone(),
    });
    let jobs = std::mem::take(&mut plan.jobs);
    // The count info and backup give (issue 14: restore said one less): every regular
    // file, tablespace_map included, which restore writes itself, the same each time.
    let files = plan.manifest.files.iter().filter(|f| f.kind == FileKind::File).count();
    let unchanged = if req.delta { unchanged + (files - jobs.len()) } else { unchanged };
    let bytes_fetched = execute(req, &plan, ctx, jobs, actions).await?;
    write_server_manifest(repo, req, &plan).await?;
    finalize(req, &plan)?;
    for (dir, _) in plan.roots(&req.target) {
        owner.own(dir)?;
    }
    if req.check_server_environment && req.recovery.target != RecoveryTarget::None {
        server_env::probe_restore_command(&req.recovery.restore_command, &owner, &req.target).await?;
    }
    Ok(RestoreSummary {
        files,
        bytes: plan.manifest.size,
        label: plan.label,
        chosen_because: plan.chosen_because,
        files_unchanged: unchanged,
        bytes_fetched,
        seconds: started.elapsed().as_secs_f64(),
        databases_zeroed: plan.zeroed.shown,
        zeroed_oids: plan.zeroed.oids.into_iter().collect(),
    })
}

/// Which backup, and where each of its files goes. Refuses a backup that cannot be
/// restored before anything is written.
async fn plan(repo: &Repository, req: &RestoreRequest, choice: Choice) -> Result<Plan> {
    let Choice { label, why, archive } = choice;
    tracing::info!("restoring backup {label}: {why}");
    let manifest = repo.load_manifest(&label).await?;
    // The WAL archive is listed at most once: by choose, or here if it did not.
    check_restorable(repo, &manifest, &archive).await?;
    if req.recovery.target == RecoveryTarget::None && !manifest.wal_included {
        let problem = format!(
            "backup {label} does not carry its WAL (it relies on the archive from {} to {}): --type=none cannot make it consistent",
            manifest.wal_start.as_deref().unwrap_or("?"),
            manifest.wal_stop.as_deref().unwrap_or("?")
        );
        return Err(Error::misconfigured(Misconfig::Request, problem, "use --type=immediate"));
    }
    let ts_dirs = manifest
        .tablespaces
        .iter()
        .map(|t| (t.oid, req.tablespace_map.get(&t.oid).cloned().unwrap_or_else(|| PathBuf::from(&t.location))))
        .collect();
    if req.recovery.standby && !req.databases.is_empty() {
        let problem = "--db-include/--db-exclude with --type=standby: a standby cannot drop the databases left out, and would serve zeros for them";
        return Err(Error::misconfigured(Misconfig::Request, problem, "restore every database for a standby"));
    }
    let zeroed = select::zeroed(&manifest, &req.databases)?;
    if !zeroed.oids.is_empty() {
        tracing::info!(
            "selective restore: the files of {} are written as zeros (DROP these databases once the server is up)",
            zeroed.shown.join(", ")
        );
    }
    let mut plan = Plan { label, chosen_because: why, manifest, ts_dirs, jobs: Vec::new(), zeroed };
    let mut next = 0u64;
    for f in plan.manifest.files.iter().filter(|f| f.kind == FileKind::File) {
        let count = block_count(f.size, plan.manifest.block_size);
        if !(f.tablespace.is_none() && f.path == TABLESPACE_MAP) {
            let dest = plan.dest_of(&req.target, f);
            let zero = plan.zeroed.covers(f);
            plan.jobs.push(FileJob { entry: f.clone(), dest, first: next, count, durable: false, zero });
        }
        next += count;
    }
    if next != plan.manifest.blocks {
        return Err(Error::Corrupt {
            what: format!("backup {}", plan.label),
            detail: format!("its files have {next} blocks, its block list {}", plan.manifest.blocks),
        });
    }
    Ok(plan)
}

/// Check the targets, decide what each file needs (a delta compares what is on
/// disk), clear what a delta must not leave, and make the directories.
async fn prepare(
    repo: &Repository,
    req: &RestoreRequest,
    plan: &Plan,
    block_list: &BlockListReader<'_>,
) -> Result<Vec<Action>> {
    datadir::check_not_running(&req.target)?;
    for (dir, oid) in plan.roots(&req.target) {
        if req.delta {
            delta::check_target(dir, oid.is_some())?;
        } else {
            check_empty_target(dir)?;
        }
    }
    let mut actions = if req.delta {
        req.progress.begin(&format!("delta restore {}: compare", plan.label), Some(plan.manifest.size));
        let actions = compare_all(&plan.jobs, block_list, plan.manifest.block_size as u64, repo, &req.progress).await?;
        req.progress.finish();
        actions
    } else {
        block_list.check().await?;
        plan.jobs.iter().map(|j| if j.zero { Action::Zero } else { Action::Write }).collect()
    };
    let pg_control = req.target.join(PG_CONTROL);
    if actions.iter().any(|a| *a != Action::Keep) {
        // pg_control goes first and comes back last (see execute).
        for (a, job) in actions.iter_mut().zip(&plan.jobs) {
            if job.dest == pg_control {
                *a = Action::Write;
            }
        }
        if req.delta {
            remove_pg_control(&pg_control, &req.target)?;
        }
    }
    if req.delta {
        let mut removed = 0;
        for (root, oid) in plan.roots(&req.target) {
            let keep = delta::listed(plan.manifest.files.iter().filter(|f| f.tablespace == oid));
            removed += delta::remove_extras(root, &keep)?;
        }
        tracing::info!("delta restore: removed {removed} files and directories the backup does not have");
    }
    make_directories(req, plan)?;
    Ok(actions)
}

fn remove_pg_control(pg_control: &Path, target: &Path) -> Result<()> {
    match std::fs::remove_file(pg_control) {
        Ok(()) => fsutil::sync_parent_dir(pg_control).ctx(|| format!("cannot fsync {}", target.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", pg_control.display()), e)),
    }
}

fn make_directories(req: &RestoreRequest, plan: &Plan) -> Result<()> {
    let mkdir = |d: &Path| fsutil::create_dir_all_durable(d).ctx(|| format!("cannot create directory {}", d.display()));
    mkdir(&req.target)?;
    std::fs::set_permissions(&req.target, std::fs::Permissions::from_mode(0o700))
        .ctx(|| format!("cannot set mode of {}", req.target.display()))?;
    for dir in plan.ts_dirs.values() {
        mkdir(dir)?;
    }
    for f in plan.manifest.files.iter().filter(|f| f.kind == FileKind::Dir) {
        mkdir(&plan.dest_of(&req.target, f))?;
    }
    // Parents of files whose directory entry the archive did not carry.
    for f in plan.manifest.files.iter().filter(|f| f.kind == FileKind::File) {
        if let Some(p) = plan.dest_of(&req.target, f).parent() {
            mkdir(p)?;
        }
    }
    Ok(())
}

/// Fetch and write every file that needs it, pg_control last. Returns the bytes
/// fetched.
async fn execute(
    req: &RestoreRequest,
    plan: &Plan,
    ctx: Arc<Ctx<'_>>,
    jobs: Vec<FileJob>,
    actions: Vec<Action>,
) -> Result<u64> {
    let block_size = plan.manifest.block_size as u64;
    let fetch_bytes = bytes_to_fetch(&jobs, &actions, block_size);
    req.progress.begin(&format!("restore {}", plan.label), Some(fetch_bytes));
    let run = |job: FileJob, action: Action| {
        let ctx = ctx.clone();
        async move {
            match action {
                Action::Keep => std::fs::set_permissions(&job.dest, std::fs::Permissions::from_mode(job.entry.mode))
                    .ctx(|| format!("cannot set mode of {}", job.dest.display())),
                Action::Patch(list) => ctx.patch_file(job, block_size, list).await,
                Action::Write => ctx.restore_file(job).await,
                Action::Zero => fetch::zero_file(job).await,
            }
        }
    };
    // pg_control last: until it is in place PostgreSQL cannot start on a partial restore.
    let pg_control = req.target.join(PG_CONTROL);
    let (last, rest): (Vec<_>, Vec<_>) = jobs.into_iter().zip(actions).partition(|(job, _)| job.dest == pg_control);
    let mut restored = futures::stream::iter(rest.into_iter().map(|(f, a)| run(f, a)))
        .buffer_unordered(PARALLEL_FILES)
        .try_collect::<Vec<()>>()
        .await;
    if restored.is_ok() {
        // The files above were written (temp file, rename) without an fsync each: one
        // sync per file system makes them all durable before pg_control, which is.
        restored = sync_roots(req, plan).map(|()| Vec::new());
    }
    if restored.is_ok() {
        for (mut f, a) in last {
            f.durable = true;
            restored = run(f, a).await.map(|()| Vec::new());
        }
    }
    if restored.is_err() {
        // The operator will retry; say what stands in the way.
        let hint = if req.delta {
            "run the same restore with --delta again"
        } else {
            "remove that directory (and restored tablespace directories) before restoring again, or rerun with --delta"
        };
        tracing::error!("restore of backup {} into {} stopped part-way: {hint}", plan.label, req.target.display());
    }
    restored?;
    req.progress.finish();
    Ok(fetch_bytes)
}

/// What the actions fetch from the repository.
fn bytes_to_fetch(jobs: &[FileJob], actions: &[Action], block_size: u64) -> u64 {
    jobs.iter()
        .zip(actions)
        .map(|(job, a)| match a {
            Action::Keep | Action::Zero => 0,
            Action::Write => job.entry.size,
            Action::Patch(list) => list.iter().map(|&b| block_size.min(job.entry.size - b as u64 * block_size)).sum(),
        })
        .sum()
}

/// syncfs(2) on the data directory and every tablespace directory: what restore
/// wrote there is durable once this returns (measured: 2000 fsyncs were a third of
/// a restore's system time, issue 22).
fn sync_roots(req: &RestoreRequest, plan: &Plan) -> Result<()> {
    for (dir, _) in plan.roots(&req.target) {
        tokio::task::block_in_place(|| fsutil::sync_filesystem(dir))
            .ctx(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

/// Tablespace map and links, symlinks, directory modes, recovery settings; every
/// directory fsynced.
fn finalize(req: &RestoreRequest, plan: &Plan) -> Result<()> {
    link_tablespaces(req, plan)?;
    for f in plan.manifest.files.iter().filter(|f| f.kind == FileKind::Symlink) {
        let dest = plan.dest_of(&req.target, f);
        if dest.symlink_metadata().is_ok() {
            continue; // a tablespace link made above
        }
        let target = f.link.clone().unwrap_or_default();
        std::os::unix::fs::symlink(&target, &dest).ctx(|| format!("cannot create link {}", dest.display()))?;
    }
    // Directory modes last (a 0500 directory would block writes into it), then
    // fsync every directory so the new entries are durable.
    for f in plan.manifest.files.iter().filter(|f| f.kind == FileKind::Dir).rev() {
        let d = plan.dest_of(&req.target, f);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(f.mode))
            .ctx(|| format!("cannot set mode of {}", d.display()))?;
        fsutil::sync_dir(&d).ctx(|| format!("cannot fsync {}", d.display()))?;
    }
    if req.recovery.target != RecoveryTarget::None {
        write_recovery(&req.target, &plan.label, &req.recovery)?;
    }
    fsutil::sync_dir(&req.target).ctx(|| format!("cannot fsync {}", req.target.display()))
}

/// PostgreSQL's own `backup_manifest` for the backup, so that `pg_verifybackup`
/// can check the restored directory independently of pgcairn (it skips the
/// recovery settings restore adds: postgresql.auto.conf and recovery.signal).
///
/// A backup whose server sent only changed pages has a backup_manifest that lists
/// `INCREMENTAL.*` files, not what restore writes: none is written then (one left
/// by an earlier restore into this directory is removed), as pg_verifybackup would
/// refuse the directory; `pgcairn verify` checks such a backup.
async fn write_server_manifest(repo: &Repository, req: &RestoreRequest, plan: &Plan) -> Result<()> {
    let path = req.target.join("backup_manifest");
    if plan.manifest.read.as_ref().is_some_and(|r| r.from_summaries()) {
        tracing::info!("no backup_manifest written: the server sent {} as changes since its parent", plan.label);
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("cannot remove {}", path.display()))
            }
            _ => fsutil::sync_dir(&req.target).ctx(|| format!("cannot fsync {}", req.target.display())),
        };
    }
    let mut bytes = repo.get_meta_bytes(&crate::repo::format::server_manifest_key(&plan.label)).await?;
    // The tablespace_map restore writes names the restored (maybe remapped) locations.
    if plan.manifest.files.iter().any(|f| f.tablespace.is_none() && f.path == TABLESPACE_MAP) {
        let map = datadir::tablespace_map(&plan.tablespace_locations());
        bytes = crate::pg::server_manifest::with_file(&bytes, TABLESPACE_MAP, map.as_bytes())?;
    }
    fsutil::write_file(&path, &bytes, Commit::Replace).ctx(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .ctx(|| format!("cannot set mode of {}", path.display()))
}

/// A tablespace_map naming the (possibly remapped) locations, which PostgreSQL turns
/// into pg_tblspc links at startup, and the links themselves.
fn link_tablespaces(req: &RestoreRequest, plan: &Plan) -> Result<()> {
    // PostgreSQL sends a tablespace_map (empty without tablespaces) and lists it in
    // its backup_manifest: write one back so that pg_verifybackup finds it.
    let had_map = plan.manifest.files.iter().any(|f| f.tablespace.is_none() && f.path == TABLESPACE_MAP);
    if plan.ts_dirs.is_empty() && !had_map {
        return Ok(());
    }
    for (oid, dir) in &plan.ts_dirs {
        let link = datadir::tablespace_link(&req.target, *oid);
        if let Some(parent) = link.parent() {
            fsutil::create_dir_all_durable(parent).ctx(|| format!("cannot create directory {}", parent.display()))?;
        }
        std::os::unix::fs::symlink(dir, &link).ctx(|| format!("cannot create tablespace link {}", link.display()))?;
    }
    let map_path = req.target.join(TABLESPACE_MAP);
    fsutil::write_file(&map_path, datadir::tablespace_map(&plan.tablespace_locations()).as_bytes(), Commit::Replace)
        .ctx(|| "cannot write tablespace_map".to_string())
}

/// Refuse a target that holds anything.
fn check_empty_target(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::RestoreTarget {
                    path: dir.to_path_buf(),
                    reason: "is not empty: restore into an empty or new directory, or add --delta to overwrite this data directory with the backup".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot read restore target {}", dir.display()), e)),
    }
}

/// Compare every file on disk with the backup, a window of about one block list part
/// at a time (so memory does not grow with the backup), hashing on rayon.
async fn compare_all(
    jobs: &[FileJob],
    block_list: &BlockListReader<'_>,
    block_size: u64,
    repo: &Repository,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<Action>> {
    let mut actions = Vec::with_capacity(jobs.len());
    let mut start = 0;
    while start < jobs.len() {
        let (mut end, mut blocks) = (start, 0u64);
        while end < jobs.len() && (end == start || blocks + jobs[end].count <= BLOCKS_PER_PART as u64) {
            blocks += jobs[end].count;
            end += 1;
        }
        let mut window = Vec::with_capacity(end - start);
        // A left-out database's files are written as zeros whatever is on disk.
        for job in jobs[start..end].iter().filter(|j| !j.zero) {
            let ids = block_list.range(job.first, job.count).await?.into_iter().map(|(id, _)| id).collect();
            window.push(Compared { dest: &job.dest, size: job.entry.size, ids });
        }
        let hasher = repo.chunk_hasher();
        let compared = tokio::task::block_in_place(|| delta::compare(&window, block_size, &hasher, progress))?;
        if compared.len() != window.len() {
            return Err(Error::Internal(format!("compared {} files of {}", compared.len(), window.len())));
        }
        let mut compared = compared.into_iter();
        for job in &jobs[start..end] {
            actions.push(if job.zero { Action::Zero } else { compared.next().unwrap_or(Action::Write) });
        }
        for (job, a) in jobs[start..end].iter().zip(&actions[start..end]) {
            match a {
                Action::Keep | Action::Zero => {}
                Action::Patch(list) => {
                    tracing::debug!("delta restore: {}: {} blocks differ", job.entry.path, list.len())
                }
                Action::Write => tracing::debug!("delta restore: {}: rewritten whole", job.entry.path),
            }
        }
        start = end;
    }
    Ok(actions)
}

/// Refuse, before anything is written, a backup whose own objects or WAL are not
/// all there: PostgreSQL could not start on it (`info` marks it the same way).
async fn check_restorable(repo: &Repository, m: &Manifest, archive: &ArchiveOnce) -> Result<()> {
    let m = &Summary::of(m);
    let problem = match repo.missing_backup_objects(m).await? {
        Some(p) => Some(p),
        None if m.wal_included => None,
        None => crate::ops::archive::missing_wal(m, archive.get(repo).await?, repo.config().wal_segment_size),
    };
    match problem {
        None => Ok(()),
        Some(detail) => Err(Error::Corrupt { what: format!("backup {}", m.label), detail }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_target() {
        let dir = tempfile::tempdir().unwrap();
        check_empty_target(dir.path()).unwrap();
        check_empty_target(&dir.path().join("new")).unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "17").unwrap();
        let err = check_empty_target(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }
}
