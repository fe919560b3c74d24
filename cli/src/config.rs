//! Settings resolution: command-line flag > PGCAIRN_* environment variable (both
//! handled by clap) > `[stanza.NAME]` table of the config file > its top level.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const DEFAULT_CONFIG: &str = "/etc/pgcairn/pgcairn.toml";

/// Keys the config file may hold (flag names without `--`).
pub const KNOWN_KEYS: &[&str] = &[
    "stanza",
    "repo",
    "pg",
    "pg-data",
    "repo-passphrase-file",
    "repo-s3-endpoint",
    "repo-s3-region",
    "compress-level",
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
        bail!(
            "config {}: unknown key {key}; known keys: {}",
            path.display(),
            KNOWN_KEYS.join(", ")
        );
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
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read config file {}: check --config / PGCAIRN_CONFIG",
                path.display()
            )
        })?;
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let table: toml::Table = toml::from_str(text)
            .with_context(|| format!("config {} is not valid TOML", path.display()))?;
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
        stanza
            .and_then(|s| self.stanzas.get(s))
            .and_then(|t| t.get(key))
            .or_else(|| self.top.get(key))
            .cloned()
    }
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
    fn refuses_unknown_keys_and_passphrases() {
        assert!(ConfigFile::parse("repo-passphrase = \"x\"", Path::new("t"))
            .unwrap_err()
            .to_string()
            .contains("never read"));
        assert!(ConfigFile::parse("nope = 1", Path::new("t"))
            .unwrap_err()
            .to_string()
            .contains("unknown key"));
    }
}
