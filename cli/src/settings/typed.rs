//! Typed settings per command, built from a [`Resolved`] at start-up, and the
//! engine requests built from them. Nothing here reads a setting by name after this.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use pgcairn::ConnParams;
use pgcairn::{AsyncQueue, GetRequest, HelperCommand, PushRequest, QueueFull, ReceiveRequest, RepoAccess, Unlock};
use pgcairn::{AzureKeyType, AzureSettings, CloudSettings, GcsKeyType, GcsSettings};
use pgcairn::{DynStorage, RepoLocation, S3Settings};
use pgcairn::{Error, Result};
use pgcairn::{KeyCache, Secret};

use super::resolve::Resolved;
use super::table::{repo_setting, Cmd, REPO_MAX};

/// What every command has: the stanza and how to reach and unlock its repository.
#[derive(Debug, Clone)]
pub struct Common {
    /// The stanza (`stanza`).
    pub stanza: String,
    /// What to log (`log-level`): error, warn, info, debug or trace.
    pub log_level: &'static str,
    /// Also log to this file (`log-file`).
    pub log_file: Option<PathBuf>,
    /// JSON log lines (`log-format = json`).
    pub log_json: bool,
    /// The repository the command works on (`repo-number`, default 1).
    pub selected: RepoSpec,
    /// Every configured repository, in order (`repo`, `repo2` …): what archive-push
    /// writes to and archive-get reads from.
    pub repos: Vec<RepoSpec>,
    /// `process-max`: threads for CPU work; None: one per core.
    pub process_max: Option<u32>,
    /// `bandwidth-max`: bytes per second to and from the repositories, at most.
    pub bandwidth_max: Option<u64>,
}

/// One repository's settings: `repo` and `repo-*` for repository 1, `repo2` and
/// `repo2-*` for repository 2, and so on.
#[derive(Debug, Clone)]
pub struct RepoSpec {
    /// 1 for `repo`, 2–4 for `repo2`…`repo4`.
    pub number: usize,
    /// Where it is (`repo`).
    pub repo: RepoLocation,
    /// How to reach its cloud: S3 endpoint, region and credentials
    /// (repo-s3-credentials-file, else the environment), Azure and GCS settings.
    pub cloud: CloudSettings,
    /// `repo-key-file`: unlocks without key derivation; None: use the passphrase.
    pub key_file: Option<PathBuf>,
    /// `repo-passphrase-file`, read when PGCAIRN_REPO_PASSPHRASE is not set.
    pub passphrase_file: Option<PathBuf>,
    passphrase_env: Option<Secret>,
    /// This user's key cache below `key-cache-path`; None with `key-cache = false`.
    key_cache: Option<KeyCache>,
}

/// A passphrase file readable by group or others is refused, like a key file: it
/// unlocks every backup (issue 14: it was accepted).
pub fn refuse_shared_secret_file(file: &std::path::Path) -> Result<()> {
    refuse_readable_by_others(file, "repo-passphrase-file", 0o077, "chmod 600", "it unlocks every backup")
}

/// A secret file that `mask` says is too open is refused, naming the fix.
fn refuse_readable_by_others(file: &std::path::Path, name: &str, mask: u32, fix: &str, why: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(file) else { return Ok(()) }; // reading it says why
    let mode = meta.permissions().mode();
    if mode & mask != 0 {
        return Err(Error::setting(
            format!(
                "{name} {} is accessible by {} (mode {:o})",
                file.display(),
                accessible_by(mode & mask),
                mode & 0o777
            ),
            format!("{fix} {} ({why})", file.display()),
        ));
    }
    Ok(())
}

fn accessible_by(bits: u32) -> &'static str {
    if bits & 0o070 != 0 {
        "group or others"
    } else {
        "others"
    }
}

