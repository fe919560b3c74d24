//! `pgcairn drill`: prove a backup restores by restoring it. Restore (newest, `--set`
//! or to a recovery target) into a temporary directory on this host with every
//! tablespace under it, start PostgreSQL there privately (no TCP, a 0700 socket
//! directory, `archive_mode = off`), wait until recovery ends (a drill promotes at
//! its target), run `pg_amcheck --all --heapallindexed` and the operator's SQL
//! checks, stop it and remove the directory. The RTO is reported split into
//! restore, recovery and checks, and every drill that ran is recorded in the
//! repository (§6.8) for `info` and monitoring.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Misconfig, Result};
use crate::ops::restore::{
    choose, restore_chosen, DbSelection, Recovery, RecoveryTarget, RestoreRequest, TargetAction,
};
use crate::pg::instance::{AmcheckFailure, Binaries, Instance, OsUser};
use crate::progress::Progress;
use crate::repo::results::ResultKind;
use crate::repo::Repository;

/// Free space a drill wants beyond the backup's size (WAL replayed, new files)...
const SPACE_MARGIN: f64 = 1.10;
/// ... and at least this much besides (pg_wal can grow to max_wal_size during replay).
const SPACE_FLOOR: u64 = 1 << 30;

/// What to drill.
pub struct DrillRequest {
    /// Backup label; the newest that reaches the target when None.
    pub set: Option<String>,
    /// Where recovery stops (its action is always promote: checks need an open server).
    pub recovery: Recovery,
    /// PostgreSQL bin directory; found for the backup's major version when None.
    pub pg_bin: Option<PathBuf>,
    /// Directory under which the temporary cluster is made (default: the system temp dir).
    pub drill_path: Option<PathBuf>,
    /// SQL whose every query must return true.
    pub sql_file: Option<PathBuf>,
    /// How long recovery may take.
    pub timeout: Duration,
    /// Keep the temporary directory (for a failed drill's post-mortem).
    pub keep: bool,
    /// Told how many bytes are restored.
    pub progress: Arc<dyn Progress>,
    /// Which databases to restore whole (the others are zeros and not checked).
    pub databases: DbSelection,
}

/// A drill's outcome (stored as `result/drill/…`; `info` shows the last ones).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillReport {
    /// When the drill started (RFC 3339 UTC).
    pub started: String,
    /// The backup restored and why it was chosen.
    pub label: String,
    /// Why that backup.
    pub chosen_because: String,
    /// The recovery target, as PostgreSQL would log it.
    pub target: String,
    /// True when the cluster recovered and every check passed.
    pub ok: bool,
    /// What failed, when something did.
    pub failure: Option<String>,
    /// Seconds spent restoring files, in recovery, and in checks; their sum is the RTO.
    pub restore_seconds: f64,
    /// Seconds from starting PostgreSQL until recovery ended.
    pub recovery_seconds: f64,
    /// Seconds the checks took.
    pub checks_seconds: f64,
    /// Restore + recovery + checks.
    pub rto_seconds: f64,
    /// Bytes of the restored cluster.
    pub data_bytes: u64,
    /// `passed`, `failed` or `skipped: <why>`.
    pub amcheck: String,
    /// SQL checks that returned true.
    pub sql_checks_passed: u32,
    /// The PostgreSQL binaries used.
    pub pg_bin: String,
    /// Databases left out by --db-include/--db-exclude, so not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases_zeroed: Vec<String>,
}

/// Run a restore drill and record it. Refusals before anything runs (no binaries,
/// too little space, an unreadable SQL file) are errors and not recorded.
pub async fn drill(repo: &Repository, req: &DrillRequest) -> Result<DrillReport> {
    let started = chrono::Utc::now();
    let mut recovery = req.recovery.clone();
    recovery.check()?;
    check_action(&mut recovery)?;
    let sql = match &req.sql_file {
        Some(f) => Some(std::fs::read_to_string(f).ctx(|| format!("cannot read --drill-sql file {}", f.display()))?),
        None => None,
    };
    let choice = choose(repo, req.set.as_deref(), &recovery).await?;
    let manifest = repo.load_manifest(&choice.label).await?;
    let bins = Binaries::find(req.pg_bin.as_deref(), manifest.pg_version / 10000)?;
    let user = OsUser::for_server()?;
    let mut dir = TempCluster::create(req.drill_path.as_deref(), repo, &user, req.keep)?;
    check_space(dir.path(), manifest.size, "drill")?;
    let mut report = DrillReport::new(started, &choice, &recovery, manifest.size, &bins);
    let restore = restore_into(dir.path(), &choice.label, &manifest, recovery, req.databases.clone(), &req.progress);
    let instance = private_instance(dir.path(), bins, user);
    // Interrupted (Ctrl-C, a scheduler's timeout), the drill still stops its server
    // and removes its directory: a promoted copy of production must not outlive it.
    let outcome = tokio::select! {
        done = run(repo, req, &restore, choice, &instance, sql.as_deref(), &mut report) => done,
        signal = crate::ops::interrupted() => Err(Error::misconfigured(
            Misconfig::Request,
            format!("the drill was interrupted by {signal}"),
            "its server was stopped and its directory removed; run the drill again",
        )),
    };
    if let Err(e) = outcome {
        report.failure = Some(e.to_string());
    }
    if !instance.stop().await {
        dir.keep_after_failed_stop();
        report.failure.get_or_insert_with(|| "the drill server did not stop".into());
    }
    report.ok = report.failure.is_none();
    report.rto_seconds = report.restore_seconds + report.recovery_seconds + report.checks_seconds;
    record(repo, &report).await;
    Ok(report)
}

