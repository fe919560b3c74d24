//! `pgcairn`: parse arguments, call one engine operation, map its error to a
//! message and an exit code. Settings resolution lives in `pgcairn::config`.

mod progress;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pgcairn::config::Settings;
use pgcairn::crypto::KeySlotKdf;
use pgcairn::ops::{self, Recovery, RecoveryTarget};
use pgcairn::progress::{NoProgress, Progress};
use pgcairn::Error;

#[derive(Parser, Debug)]
#[command(name = "pgcairn", version, about = "Physical backup and point-in-time restore for PostgreSQL")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Settings; each also PGCAIRN_<NAME> or a config-file key (docs/config.md).
#[derive(Args, Debug)]
struct Global {
    /// Config file (TOML). Default /etc/pgcairn/pgcairn.toml when it exists.
    #[arg(long, global = true)]
    config: Option<String>,
    /// The cluster's backup configuration name.
    #[arg(long, global = true)]
    stanza: Option<String>,
    /// Repository: /path, file:///path or s3://bucket/prefix.
    #[arg(long, global = true)]
    repo: Option<String>,
    /// PostgreSQL connection string (libpq syntax or URI); PG* variables and ~/.pgpass apply.
    #[arg(long, global = true)]
    pg: Option<String>,
    /// Data directory to restore into.
    #[arg(long = "pg-data", global = true)]
    pg_data: Option<String>,
    /// File holding the repository passphrase (or set PGCAIRN_REPO_PASSPHRASE).
    #[arg(long = "repo-passphrase-file", global = true)]
    repo_passphrase_file: Option<String>,
    /// Key file (from `key-file`): unlocks without the passphrase's key derivation.
    #[arg(long = "repo-key-file", global = true)]
    repo_key_file: Option<String>,
    #[arg(long = "repo-s3-endpoint", global = true)]
    repo_s3_endpoint: Option<String>,
    #[arg(long = "repo-s3-region", global = true)]
    repo_s3_region: Option<String>,
    /// zstd level for new blocks and WAL (default 3).
    #[arg(long = "compress-level", global = true)]
    compress_level: Option<String>,
    #[arg(long = "compress-level-wal", global = true)]
    compress_level_wal: Option<String>,
    /// Immediate checkpoint instead of a spread one.
    #[arg(long = "start-fast", global = true, num_args = 0..=1, default_missing_value = "true")]
    start_fast: Option<String>,
    /// Wait until a backup's WAL is archived (default true).
    #[arg(long = "archive-check", global = true, num_args = 0..=1, default_missing_value = "true")]
    archive_check: Option<String>,
    /// Store the WAL in the backup even when archiving is on (default false).
    #[arg(long = "archive-copy", global = true, num_args = 0..=1, default_missing_value = "true")]
    archive_copy: Option<String>,
    /// Seconds to wait for WAL to reach the archive (default 60).
    #[arg(long = "archive-timeout", global = true)]
    archive_timeout: Option<String>,
    #[arg(long = "archive-async", global = true, num_args = 0..=1, default_missing_value = "true")]
    archive_async: Option<String>,
    #[arg(long = "spool-path", global = true)]
    spool_path: Option<String>,
    #[arg(long = "archive-push-queue-max", global = true)]
    archive_push_queue_max: Option<String>,
    #[arg(long = "archive-push-queue-full", global = true)]
    archive_push_queue_full: Option<String>,
    /// Bytes of WAL archive-get fetches ahead (default 128MiB; 0 turns prefetch off).
    #[arg(long = "archive-get-queue-max", global = true)]
    archive_get_queue_max: Option<String>,
    /// Seconds archive-get retries an unreachable repository before it stops recovery (default 60).
    #[arg(long = "archive-get-timeout", global = true)]
    archive_get_timeout: Option<String>,
    /// error, warn (default), info, debug; RUST_LOG overrides.
    #[arg(long = "log-level", global = true)]
    log_level: Option<String>,
}