/// `repo-s3-credentials-file`: the S3 access key in the AWS shared-credentials form
/// (`aws_access_key_id = …` and `aws_secret_access_key = …`, under `[default]` or no
/// section), so that the server's own archive-push and archive-get find credentials
/// without the operator's shell. Group-readable (0640, root:postgres) is allowed,
/// world-readable is not.
pub fn s3_credentials(file: &std::path::Path) -> Result<(String, Secret)> {
    let name = "repo-s3-credentials-file";
    refuse_readable_by_others(file, name, 0o007, "chmod 640", "it grants access to the bucket")?;
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::setting(
            format!("cannot read {name} {}: {e}", file.display()),
            "check its path and that this OS user (for archive-get: the server's) can read it",
        )
    })?;
    let mut section = String::from("default");
    let (mut id, mut secret) = (None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
        } else if let (Some((k, v)), "default") = (line.split_once('='), section.as_str()) {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(Secret::new(v.trim())),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() => Ok((id, secret)),
        _ => Err(Error::setting(
            format!("{name} {} names no aws_access_key_id and aws_secret_access_key", file.display()),
            "write both, as `aws_access_key_id = …` and `aws_secret_access_key = …` lines (under [default] if it has sections)",
        )),
    }
}

/// The `repo-s3-*`, `repo-azure-*` and `repo-gcs-*` settings. Secret files are read
/// only for the cloud the repository is in: a host archiving to S3 needs no Azure key.
fn cloud_settings(r: &Resolved, n: usize, repo: &RepoLocation) -> Result<CloudSettings> {
    let key = |base: &str| repo_setting(base, n);
    let cloud = match repo {
        RepoLocation::Cloud { cloud, .. } => Some(*cloud),
        RepoLocation::Local(_) => None,
    };
    let read = |base: &str, wanted: bool| -> Result<Option<Secret>> {
        let name = key(base);
        match r.opt::<PathBuf>(&name)? {
            Some(file) if wanted => cloud_secret_file(&file, &name).map(Some),
            _ => Ok(None),
        }
    };
    let s3 = S3Settings {
        endpoint: r.opt(&key("repo-s3-endpoint"))?,
        region: r.opt(&key("repo-s3-region"))?,
        credentials: match r.opt::<PathBuf>(&key("repo-s3-credentials-file"))? {
            Some(f) if cloud == Some(pgcairn::Cloud::S3) => Some(s3_credentials(&f)?),
            _ => None,
        },
        allow_http: r.get(&key("repo-s3-allow-http"))?,
        ca_file: r.opt(&key("repo-s3-ca-file"))?,
    };
    let azure = AzureSettings {
        account: r.opt(&key("repo-azure-account"))?,
        key_type: match r.get::<&str>(&key("repo-azure-key-type"))? {
            "sas" => AzureKeyType::Sas,
            "auto" => AzureKeyType::Auto,
            _ => AzureKeyType::Shared,
        },
        key: read("repo-azure-key-file", cloud == Some(pgcairn::Cloud::Azure))?,
        endpoint: r.opt(&key("repo-azure-endpoint"))?,
        allow_http: r.get(&key("repo-azure-allow-http"))?,
    };
    let gcs = GcsSettings {
        key_type: match r.get::<&str>(&key("repo-gcs-key-type"))? {
            "service" => GcsKeyType::Service,
            "token" => GcsKeyType::Token,
            _ => GcsKeyType::Auto,
        },
        key: read("repo-gcs-key", cloud == Some(pgcairn::Cloud::Gcs))?,
        endpoint: r.opt(&key("repo-gcs-endpoint"))?,
        allow_http: r.get(&key("repo-gcs-allow-http"))?,
    };
    Ok(CloudSettings { s3, azure, gcs })
}

/// A cloud key file (Azure account key or SAS token, GCS service-account key or
/// token): group-readable (0640, root:postgres) is allowed, world-readable is not.
fn cloud_secret_file(file: &std::path::Path, name: &str) -> Result<Secret> {
    refuse_readable_by_others(file, name, 0o007, "chmod 640", "it grants access to the repository's storage")?;
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::setting(
            format!("cannot read {name} {}: {e}", file.display()),
            "check its path and that this OS user (for archive-get: the server's) can read it",
        )
    })?;
    if text.trim().is_empty() {
        return Err(Error::setting(format!("{name} {} is empty", file.display()), "write the key into it"));
    }
    Ok(Secret::new(text.trim()))
}

