//! `pgcairn extract`: one database, or some of its tables, out of a backup as a
//! `pg_dump` file. What it needs is restored into a temporary cluster (the drill's
//! private directory and server; the other databases are left out as zeros), which
//! recovers to the chosen backup or point in time; `pg_dump` then writes the
//! operator's selection, and the cluster and its directory are removed. Recovering
//! a dropped 50 MB table no longer means restoring the whole 2 TB cluster by hand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Misconfig, Result};
use crate::fsutil::{Commit, DurableFile};
use crate::ops::drill::{check_action, check_space, private_instance, restore_into, start_private, TempCluster};
use crate::ops::restore::{choose, restore_chosen, Recovery, RestoreRequest};
use crate::pg::instance::{Binaries, DumpFormat, Instance, OsUser};
use crate::progress::Progress;
use crate::repo::format::FileKind;
use crate::repo::Repository;

/// Where the dump goes.
#[derive(Debug, Clone)]
pub enum DumpOutput {
    /// A new file (refused if it exists), written durably, mode 0600.
    File(PathBuf),
    /// This process's standard output.
    Stdout,
}

/// What to extract, from which backup or point in time.
pub struct ExtractRequest {
    /// The database to dump (name, or OID for a backup without names).
    pub database: String,
    /// pg_dump `--table` patterns; empty: the whole database.
    pub tables: Vec<String>,
    /// pg_dump `--schema` patterns.
    pub schemas: Vec<String>,
    /// Plain SQL or pg_dump's custom format (for pg_restore).
    pub format: DumpFormat,
    /// Where the dump goes.
    pub output: DumpOutput,
    /// Backup label; the newest that reaches the target when None.
    pub set: Option<String>,
    /// Where recovery stops (its action is always promote: pg_dump needs an open server).
    pub recovery: Recovery,
    /// PostgreSQL bin directory (with pg_dump); found for the backup's major when None.
    pub pg_bin: Option<PathBuf>,
    /// Directory under which the temporary cluster is made.
    pub work_path: Option<PathBuf>,
    /// How long recovery may take.
    pub timeout: Duration,
    /// Told how many bytes are restored.
    pub progress: Arc<dyn Progress>,
}

/// What an extract did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExtractReport {
    /// The backup restored.
    pub label: String,
    /// Why that backup.
    pub chosen_because: String,
    /// The recovery target, as PostgreSQL would log it.
    pub target: String,
    /// The database dumped, as given.
    pub database: String,
    /// Its OID.
    pub database_oid: u32,
    /// Bytes restored (the database, the system catalogs and the rest of the cluster
    /// but the other databases) against the backup's whole size.
    pub restored_bytes: u64,
    /// The backup's size.
    pub backup_bytes: u64,
    /// Seconds spent restoring, recovering and dumping.
    pub restore_seconds: f64,
    /// Seconds from starting PostgreSQL until recovery ended.
    pub recovery_seconds: f64,
    /// Seconds pg_dump took.
    pub dump_seconds: f64,
    /// Where the dump went (a path, or "standard output").
    pub output: String,
}

/// Restore what `req` needs into a temporary cluster, recover it, dump, remove it.
pub async fn extract(repo: &Repository, req: &ExtractRequest) -> Result<ExtractReport> {
    let mut recovery = req.recovery.clone();
    recovery.check()?;
    check_action(&mut recovery)?;
    let choice = choose(repo, req.set.as_deref(), &recovery).await?;
    let manifest = repo.load_manifest(&choice.label).await?;
    let bins = Binaries::find(req.pg_bin.as_deref(), manifest.pg_version / 10000)?;
    bins.require("pg_dump", "extract runs the backup's own major version of pg_dump")?;
    let (databases, oid) = crate::ops::restore::only_database(&manifest, &req.database)?;
    let zeroed = crate::ops::restore::zeroed_by(&manifest, &databases)?;
    let restored_bytes: u64 =
        manifest.files.iter().filter(|f| f.kind == FileKind::File && !zeroed.covers(f)).map(|f| f.size).sum();
    let out = Output::open(&req.output)?;
    let user = OsUser::for_server()?;
    let mut dir = TempCluster::create(req.work_path.as_deref(), repo, &user, false)?;
    check_space(dir.path(), restored_bytes, "extract")?;
    let mut report = ExtractReport {
        label: choice.label.clone(),
        chosen_because: choice.why.clone(),
        target: recovery.target.describe(),
        database: req.database.clone(),
        database_oid: oid,
        restored_bytes,
        backup_bytes: manifest.size,
        output: out.describe(),
        ..ExtractReport::default()
    };
    let restore = restore_into(dir.path(), &choice.label, &manifest, recovery, databases, &req.progress);
    let instance = private_instance(dir.path(), bins, user);
    // As a drill: interrupted, it still stops its server and removes its directory.
    let outcome = tokio::select! {
        done = run(repo, req, &restore, choice, &instance, out, &mut report) => done,
        signal = crate::ops::interrupted() => Err(Error::misconfigured(
            Misconfig::Request,
            format!("the extract was interrupted by {signal}"),
            "its server was stopped and its directory removed; no dump file was written (a dump to standard output is incomplete); run it again",
        )),
    };
    if !instance.stop().await {
        dir.keep_after_failed_stop();
    }
    outcome.map(|()| report)
}

