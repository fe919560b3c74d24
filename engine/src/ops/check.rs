//! check: does archiving really work? Connects, checks the settings that make
//! archiving work and pg_stat_archiver (a failing archive_command is reported at
//! once), forces a WAL switch and waits for that segment in the repository.
//! `check_archive` is the cheap, read-only variant for monitoring.

use std::time::{Duration, Instant};

use crate::error::{Error, Misconfig, Result};
use crate::ops::stanza::identify_stanza_cluster;
use crate::pg::archiving::{
    ArchiverStats, ArchivingSettings, SQL_FRESH_WAL, SQL_IN_RECOVERY, SQL_RESTORE_POINT, SQL_SWITCH_WAL,
};
use crate::pg::replication::SystemInfo;
use crate::pg::wal::WalFile;
use crate::pg::{ConnParams, ReplicationConnection};
use crate::repo::access::RepoAccess;
use crate::repo::Repository;

/// What `check` needs besides the repository.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// The PostgreSQL server whose archiving is checked: a primary, or a streaming
    /// standby (then `primary` switches WAL).
    pub pg: ConnParams,
    /// `pg-primary`: the primary, when `pg` is a standby.
    pub primary: Option<ConnParams>,
    /// How long to wait for the switched segment to reach the repository (`archive-timeout`).
    pub timeout: Duration,
    /// Problems of the local async archive queue (see archive::push_async::spool_problems).
    pub spool_problems: Vec<String>,
    /// Create a restore point before the switch (`--restore-point`).
    pub restore_point: bool,
    /// The archive_command to suggest when the server's is wrong.
    pub wanted_command: String,
    /// The stanza's repositories, every one of which archive_command writes to; the
    /// switched segment must reach each.
    pub repos: Vec<RepoAccess>,
}

/// What a successful check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// The cluster's system identifier, the stanza's.
    pub system_identifier: u64,
    /// The server's archive_command setting.
    pub archive_command: String,
    /// pg_stat_archiver before the switch.
    pub archiver: ArchiverStats,
    /// The segment the check switched to and found in the repositories.
    pub segment: String,
    /// The numbers of the repositories it reached (1 for `repo`, 2 for `repo2` …).
    pub repositories: Vec<usize>,
    /// How long the whole check took, in seconds.
    pub seconds: f64,
    /// Whether diff and incr can read only what changed (PostgreSQL 17+).
    pub wal_summaries: WalSummaries,
}

/// The server's WAL summaries, which let diff and incr read changed pages only.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalSummaries {
    /// `summarize_wal` ("on" or "off"); None before PostgreSQL 17, which has none.
    pub summarize_wal: Option<String>,
    /// `wal_summary_keep_time`: summaries older than this are removed, and a diff or
    /// incr whose parent is older reads the whole cluster.
    pub keep_time: Option<String>,
}

impl WalSummaries {
    async fn read(conn: &mut ReplicationConnection) -> Result<Self> {
        if crate::pg::version::major_of(conn.server_version_num()) < 17 {
            return Ok(WalSummaries { summarize_wal: None, keep_time: None });
        }
        Ok(WalSummaries {
            summarize_wal: Some(conn.show("summarize_wal").await?),
            keep_time: Some(conn.show("wal_summary_keep_time").await?),
        })
    }

    /// One sentence for the operator.
    pub fn describe(&self) -> String {
        match (&self.summarize_wal, &self.keep_time) {
            (Some(on), Some(keep)) if on == "on" => {
                format!("summarize_wal on (kept {keep}): diff and incr read only what changed since their parent, when it is younger than that")
            }
            (Some(_), _) => "summarize_wal off: diff and incr read the whole cluster; set summarize_wal = on (reload) to read only what changed".into(),
            _ => "no WAL summaries before PostgreSQL 17: diff and incr read the whole cluster".into(),
        }
    }
}

fn sql_error(pg: &ConnParams, e: tokio_postgres::Error) -> Error {
    sql_error_needing(pg, e, None)
}