/// How to log, from [`Common`].
impl Common {
    /// Apply `process-max` and `bandwidth-max` to this process (before any work),
    /// and build its runtime (`workers` threads unless `process-max` says fewer;
    /// None: one per core).
    pub fn limits(&self, workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
        if let Some(rate) = self.bandwidth_max {
            pgcairn::limit_bandwidth(rate);
        }
        if let Some(n) = self.process_max {
            pgcairn::limit_cores(n as usize);
        }
        self.runtime(workers)
    }

    /// The runtime, with no more worker threads than `process-max`.
    pub fn runtime(&self, workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        let cap = self.process_max.map(|n| n.max(1) as usize);
        if let Some(n) = match (workers, cap) {
            (Some(w), Some(c)) => Some(w.min(c)),
            (w, c) => w.or(c),
        } {
            rt.worker_threads(n);
        }
        rt.enable_all().build()
    }

    /// The log settings.
    pub fn log(&self) -> crate::logging::LogSettings<'_> {
        crate::logging::LogSettings { level: self.log_level, file: self.log_file.as_deref(), json: self.log_json }
    }
}

impl Common {
    /// Read from the resolved settings.
    pub fn from(r: &Resolved) -> Result<Self> {
        let mut repos = Vec::new();
        for n in 1..=REPO_MAX {
            if let Some(spec) = RepoSpec::from(r, n)? {
                repos.push(spec);
            }
        }
        let number = selected_number(r)?;
        let selected = repos.iter().find(|s| s.number == number).cloned().ok_or_else(|| {
            let configured: Vec<String> = repos.iter().map(|s| s.number.to_string()).collect();
            Error::setting(
                format!(
                    "repo-number = {number}, but repository {number} is not configured (configured: {})",
                    configured.join(", ")
                ),
                format!(
                    "set {} to its location, or choose one of the configured repositories",
                    repo_setting("repo", number)
                ),
            )
        })?;
        Ok(Self {
            // Empty only under --all-stanzas, where each stanza gets its own Common.
            stanza: r.opt("stanza")?.unwrap_or_default(),
            log_level: r.get("log-level")?,
            log_file: r.opt("log-file")?,
            log_json: r.get::<&str>("log-format")? == "json",
            selected,
            repos,
            process_max: r.opt("process-max")?,
            bandwidth_max: bandwidth_max(r)?,
        })
    }

    /// The selected repository's storage, without opening the repository.
    pub fn storage(&self) -> Result<DynStorage> {
        self.selected.repo.open(&self.stanza, &self.selected.cloud)
    }

    /// The selected repository's passphrase.
    pub fn passphrase(&self) -> Result<Option<Secret>> {
        self.selected.passphrase()
    }

    /// How to open the selected repository.
    pub fn access(&self) -> Result<RepoAccess> {
        self.selected.access(&self.stanza)
    }

    /// How to open every configured repository, in order.
    pub fn all_access(&self) -> Result<Vec<RepoAccess>> {
        self.repos.iter().map(|spec| spec.access(&self.stanza)).collect()
    }

    /// What a per-repository command (info, check, expire, verify, metrics) works on:
    /// the chosen repository when `repo-number` is given or only one is configured,
    /// else every configured one, in order; each as these settings with it selected.
    pub fn each_repository(&self, r: &Resolved) -> Vec<Common> {
        if self.repos.len() <= 1 || repo_number_given(r) {
            return vec![self.clone()];
        }
        self.repos.iter().map(|spec| Common { selected: spec.clone(), ..self.clone() }).collect()
    }
}

