//! `pgcairn metrics`: the stanza's state (computed by the engine: `info` and the
//! read-only archive check) rendered in the Prometheus text format, printed once (for
//! node_exporter's textfile collector) or served on `GET /metrics` (`--listen`).
//! Every series is labelled with its stanza and its repository (`repo="1"` for
//! `repo`, "2" for `repo2` …): with several repositories and no `repo-number`, each
//! is read and shown. With `--all-stanzas`, every stanza of the repository in one
//! exposition.
//! Metric names are documented in docs/operations.md "Monitoring"; the alerting
//! rules in contrib/prometheus/pgcairn.rules.yml use them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use pgcairn_cli::settings::typed::Common;
use pgcairn_cli::settings::Resolved;

use futures::StreamExt;

type Labels = Vec<(&'static str, String)>;

/// Stanzas read at once by `metrics --all-stanzas`.
const PARALLEL_STANZAS: usize = 4;
type Gauges = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;
type Counters = Family<Labels, Counter>;

/// One scrape's metric families by name, each with the series of every stanza read
/// (one family per name, as the exposition format requires). Every value is read fresh.
#[derive(Default)]
struct Scrape {
    gauges: BTreeMap<String, (String, Gauges)>,
    counters: BTreeMap<String, (String, Counters)>,
    /// The stanza whose series are being added.
    stanza: String,
    /// The repository whose series are being added (its number: 1 for `repo`).
    repo: String,
}

impl Scrape {
    fn labels(&self, extra: impl IntoIterator<Item = (&'static str, String)>) -> Labels {
        [("stanza", self.stanza.clone()), ("repo", self.repo.clone())].into_iter().chain(extra).collect()
    }

    /// prometheus-client ends every HELP line with a full stop: ours carry none.
    /// Regression (issue 21, item 11): HELP lines ended in "..".
    fn gauge_family(&mut self, name: &str, help: &str) -> &Gauges {
        let help = help.trim_end_matches('.').to_string();
        &self.gauges.entry(name.to_string()).or_insert_with(|| (help, Gauges::default())).1
    }

    fn gauge(&mut self, name: &str, help: &str, extra: &[(&'static str, &str)], value: f64) {
        let labels = self.labels(extra.iter().map(|(k, v)| (*k, v.to_string())));
        self.gauge_family(name, help).get_or_create(&labels).set(value);
    }

    /// Several series of one gauge (one per label value).
    fn gauges(&mut self, name: &str, help: &str, series: &[(Labels, f64)]) {
        for (extra, value) in series {
            let labels = self.labels(extra.iter().cloned());
            self.gauge_family(name, help).get_or_create(&labels).set(*value);
        }
        self.gauge_family(name, help); // declared even without a series
    }

    fn counter(&mut self, name: &str, help: &str, value: i64) {
        let labels = self.labels([]);
        let help = help.trim_end_matches('.').to_string();
        let family = &self.counters.entry(name.to_string()).or_insert_with(|| (help, Counters::default())).1;
        family.get_or_create(&labels).inc_by(value.max(0) as u64);
    }

    fn encode(&self) -> Result<String> {
        let mut registry = Registry::default();
        let build = Family::<Labels, Gauge>::default();
        build.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())]).set(1);
        registry.register("pgcairn_build_info", "pgcairn's version", build);
        for (name, (help, family)) in &self.gauges {
            registry.register(name, help.clone(), family.clone());
        }
        for (name, (help, family)) in &self.counters {
            registry.register(name, help.clone(), family.clone());
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

fn rfc3339_seconds(t: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| t.timestamp() as f64)
}

fn backups(s: &mut Scrape, info: &pgcairn::InfoReport) {
    let by_type = |f: &dyn Fn(&pgcairn::LastBackup) -> Option<f64>| -> Vec<(Labels, f64)> {
        info.last_backup.iter().filter_map(|(t, b)| Some((vec![("type", t.clone())], f(b)?))).collect()
    };
    let stop = by_type(&|b| rfc3339_seconds(&b.stop_time));
    s.gauges(
        "pgcairn_backup_last_success_timestamp_seconds",
        "When the newest restorable backup of each type stopped (unix seconds).",
        &stop,
    );
    let duration = by_type(&|b| Some(b.duration_seconds as f64));
    s.gauges(
        "pgcairn_backup_last_duration_seconds",
        "How long the newest restorable backup of each type took.",
        &duration,
    );
    let size = by_type(&|b| Some(b.size as f64));
    s.gauges("pgcairn_backup_last_size_bytes", "Cluster bytes in the newest restorable backup of each type.", &size);
    let counts: Vec<(Labels, f64)> = ["full", "diff", "incr"]
        .iter()
        .map(|t| {
            let n = info.backups.iter().filter(|b| b.details.as_ref().is_some_and(|d| d.backup_type == *t)).count();
            (vec![("type", t.to_string())], n as f64)
        })
        .collect();
    s.gauges("pgcairn_backup_count", "Backups of each type in the repository.", &counts);
    let bad = info.backups.iter().filter(|b| b.status != pgcairn::BackupStatus::Ok).count();
    s.gauge(
        "pgcairn_backup_not_restorable",
        "Backups that are damaged or lack WAL (see `pgcairn info`).",
        &[],
        bad as f64,
    );
    s.gauge(
        "pgcairn_repository_size_bytes",
        "Bytes of every object of the stanza in the repository.",
        &[],
        info.repo_size as f64,
    );
}

fn proofs(s: &mut Scrape, info: &pgcairn::InfoReport) {
    if let Some(v) = &info.last_verify {
        let ok = if v.ok { 1.0 } else { 0.0 };
        s.gauge(
            "pgcairn_verify_last_timestamp_seconds",
            "When the last `pgcairn verify` started (unix seconds).",
            &[],
            rfc3339_seconds(&v.started).unwrap_or(0.0),
        );
        s.gauge("pgcairn_verify_last_ok", "1 when the last verify found no damage.", &[], ok);
    }
    if let Some(d) = info.last_drills.first() {
        s.gauge(
            "pgcairn_drill_last_timestamp_seconds",
            "When the last `pgcairn drill` started (unix seconds).",
            &[],
            rfc3339_seconds(&d.started).unwrap_or(0.0),
        );
        s.gauge("pgcairn_drill_last_ok", "1 when the last drill passed.", &[], if d.ok { 1.0 } else { 0.0 });
        let partial = if d.databases_zeroed.is_empty() { 0.0 } else { 1.0 };
        s.gauge(
            "pgcairn_drill_last_partial",
            "1 when the last drill left databases out (--db-include/--db-exclude).",
            &[],
            partial,
        );
    }
    if let Some(d) = info.last_drills.iter().find(|d| d.ok) {
        s.gauge(
            "pgcairn_drill_last_success_timestamp_seconds",
            "When the last passing drill started (unix seconds).",
            &[],
            rfc3339_seconds(&d.started).unwrap_or(0.0),
        );
    }
}

fn archive(s: &mut Scrape, a: &pgcairn::ArchiveCheck, info: &pgcairn::InfoReport) {
    if let Some(t) = a.newest_arrived {
        s.gauge(
            "pgcairn_archive_last_segment_timestamp_seconds",
            "When the newest archived WAL segment reached the repository (unix seconds).",
            &[],
            t as f64,
        );
    }
    if let Some(lag) = a.lag_seconds {
        s.gauge("pgcairn_archive_lag_seconds", "Seconds since the newest WAL segment reached the repository (set archive_timeout so idle clusters still switch).", &[], lag as f64);
    }
    let gaps: usize = info.archive.iter().map(|t| t.gaps.len()).sum();
    s.gauge(
        "pgcairn_archive_gaps",
        "Gaps in the WAL archive (point-in-time recovery cannot cross one).",
        &[],
        gaps as f64,
    );
    if let Some(up) = a.pg_up {
        s.gauge(
            "pgcairn_postgres_up",
            "1 when PostgreSQL (pg) answered; 0 when it did not (then the pgcairn_archiver_* series are absent)",
            &[],
            if up { 1.0 } else { 0.0 },
        );
    }
    if let Some(st) = &a.archiver {
        s.counter(
            "pgcairn_archiver_failed",
            "Failed archive_command runs (pg_stat_archiver.failed_count).",
            st.failed_count,
        );
        s.counter(
            "pgcairn_archiver_archived",
            "Segments archived (pg_stat_archiver.archived_count).",
            st.archived_count,
        );
        s.gauge(
            "pgcairn_archiver_failing",
            "1 while archive_command is failing (its last failure is newer than its last success).",
            &[],
            if st.failing() { 1.0 } else { 0.0 },
        );
    }
    stream(s, a, info);
    if let Some(b) = a.backlog_segments {
        s.gauge(
            "pgcairn_archiver_backlog_segments",
            "Completed WAL segments the server has not archived yet.",
            &[],
            b as f64,
        );
    }
}

/// wal-receive: where the streamed part of the archive ends (repository), and its
/// slot on the server (when `pg` is set and the slot exists).
fn stream(s: &mut Scrape, a: &pgcairn::ArchiveCheck, info: &pgcairn::InfoReport) {
    if let Some(lsn) = info.archive.iter().rev().find_map(|t| t.streamed_to) {
        let help = "Where the WAL streamed by wal-receive ends in the repository (an LSN, in bytes).";
        s.gauge("pgcairn_wal_streamed_lsn_bytes", help, &[], lsn.0 as f64);
    }
    let Some(slot) = &a.stream_slot else { return };
    let labels = [("slot", slot.name.as_str())];
    let help = "1 while wal-receive streams from its replication slot.";
    s.gauge("pgcairn_wal_receive_slot_active", help, &labels, if slot.active { 1.0 } else { 0.0 });
    let help = "1 when the slot lost its WAL (wal_status lost): wal-receive cannot resume.";
    s.gauge("pgcairn_wal_receive_slot_lost", help, &labels, if slot.wal_status == "lost" { 1.0 } else { 0.0 });
    if let Some(bytes) = slot.retained_bytes {
        let help = "WAL the slot keeps on the server (bytes not yet stored by wal-receive, at least).";
        s.gauge("pgcairn_wal_receive_slot_retained_bytes", help, &labels, bytes as f64);
    }
}

/// What a scrape reads: the stanza of this run, or every stanza of the repository
/// (listed again at each scrape, so a new stanza appears without a restart).
pub(crate) enum Target {
    One(Resolved, Common),
    All(crate::stanzas::AllStanzas),
}

/// Repositories opened once per stanza and kept while they read well: a passphrase
/// costs a 64 MiB Argon2id derivation per open. Regression (issue 21, item 6): every
/// request derived the key again, with no limit on concurrency (200 parallel GETs
/// took 11.2 GB). A stanza whose read fails is opened afresh at the next scrape.
#[derive(Default)]
struct Opened(tokio::sync::Mutex<BTreeMap<(String, usize), pgcairn::Repository>>);

impl Opened {
    async fn get(&self, common: &Common) -> Result<pgcairn::Repository> {
        let key = (common.stanza.clone(), common.selected.number);
        if let Some(repo) = self.0.lock().await.get(&key) {
            return Ok(repo.clone());
        }
        let repo = common.access()?.open().await?;
        self.0.lock().await.insert(key, repo.clone());
        Ok(repo)
    }

    async fn forget(&self, common: &Common) {
        self.0.lock().await.remove(&(common.stanza.clone(), common.selected.number));
    }
}

/// One scrape: the exposition text. A repository that cannot be read gives
/// `pgcairn_up 0` and the reason in the log, never a failed scrape.
async fn scrape(target: &Target, opened: &Opened) -> String {
    let mut s = Scrape::default();
    match target {
        Target::One(r, common) => {
            for c in common.each_repository(r) {
                scrape_repository(&mut s, &c.stanza, c.selected.number, read(r, &c, opened).await);
            }
        }
        Target::All(all) => match all.names().await {
            Ok(names) => {
                // A few stanzas at a time: each may derive keys and list archives.
                let reads = futures::stream::iter(names).map(|name| async move {
                    let found = async {
                        let (r, common) = all.settings(&name)?;
                        let mut found = Vec::new();
                        for c in common.each_repository(&r) {
                            found.push((c.selected.number, read(&r, &c, opened).await));
                        }
                        Ok(found)
                    };
                    let found: Result<Vec<_>> = found.await;
                    (name, found)
                });
                let mut reads = reads.buffered(PARALLEL_STANZAS);
                while let Some((name, found)) = reads.next().await {
                    match found {
                        Ok(repos) => repos.into_iter().for_each(|(n, f)| scrape_repository(&mut s, &name, n, f)),
                        Err(e) => scrape_repository(&mut s, &name, 1, Err(e)),
                    }
                }
            }
            // No stanza label: `pgcairn_up 0` alone says the repository is unreadable.
            Err(e) => scrape_repository(&mut s, "", 1, Err(e)),
        },
    }
    s.encode().unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

fn scrape_repository(
    s: &mut Scrape,
    stanza: &str,
    repo: usize,
    found: Result<(pgcairn::InfoReport, pgcairn::ArchiveCheck)>,
) {
    s.stanza = stanza.to_string();
    s.repo = repo.to_string();
    let up = match found {
        Ok((info, archive_check)) => {
            backups(s, &info);
            proofs(s, &info);
            archive(s, &archive_check, &info);
            1.0
        }
        Err(e) => {
            tracing::error!("metrics: stanza {stanza}, repository {repo}: {e:#}");
            0.0
        }
    };
    s.gauge("pgcairn_up", "1 when the stanza's repository could be read.", &[], up);
}

async fn read(r: &Resolved, common: &Common, opened: &Opened) -> Result<(pgcairn::InfoReport, pgcairn::ArchiveCheck)> {
    let repo = opened.get(common).await?;
    let found = async {
        let info = pgcairn::info(&repo).await?;
        let pg = pgcairn_cli::settings::typed::optional_pg(r)?;
        let archive_check = pgcairn::check_archive_summary(&repo, pg.as_ref(), &info.archive).await?;
        Ok((info, archive_check))
    };
    let found = found.await;
    if found.is_err() {
        opened.forget(common).await;
    }
    found
}

/// `pgcairn metrics [--listen ADDR]`.
pub(crate) async fn run(target: Target, listen: Option<SocketAddr>) -> Result<ExitCode> {
    let Some(addr) = listen else {
        let text = scrape(&target, &Opened::default()).await;
        std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    };
    serve(addr, Arc::new(Server::new(target))).await
}

/// Connections served at once; further ones wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this (slowloris).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A whole connection, request to response, ends after this: longer than a scrape
/// waiting for the one before it (2 × SCRAPE_TIMEOUT), so none is cut mid-way.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(150);
/// A scrape that takes longer is answered with `pgcairn_up 0`.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The metrics server's state: one scrape runs at a time, and requests that arrived
/// while it ran share its result, so memory and repository reads do not grow with
/// the number of clients.
struct Server {
    target: Target,
    opened: Opened,
    /// The newest scrape: when it started, and its text.
    last: tokio::sync::Mutex<Option<(std::time::Instant, Arc<String>)>>,
}

impl Server {
    fn new(target: Target) -> Self {
        Server { target, opened: Opened::default(), last: tokio::sync::Mutex::new(None) }
    }

    /// A scrape that started no earlier than `asked`: the one in flight when its
    /// turn comes, or a new one.
    async fn scrape_since(&self, asked: std::time::Instant) -> Arc<String> {
        let mut last = self.last.lock().await;
        if let Some((started, text)) = last.as_ref() {
            if *started >= asked {
                return text.clone();
            }
        }
        let started = std::time::Instant::now();
        let text = match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(&self.target, &self.opened)).await {
            Ok(text) => text,
            Err(_) => {
                tracing::error!("metrics: a scrape took more than {} s", SCRAPE_TIMEOUT.as_secs());
                let mut s = Scrape::default();
                s.gauge("pgcairn_up", "1 when the stanza's repository could be read.", &[], 0.0);
                s.encode().unwrap_or_default()
            }
        };
        let text = Arc::new(text);
        *last = Some((started, text.clone()));
        text
    }
}

async fn serve(addr: SocketAddr, server: Arc<Server>) -> Result<ExitCode> {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr}: {e}; hint: choose a free address with --listen=HOST:PORT")
    })?;
    tracing::info!("serving metrics on http://{addr}/metrics");
    eprintln!("pgcairn: serving metrics on http://{addr}/metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots.clone().acquire_owned().await?;
        let (stream, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(req, server.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    server: Arc<Server>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let asked = std::time::Instant::now();
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let text = server.scrape_since(asked).await;
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                bytes::Bytes::from(text.as_bytes().to_vec()),
            )
        }
        _ => (404, "text/plain; charset=utf-8", bytes::Bytes::from_static(b"pgcairn serves GET /metrics only\n")),
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}