/// Store the report. It is printed whatever happens here: losing the RTO of a drill
/// that ran because the repository refused one small object would be worse.
async fn record(repo: &Repository, report: &DrillReport) {
    if let Err(e) = repo.put_result(ResultKind::Drill, report).await {
        tracing::error!(
            "the drill could not be recorded in the repository, so info and monitoring will not show it: {e}"
        );
    }
}

impl DrillReport {
    fn new(
        started: chrono::DateTime<chrono::Utc>,
        choice: &crate::ops::restore::Choice,
        recovery: &Recovery,
        data_bytes: u64,
        bins: &Binaries,
    ) -> Self {
        DrillReport {
            started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            label: choice.label.clone(),
            chosen_because: choice.why.clone(),
            target: recovery.target.describe(),
            ok: false,
            failure: None,
            restore_seconds: 0.0,
            recovery_seconds: 0.0,
            checks_seconds: 0.0,
            rto_seconds: 0.0,
            data_bytes,
            amcheck: "not run".into(),
            sql_checks_passed: 0,
            pg_bin: bins.dir.display().to_string(),
            databases_zeroed: Vec::new(),
        }
    }
}

/// The first SIGINT or SIGTERM; never returns if neither can be watched.
/// A drill must end recovery to run its checks: promote at the target.
pub(crate) fn check_action(recovery: &mut Recovery) -> Result<()> {
    if matches!(recovery.action, Some(TargetAction::Pause | TargetAction::Shutdown)) {
        return Err(Error::misconfigured(
            Misconfig::Request,
            "a drill (or an extract) promotes at its target so that its checks (or pg_dump) can run",
            "leave --target-action out (or use promote)",
        ));
    }
    if recovery.target == RecoveryTarget::None {
        return Err(Error::misconfigured(
            Misconfig::Request,
            "a drill (or an extract) needs recovery, --type=none writes none",
            "use --type=immediate",
        ));
    }
    if recovery.standby {
        return Err(Error::misconfigured(
            Misconfig::Request,
            "a drill (or an extract) promotes the restored cluster: --type=standby does not apply",
            "leave --type out (recovery to the end of the archive) or use --type=immediate",
        ));
    }
    let has_target = !matches!(recovery.target, RecoveryTarget::EndOfArchive);
    recovery.action = has_target.then_some(TargetAction::Promote);
    Ok(())
}

/// Restore, start, wait, check; each phase timed into the report.
async fn run(
    repo: &Repository,
    req: &DrillRequest,
    restore: &RestoreRequest,
    choice: crate::ops::restore::Choice,
    instance: &Instance,
    sql: Option<&str>,
    report: &mut DrillReport,
) -> Result<()> {
    let clock = Instant::now();
    let restored = restore_chosen(repo, restore, choice).await?;
    report.restore_seconds = clock.elapsed().as_secs_f64();
    report.databases_zeroed = restored.databases_zeroed;
    let clock = Instant::now();
    start_private(instance, req.timeout).await?;
    report.recovery_seconds = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let skip = zeroed_names(instance, &restored.zeroed_oids).await?;
    let checked = checks(instance, sql, &skip, report).await;
    report.checks_seconds = clock.elapsed().as_secs_f64();
    checked
}