impl RepoSpec {
    /// Repository `n`'s settings; None when `n` > 1 and it has no location. Secret
    /// files are read only for the repositories configured.
    fn from(r: &Resolved, n: usize) -> Result<Option<Self>> {
        let key = |base: &str| repo_setting(base, n);
        let repo: RepoLocation = match (n, r.opt(&key("repo"))?) {
            (_, Some(repo)) => repo,
            (1, None) => r.get("repo")?, // says it is missing, as before
            (_, None) => return Ok(None),
        };
        Ok(Some(Self {
            number: n,
            cloud: cloud_settings(r, n, &repo)?,
            repo,
            key_file: r.opt(&key("repo-key-file"))?,
            passphrase_file: r.opt(&key("repo-passphrase-file"))?,
            passphrase_env: r.opt(&key("repo-passphrase"))?,
            key_cache: key_cache(r)?,
        }))
    }

    /// The passphrase from PGCAIRN_REPO_PASSPHRASE, else repo-passphrase-file
    /// (PGCAIRN_REPO2_PASSPHRASE and repo2-passphrase-file for repository 2 …).
    pub fn passphrase(&self) -> Result<Option<Secret>> {
        if let Some(p) = &self.passphrase_env {
            return Ok(Some(p.clone()));
        }
        let Some(file) = &self.passphrase_file else { return Ok(None) };
        refuse_shared_secret_file(file)?;
        let name = repo_setting("repo-passphrase-file", self.number);
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::setting(
                format!("cannot read {name} {}: {e}", file.display()),
                "check its path and that this OS user can read it",
            )
        })?;
        let pass = text.trim_end_matches(['\n', '\r']);
        if pass.is_empty() {
            let problem = format!("{name} {} is empty", file.display());
            return Err(Error::setting(problem, "write the passphrase into it"));
        }
        Ok(Some(Secret::new(pass)))
    }

    /// With repo-key-file when set (no key derivation), else with the passphrase.
    pub fn access(&self, stanza: &str) -> Result<RepoAccess> {
        let unlock = match &self.key_file {
            Some(k) => Unlock::KeyFile(k.clone()),
            None => Unlock::Passphrase(self.passphrase()?, self.key_cache.clone()),
        };
        let (location, cloud) = (self.repo.clone(), self.cloud.clone());
        Ok(RepoAccess { number: self.number, location, stanza: stanza.to_string(), cloud, unlock })
    }
}

/// Below this, `bandwidth-max` is a slip (`50` meant 50MiB, not 50 bytes a second:
/// four days a WAL segment, with the stanza locked).
const BANDWIDTH_FLOOR: u64 = 64 << 10;

fn bandwidth_max(r: &Resolved) -> Result<Option<u64>> {
    let rate: Option<u64> = r.opt("bandwidth-max")?;
    match rate {
        Some(b) if b < BANDWIDTH_FLOOR => Err(Error::setting(
            format!("bandwidth-max = {b} bytes per second is below 64KiB"),
            "give a size with its unit, e.g. bandwidth-max = 50MiB",
        )),
        other => Ok(other),
    }
}

/// The key cache the passphrase path uses, unless `key-cache` is off.
fn key_cache(r: &Resolved) -> Result<Option<KeyCache>> {
    if !r.get::<bool>("key-cache")? {
        return Ok(None);
    }
    let base: PathBuf = r.get("key-cache-path")?;
    if !base.is_absolute() {
        // Relative to where the command runs: for archive_command, the data directory.
        return Err(Error::setting(
            format!("key-cache-path {} is not an absolute path", base.display()),
            "give a memory-backed directory such as /dev/shm (the default)",
        ));
    }
    Ok(Some(KeyCache::new(&base)))
}

/// `pg`, resolved with PG* variables and libpq's defaults.
fn pg(r: &Resolved) -> Result<ConnParams> {
    ConnParams::resolve(&r.opt::<String>("pg")?.unwrap_or_default())
}

/// `pg-primary`, when set, resolved like `pg` (PG* variables and libpq's defaults
/// fill what it leaves out).
fn pg_primary(r: &Resolved) -> Result<Option<ConnParams>> {
    r.opt::<String>("pg-primary")?.map(|c| ConnParams::resolve(&c)).transpose()
}

/// `pg` only when it is set (metrics, check --archive-only: the server is optional).
pub fn optional_pg(r: &Resolved) -> Result<Option<ConnParams>> {
    r.opt::<String>("pg")?.map(|s| ConnParams::resolve(&s)).transpose()
}

