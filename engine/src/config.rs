//! Settings resolution, shared by both binaries: command-line flag > PGCAIRN_*
//! environment variable > `[stanza.NAME]` table of the config file > its top level.
//! Also turns settings into the things operations need (storage, passphrase or key
//! file, connection parameters), so the binaries stay thin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pg::ConnParams;
use crate::repo::{Repository, Secret};
use crate::storage::{s3::S3Settings, DynStorage, RepoLocation};

macro_rules! bail {
    ($($t:tt)*) => { return Err(Error::Config(format!($($t)*))) };
}

pub const DEFAULT_CONFIG: &str = "/etc/pgcairn/pgcairn.toml";
/// zstd level for WAL unless `compress-level-wal` says otherwise.
pub const DEFAULT_WAL_LEVEL: i32 = 1;

/// Keys the config file may hold (flag names without `--`).
pub const KNOWN_KEYS: &[&str] = &[
    "stanza",
    "repo",
    "pg",
    "pg-data",
    "repo-passphrase-file",
    "repo-key-file",
    "archive-check",
    "archive-copy",
    "archive-timeout",
    "archive-async",
    "spool-path",
    "archive-push-queue-max",
    "archive-push-queue-full",
    "archive-get-queue-max",
    "archive-get-timeout",
    "repo-s3-endpoint",
    "repo-s3-region",
    "compress-level",
    "compress-level-wal",
    "start-fast",
    "log-level",
];

#[derive(Debug, Default)]
pub struct ConfigFile {
    top: BTreeMap<String, String>,
    stanzas: BTreeMap<String, BTreeMap<String, String>>,
}

fn scalar(key: &str, v: &toml::Value, path: &Path) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!(
            "config {}: key {key} has a {} value; use a string, number or boolean",
            path.display(),
            other.type_str()
        ),
    })
}

fn check_key(key: &str, path: &Path) -> Result<()> {
    if key == "repo-passphrase" {
        bail!(
            "config {}: the passphrase is never read from the config file; put it in a file named by repo-passphrase-file (mode 0600) or in PGCAIRN_REPO_PASSPHRASE",
            path.display()
        );
    }
    if !KNOWN_KEYS.contains(&key) {
        bail!("config {}: unknown key {key}; known keys: {}", path.display(), KNOWN_KEYS.join(", "));
    }
    Ok(())
}

impl ConfigFile {
    /// Load `explicit` (must exist) or the default path (may be absent).
    pub fn load(explicit: Option<&Path>) -> Result<Self> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok(Self::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}; check --config / PGCAIRN_CONFIG", path.display()))
        })?;
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::Config(format!("config {} is not valid TOML: {e}", path.display())))?;
        let mut cfg = ConfigFile::default();
        for (k, v) in table {
            if k == "stanza" {
                if let toml::Value::Table(stanzas) = v {
                    for (name, t) in stanzas {
                        let toml::Value::Table(t) = t else {
                            bail!("config {}: [stanza.{name}] must be a table", path.display());
                        };
                        let mut m = BTreeMap::new();
                        for (k, v) in t {
                            check_key(&k, path)?;
                            m.insert(k.clone(), scalar(&k, &v, path)?);
                        }
                        cfg.stanzas.insert(name, m);
                    }
                    continue;
                }
            }
            check_key(&k, path)?;
            cfg.top.insert(k.clone(), scalar(&k, &v, path)?);
        }
        Ok(cfg)
    }

    pub fn get(&self, stanza: Option<&str>, key: &str) -> Option<String> {
        stanza.and_then(|s| self.stanzas.get(s)).and_then(|t| t.get(key)).or_else(|| self.top.get(key)).cloned()
    }
}

/// The environment variable for a setting: `PGCAIRN_` + upper case, `-` → `_`.
pub fn env_name(key: &str) -> String {
    format!("PGCAIRN_{}", key.to_uppercase().replace('-', "_"))
}

fn env_value(key: &str) -> Option<String> {
    std::env::var(env_name(key)).ok().filter(|v| !v.is_empty())
}

/// Settings for one invocation, resolved in precedence order.
#[derive(Debug)]
pub struct Settings {
    flags: BTreeMap<String, String>,
    file: ConfigFile,
    config_path: Option<PathBuf>,
    stanza: String,
}

/// Settings a child pgcairn process (restore_command, archive_command) needs to
/// find the repository. None of them is a secret.
const FORWARDED: &[&str] = &[
    "repo",
    "repo-key-file",
    "repo-passphrase-file",
    "repo-s3-endpoint",
    "repo-s3-region",
    "spool-path",
    "archive-get-queue-max",
    "archive-get-timeout",
];

impl Settings {
    /// `flags`: what the command line gave (key → value, `config` included).
    pub fn load(flags: BTreeMap<String, String>) -> Result<Self> {
        let config_path = flags.get("config").cloned().or_else(|| env_value("config")).map(PathBuf::from);
        let file = ConfigFile::load(config_path.as_deref())?;
        let stanza = flags
            .get("stanza")
            .cloned()
            .or_else(|| env_value("stanza"))
            .or_else(|| file.get(None, "stanza"))
            .ok_or_else(|| {
                Error::Config("no stanza given: pass --stanza=NAME, set PGCAIRN_STANZA, or `stanza = \"NAME\"` in the config file".into())
            })?;
        crate::repo::format::check_stanza_name(&stanza).map_err(Error::Config)?;
        Ok(Self { flags, file, config_path, stanza })
    }

    pub fn stanza(&self) -> &str {
        &self.stanza
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.flags.get(key).cloned().or_else(|| env_value(key)).or_else(|| self.file.get(Some(&self.stanza), key))
    }