impl Global {
    /// The flags given, as setting name → value.
    fn flags(&self) -> BTreeMap<String, String> {
        let pairs = [
            ("config", &self.config),
            ("stanza", &self.stanza),
            ("repo", &self.repo),
            ("pg", &self.pg),
            ("pg-data", &self.pg_data),
            ("repo-passphrase-file", &self.repo_passphrase_file),
            ("repo-key-file", &self.repo_key_file),
            ("repo-s3-endpoint", &self.repo_s3_endpoint),
            ("repo-s3-region", &self.repo_s3_region),
            ("compress-level", &self.compress_level),
            ("compress-level-wal", &self.compress_level_wal),
            ("start-fast", &self.start_fast),
            ("archive-check", &self.archive_check),
            ("archive-copy", &self.archive_copy),
            ("archive-timeout", &self.archive_timeout),
            ("archive-async", &self.archive_async),
            ("spool-path", &self.spool_path),
            ("archive-push-queue-max", &self.archive_push_queue_max),
            ("archive-push-queue-full", &self.archive_push_queue_full),
            ("archive-get-queue-max", &self.archive_get_queue_max),
            ("archive-get-timeout", &self.archive_get_timeout),
            ("log-level", &self.log_level),
        ];
        pairs.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))).collect()
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Initialise the stanza in the repository (connects to PostgreSQL to record its identity).
    StanzaCreate {
        /// Create an unencrypted repository (never the default).
        #[arg(long)]
        no_encryption: bool,
        /// Block size in bytes, a multiple of 8192 (default 32768).
        #[arg(long)]
        block_size: Option<u32>,
    },
    /// Take a backup over a replication connection.
    Backup {
        #[arg(long = "type", value_enum, default_value = "full")]
        backup_type: BackupType,
    },
    /// Restore a backup set into an empty directory (or --delta over a stopped one) and set up recovery.
    Restore {
        /// Backup label (default: the newest).
        #[arg(long)]
        set: Option<String>,
        /// Recovery target type.
        #[arg(long = "type", value_enum, default_value = "default")]
        target_type: TargetType,
        /// Target for --type=time|lsn|name|xid.
        #[arg(long)]
        target: Option<String>,
        /// What PostgreSQL does at the target: pause, promote or shutdown.
        #[arg(long = "target-action")]
        target_action: Option<String>,
        /// recovery_target_timeline (e.g. latest, current, 2).
        #[arg(long = "target-timeline")]
        target_timeline: Option<String>,
        /// Put tablespace OID into DIR instead of its original location (repeatable).
        #[arg(long = "tablespace-map", value_name = "OID=DIR")]
        tablespace_map: Vec<String>,
        /// Restore over an existing, stopped data directory: only what differs is rewritten.
        #[arg(long)]
        delta: bool,
    },
    /// Show the repository, its backup sets and its WAL archive.
    Info {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check that archiving works: settings, then a forced WAL switch reaching the repository.
    Check,
    /// Archive one WAL file (archive_command = 'pgcairn-archive-push %p').
    ArchivePush { path: PathBuf },
    /// Fetch one WAL file (restore_command = 'pgcairn archive-get %f "%p"'); exit 1 if absent.
    ArchiveGet { name: String, destination: PathBuf },
    /// Write the repository key to a file (mode 0600) for archive-push/archive-get.
    KeyFile {
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BackupType {
    /// Every block stored anew: shares nothing with earlier backups.
    Full,
    /// Stores the blocks changed since the newest full backup.
    Diff,
    /// Stores the blocks changed since the newest backup of any type.
    Incr,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum TargetType {
    /// Replay all archived WAL, then promote.
    Default,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time,
    Lsn,
    Name,
    Xid,
    /// Write no recovery settings (backup sets that carry their WAL only).
    None,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Output {
    Text,
    Json,
}

fn progress() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(progress::Bar::new())
    } else {
        Arc::new(NoProgress)
    }
}

/// restore_command for a restored cluster: this binary, with the settings that
/// found the repository, quoted for /bin/sh.
fn restore_command(s: &Settings) -> Result<String> {
    let exe = std::env::current_exe()?;
    let mut words = vec![exe.display().to_string()];
    words.extend(s.forwarded_flags());
    let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    Ok(format!("{} archive-get %f \"%p\"", quoted.join(" ")))
}

fn shell_quote(w: &str) -> String {
    if w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

fn parse_tablespace_map(items: &[String]) -> Result<HashMap<u32, PathBuf>> {
    items
        .iter()
        .map(|i| {
            let (oid, dir) = i.split_once('=').ok_or_else(|| anyhow!("--tablespace-map {i}: use OID=DIR"))?;
            let oid = oid.parse().map_err(|_| anyhow!("--tablespace-map {i}: {oid} is not a tablespace OID"))?;
            Ok((oid, PathBuf::from(dir)))
        })
        .collect()
}

fn recovery(
    s: &Settings,
    t: TargetType,
    target: &Option<String>,
    action: &Option<String>,
    timeline: &Option<String>,
) -> Result<Recovery> {
    let need = |kind: &str| target.clone().ok_or_else(|| anyhow!("--type={kind} needs --target"));
    let target = match t {
        TargetType::Default => RecoveryTarget::EndOfArchive,
        TargetType::Immediate => RecoveryTarget::Immediate,
        TargetType::Time => RecoveryTarget::Time(need("time")?),
        TargetType::Lsn => RecoveryTarget::Lsn(need("lsn")?),
        TargetType::Name => RecoveryTarget::Name(need("name")?),
        TargetType::Xid => RecoveryTarget::Xid(need("xid")?),
        TargetType::None => RecoveryTarget::None,
    };
    if let Some(a) = action {
        if !["pause", "promote", "shutdown"].contains(&a.as_str()) {
            bail!("--target-action={a}: use pause, promote or shutdown");
        }
    }
    // PGCAIRN_REPO_PASSPHRASE does not reach PostgreSQL's restore_command; only a
    // key file or passphrase file named in the forwarded settings does.
    if target != RecoveryTarget::None && s.get("repo-key-file").is_none() && s.get("repo-passphrase-file").is_none() {
        tracing::warn!("restore_command will need the repository key: set repo-key-file (or repo-passphrase-file) where PostgreSQL can read it");
    }
    Ok(Recovery { target, action: action.clone(), timeline: timeline.clone(), restore_command: restore_command(s)? })
}

async fn run(command: &Command, s: &Settings) -> Result<ExitCode> {
    match command {
        Command::StanzaCreate { no_encryption, block_size } => {
            let passphrase = s.passphrase()?;
            if !no_encryption && passphrase.is_none() {
                bail!("an encrypted repository needs a passphrase: set PGCAIRN_REPO_PASSPHRASE or repo-passphrase-file (or pass --no-encryption to store data unencrypted)");
            }
            let req = ops::StanzaCreateRequest {
                stanza: s.stanza().to_string(),
                pg: s.pg()?,
                encrypted: !no_encryption,
                passphrase,
                block_size: *block_size,
                kdf: KeySlotKdf::default(),
            };
            let repo = ops::stanza_create(s.storage()?, &req).await?;
            println!(
                "stanza {} created in {} (system identifier {}, {})",
                s.stanza(),
                repo.location(),
                repo.config().system_identifier,
                if *no_encryption { "unencrypted" } else { "encrypted" }
            );
        }
        Command::Backup { backup_type } => {
            let repo = s.open_repo().await?;
            let req = ops::BackupRequest {
                pg: s.pg()?,
                backup_type: match backup_type {
                    BackupType::Full => ops::BackupType::Full,
                    BackupType::Diff => ops::BackupType::Diff,
                    BackupType::Incr => ops::BackupType::Incr,
                },
                fast_checkpoint: s.get_bool("start-fast", false)?,
                compress_level: s.compress_level()?,
                estimate_size: std::io::stderr().is_terminal(),
                progress: progress(),
                archive_check: s.get_bool("archive-check", true)?,
                archive_copy: s.get_bool("archive-copy", false)?,
                archive_timeout: s.archive_timeout()?,
            };
            let sum = ops::backup(&repo, &req).await?;
            ops::archive::clear_prefetch_spool(s);
            let based_on = sum.parent.as_deref().map(|p| format!(" (on {p})")).unwrap_or_default();
            println!(
                "{} backup {}{based_on} done: {} in {} files, {} new in the repository, wal {}..{}, {:.1}s",
                sum.backup_type.as_str(),
                sum.label,
                human(sum.size),
                sum.files,
                human(sum.stored_new),
                sum.start_lsn,
                sum.stop_lsn,
                sum.seconds
            );
            println!("{}", sum.label);
        }
        Command::Restore { set, target_type, target, target_action, target_timeline, tablespace_map, delta } => {
            let target_dir =
                s.get("pg-data").ok_or_else(|| anyhow!("restore needs --pg-data=DIR (an empty or new directory)"))?;
            let recovery = recovery(s, *target_type, target, target_action, target_timeline)?;
            let repo = s.open_repo().await?;
            let req = ops::RestoreRequest {
                target: PathBuf::from(&target_dir),
                set: set.clone(),
                tablespace_map: parse_tablespace_map(tablespace_map)?,
                progress: progress(),
                recovery,
                delta: *delta,
            };
            let sum = ops::restore(&repo, &req).await?;
            let delta_note = if *delta {
                format!(" ({} files unchanged, {} fetched)", sum.files_unchanged, human(sum.bytes_fetched))
            } else {
                String::new()
            };
            println!(
                "restored backup {} into {target_dir}: {} in {} files{delta_note}, {:.1}s; start PostgreSQL on it to finish recovery",
                sum.label,
                human(sum.bytes),
                sum.files,
                sum.seconds
            );
        }
        Command::Info { output } => {
            let repo = s.open_repo().await?;
            let report = ops::info(&repo).await?;
            if *output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_info(&report);
            }
        }
        Command::Check => {
            let repo = s.open_repo().await?;
            let req = ops::CheckRequest {
                pg: s.pg()?,
                timeout: s.archive_timeout()?,
                spool_problems: ops::archive_async::spool_problems(s)?,
            };
            let r = ops::check(&repo, &req).await?;
            println!(
                "check ok: stanza {} (system {}), archive_command '{}', wal segment {} reached the repository in {:.1}s",
                s.stanza(),
                r.system_identifier,
                r.archive_command,
                r.segment,
                r.seconds
            );
        }
        Command::ArchivePush { path } => {
            ops::archive_push_configured(s, path).await?;
        }
        Command::ArchiveGet { name, destination } => {
            if !ops::archive::archive_get_configured(s, name, destination).await? {
                // Not an error: recovery asks past the end of the archive by design.
                return Ok(ExitCode::from(1));
            }
        }
        Command::KeyFile { output } => {
            let repo = s.open_repo().await?;
            repo.write_key_file(output)?;
            println!(
                "key file {} written (mode 0600): give it to the database's OS user and set repo-key-file; anyone who can read it can read every backup",
                output.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_info(r: &ops::InfoReport) {
    println!("stanza: {}", r.stanza);
    println!("    repository: {} (format {})", r.repo, r.format_version);
    if r.encrypted {
        println!("    encryption: aes-256-gcm");
    } else {
        println!(
            "    encryption: NONE: created with --no-encryption; whoever can read the storage can read every backup"
        );
    }
    println!(
        "    system identifier: {}, PostgreSQL {}.{}",
        r.system_identifier,
        r.pg_version / 10000,
        r.pg_version % 10000
    );
    if r.archive.is_empty() {
        println!("    wal archive: empty");
    }
    for a in &r.archive {
        let range = match (&a.first, &a.last) {
            (Some(f), Some(l)) => format!("{f} - {l} ({} segments)", a.segments),
            _ => "history only".into(),
        };
        let gaps = if a.gaps.is_empty() { "no gaps".to_string() } else { format!("GAPS: {}", a.gaps.join(", ")) };
        println!("    wal archive, timeline {}: {range}, {gaps}", a.timeline);
    }
    if r.backups.is_empty() {
        println!("    no backups: take one with `pgcairn --stanza={} backup`", r.stanza);
    }
    for b in &r.backups {
        print_backup(b);
    }
}

fn print_backup(b: &ops::BackupInfo) {
    println!();
    let Some(d) = &b.details else {
        println!("    DAMAGED backup: {}", b.label);
        println!("        {}", b.problem.as_deref().unwrap_or("its manifest cannot be read"));
        return;
    };
    println!("    {} backup: {}", d.backup_type, b.label);
    match b.status {
        ops::BackupStatus::Ok => {}
        ops::BackupStatus::Damaged => println!("        DAMAGED: {}", b.problem.as_deref().unwrap_or("")),
        ops::BackupStatus::NotRestorable => println!("        NOT RESTORABLE: {}", b.problem.as_deref().unwrap_or("")),
    }
    if let Some(parent) = &d.parent {
        println!("        based on: {parent}");
    }
    println!("        timestamp start/stop: {} / {}", d.start_time, d.stop_time);
    let wal = match (&d.wal_start, &d.wal_stop) {
        _ if d.wal_included => "wal included in the backup".to_string(),
        (Some(s), Some(e)) => format!("wal archived {s} - {e}"),
        _ => String::new(),
    };
    println!("        lsn start/stop: {} / {} (timeline {}), {wal}", d.start_lsn, d.stop_lsn, d.timeline);
    println!(
        "        database size: {}, files: {}, new in repository: {}",
        human(d.size),
        d.files,
        human(d.stored_new)
    );
}

fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Error>().map(Error::exit_code).unwrap_or(3)
}

/// archive-get's exit status for every failure but "not in the archive" (1). Any
/// status above 125 makes PostgreSQL abort recovery instead of taking the segment as
/// absent and ending recovery early (promoting without the rest of the WAL).
const ARCHIVE_GET_STOP_RECOVERY: u8 = 200;

/// Whether this run is archive-get (decided from argv, before or without parsing).
fn is_archive_get() -> bool {
    std::env::args_os().skip(1).any(|a| a == "archive-get")
}

/// For archive-get, a panic must stop recovery too (101 would read as "absent").
fn stop_recovery_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("pgcairn: archive-get failed unexpectedly: stopping recovery (exit {ARCHIVE_GET_STOP_RECOVERY})");
        std::process::exit(ARCHIVE_GET_STOP_RECOVERY.into());
    }));
}

fn archive_get_failure(e: &anyhow::Error) -> ExitCode {
    let hint = match e.downcast_ref::<Error>() {
        Some(Error::Corrupt { .. }) => "the archived file is damaged: recover to a target before it (--type=time or --type=lsn), or restore another backup",
        Some(Error::StorageUnavailable { .. } | Error::Storage { .. }) => "fix access to the repository, then start PostgreSQL again: recovery resumes where it stopped",
        _ => "fix the cause, then start PostgreSQL again: recovery resumes where it stopped",
    };
    eprintln!(
        "pgcairn: error: {e:#}\npgcairn: archive-get exits {ARCHIVE_GET_STOP_RECOVERY} so that PostgreSQL stops recovery instead of ending it early: {hint}"
    );
    ExitCode::from(ARCHIVE_GET_STOP_RECOVERY)
}

fn main() -> ExitCode {
    pgcairn::limit_malloc_retention();
    pgcairn::fsutil::private_umask();
    let archive_get = is_archive_get();
    if archive_get {
        stop_recovery_on_panic();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if archive_get && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(ARCHIVE_GET_STOP_RECOVERY);
        }
        Err(e) => e.exit(),
    };
    init_logging(&cli.global.flags());
    let result = Settings::load(cli.global.flags()).map_err(anyhow::Error::from).and_then(|settings| {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(run(&cli.command, &settings))
    });
    match result {
        Ok(code) => code,
        Err(e) if archive_get => archive_get_failure(&e),
        Err(e) => {
            eprintln!("pgcairn: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn init_logging(flags: &BTreeMap<String, String>) {
    let level = flags
        .get("log-level")
        .cloned()
        .or_else(|| std::env::var("PGCAIRN_LOG_LEVEL").ok())
        .unwrap_or_else(|| "warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
}