/// stanza-delete's settings: the cluster only when `pg` is set (it may be gone).
#[derive(Debug, Clone)]
pub struct StanzaDelete {
    /// Where to ask whether the cluster still archives into the stanza.
    pub pg: Option<ConnParams>,
    /// The async spool on this host, whose `<stanza>` directory goes too.
    pub spool_path: Option<PathBuf>,
}

impl StanzaDelete {
    /// Read from the resolved settings.
    pub fn from(r: &Resolved) -> Result<Self> {
        Ok(Self { pg: optional_pg(r)?, spool_path: r.opt("spool-path")? })
    }
}

/// stanza-create's settings.
#[derive(Debug, Clone)]
pub struct StanzaCreate {
    /// The cluster whose identity the stanza records.
    pub pg: ConnParams,
}

impl StanzaCreate {
    /// Read from the resolved settings.
    pub fn from(r: &Resolved) -> Result<Self> {
        Ok(Self { pg: pg(r)? })
    }
}

/// backup's settings.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The cluster to back up: a primary or a streaming standby.
    pub pg: ConnParams,
    /// `pg-primary`: the standby's primary.
    pub primary: Option<ConnParams>,
    /// `start-fast`: an immediate checkpoint instead of a spread one.
    pub start_fast: bool,
    /// `compress-level`: zstd level for new blocks.
    pub compress_level: i32,
    /// `archive-check`: when the cluster archives, wait for the backup's WAL in the repository.
    pub archive_check: bool,
    /// `archive-copy`: store the WAL inside the backup even when the cluster archives.
    pub archive_copy: bool,
    /// `archive-timeout`: how long to wait for WAL to reach the repository.
    pub archive_timeout: Duration,
    /// `spool-path`: its prefetched segments are cleared after the backup.
    pub spool_path: Option<PathBuf>,
    /// Expire after the backup (expire-auto) by this policy.
    pub expire: Option<pgcairn::ExpireRequest>,
}

impl Backup {
    /// Read from the resolved settings (the retention policy checked when expire-auto is on).
    pub fn from(r: &Resolved) -> Result<Self> {
        Ok(Self {
            pg: pg(r)?,
            primary: pg_primary(r)?,
            start_fast: r.get("start-fast")?,
            compress_level: r.get("compress-level")?,
            archive_check: r.get("archive-check")?,
            archive_copy: r.get("archive-copy")?,
            archive_timeout: r.get("archive-timeout")?,
            spool_path: r.opt("spool-path")?,
            expire: match r.get::<bool>("expire-auto")? {
                true => Some(expire_request(r, None, false)?),
                false => None,
            },
        })
    }
}

/// expire's request: the policy, `--set`, `--dry-run` and the GC grace period.
pub fn expire_request(r: &Resolved, set: Option<String>, dry_run: bool) -> Result<pgcairn::ExpireRequest> {
    expire_request_of(r, selected_number(r)?, set, dry_run)
}

/// `expire` of repository `n`, under its own retention settings.
pub fn expire_request_of(r: &Resolved, n: usize, set: Option<String>, dry_run: bool) -> Result<pgcairn::ExpireRequest> {
    Ok(pgcairn::ExpireRequest {
        policy: retention_of(r, n)?,
        set,
        dry_run,
        spool_path: r.opt("spool-path")?,
        repo_number: n,
        gc_grace: r.get("repo-gc-grace")?,
    })
}

/// The retention policy the retention-* settings describe (checked here, at start-up).
pub fn retention(r: &Resolved) -> Result<pgcairn::RetentionPolicy> {
    retention_of(r, selected_number(r)?)
}

/// The `repo-number` a command works on.
fn selected_number(r: &Resolved) -> Result<usize> {
    Ok(usize::try_from(r.get::<u32>("repo-number")?).unwrap_or(usize::MAX))
}

