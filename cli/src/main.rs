//! `pgcairn`: parse arguments and settings, call one engine operation, map its
//! error to a message and an exit code.

mod config;
mod progress;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use pgcairn::crypto::KeySlotKdf;
use pgcairn::ops;
use pgcairn::pg::ConnParams;
use pgcairn::progress::{NoProgress, Progress};
use pgcairn::repo::{Repository, Secret};
use pgcairn::storage::{s3::S3Settings, DynStorage, RepoLocation};
use pgcairn::Error;

use config::ConfigFile;

#[derive(Parser, Debug)]
#[command(
    name = "pgcairn",
    version,
    about = "Physical backup and point-in-time restore for PostgreSQL"
)]
struct Cli {
    /// Config file (TOML). Default /etc/pgcairn/pgcairn.toml when it exists.
    #[arg(long, env = "PGCAIRN_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Stanza: the name of the cluster's backup configuration.
    #[arg(long, env = "PGCAIRN_STANZA", global = true)]
    stanza: Option<String>,
    /// Repository: /path, file:///path or s3://bucket/prefix.
    #[arg(long, env = "PGCAIRN_REPO", global = true)]
    repo: Option<String>,
    /// PostgreSQL connection string (libpq syntax or URI); PG* variables and ~/.pgpass apply.
    #[arg(long, env = "PGCAIRN_PG", global = true)]
    pg: Option<String>,
    /// Data directory to restore into.
    #[arg(long = "pg-data", env = "PGCAIRN_PG_DATA", global = true)]
    pg_data: Option<PathBuf>,
    /// File holding the repository passphrase (or set PGCAIRN_REPO_PASSPHRASE).
    #[arg(
        long = "repo-passphrase-file",
        env = "PGCAIRN_REPO_PASSPHRASE_FILE",
        global = true
    )]
    repo_passphrase_file: Option<PathBuf>,
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL / AWS).
    #[arg(
        long = "repo-s3-endpoint",
        env = "PGCAIRN_REPO_S3_ENDPOINT",
        global = true
    )]
    repo_s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long = "repo-s3-region", env = "PGCAIRN_REPO_S3_REGION", global = true)]
    repo_s3_region: Option<String>,
    /// zstd level for new blocks (default 3).
    #[arg(long = "compress-level", env = "PGCAIRN_COMPRESS_LEVEL", global = true)]
    compress_level: Option<i32>,
    /// Ask for an immediate checkpoint instead of a spread one (true/false).
    #[arg(long = "start-fast", env = "PGCAIRN_START_FAST", global = true, num_args = 0..=1, default_missing_value = "true")]
    start_fast: Option<bool>,
    /// error, warn, info, debug (default warn; RUST_LOG overrides).
    #[arg(long = "log-level", env = "PGCAIRN_LOG_LEVEL", global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Initialise the stanza in the repository (connects to PostgreSQL to record its identity).
    StanzaCreate {
        /// Create an unencrypted repository (never the default).
        #[arg(long)]
        no_encryption: bool,
        /// Block size in bytes, a multiple of 8192 (default 131072).
        #[arg(long)]
        block_size: Option<u32>,
    },
    /// Take a backup over a replication connection.
    Backup {
        #[arg(long = "type", value_enum, default_value = "full")]
        backup_type: BackupType,
    },
    /// Restore a backup set into an empty directory.
    Restore {
        /// Backup label (default: the newest).
        #[arg(long)]
        set: Option<String>,
        /// Put tablespace OID into DIR instead of its original location (repeatable).
        #[arg(long = "tablespace-map", value_name = "OID=DIR")]
        tablespace_map: Vec<String>,
    },
    /// Show the repository and its backup sets.
    Info {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum BackupType {
    Full,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Output {
    Text,
    Json,
}

/// Resolved settings for one invocation.
struct Settings {
    cli: Cli,
    file: ConfigFile,
    stanza: String,
}

impl Settings {
    fn get(&self, flag: Option<String>, key: &str) -> Option<String> {
        flag.or_else(|| self.file.get(Some(&self.stanza), key))
    }

    fn required(&self, flag: Option<String>, key: &str) -> Result<String> {
        self.get(flag, key).ok_or_else(|| {
            anyhow!("{key} is not set: pass --{key}, set PGCAIRN_{}, or add `{key} = ...` to the config file", env_name(key))
        })
    }

    fn storage(&self) -> Result<DynStorage> {
        let repo = self.required(self.cli.repo.clone(), "repo")?;
        let s3 = S3Settings {
            endpoint: self.get(self.cli.repo_s3_endpoint.clone(), "repo-s3-endpoint"),
            region: self.get(self.cli.repo_s3_region.clone(), "repo-s3-region"),
            credentials: None,
        };
        Ok(RepoLocation::parse(&repo)?.open(&self.stanza, &s3)?)
    }

    fn passphrase(&self) -> Result<Option<Secret>> {
        if let Ok(p) = std::env::var("PGCAIRN_REPO_PASSPHRASE") {
            return Ok(Some(Secret::new(p)));
        }
        let Some(file) = self.get(
            self.cli
                .repo_passphrase_file
                .as_ref()
                .map(|p| p.display().to_string()),
            "repo-passphrase-file",
        ) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read repo-passphrase-file {file}"))?;
        let pass = text.trim_end_matches(['\n', '\r']).to_string();
        if pass.is_empty() {
            bail!("repo-passphrase-file {file} is empty: write the passphrase into it");
        }
        Ok(Some(Secret::new(pass)))
    }

    fn pg(&self) -> Result<ConnParams> {
        let conninfo = self.get(self.cli.pg.clone(), "pg").unwrap_or_default();
        Ok(ConnParams::resolve(&conninfo)?)
    }

    async fn open_repo(&self) -> Result<Repository> {
        Ok(Repository::open(self.storage()?, &self.stanza, self.passphrase()?.as_ref()).await?)
    }

    fn progress(&self) -> Arc<dyn Progress> {
        if std::io::stderr().is_terminal() {
            Arc::new(progress::Bar::new())
        } else {
            Arc::new(NoProgress)
        }
    }
}

fn env_name(key: &str) -> String {
    key.to_uppercase().replace('-', "_")
}

fn parse_tablespace_map(items: &[String]) -> Result<HashMap<u32, PathBuf>> {
    items
        .iter()
        .map(|i| {
            let (oid, dir) = i
                .split_once('=')
                .ok_or_else(|| anyhow!("--tablespace-map {i}: use OID=DIR"))?;
            let oid = oid
                .parse()
                .map_err(|_| anyhow!("--tablespace-map {i}: {oid} is not a tablespace OID"))?;
            Ok((oid, PathBuf::from(dir)))
        })
        .collect()
}

async fn run(s: Settings) -> Result<()> {
    match &s.cli.command {
        Command::StanzaCreate {
            no_encryption,
            block_size,
        } => {
            let passphrase = s.passphrase()?;
            if !no_encryption && passphrase.is_none() {
                bail!("an encrypted repository needs a passphrase: set PGCAIRN_REPO_PASSPHRASE or repo-passphrase-file (or pass --no-encryption to store data unencrypted)");
            }
            let req = ops::StanzaCreateRequest {
                stanza: s.stanza.clone(),
                pg: s.pg()?,
                encrypted: !no_encryption,
                passphrase,
                block_size: *block_size,
                kdf: KeySlotKdf::default(),
            };
            let repo = ops::stanza_create(s.storage()?, &req).await?;
            println!(
                "stanza {} created in {} (system identifier {}, {})",
                s.stanza,
                repo.location(),
                repo.config().system_identifier,
                if *no_encryption {
                    "unencrypted"
                } else {
                    "encrypted"
                }
            );
        }
        Command::Backup {
            backup_type: BackupType::Full,
        } => {
            let repo = s.open_repo().await?;
            let progress = s.progress();
            let req = ops::BackupRequest {
                pg: s.pg()?,
                fast_checkpoint: s
                    .get(s.cli.start_fast.map(|b| b.to_string()), "start-fast")
                    .is_some_and(|v| v == "true"),
                compress_level: match s.get(
                    s.cli.compress_level.map(|l| l.to_string()),
                    "compress-level",
                ) {
                    Some(l) => l
                        .parse()
                        .map_err(|_| anyhow!("compress-level {l} is not a number: use 1..19"))?,
                    None => 3,
                },
                estimate_size: std::io::stderr().is_terminal(),
                progress,
            };
            let sum = ops::backup(&repo, &req).await?;
            println!(
                "full backup {} done: {} in {} files, {} new in the repository, wal {}..{}, {:.1}s",
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
        Command::Restore {
            set,
            tablespace_map,
        } => {
            let target = s
                .get(
                    s.cli.pg_data.as_ref().map(|p| p.display().to_string()),
                    "pg-data",
                )
                .ok_or_else(|| {
                    anyhow!("restore needs --pg-data=DIR (an empty or new directory)")
                })?;
            let repo = s.open_repo().await?;
            let req = ops::RestoreRequest {
                target: PathBuf::from(target),
                set: set.clone(),
                tablespace_map: parse_tablespace_map(tablespace_map)?,
                progress: s.progress(),
            };
            let sum = ops::restore(&repo, &req).await?;
            println!(
                "restored backup {} into {}: {} in {} files, {:.1}s; start PostgreSQL on it to finish recovery",
                sum.label,
                req.target.display(),
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
    }
    Ok(())
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
    println!(
        "    repository: {} (format {}, {})",
        r.repo,
        r.format_version,
        if r.encrypted {
            "encrypted"
        } else {
            "unencrypted"
        }
    );
    println!(
        "    system identifier: {}, postgresql version_num {}",
        r.system_identifier, r.pg_version
    );
    if r.backups.is_empty() {
        println!(
            "    no backups: take one with `pgcairn --stanza={} backup`",
            r.stanza
        );
    }
    for b in &r.backups {
        println!();
        println!("    {} backup: {}", b.backup_type, b.label);
        println!(
            "        timestamp start/stop: {} / {}",
            b.start_time, b.stop_time
        );
        println!(
            "        wal start/stop: {} / {} (timeline {}){}",
            b.start_lsn,
            b.stop_lsn,
            b.timeline,
            if b.wal_included { ", wal included" } else { "" }
        );
        println!(
            "        database size: {}, files: {}, new in repository: {}",
            human(b.size),
            b.files,
            human(b.stored_new)
        );
    }
}

/// Exit codes (never above 125; documented in docs/config.md).
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        None => 3,
        Some(e) => match e {
            Error::Config(_) => 3,
            Error::RepoNotInitialised { .. }
            | Error::RepoAlreadyInitialised { .. }
            | Error::UnsupportedFormat { .. } => 4,
            Error::WrongPassphrase { .. } | Error::PassphraseMissing { .. } => 5,
            Error::Connect { .. } | Error::AuthRejected { .. } => 6,
            Error::Server { .. } | Error::ChecksumFailure { .. } | Error::Protocol { .. } => 7,
            Error::Corrupt { .. } | Error::BackupNotFound { .. } | Error::NoBackups { .. } => 8,
            Error::RestoreTarget { .. } => 9,
            Error::Storage { .. } => 10,
            Error::Io { .. } | Error::Other(_) => 1,
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli.log_level.clone().unwrap_or_else(|| "warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let result = (|| -> Result<()> {
        let file = ConfigFile::load(cli.config.as_deref())?;
        let stanza = cli
            .stanza
            .clone()
            .or_else(|| file.get(None, "stanza"))
            .ok_or_else(|| anyhow!("no stanza given: pass --stanza=NAME, set PGCAIRN_STANZA, or `stanza = \"NAME\"` in the config file"))?;
        let settings = Settings { cli, file, stanza };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?;
        rt.block_on(run(settings))
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgcairn: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