/// A failed query; a permission error names the GRANT that fixes it (docs/operations.md
/// "A role with the least privilege").
fn sql_error_needing(pg: &ConnParams, e: tokio_postgres::Error, function: Option<&str>) -> Error {
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    let hint = match function {
        Some(f) if code == "42501" => {
            format!("GRANT EXECUTE ON FUNCTION {f} TO {} (as a superuser), or run it as a superuser", pg.user)
        }
        _ => "see the server's message; docs/operations.md lists what each command needs".to_string(),
    };
    Error::Server { target: pg.target(), code, message, hint: Some(hint) }
}

/// Checks that the server archives into this stanza: the cluster is the stanza's,
/// archiving is set up and not failing, and a freshly switched segment reaches every
/// repository in time. On a standby, the primary switches WAL and, unless the standby
/// archives itself (archive_mode = always), its archiving is the one checked.
pub async fn check(req: &CheckRequest) -> Result<CheckReport> {
    let started = Instant::now();
    let repos = open_all(&req.repos).await?;
    let setup = check_server_setup(&repos, req).await?;
    let servers = Servers::connect(req, &setup, repos[0].1.config()).await?;
    let (archiver_client, archiver_pg) = servers.archiver();
    let archiver = ArchiverStats::read(archiver_client).await.map_err(|e| sql_error(archiver_pg, e))?;
    if archiver.failing() {
        let (problem, hint) = archiver.failure(&archiver_pg.target());
        return Err(Error::misconfigured(Misconfig::Server, problem, hint));
    }
    let (writer, writer_pg) = (&servers.writer, &servers.writer_pg);
    let fresh = if req.restore_point { SQL_RESTORE_POINT } else { SQL_FRESH_WAL };
    let needs = req.restore_point.then_some("pg_create_restore_point(text)");
    writer.query_one(fresh, &[]).await.map_err(|e| sql_error_needing(writer_pg, e, needs))?;
    let switch = |e| sql_error_needing(writer_pg, e, Some("pg_switch_wal()"));
    let segment: String = writer.query_one(SQL_SWITCH_WAL, &[]).await.map_err(switch)?.get(0);
    let switched_at = unix_now();
    tracing::info!("switched WAL: waiting for segment {segment} in the repository");
    let target = archiver_pg.target();
    wait_for_switched(&repos, archiver_client, &target, &segment, switched_at, req.timeout).await?;
    if !req.spool_problems.is_empty() {
        let problem = format!("archiving works, but {}", req.spool_problems.join("; "));
        let hint = "see the async spool's problems above; the archive-push log in the server log says more";
        return Err(Error::misconfigured(Misconfig::Setting, problem, hint));
    }
    Ok(CheckReport {
        system_identifier: setup.sys.system_identifier,
        archive_command: setup.archiving.archive_command,
        archiver,
        segment,
        repositories: req.repos.iter().map(|a| a.number).collect(),
        seconds: started.elapsed().as_secs_f64(),
        wal_summaries: setup.summaries,
    })
}

/// What check found on the server `pg` names.
struct ServerSetup {
    sys: SystemInfo,
    /// The archiving settings that decide (the primary's for a standby that does not
    /// archive itself).
    archiving: ArchivingSettings,
    /// `pg` is a standby (hot_standby on).
    standby: bool,
    /// That standby archives itself: archive_mode = always.
    standby_archives: bool,
    summaries: WalSummaries,
}

/// The SQL connections a check uses: the server that writes WAL (`pg`, or
/// `pg-primary` when `pg` is a standby) and, for a standby that archives itself, the
/// standby, whose pg_stat_archiver is then the one that counts.
struct Servers {
    writer: tokio_postgres::Client,
    writer_pg: ConnParams,
    standby: Option<(tokio_postgres::Client, ConnParams)>,
}

