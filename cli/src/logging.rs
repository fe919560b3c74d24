//! Logging for both binaries: pgcairn's own steps at `log-level` without the
//! dependencies' noise, as text or JSON, to stderr and optionally a private file.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use pgcairn::{Error, Result};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Where and how to log (from the log-* settings).
#[derive(Debug, Clone)]
pub struct LogSettings<'a> {
    /// error, warn, info, debug or trace (`log-level`).
    pub level: &'static str,
    /// Also log here, appended (`log-file`).
    pub file: Option<&'a Path>,
    /// Whether lines are JSON objects (`log-format = json`).
    pub json: bool,
}

/// Our crates at `level`; dependencies no chattier than warn (RUST_LOG overrides all).
pub fn filter(level: &str) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_default_env() {
        return f;
    }
    let directive = match level {
        "error" | "warn" => level.to_string(),
        _ => format!("warn,pgcairn={level},pgcairn_cli={level},pgcairn_archive_push={level}"),
    };
    EnvFilter::new(directive)
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

fn layer<W>(writer: W, json: bool, ansi: bool) -> Boxed
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer).with_target(false);
    if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.with_ansi(ansi).boxed()
    }
}

/// Open `path` for appending; created mode 0600 (existing files keep their mode).
fn open_log(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(|e| {
        Error::setting(
            format!("log-file {}: {e}", path.display()),
            "give a file in a directory this user can write (the directory must exist)",
        )
    })
}

/// Install the subscriber. With a log file, stderr shows warnings and errors only.
pub fn init(s: &LogSettings) -> Result<()> {
    let ansi = !s.json && std::io::stderr().is_terminal();
    let (stderr_level, file) = match s.file {
        Some(path) => (if s.level == "error" { "error" } else { "warn" }, Some(open_log(path)?)),
        None => (s.level, None),
    };
    let mut layers: Vec<Boxed> = vec![layer(std::io::stderr, s.json, ansi).with_filter(filter(stderr_level)).boxed()];
    if let Some(f) = file {
        layers.push(layer(std::sync::Mutex::new(f), s.json, false).with_filter(filter(s.level)).boxed());
    }
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(())
}
