//! The config file (TOML): top-level keys and `[stanza.NAME]` tables, each a setting's
//! name. Keys are checked against the settings table here; values are parsed later,
//! only for the settings the running command uses (one file serves every command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgcairn::{Error, Result};

use super::table::setting;

/// The config file read when neither `--config` nor PGCAIRN_CONFIG names one, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/pgcairn/pgcairn.toml";

/// A loaded config file: its keys checked, its values still text.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// Where it was read from; empty when there is no config file.
    pub path: PathBuf,
    top: BTreeMap<String, String>,
    stanzas: BTreeMap<String, BTreeMap<String, String>>,
}

/// Where in the file a value was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The top level.
    Top,
    /// The `[stanza.NAME]` table of this stanza.
    Stanza(String),
}

fn bad(path: &Path, what: String, hint: &str) -> Error {
    Error::setting(format!("config {}: {what}", path.display()), hint)
}

fn scalar(key: &str, v: &toml::Value, path: &Path) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => {
            return Err(bad(
                path,
                format!("key {key} has a {} value", other.type_str()),
                "use a string, number or boolean",
            ))
        }
    })
}

fn check_key(key: &str, path: &Path) -> Result<()> {
    match setting(key) {
        Some(s) if s.sources.file => Ok(()),
        // The passphrase, --config: the table says they are never read from a file.
        Some(s) => Err(bad(path, format!("{key} is never read from the config file"), s.help)),
        None => {
            let known = || super::table::SETTINGS.iter().filter(|s| s.sources.file).map(|s| s.name);
            // Regression (issue 21, item 13): a typo got the whole list and no hint.
            let hint = match super::table::closest(key, known()) {
                Some(near) => format!("did you mean {near}? (known keys: {})", known().collect::<Vec<_>>().join(", ")),
                None => format!("known keys: {}", known().collect::<Vec<_>>().join(", ")),
            };
            Err(bad(path, format!("unknown key {key}"), &hint))
        }
    }
}

fn table(t: toml::Table, path: &Path) -> Result<BTreeMap<String, String>> {
    t.iter()
        .map(|(k, v)| {
            check_key(k, path)?;
            Ok((k.clone(), scalar(k, v, path)?))
        })
        .collect()
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
            Error::setting(
                format!("cannot read config file {}: {e}", path.display()),
                "check --config / PGCAIRN_CONFIG",
            )
        })?;
        Self::parse(&text, &path)
    }

    /// The stanzas with a `[stanza.NAME]` table, sorted.
    pub fn stanza_names(&self) -> Vec<String> {
        self.stanzas.keys().cloned().collect()
    }

    /// Parse `text`, read from `path` (named in errors); unknown keys are refused.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| {
            bad(path, format!("is not valid TOML: {e}"), "fix the syntax; docs/config.md has an example")
        })?;
        let mut cfg = ConfigFile { path: path.to_path_buf(), ..Default::default() };
        // `stanza` is a name at the top level, a table of per-stanza tables otherwise.
        if let Some(toml::Value::Table(stanzas)) = doc.get("stanza") {
            for (name, t) in stanzas.clone() {
                let toml::Value::Table(t) = t else {
                    let hint = "write per-stanza settings as [stanza.NAME] tables";
                    return Err(bad(path, format!("[stanza.{name}] is not a table"), hint));
                };
                cfg.stanzas.insert(name, table(t, path)?);
            }
            doc.remove("stanza");
        }
        cfg.top = table(doc, path)?;
        Ok(cfg)
    }

    /// The value of `key` for `stanza`: its table first, then the top level.
    pub fn get(&self, stanza: Option<&str>, key: &str) -> Option<(String, Place)> {
        if let Some((name, v)) = stanza.and_then(|s| Some((s, self.stanzas.get(s)?.get(key)?))) {
            return Some((v.clone(), Place::Stanza(name.to_string())));
        }
        self.top.get(key).map(|v| (v.clone(), Place::Top))
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
        assert_eq!(c.get(Some("main"), "repo"), Some(("s3://b/p".into(), Place::Stanza("main".into()))));
        assert_eq!(c.get(Some("other"), "repo"), Some(("/r".into(), Place::Top)));
        assert_eq!(c.get(Some("main"), "compress-level").map(|v| v.0).as_deref(), Some("3"));
        assert_eq!(c.get(None, "pg"), None);
    }

    #[test]
    fn refuses_unknown_keys_passphrases_and_tables() {
        let err = |text: &str| ConfigFile::parse(text, Path::new("t")).unwrap_err().to_string();
        assert!(err("repo-passphrase = \"x\"").contains("never read"));
        assert!(err("[stanza.main]\nrepo-passphrase = \"x\"").contains("never read"));
        assert!(err("config = \"/x\"").contains("never read"));
        assert!(err("nope = 1").contains("unknown key nope"));
        assert!(err("retention-ful = 1").contains("did you mean retention-full?"), "{}", err("retention-ful = 1"));
        assert!(err("[stanza.main]\nnope = 1").contains("unknown key nope"));
        assert!(err("repo = [1]").contains("array"));
        assert!(err("[stanza]\nmain = 1").contains("is not a table"));
    }

    proptest::proptest! {
        /// Moved from the engine's hostile-input tests with the config file: any text is
        /// refused or parsed, never a panic.
        #[test]
        fn any_text(text in "\\PC{0,80}") {
            let _ = ConfigFile::parse(&text, Path::new("t.toml"));
        }
    }
}
