//! Whether a cluster archives its WAL: one rule for backup (may it rely on the
//! archive?) and check (what must the operator fix?), and the SQL check runs.

use crate::error::Result;
use crate::pg::ReplicationConnection;

/// `SELECT pg_is_in_recovery()`: check runs against the primary only.
pub(crate) const SQL_IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";
/// A restore point, so there is WAL to switch away from even on an idle cluster.
pub(crate) const SQL_RESTORE_POINT: &str = "SELECT pg_create_restore_point('pgcairn archive check')";
/// Switch to a new segment and name the one just finished.
pub(crate) const SQL_SWITCH_WAL: &str = "SELECT pg_walfile_name(pg_switch_wal())";

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

    /// What stops this server from archiving into `stanza` through pgcairn, as the
    /// sentence to show the operator; None when the settings are right.
    /// What is wrong with the settings for archiving into `stanza`, with the fix.
    pub(crate) fn problem(&self, stanza: &str) -> Option<(String, String)> {
        let wanted = format!("archive_command = 'pgcairn-archive-push --stanza={stanza} %p'");
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
        if command.contains("--stanza=") && !command.contains(&format!("--stanza={stanza} ")) {
            return Some((format!("archive_command '{command}' archives to another stanza than {stanza}"), reload));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(level: &str, mode: &str, command: &str) -> ArchivingSettings {
        ArchivingSettings { wal_level: level.into(), archive_mode: mode.into(), archive_command: command.into() }
    }

    #[test]
    fn one_rule_for_backup_and_check() {
        let good = settings("replica", "on", "pgcairn-archive-push --stanza=main %p");
        assert!(good.archives() && good.problem("main").is_none());
        assert!(settings("replica", "always", "cp %p /a/%f").archives());
        let off = settings("replica", "off", "pgcairn-archive-push %p");
        assert!(!off.archives() && off.problem("main").unwrap().0.contains("archive_mode is off"));
        assert!(!settings("replica", "on", "").archives());
        assert!(!settings("replica", "on", "(disabled)").archives());
        let other = settings("replica", "on", "cp %p /a/%f");
        assert!(other.archives(), "archives, though not through pgcairn");
        assert!(other.problem("main").unwrap().0.contains("does not call pgcairn"));
        let wrong = settings("replica", "on", "pgcairn-archive-push --stanza=other %p");
        assert!(wrong.problem("main").unwrap().0.contains("another stanza"));
        assert!(settings("minimal", "on", "x").problem("main").unwrap().0.contains("wal_level"));
    }
}