impl Servers {
    async fn connect(
        req: &CheckRequest,
        setup: &ServerSetup,
        cfg: &crate::repo::format::RepoConfig,
    ) -> Result<Servers> {
        let client = crate::pg::tls::sql_connect(&req.pg).await?;
        if !setup.standby {
            let in_recovery: bool =
                client.query_one(SQL_IN_RECOVERY, &[]).await.map_err(|e| sql_error(&req.pg, e))?.get(0);
            if in_recovery {
                let problem = format!("{} is in recovery with hot_standby off", req.pg.target());
                return Err(Error::misconfigured(Misconfig::Server, problem, "run check against the primary"));
            }
            return Ok(Servers { writer: client, writer_pg: req.pg.clone(), standby: None });
        }
        let primary = standby_primary(req)?;
        let writer = crate::pg::tls::sql_connect(primary).await?;
        crate::ops::backup::check_primary(&writer, primary, cfg).await?;
        let standby = setup.standby_archives.then(|| (client, req.pg.clone()));
        Ok(Servers { writer, writer_pg: primary.clone(), standby })
    }

    /// The server whose archiver archives into the repositories.
    fn archiver(&self) -> (&tokio_postgres::Client, &ConnParams) {
        match &self.standby {
            Some((client, pg)) => (client, pg),
            None => (&self.writer, &self.writer_pg),
        }
    }
}

/// `pg-primary`, which a check of a standby needs to switch WAL.
fn standby_primary(req: &CheckRequest) -> Result<&ConnParams> {
    req.primary.as_ref().ok_or_else(|| {
        let problem = format!("{} is a standby: check switches WAL, which only its primary can", req.pg.target());
        Error::misconfigured(Misconfig::Setting, problem, "set pg-primary to the primary's connection string")
    })
}

/// Every repository, opened at once; a failure names the repository when there
/// are several.
async fn open_all(repos: &[RepoAccess]) -> Result<Vec<(&RepoAccess, Repository)>> {
    let opened = futures::future::join_all(repos.iter().map(|a| a.open())).await;
    repos.iter().zip(opened).map(|(a, r)| Ok((a, r.map_err(|e| a.context_among(repos.len(), e))?))).collect()
}