/// Repository `n`'s retention policy: `retention-*` for repository 1,
/// `repo2-retention-*` for repository 2, and so on; each repository keeps what its
/// own settings say.
pub fn retention_of(r: &Resolved, n: usize) -> Result<pgcairn::RetentionPolicy> {
    let key = |base: &str| repo_setting(base, n);
    let full_type = match r.get::<&'static str>(&key("retention-full-type"))? {
        "time" => pgcairn::FullRetention::Time,
        _ => pgcairn::FullRetention::Count,
    };
    let archive_type = match r.get::<&'static str>(&key("retention-archive-type"))? {
        "diff" => pgcairn::BackupType::Diff,
        "incr" => pgcairn::BackupType::Incr,
        _ => pgcairn::BackupType::Full,
    };
    let policy = pgcairn::RetentionPolicy {
        full: r.opt(&key("retention-full"))?,
        full_type,
        diff: r.opt(&key("retention-diff"))?,
        keep_daily: r.opt(&key("retention-keep-daily"))?,
        keep_weekly: r.opt(&key("retention-keep-weekly"))?,
        keep_monthly: r.opt(&key("retention-keep-monthly"))?,
        keep_yearly: r.opt(&key("retention-keep-yearly"))?,
        time_zone: r.get(&key("retention-time-zone"))?,
        archive: r.opt(&key("retention-archive"))?,
        archive_type,
    };
    policy.check()?;
    Ok(policy)
}

/// restore's settings.
#[derive(Debug, Clone)]
pub struct Restore {
    /// `pg-data`: the directory to restore into (restore refuses to run without it).
    pub pg_data: Option<PathBuf>,
    /// The flags restore_command (`pgcairn archive-get`) gets, as the table says.
    pub forwarded: Vec<String>,
}

impl Restore {
    /// Read from the resolved settings.
    pub fn from(r: &Resolved) -> Result<Self> {
        Ok(Self { pg_data: r.opt("pg-data")?, forwarded: r.forwarded(Cmd::ArchiveGet) })
    }
}

/// drill's settings.
#[derive(Debug, Clone)]
pub struct Drill {
    /// `pg-bin`: the PostgreSQL binaries to run the drill with.
    pub pg_bin: Option<PathBuf>,
    /// `drill-path`: where the temporary cluster is made.
    pub drill_path: Option<PathBuf>,
    /// `drill-sql`: the operator's checks.
    pub drill_sql: Option<PathBuf>,
    /// `drill-timeout`: how long recovery may take.
    pub timeout: Duration,
    /// The flags restore_command (`pgcairn archive-get`) gets, as the table says.
    pub forwarded: Vec<String>,
}

impl Drill {
    /// Read from the resolved settings.
    pub fn from(r: &Resolved) -> Result<Self> {
        Ok(Self {
            pg_bin: r.opt("pg-bin")?,
            drill_path: r.opt("drill-path")?,
            drill_sql: r.opt("drill-sql")?,
            timeout: r.get("drill-timeout")?,
            forwarded: r.forwarded(Cmd::ArchiveGet),
        })
    }
}

/// extract's settings: where the temporary cluster goes and what runs it.
#[derive(Debug, Clone)]
pub struct Extract {
    /// `pg-bin`: the PostgreSQL binaries (with pg_dump) of the backup's major version.
    pub pg_bin: Option<PathBuf>,
    /// `drill-path`: where the temporary cluster is made.
    pub work_path: Option<PathBuf>,
    /// `drill-timeout`: how long recovery may take.
    pub timeout: Duration,
    /// The flags restore_command (`pgcairn archive-get`) gets, as the table says.
    pub forwarded: Vec<String>,
}

impl Extract {
    /// Read from the resolved settings.
    pub fn from(r: &Resolved) -> Result<Self> {
        Ok(Self {
            pg_bin: r.opt("pg-bin")?,
            work_path: r.opt("drill-path")?,
            timeout: r.get("drill-timeout")?,
            forwarded: r.forwarded(Cmd::ArchiveGet),
        })
    }
}

