//! Whether a cluster archives its WAL: one rule for backup (may it rely on the
//! archive?) and check (what must the operator fix?), and the SQL check runs.

use std::path::Path;

use crate::error::Result;
use crate::pg::ReplicationConnection;

/// `SELECT pg_is_in_recovery()`: check runs against the primary only.
pub(crate) const SQL_IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";
/// A restore point (check --restore-point only).
pub(crate) const SQL_RESTORE_POINT: &str = "SELECT pg_create_restore_point('pgcairn archive check')";
/// A transaction id assigned and committed: a commit record, so there is fresh WAL
/// to switch away from even on an idle cluster (no restore point, nothing visible).
pub(crate) const SQL_FRESH_WAL: &str = "SELECT pg_current_xact_id()::text";
/// Switch to a new segment and name the one just finished.
pub(crate) const SQL_SWITCH_WAL: &str = "SELECT pg_walfile_name(pg_switch_wal())";

/// pg_stat_archiver, and the segment being written now (NULL on a standby).
const SQL_ARCHIVER: &str = "SELECT archived_count, last_archived_wal, \
     extract(epoch FROM last_archived_time)::float8, failed_count, last_failed_wal, \
     extract(epoch FROM last_failed_time)::float8, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn() + 1) END \
     FROM pg_stat_archiver";

/// The server's own account of archive_command: what it archived and what failed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ArchiverStats {
    /// Segments archived since the statistics were reset.
    pub archived_count: i64,
    /// The last segment archive_command succeeded for.
    pub last_archived_wal: Option<String>,
    /// When (unix seconds).
    pub last_archived_time: Option<f64>,
    /// Failed archive_command runs since the statistics were reset.
    pub failed_count: i64,
    /// The last segment archive_command failed for.
    pub last_failed_wal: Option<String>,
    /// When (unix seconds).
    pub last_failed_time: Option<f64>,
    /// The segment being written now (None on a standby). Named from the position
    /// after the current one: at a segment boundary the segment just completed is
    /// not the one being written. Regression (issue 21, item 11): the backlog read 0
    /// right after a switch while the completed segment's `.ready` waited.
    pub current_wal: Option<String>,
}

impl ArchiverStats {
    /// Whether archive_command is failing now: its last failure is newer than its
    /// last success (PostgreSQL retries the same segment until it succeeds).
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(failed), Some(archived)) => failed > archived,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// The sentence and fix for a failing archive_command.
    pub(crate) fn failure(&self, target: &str) -> (String, String) {
        let wal = self.last_failed_wal.as_deref().unwrap_or("?");
        let since = self
            .last_archived_wal
            .as_deref()
            .map_or_else(|| "nothing was ever archived".to_string(), |w| format!("the last success was {w}"));
        (
            format!("{target}: archive_command is failing: {} failures, the last for {wal}; {since}", self.failed_count),
            "read the server log for \"archive command failed\" and the command's own error (a wrong path gives exit 127: use the absolute path /usr/local/bin/pgcairn-archive-push), fix it, then run check again".into(),
        )
    }

    /// Read them over an ordinary SQL connection.
    pub(crate) async fn read(client: &tokio_postgres::Client) -> std::result::Result<Self, tokio_postgres::Error> {
        let row = client.query_one(SQL_ARCHIVER, &[]).await?;
        Ok(Self {
            archived_count: row.get(0),
            last_archived_wal: row.get(1),
            last_archived_time: row.get(2),
            failed_count: row.get(3),
            last_failed_wal: row.get(4),
            last_failed_time: row.get(5),
            current_wal: row.get(6),
        })
    }
}

/// The server settings that decide archiving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArchivingSettings {
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_command: String,
}

impl ArchivingSettings {
    pub(crate) async fn read(conn: &mut ReplicationConnection) -> Result<Self> {
        Ok(Self {
            wal_level: conn.show("wal_level").await?,
            archive_mode: conn.show("archive_mode").await?,
            archive_command: conn.show("archive_command").await?,
        })
    }

    /// Whether the server archives completed segments at all: then a backup can rely
    /// on the archive for its WAL instead of carrying it.
    pub(crate) fn archives(&self) -> bool {
        let command_set = !self.archive_command.is_empty() && self.archive_command != "(disabled)";
        self.wal_level != "minimal" && matches!(self.archive_mode.as_str(), "on" | "always") && command_set
    }

    /// What is wrong with the settings for archiving into `stanza`, with the fix;
    /// None when they are right. `wanted` is the archive_command to suggest.
    pub(crate) fn problem(&self, stanza: &str, wanted: &str) -> Option<(String, String)> {
        let wanted = format!("archive_command = '{wanted}'");
        let command = &self.archive_command;
        if self.wal_level == "minimal" {
            return Some(("wal_level is minimal".into(), "set wal_level = replica and restart PostgreSQL".into()));
        }
        if !matches!(self.archive_mode.as_str(), "on" | "always") {
            let hint = format!("set archive_mode = on and {wanted}, then restart PostgreSQL");
            return Some(("archive_mode is off".into(), hint));
        }
        let reload = format!("set {wanted} and reload PostgreSQL");
        if !command.contains("pgcairn") {
            return Some((format!("archive_command is '{command}', which does not call pgcairn"), reload));
        }
        match archived_stanza(command) {
            Some((other, how)) if other != stanza => {
                let problem = format!("archive_command '{command}' archives to stanza {other}{how}, not to {stanza}");
                Some((problem, reload))
            }
            _ => None,
        }
    }
}