/// The server is the cluster of every repository's stanza and its archiving settings
/// are ours (on a standby that does not archive itself: its primary's).
async fn check_server_setup(repos: &[(&RepoAccess, Repository)], req: &CheckRequest) -> Result<ServerSetup> {
    let mut conn = ReplicationConnection::connect(&req.pg).await?;
    let target = conn.target().to_string();
    tracing::info!("connected to {target}");
    let mut sys = None;
    for (access, repo) in repos {
        let found = identify_stanza_cluster(&mut conn, repo.config()).await;
        sys = Some(found.map_err(|e| access.context_among(repos.len(), e))?);
    }
    let sys = sys.ok_or_else(|| Error::Internal("check without a repository".into()))?;
    let standby = conn.show("in_hot_standby").await? == "on";
    let mut archiving = ArchivingSettings::read(&mut conn).await?;
    let summaries = WalSummaries::read(&mut conn).await?;
    conn.close().await;
    let standby_archives = standby && archiving.archive_mode == "always";
    let mut judged = target;
    if standby && !standby_archives {
        let primary = standby_primary(req)?;
        let client = crate::pg::tls::sql_connect(primary).await?;
        archiving = crate::pg::standby::archiving_settings(&client, primary).await?;
        judged = format!("{} (the primary of {judged})", primary.target());
    }
    let stanza = &repos[0].1.config().stanza;
    if let Some((problem, hint)) = archiving.problem(stanza, &req.wanted_command) {
        return Err(Error::misconfigured(Misconfig::Server, format!("{judged}: {problem}"), hint));
    }
    Ok(ServerSetup { sys, archiving, standby, standby_archives, summaries })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Wait for `segment` in every repository; stop at once when pg_stat_archiver says
/// archive_command failed on it after the switch.
async fn wait_for_switched(
    repos: &[(&RepoAccess, Repository)],
    client: &tokio_postgres::Client,
    target: &str,
    segment: &str,
    switched_at: f64,
    timeout: Duration,
) -> Result<()> {
    let file = WalFile::parse(segment).ok_or_else(|| Error::Internal(format!("unexpected wal file name {segment}")))?;
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<&(&RepoAccess, Repository)> = repos.iter().collect();
    loop {
        let mut still = Vec::new();
        for entry in waiting {
            let (access, repo) = entry;
            let there = repo.wal_exists(file.timeline(), segment).await;
            if !there.map_err(|e| access.context_among(repos.len(), e))? {
                still.push(entry);
            }
        }
        waiting = still;
        let Some((access, repo)) = waiting.first() else { return Ok(()) };
        if let Ok(stats) = ArchiverStats::read(client).await {
            // A second's slack: the server's clock and ours.
            if stats.failing() && stats.last_failed_time.is_some_and(|t| t >= switched_at - 1.0) {
                let (problem, hint) = stats.failure(target);
                return Err(Error::misconfigured(Misconfig::Server, problem, hint));
            }
        }
        if Instant::now() >= deadline {
            let what = format!("wal segment {segment}");
            let late = Error::ArchiveTimeout { what, stanza: repo.config().stanza.clone(), seconds: timeout.as_secs() };
            return Err(access.context_among(repos.len(), late));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Refuse when pg_stat_archiver says archive_command is failing (backup: before
/// streaming the cluster). A server that refuses the SQL connection (a pg_hba.conf
/// that allows replication only) is not an error: the backup's archive check still
/// waits for its WAL.
pub(crate) async fn refuse_failing_archiver(pg: &ConnParams, target: &str) -> Result<()> {
    let stats = match crate::pg::tls::sql_connect(pg).await {
        Ok(client) => ArchiverStats::read(&client).await.ok(),
        Err(e) => {
            tracing::info!("pg_stat_archiver not read ({e}): archiving is checked after the backup only");
            None
        }
    };
    match stats {
        Some(s) if s.failing() => {
            let (problem, hint) = s.failure(target);
            Err(Error::misconfigured(
                Misconfig::Server,
                problem,
                format!("{hint}; or pass --archive-copy to store the backup's WAL inside it"),
            ))
        }
        _ => Ok(()),
    }
}

/// A monitoring verdict, with Nagios' exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Exit 0.
    Ok,
    /// Exit 1.
    Warning,
    /// Exit 2.
    Critical,
}

impl Level {
    /// The Nagios plugin exit code.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

/// What `check --archive-only` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveCheck {
    /// The worst finding.
    pub level: Level,
    /// Each finding above ok, worst first, with what to do.
    pub problems: Vec<String>,
    /// The newest segment in the repository (highest timeline).
    pub newest_segment: Option<String>,
    /// When it arrived (unix seconds, the store's clock).
    pub newest_arrived: Option<u64>,
    /// Seconds since then.
    pub lag_seconds: Option<u64>,
    /// pg_stat_archiver, when `pg` was given and reachable.
    pub archiver: Option<ArchiverStats>,
    /// Completed segments the server has not archived yet (current − last archived − 1).
    pub backlog_segments: Option<u64>,
    /// Whether PostgreSQL (`pg`) answered; None when `pg` is not set.
    pub pg_up: Option<bool>,
    /// wal-receive's slot (`pgcairn_<stanza>`) on `pg`, when it exists there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_slot: Option<crate::pg::walstream::SlotState>,
}

/// Segments not archived yet beyond which `check --archive-only` warns (256 MiB of 16 MiB segments).
pub const BACKLOG_WARNING: u64 = 16;

/// `check --archive-only`: read-only and cheap (one listing of the archive, one
/// query), for polling each minute. Never switches WAL or writes anything.
pub async fn check_archive(repo: &Repository, pg: Option<&ConnParams>) -> Result<ArchiveCheck> {
    let archived = crate::repo::wal_archive::WalArchive::list(repo).await?;
    let summary = crate::ops::archive::archive_summary(&archived, repo.config().wal_segment_size, None);
    check_archive_summary(repo, pg, &summary).await
}

/// [`check_archive`] on a summary of the archive already listed (info's `archive`),
/// so `metrics` lists the WAL archive once per scrape.
pub async fn check_archive_summary(
    repo: &Repository,
    pg: Option<&ConnParams>,
    summary: &[crate::ops::archive::TimelineArchive],
) -> Result<ArchiveCheck> {
    let seg_size = repo.config().wal_segment_size;
    let newest = summary.iter().rev().find(|t| t.last.is_some());
    let now = unix_now() as u64;
    let mut out = ArchiveCheck {
        level: Level::Ok,
        problems: Vec::new(),
        newest_segment: newest.and_then(|t| t.last.clone()),
        newest_arrived: newest.and_then(|t| t.last_arrived),
        lag_seconds: newest.and_then(|t| t.last_arrived).map(|t| now.saturating_sub(t)),
        archiver: None,
        backlog_segments: None,
        pg_up: None,
        stream_slot: None,
    };
    if out.newest_segment.is_none() {
        out.flag(Level::Warning, "the repository holds no WAL yet: set archive_command and run `pgcairn check`".into());
    }
    if let Some(pg) = pg {
        match server_archiving(pg, &repo.config().stanza).await {
            Ok(server) => {
                out.pg_up = Some(true);
                out.judge_slot(server.slot.clone());
                judge_server(&mut out, repo, pg, server, seg_size).await?
            }
            Err(e) => {
                out.pg_up = Some(false);
                out.flag(Level::Critical, format!("cannot read pg_stat_archiver: {e}"))
            }
        }
    }
    out.problems.sort_by_key(|p| std::cmp::Reverse(p.starts_with("CRITICAL")));
    Ok(out)
}

impl ArchiveCheck {
    /// wal-receive's slot: lost is critical (the stream has a gap), unused a warning
    /// (WAL piles up on the server).
    fn judge_slot(&mut self, slot: Option<crate::pg::walstream::SlotState>) {
        let Some(s) = &slot else { return };
        if s.wal_status == "lost" {
            let problem = format!("the replication slot {} lost its WAL (max_slot_wal_keep_size exceeded): wal-receive cannot resume; drop the slot, restart wal-receive and take a full backup if the archive has a gap", s.name);
            self.flag(Level::Critical, problem);
        } else if !s.active {
            let held = s
                .retained_bytes
                .map(|b| format!(", holding {} MiB of WAL on the server", b.max(0) >> 20))
                .unwrap_or_default();
            self.flag(Level::Warning, format!("nothing streams from the replication slot {}{held}: start wal-receive, or drop the slot if it is retired", s.name));
        }
        self.stream_slot = slot;
    }

    fn flag(&mut self, level: Level, problem: String) {
        self.level = self.level.max(level);
        let tag = if level == Level::Critical { "CRITICAL" } else { "WARNING" };
        self.problems.push(format!("{tag}: {problem}"));
    }
}

/// What the server says of its archiving.
struct ServerArchiving {
    mode: String,
    command: String,
    /// None where pg_control_system() is not readable by the role.
    system_identifier: Option<u64>,
    stats: ArchiverStats,
    /// wal-receive's slot, when it exists.
    slot: Option<crate::pg::walstream::SlotState>,
}

async fn server_archiving(pg: &ConnParams, stanza: &str) -> Result<ServerArchiving> {
    let client = crate::pg::tls::sql_connect(pg).await?;
    let sql = "SELECT current_setting('archive_mode'), current_setting('archive_command')";
    let row = client.query_one(sql, &[]).await.map_err(|e| sql_error(pg, e))?;
    let stats = ArchiverStats::read(&client).await.map_err(|e| sql_error(pg, e))?;
    let sysid = client.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).await;
    let system_identifier = sysid.ok().and_then(|r| r.get::<_, String>(0).parse().ok());
    let slot_name = crate::pg::walstream::default_slot(stanza);
    let slot = crate::pg::walstream::slot_state(&client, &slot_name).await.map_err(|e| sql_error(pg, e))?;
    Ok(ServerArchiving { mode: row.get(0), command: row.get(1), system_identifier, stats, slot })
}

/// Whether the server's archiver statistics are this stanza's: the same cluster, and
/// an archive_command that runs pgcairn. Regression (issue 21, item 11): a stanza the
/// server does not archive into still got its archiver counters.
fn archiver_is_ours(out: &mut ArchiveCheck, repo: &Repository, target: &str, server: &ServerArchiving) -> bool {
    let ours = repo.config().system_identifier;
    if let Some(theirs) = server.system_identifier.filter(|id| *id != ours) {
        out.flag(
            Level::Critical,
            format!(
                "{target} is cluster {theirs}, but stanza {} belongs to cluster {ours}: `pg` names the wrong server",
                repo.config().stanza
            ),
        );
        return false;
    }
    let stanza = &repo.config().stanza;
    if let Some((named, how)) = crate::pg::archiving::archived_stanza(&server.command).filter(|(n, _)| n != stanza) {
        out.flag(
            Level::Warning,
            format!("{target}: archive_command archives into stanza {named}{how}, not {stanza}: its archiver counters are not this stanza's"),
        );
        return false;
    }
    if server.mode != "off" && !server.command.contains("pgcairn") {
        out.flag(
            Level::Warning,
            format!(
                "{target}: archive_command does not run pgcairn ({:?}): its archiver counters are not this stanza's",
                server.command
            ),
        );
        return false;
    }
    true
}

/// The server's side: archiving on, not failing, its last archived segment in the
/// repository, no long backlog.
async fn judge_server(
    out: &mut ArchiveCheck,
    repo: &Repository,
    pg: &ConnParams,
    server: ServerArchiving,
    seg_size: u32,
) -> Result<()> {
    let target = pg.target();
    if !archiver_is_ours(out, repo, &target, &server) {
        return Ok(());
    }
    let (mode, stats) = (server.mode.as_str(), server.stats);
    if mode == "off" {
        out.flag(
            Level::Critical,
            format!("{target}: archive_mode is off: set archive_mode = on and restart PostgreSQL"),
        );
    }
    if stats.failing() {
        let (problem, hint) = stats.failure(&target);
        out.flag(Level::Critical, format!("{problem}; hint: {hint}"));
    }
    let last_segment =
        stats.last_archived_wal.as_deref().filter(|n| matches!(WalFile::parse(n), Some(WalFile::Segment { .. })));
    if let Some(last) = last_segment {
        let timeline = WalFile::parse(last).map_or(0, |f| f.timeline());
        if !repo.wal_exists(timeline, last).await? {
            out.flag(
                Level::Warning,
                format!("{target} archived {last}, but the repository lacks it: archive_command archives elsewhere (check its --stanza/--config), or the async queue has not drained yet"),
            );
        }
    }
    let segno = |w: &Option<String>| w.as_deref().and_then(WalFile::parse).and_then(|f| f.segno(seg_size));
    if let (Some(current), Some(last)) = (segno(&stats.current_wal), segno(&stats.last_archived_wal)) {
        let backlog = current.saturating_sub(last + 1);
        out.backlog_segments = Some(backlog);
        if backlog > BACKLOG_WARNING {
            out.flag(Level::Warning, format!("{target}: {backlog} completed segments wait to be archived: archiving falls behind (slow repository, or async queue full)"));
        }
    }
    out.archiver = Some(stats);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Issue 21, item 11: which stanza an archive_command archives into, when it says.
    #[test]
    fn the_stanza_an_archive_command_names() {
        let named = |c: &str| crate::pg::archiving::archived_stanza(c).map(|(s, _)| s);
        assert_eq!(named("/usr/local/bin/pgcairn-archive-push --stanza=main %p").as_deref(), Some("main"));
        assert_eq!(named("pgcairn-archive-push --config /etc/x.toml --stanza other %p").as_deref(), Some("other"));
        assert_eq!(named("'/opt/pgcairn-archive-push' '--stanza=q' %p").as_deref(), Some("q"));
        assert_eq!(named("pgcairn-archive-push %p"), None);
    }
}