    pub fn required(&self, key: &str) -> Result<String> {
        self.get(key).ok_or_else(|| {
            Error::Config(format!(
                "{key} is not set: pass --{key}, set {}, or add `{key} = ...` to the config file",
                env_name(key)
            ))
        })
    }

    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key).as_deref() {
            None => Ok(default),
            Some("true" | "y" | "yes" | "on" | "1") => Ok(true),
            Some("false" | "n" | "no" | "off" | "0") => Ok(false),
            Some(v) => bail!("{key}={v} is not a boolean: use true or false"),
        }
    }

    /// A number, optionally with a binary size suffix (KiB, MiB, GiB; KB, MB, GB mean the same).
    pub fn get_size(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_size(&v)
                .ok_or_else(|| Error::Config(format!("{key}={v} is not a size: use e.g. 134217728 or 128MiB"))),
        }
    }

    /// zstd level for backup blocks (`compress-level`, default 3).
    pub fn compress_level(&self) -> Result<i32> {
        self.zstd_level("compress-level", 3)
    }

    /// zstd level for archived WAL (`compress-level-wal`, default 1): archive_command runs
    /// once per segment and must keep up with the server (docs/benchmarks.md).
    pub fn compress_level_wal(&self) -> Result<i32> {
        self.zstd_level("compress-level-wal", DEFAULT_WAL_LEVEL)
    }

    fn zstd_level(&self, key: &str, default: i32) -> Result<i32> {
        match self.get(key) {
            None => Ok(default),
            Some(l) => match l.parse::<i32>() {
                Ok(n) if (-7..=19).contains(&n) && n != 0 => Ok(n),
                _ => bail!("{key}={l}: use a zstd level from 1 (fast) to 19 (small), or -1 to -7 (faster still)"),
            },
        }
    }

    /// How long to wait for WAL to reach the archive (`archive-timeout`, seconds, default 60).
    pub fn archive_timeout(&self) -> Result<std::time::Duration> {
        self.get_seconds("archive-timeout", std::time::Duration::from_secs(60))
    }

    /// A whole number of seconds.
    pub fn get_seconds(&self, key: &str, default: std::time::Duration) -> Result<std::time::Duration> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map(std::time::Duration::from_secs)
                .map_err(|_| Error::Config(format!("{key}={v} is not a number of seconds"))),
        }
    }

    pub fn storage(&self) -> Result<DynStorage> {
        let repo = self.required("repo")?;
        let s3 = S3Settings {
            endpoint: self.get("repo-s3-endpoint"),
            region: self.get("repo-s3-region"),
            credentials: None,
        };
        RepoLocation::parse(&repo)?.open(&self.stanza, &s3)
    }

    /// The passphrase from PGCAIRN_REPO_PASSPHRASE or repo-passphrase-file.
    pub fn passphrase(&self) -> Result<Option<Secret>> {
        if let Some(p) = env_value("repo-passphrase") {
            return Ok(Some(Secret::new(p)));
        }
        let Some(file) = self.get("repo-passphrase-file") else { return Ok(None) };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::Config(format!("cannot read repo-passphrase-file {file}: {e}")))?;
        let pass = text.trim_end_matches(['\n', '\r']).to_string();
        if pass.is_empty() {
            bail!("repo-passphrase-file {file} is empty: write the passphrase into it");
        }
        Ok(Some(Secret::new(pass)))
    }

    pub fn pg(&self) -> Result<ConnParams> {
        ConnParams::resolve(&self.get("pg").unwrap_or_default())
    }

    /// Open the stanza's repository: with repo-key-file when set (no key derivation,
    /// for the per-segment hot path), else with the passphrase.
    pub async fn open_repo(&self) -> Result<Repository> {
        let storage = self.storage()?;
        match self.get("repo-key-file") {
            Some(key_file) => Repository::open_with_key_file(storage, &self.stanza, Path::new(&key_file)).await,
            None => Repository::open(storage, &self.stanza, self.passphrase()?.as_ref()).await,
        }
    }

    /// Command-line flags that make a child pgcairn find this repository the same way.
    pub fn forwarded_flags(&self) -> Vec<String> {
        let mut out = vec![format!("--stanza={}", self.stanza)];
        if let Some(c) = &self.config_path {
            out.push(format!("--config={}", c.display()));
        }
        for key in FORWARDED {
            // Keys that come from the config file reach the child through --config.
            if let Some(v) = self.flags.get(*key).cloned().or_else(|| env_value(key)) {
                out.push(format!("--{key}={v}"));
            }
        }
        out
    }
}

pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_table_overrides_top_level() {
        let c = ConfigFile::parse(
            "repo = \"/r\"\ncompress-level = 3\n[stanza.main]\nrepo = \"s3://b/p\"\npg = \"host=/tmp\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.get(Some("main"), "repo").as_deref(), Some("s3://b/p"));
        assert_eq!(c.get(Some("other"), "repo").as_deref(), Some("/r"));
        assert_eq!(c.get(Some("main"), "compress-level").as_deref(), Some("3"));
        assert_eq!(c.get(None, "pg"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128MiB"), Some(128 << 20));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5TB"), None);
    }

    #[test]
    fn refuses_unknown_keys_and_passphrases() {
        assert!(ConfigFile::parse("repo-passphrase = \"x\"", Path::new("t"))
            .unwrap_err()
            .to_string()
            .contains("never read"));
        assert!(ConfigFile::parse("nope = 1", Path::new("t")).unwrap_err().to_string().contains("unknown key"));
    }
}