/// check's settings.
#[derive(Debug, Clone)]
pub struct Check {
    /// The cluster whose archiving is checked: a primary or a streaming standby.
    pub pg: ConnParams,
    /// `pg-primary`: the standby's primary.
    pub primary: Option<ConnParams>,
    /// `archive-timeout`: how long to wait for the switched segment.
    pub archive_timeout: Duration,
    /// The async archive spool to look into (archive-async = true).
    pub spool_path: Option<PathBuf>,
}

impl Check {
    /// Read from the resolved settings; spool-path is required when archive-async is on.
    pub fn from(r: &Resolved) -> Result<Self> {
        Ok(Self {
            pg: pg(r)?,
            primary: pg_primary(r)?,
            archive_timeout: r.get("archive-timeout")?,
            spool_path: async_spool(r)?,
        })
    }
}

/// spool-path when archive-async is on (then it is required).
fn async_spool(r: &Resolved) -> Result<Option<PathBuf>> {
    if !r.get::<bool>("archive-async")? {
        return Ok(None);
    }
    let spool = r.opt("spool-path")?.ok_or_else(|| {
        Error::setting(
            "archive-async needs spool-path",
            "set spool-path to a local directory the database's OS user can write",
        )
    })?;
    Ok(Some(spool))
}

/// archive-push's request. `drainer_args`: what precedes the settings on a drainer's
/// command line (`archive-push` for `pgcairn`, nothing for `pgcairn-archive-push`).
pub fn push_request(r: &Resolved, common: &Common, drainer_args: &[&str]) -> Result<PushRequest> {
    let queue = match async_spool(r)? {
        None => None,
        Some(spool_path) => {
            let program = current_exe()?;
            let mut args: Vec<OsString> = drainer_args.iter().map(OsString::from).collect();
            args.extend(r.forwarded(Cmd::ArchivePush).into_iter().map(OsString::from));
            Some(AsyncQueue {
                spool_path,
                max: r.opt("archive-push-queue-max")?,
                full: if r.get::<&str>("archive-push-queue-full")? == "drop" {
                    QueueFull::Drop
                } else {
                    QueueFull::Fail
                },
                drainer: HelperCommand { program, args },
            })
        }
    };
    Ok(PushRequest { repos: common.all_access()?, level: r.get("compress-level-wal")?, queue })
}

/// `pgcairn wal-receive`: every repository of the stanza, the server, the slot.
pub fn wal_receive_request(r: &Resolved, common: &Common) -> Result<ReceiveRequest> {
    let slot = r.opt::<String>("wal-receive-slot")?.unwrap_or_else(|| pgcairn::default_slot(&common.stanza));
    Ok(ReceiveRequest {
        repos: common.all_access()?,
        source: pg(r)?,
        slot,
        interval: r.get("wal-receive-interval")?,
        level: r.get("compress-level-wal")?,
    })
}

/// Whether `repo-number` was given (flag, environment, config file), not defaulted.
pub fn repo_number_given(r: &Resolved) -> bool {
    r.entry_of("repo-number").is_some_and(|e| !matches!(e.source, super::resolve::Source::Default))
}

/// archive-get's request: every repository in order; only the one `repo-number`
/// names when it is given (as a flag, in the environment or the config file), as
/// `restore --repo-number=N` passes it on to the restore_command it writes — a
/// recovery from repository 2 after repository 1 was lost must not stop at the lost
/// one, which cannot say whether it held a segment.
pub fn get_request(r: &Resolved, common: &Common) -> Result<GetRequest> {
    let repos = if repo_number_given(r) { vec![common.access()?] } else { common.all_access()? };
    Ok(GetRequest {
        repos,
        timeout: r.get("archive-get-timeout")?,
        spool_path: r.opt("spool-path")?,
        queue_max: r.get("archive-get-queue-max")?,
        fetcher: HelperCommand { program: current_exe()?, args: std::env::args_os().skip(1).collect() },
    })
}

fn current_exe() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::io("cannot find the running executable".to_string(), e))
}

/// backup's prefetch clean-up: the spool of this stanza's earlier recoveries.
pub fn clear_prefetch(b: &Backup, common: &Common) {
    if let Some(p) = &b.spool_path {
        pgcairn::clear_prefetch_spool(p, &common.stanza);
    }
}