async fn run(
    repo: &Repository,
    req: &ExtractRequest,
    restore: &RestoreRequest,
    choice: crate::ops::restore::Choice,
    instance: &Instance,
    out: Output,
    report: &mut ExtractReport,
) -> Result<()> {
    let clock = Instant::now();
    restore_chosen(repo, restore, choice).await?;
    report.restore_seconds = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    start_private(instance, req.timeout).await?;
    report.recovery_seconds = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    // The recovered cluster names the database even when the backup knew its OID only.
    let name = database_name(instance, report.database_oid, &req.database).await?;
    let mut cmd = instance.pg_dump(&name, req.format, &req.tables, &req.schemas);
    cmd.stdout(out.stdio()?);
    // Not output(): tokio's pipes stdout itself, and the dump would go into memory.
    let child = cmd.spawn().map_err(|e| Error::io("cannot run pg_dump".to_string(), e))?;
    let done = child.wait_with_output().await.map_err(|e| Error::io("cannot run pg_dump".to_string(), e))?;
    if !done.status.success() {
        return Err(Error::misconfigured(
            Misconfig::Request,
            format!("pg_dump failed ({}): {}", done.status, String::from_utf8_lossy(&done.stderr).trim()),
            "check the --table/--schema patterns (pg_dump's pattern rules); no dump file was written (a dump to standard output is incomplete)",
        ));
    }
    out.finish()?;
    report.dump_seconds = clock.elapsed().as_secs_f64();
    Ok(())
}

/// The name `pg_dump -d` needs: the given one, or the name of the database with that OID.
async fn database_name(instance: &Instance, oid: u32, given: &str) -> Result<String> {
    let client = instance.connect("postgres").await?;
    let rows = client
        .query("SELECT datname FROM pg_database WHERE oid = $1", &[&oid])
        .await
        .map_err(|e| Error::Internal(format!("cannot list the recovered cluster's databases: {e}")))?;
    match rows.first() {
        Some(row) => Ok(row.get(0)),
        None => Err(Error::misconfigured(
            Misconfig::Request,
            format!("database {given} does not exist at the recovery target"),
            "it was created after the target, or dropped before it: choose another --target or --set",
        )),
    }
}

/// The dump's destination: a temp file next to the new file, committed at the end.
enum Output {
    File(PathBuf, DurableFile),
    Stdout,
}

impl Output {
    fn open(to: &DumpOutput) -> Result<Output> {
        match to {
            DumpOutput::Stdout => Ok(Output::Stdout),
            DumpOutput::File(path) => {
                if path.symlink_metadata().is_ok() {
                    return Err(Error::misconfigured(
                        Misconfig::Request,
                        format!("{} exists: extract never overwrites a file", path.display()),
                        "name a new file, or remove that one first",
                    ));
                }
                let file =
                    DurableFile::create(path).ctx(|| format!("cannot create a file next to {}", path.display()))?;
                Ok(Output::File(path.clone(), file))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Output::File(path, _) => path.display().to_string(),
            Output::Stdout => "standard output".into(),
        }
    }

    fn stdio(&self) -> Result<std::process::Stdio> {
        match self {
            Output::Stdout => Ok(std::process::Stdio::inherit()),
            Output::File(path, f) => {
                let handle = f.handle().try_clone().ctx(|| format!("cannot write {}", path.display()))?;
                Ok(handle.into())
            }
        }
    }

    /// The file durable under its name (never replacing one made meanwhile).
    fn finish(self) -> Result<()> {
        match self {
            Output::Stdout => Ok(()),
            Output::File(path, f) => f.commit(Commit::CreateOnly).ctx(|| format!("cannot write {}", path.display())),
        }
    }
}