/// The restore into a temporary cluster's directory `dir`: data under `data/`, every
/// tablespace under `tablespaces/<oid>`, no check of the server environment (the
/// server is started by pgcairn, in its own environment).
pub(crate) fn restore_into(
    dir: &Path,
    label: &str,
    manifest: &crate::repo::format::Manifest,
    recovery: Recovery,
    databases: DbSelection,
    progress: &Arc<dyn Progress>,
) -> RestoreRequest {
    let tablespaces = manifest.tablespaces.iter().map(|t| (t.oid, dir.join("tablespaces").join(t.oid.to_string())));
    RestoreRequest {
        target: dir.join("data"),
        set: Some(label.to_string()),
        tablespace_map: tablespaces.collect::<HashMap<_, _>>(),
        progress: progress.clone(),
        recovery,
        delta: false,
        check_server_environment: false,
        databases,
    }
}

/// The private server of a temporary cluster in `dir` (see [`restore_into`]).
pub(crate) fn private_instance(dir: &Path, bins: Binaries, user: OsUser) -> Instance {
    Instance { bins, data: dir.join("data"), socket_dir: dir.join("socket"), log: dir.join("postgresql.log"), user }
}

/// Start the restored cluster privately (its socket in a 0700 directory, no TCP)
/// and wait until recovery has ended.
pub(crate) async fn start_private(instance: &Instance, timeout: Duration) -> Result<()> {
    let hba = instance.socket_dir.with_file_name("pg_hba.conf");
    fsutil_mkdir(&instance.socket_dir)?;
    instance.configure(&hba)?;
    instance.user.own(instance.data.parent().unwrap_or(&instance.data))?;
    instance.check_private().await?;
    instance.start().await?;
    instance.wait_recovered(timeout).await
}

fn fsutil_mkdir(dir: &Path) -> Result<()> {
    crate::fsutil::create_dir_all_durable(dir).ctx(|| format!("cannot create {}", dir.display()))
}

/// The names of the left-out databases in the recovered cluster (its pg_database
/// names them even when the backup knew them by OID only): pg_amcheck skips them.
async fn zeroed_names(instance: &Instance, oids: &[u32]) -> Result<Vec<String>> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let client = instance.connect("postgres").await?;
    let rows = client
        .query("SELECT datname FROM pg_database WHERE oid = ANY($1)", &[&oids.to_vec()])
        .await
        .map_err(|e| Error::Internal(format!("cannot list the drilled cluster's databases: {e}")))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// pg_amcheck where available (not on the databases `skip` names: zeros), then the