/// The stanza an archive_command archives to, when it says (`--stanza`, or the
/// `stanza` of the config file it passes, if readable here), and how it says so.
pub(crate) fn archived_stanza(command: &str) -> Option<(String, String)> {
    let words = ArchiveCommandWords::parse(command);
    match (words.value("stanza"), words.value("config")) {
        (Some(s), _) => Some((s.to_string(), String::new())),
        (None, Some(file)) => Some((stanza_in_config(Path::new(file))?, format!(" (through its config file {file})"))),
        (None, None) => None,
    }
}

/// archive_command split into words the way /bin/sh would for plain quoting.
struct ArchiveCommandWords(Vec<String>);

impl ArchiveCommandWords {
    fn parse(command: &str) -> Self {
        let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None::<char>, false);
        for c in command.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => (quote, any) = (Some(c), true),
                (None, c) if c.is_whitespace() => {
                    if any || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                (None, c) => word.push(c),
            }
        }
        if any || !word.is_empty() {
            words.push(word);
        }
        Self(words)
    }

    /// The value of `--name=VALUE` or `--name VALUE`.
    fn value(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        self.0.iter().enumerate().find_map(|(i, w)| match w.strip_prefix(&flag) {
            Some(rest) if rest.starts_with('=') => Some(&rest[1..]),
            Some("") => self.0.get(i + 1).map(String::as_str),
            _ => None,
        })
    }
}

/// The top-level `stanza` of a pgcairn config file, when this process can read it.
fn stanza_in_config(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("stanza")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(level: &str, mode: &str, command: &str) -> ArchivingSettings {
        ArchivingSettings { wal_level: level.into(), archive_mode: mode.into(), archive_command: command.into() }
    }

    /// Regression (issue 14): a stanza named in the config file that archive_command
    /// passes with --config went unchecked, and `--stanza main` (space form) was
    /// taken for another stanza.
    #[test]
    fn stanza_through_config_and_both_flag_forms() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("other.toml");
        std::fs::write(&conf, "stanza = \"other\"\nrepo = \"/r\"\n").unwrap();
        let cmd = format!("/usr/local/bin/pgcairn-archive-push --config '{}' %p", conf.display());
        let (problem, _) = settings("replica", "on", &cmd).problem("main", "x").unwrap();
        assert!(problem.contains("stanza other (through its config file"), "{problem}");
        assert!(settings("replica", "on", &cmd).problem("other", "x").is_none());
        let spaced = settings("replica", "on", "pgcairn-archive-push --stanza main %p");
        assert!(spaced.problem("main", "x").is_none());
        assert!(spaced.problem("other", "x").unwrap().0.contains("to stanza main"));
        let words = ArchiveCommandWords::parse("a --config=\"/x y/z\" --stanza 's t' %p");
        assert_eq!((words.value("config"), words.value("stanza")), (Some("/x y/z"), Some("s t")));
    }

    #[test]
    fn archiver_failing() {
        let stats = |archived: Option<f64>, failed: Option<f64>| ArchiverStats {
            archived_count: 1,
            last_archived_wal: None,
            last_archived_time: archived,
            failed_count: 1,
            last_failed_wal: None,
            last_failed_time: failed,
            current_wal: None,
        };
        assert!(stats(Some(1.0), Some(2.0)).failing());
        assert!(stats(None, Some(2.0)).failing());
        assert!(!stats(Some(3.0), Some(2.0)).failing());
        assert!(!stats(None, None).failing());
    }

    #[test]
    fn one_rule_for_backup_and_check() {
        let good = settings("replica", "on", "pgcairn-archive-push --stanza=main %p");
        assert!(good.archives() && good.problem("main", "x").is_none());
        assert!(settings("replica", "always", "cp %p /a/%f").archives());
        let off = settings("replica", "off", "pgcairn-archive-push %p");
        assert!(!off.archives() && off.problem("main", "x").unwrap().0.contains("archive_mode is off"));
        assert!(!settings("replica", "on", "").archives());
        assert!(!settings("replica", "on", "(disabled)").archives());
        let other = settings("replica", "on", "cp %p /a/%f");
        assert!(other.archives(), "archives, though not through pgcairn");
        assert!(other.problem("main", "x").unwrap().0.contains("does not call pgcairn"));
        let wrong = settings("replica", "on", "pgcairn-archive-push --stanza=other %p");
        assert!(wrong.problem("main", "x").unwrap().0.contains("archives to stanza other, not to main"));
        assert!(settings("minimal", "on", "x").problem("main", "x").unwrap().0.contains("wal_level"));
    }
}
