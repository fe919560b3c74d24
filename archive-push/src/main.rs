//! `pgcairn-archive-push [--setting=value ...] %p`: PostgreSQL's archive_command.
//! Minimal start-up: no argument framework, a two-thread runtime, one call to
//! the same engine function as `pgcairn archive-push`. Exit 0 only once the segment
//! is durable (or, with archive-async, durably queued); exit codes stay below 126.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use pgcairn::config::{Settings, KNOWN_KEYS};

const USAGE: &str = "usage: pgcairn-archive-push [--config=FILE] [--stanza=NAME] [--SETTING=VALUE ...] WAL_PATH\n\
                     set it as archive_command = 'pgcairn-archive-push --stanza=NAME %p'";

fn parse_args() -> Result<(BTreeMap<String, String>, PathBuf), String> {
    let mut flags = BTreeMap::new();
    let mut path = None;
    for arg in std::env::args().skip(1) {
        if let Some(kv) = arg.strip_prefix("--") {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("{arg}: use --{kv}=VALUE\n{USAGE}"))?;
            if k != "config" && !KNOWN_KEYS.contains(&k) {
                return Err(format!("unknown setting --{k}\n{USAGE}"));
            }
            flags.insert(k.to_string(), v.to_string());
        } else if path.replace(PathBuf::from(&arg)).is_some() {
            return Err(format!("more than one WAL path given\n{USAGE}"));
        }
    }
    Ok((flags, path.ok_or_else(|| USAGE.to_string())?))
}

fn main() -> ExitCode {
    pgcairn::limit_malloc_retention();
    let (flags, path) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("pgcairn-archive-push: error: {e}");
            return ExitCode::from(2);
        }
    };
    let level = flags.get("log-level").cloned().unwrap_or_else(|| "warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .with_env_filter(level)
        .init();
    let result = Settings::load(flags).and_then(|s| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| pgcairn::Error::io("cannot start the runtime", e))?;
        rt.block_on(pgcairn::ops::archive_push_configured(&s, &path))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgcairn-archive-push: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
