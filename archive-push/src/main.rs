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

fn parse_args(args: impl Iterator<Item = std::ffi::OsString>) -> Result<(BTreeMap<String, String>, PathBuf), String> {
    let mut flags = BTreeMap::new();
    let mut path = None;
    for arg in args {
        // A WAL path may be any bytes; settings must be UTF-8 (never a panic: a
        // panic's exit status 101 would still be within archive_command's contract,
        // but says nothing).
        if arg.as_encoded_bytes().starts_with(b"--") {
            let text = arg.to_str().ok_or_else(|| format!("{} is not valid UTF-8\n{USAGE}", arg.to_string_lossy()))?;
            let kv = &text[2..];
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("{text}: use --{kv}=VALUE\n{USAGE}"))?;
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
    pgcairn::fsutil::private_umask();
    let (flags, path) = match parse_args(std::env::args_os().skip(1)) {
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

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    /// Regression (issue 10, defect 6): a non-UTF-8 path argument panicked (exit 101)
    /// in std::env::args(). Paths are bytes; settings that are not UTF-8 are an error.
    #[test]
    fn non_utf8_arguments_never_panic() {
        let path = OsString::from_vec(b"/pg_wal/\xff\xfe000000010000000000000001".to_vec());
        let (_, parsed) = parse_args([OsString::from("--stanza=main"), path.clone()].into_iter()).unwrap();
        assert_eq!(parsed.as_os_str(), path);
        let bad_flag = OsString::from_vec(b"--repo=/r\xff".to_vec());
        let err = parse_args([bad_flag, path].into_iter()).unwrap_err();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }
}