/// operator's SQL.
async fn checks(instance: &Instance, sql: Option<&str>, skip: &[String], report: &mut DrillReport) -> Result<()> {
    report.amcheck = match instance.amcheck(skip).await {
        Ok(None) => "passed".into(),
        Ok(Some(AmcheckFailure::Corruption(output))) => {
            report.amcheck = "failed: corruption".into();
            return Err(Error::Corrupt {
                what: "the restored cluster".into(),
                detail: format!("pg_amcheck found corruption:\n{output}"),
            });
        }
        Ok(Some(AmcheckFailure::DidNotComplete(output))) => {
            report.amcheck = "failed: did not complete".into();
            return Err(Error::misconfigured(
                Misconfig::Server,
                format!("pg_amcheck could not complete on the drilled cluster (no verdict on the data):\n{output}"),
                "its output names the cause (a role the drill cannot use, memory); fix it and drill again",
            ));
        }
        Err(why) => {
            tracing::warn!("drill: pg_amcheck skipped: {why}");
            format!("skipped: {why}")
        }
    };
    let Some(sql) = sql else { return Ok(()) };
    let client = instance.connect("postgres").await?;
    let results = client.simple_query(sql).await.map_err(|e| {
        Error::misconfigured(
        Misconfig::Request,
        format!("a --drill-sql statement failed: {e}"),
        "each statement must run on the restored cluster; each query must return one row whose first column is true",
    )
    })?;
    let (mut query, mut rows) = (0u32, Vec::new());
    for message in results {
        match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => rows.push(row.get(0).map(str::to_string)),
            tokio_postgres::SimpleQueryMessage::CommandComplete(_) => {
                query += 1;
                match std::mem::take(&mut rows).as_slice() {
                    [Some(t)] if t == "t" => report.sql_checks_passed += 1,
                    [] if query_is_statement(sql, query) => {}
                    other => return Err(sql_check_failed(query, other)),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether statement `n` (1-based) of the file returns no rows by nature (SET,
/// CREATE …): only queries (SELECT, WITH, VALUES, TABLE) must return true.
fn query_is_statement(sql: &str, n: u32) -> bool {
    let statement = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).nth(n as usize - 1).unwrap_or("");
    let first = statement.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("--")).unwrap_or("");
    let word = first.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    !matches!(word.as_str(), "SELECT" | "WITH" | "VALUES" | "TABLE")
}

fn sql_check_failed(query: u32, rows: &[Option<String>]) -> Error {
    let got = match rows {
        [] => "no row".to_string(),
        [one] => one.clone().unwrap_or_else(|| "NULL".into()),
        many => format!("{} rows", many.len()),
    };
    Error::misconfigured(
        Misconfig::Request,
        format!("--drill-sql check {query} returned {got}, not one row that is true"),
        "the restored data differs from what the check expects: look at that query's result on the backup",
    )
}

/// Refuse a drill (or an extract: `what`) that would fill the file system:
/// `data_bytes` is what its restore writes.
pub(crate) fn check_space(dir: &Path, data_bytes: u64, what: &str) -> Result<()> {
    let need = ((data_bytes as f64 * SPACE_MARGIN) as u64).max(data_bytes.saturating_add(SPACE_FLOOR));
    let free = free_bytes(dir)?;
    if free < need {
        return Err(Error::misconfigured(
            Misconfig::ResourceLimit,
            format!(
                "{} has {} free, the {what} needs about {} (what it restores plus 10%, at least 1 GiB more)",
                dir.display(),
                gib(free),
                gib(need)
            ),
            "free space there, or point --drill-path at a file system with room (not the production cluster's: a full disk there stops it)",
        ));
    }
    Ok(())
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Internal("path with NUL".into()))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs writes the struct when it returns 0; we read it only then.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::io(format!("cannot read free space of {}", dir.display()), std::io::Error::last_os_error()));
    }
    // SAFETY: initialised by the successful statvfs above.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The drill's private directory (0700), removed when dropped unless kept.
pub(crate) struct TempCluster {
    path: PathBuf,
    keep: bool,
}

impl TempCluster {
    pub(crate) fn create(parent: Option<&Path>, repo: &Repository, user: &OsUser, keep: bool) -> Result<TempCluster> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        for line in super::drill_leftovers::clean(&parent, &repo.config().stanza) {
            tracing::warn!("{line}");
        }
        let name =
            format!("pgcairn-drill-{}-{}", repo.config().stanza, hex::encode(crate::crypto::random_bytes::<4>()));
        let path = parent.join(name);
        std::fs::create_dir(&path).ctx(|| format!("cannot create drill directory {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .ctx(|| format!("cannot set mode of {}", path.display()))?;
        super::drill_leftovers::mark(&path, keep).ctx(|| format!("cannot write {}/drill.owner", path.display()))?;
        user.own(&path)?;
        Ok(TempCluster { path, keep })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A server that may still run keeps its directory (removing it under a live
    /// postmaster would be worse than leaving it).
    pub(crate) fn keep_after_failed_stop(&mut self) {
        tracing::error!("the temporary server in {} did not stop: stop it with pg_ctl -D {}/data stop -m immediate, then remove the directory", self.path.display(), self.path.display());
        self.keep = true;
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.keep {
            tracing::warn!("drill directory kept: {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove drill directory {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drill_that_would_fill_the_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_space(dir.path(), 1 << 20, "drill").unwrap();
        let err = check_space(dir.path(), u64::MAX / 2, "drill").unwrap_err();
        assert!(matches!(err, Error::Misconfigured { kind: Misconfig::ResourceLimit, .. }), "{err}");
        assert!(err.to_string().contains("--drill-path"), "{err}");
    }

    /// Review of issue 13: checks were counted per row, so a query returning no row
    /// passed silently and one returning three rows counted as three checks.
    #[test]
    fn only_queries_must_return_one_true_row() {
        let sql = "SET work_mem = '64MB';\n-- a check\nSELECT true;\nWITH x AS (SELECT 1) SELECT false FROM x;";
        assert!(query_is_statement(sql, 1));
        assert!(!query_is_statement(sql, 2) && !query_is_statement(sql, 3));
        assert!(sql_check_failed(2, &[]).to_string().contains("returned no row"));
        let many = [Some("t".to_string()), Some("t".to_string())];
        assert!(sql_check_failed(2, &many).to_string().contains("2 rows"));
    }

    #[test]
    fn a_drill_promotes_at_its_target() {
        let mut r = Recovery {
            target: RecoveryTarget::Immediate,
            exclusive: false,
            action: Some(TargetAction::Pause),
            timeline: None,
            restore_command: String::new(),
            standby: false,
            options: Vec::new(),
        };
        assert!(check_action(&mut r).is_err(), "pause would never end recovery");
        r.action = None;
        check_action(&mut r).unwrap();
        assert_eq!(r.action, Some(TargetAction::Promote));
        r.target = RecoveryTarget::None;
        assert!(check_action(&mut r).is_err());
    }
}
