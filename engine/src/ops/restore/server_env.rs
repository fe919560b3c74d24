//! The restored cluster as its server will meet it: owned by the OS user that runs
//! PostgreSQL, and with a restore_command that works in the server's environment.
//!
//! Regression (issue 21, items 3 and 5): a restore from S3 with credentials in the
//! operator's shell succeeded without a warning, but the restore_command it wrote
//! runs under the server, which has none of those variables: archive-get asked the
//! instance metadata address for 60 s and exited 200, and the cluster never started.
//! And a restore as root silently left a root-owned data directory. Now a root
//! restore hands its files to the server's OS user (or refuses), and before restore
//! reports success it runs the restore_command it wrote as that user, with the
//! operator's variables gone; a command that cannot open the repository is refused
//! with the fix.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Misconfig, Result};
use crate::pg::instance::OsUser;

/// How long the probe may take: more than archive-get's own first attempts, less
/// than an operator's patience.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Asked for by the probe: timeline 1 never has a history file, so a working
/// restore_command answers "absent" (exit 1) after opening the repository.
const PROBE_FILE: &str = "00000001.history";
/// The PATH the probe runs with: what a server started by systemd or pg_ctlcluster has.
const SERVER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who will own the restored files: ourselves, or (as root) the owner of the target
/// directory or of its parent, else the PostgreSQL OS user; refused when that would
/// be root, which PostgreSQL refuses to run as.
pub(crate) fn server_user(target: &Path) -> Result<OsUser> {
    let from_dir = [Some(target), target.parent()]
        .into_iter()
        .flatten()
        .find_map(|d| OsUser::owner_of(d).filter(|u| u.ids.is_some_and(|(uid, _)| uid != 0)));
    match (OsUser::current_is_root(), from_dir) {
        (false, _) => OsUser::for_server(),
        (true, Some(owner)) => Ok(owner),
        (true, None) => OsUser::for_server().map_err(|_| {
            Error::misconfigured(
                Misconfig::Request,
                format!("restoring as root into {}, which no PostgreSQL OS user owns: the server would refuse a root-owned data directory", target.display()),
                format!("run restore as the PostgreSQL OS user, or create the directory for it first: install -d -m 0700 -o postgres -g postgres {}", target.display()),
            )
        }),
    }
}

/// Run `restore_command` as PostgreSQL would: as `user`, in the data directory, with
/// an environment that holds none of this shell's variables.
pub(crate) async fn probe_restore_command(restore_command: &str, user: &OsUser, data: &Path) -> Result<()> {
    if restore_command.is_empty() {
        return Ok(());
    }
    let dest = data.join("pg_wal").join("pgcairn-restore-command-probe");
    let out = run_as_server(restore_command, user, data, &dest).await;
    let _ = std::fs::remove_file(&dest);
    let out = out?;
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        code => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            let how = code.map_or("was killed by a signal".to_string(), |c| format!("exited {c}"));
            Err(refused(user, &format!("it {how}: {last}")))
        }
    }
}

/// `sh -c` the expanded command as `user` (with its supplementary groups, as the
/// server's own login would have them), in its own process group, killed whole on
/// timeout.
async fn run_as_server(restore_command: &str, user: &OsUser, data: &Path, dest: &Path) -> Result<std::process::Output> {
    let mut child = tokio::process::Command::new("/bin/sh");
    child.arg("-c").arg(expand(restore_command, dest)).current_dir(data).env_clear().env("PATH", SERVER_PATH);
    if let Some(home) = user.home() {
        child.env("HOME", home);
    }
    // An empty PGCAIRN_CONFIG ("read no config file", how hermetic setups run every
    // pgcairn and server) is kept; a named one reaches the command as --config anyway.
    if let Some(config) = std::env::var_os("PGCAIRN_CONFIG").filter(|c| c.is_empty()) {
        child.env("PGCAIRN_CONFIG", config);
    }
    if let Some((uid, gid)) = user.ids {
        let groups = user.groups(gid);
        // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid) on data
        // prepared before the fork.
        unsafe {
            child.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    child.process_group(0).stdin(std::process::Stdio::null());
    child.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let spawned = child.spawn().map_err(|e| Error::Internal(format!("cannot run restore_command's probe: {e}")))?;
    let pgid = spawned.id().map(|p| p as i32);
    match tokio::time::timeout(PROBE_TIMEOUT, spawned.wait_with_output()).await {
        Ok(out) => out.map_err(|e| Error::Internal(format!("restore_command's probe: {e}"))),
        Err(_) => {
            // SAFETY: kill has no memory preconditions; the group is the probe's own.
            pgid.map(|g| unsafe { libc::kill(-g, libc::SIGKILL) });
            Err(refused(user, &format!("it did not answer within {} s", PROBE_TIMEOUT.as_secs())))
        }
    }
}

fn expand(restore_command: &str, dest: &Path) -> String {
    restore_command
        .replace("%f", PROBE_FILE)
        .replace("%p", &dest.display().to_string())
        .replace("%r", "000000010000000000000001")
        .replace("%%", "%")
}

fn refused(user: &OsUser, why: &str) -> Error {
    Error::misconfigured(
        Misconfig::Setting,
        format!(
            "the restore_command written for PostgreSQL cannot open the repository in the server's environment (run as OS user {}, without this shell's PGCAIRN_* and AWS_* variables): {why}",
            user.name
        ),
        "put what archive-get needs in the config file (/etc/pgcairn/pgcairn.toml or --config), readable by that user: repo-key-file (or repo-passphrase-file), and for S3 repo-s3-credentials-file; then run restore again (--delta reuses what is written)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_expanded_as_postgresql_does() {
        let cmd = expand("pgcairn archive-get %f \"%p\" # 100%%", Path::new("/d/pg_wal/x"));
        assert_eq!(cmd, "pgcairn archive-get 00000001.history \"/d/pg_wal/x\" # 100%");
    }

    /// A restore_command that fails in the server's environment is refused naming
    /// what to set; one that answers "absent" passes.
    #[tokio::test]
    async fn the_probe_runs_without_this_shells_variables() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        // As root the probe runs as the PostgreSQL OS user, which must enter it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(dir.path().join("pg_wal"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let user = OsUser::for_server().unwrap();
        // cargo sets it for the test process: the probe must not see it.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let needs_env = "test -n \"$CARGO_MANIFEST_DIR\" || { echo 'no credentials' >&2; exit 200; }; exit 1";
        let err = probe_restore_command(needs_env, &user, dir.path()).await.unwrap_err().to_string();
        assert!(err.contains("exited 200: no credentials") && err.contains("repo-s3-credentials-file"), "{err}");
        probe_restore_command("exit 1", &user, dir.path()).await.unwrap();
        probe_restore_command("", &user, dir.path()).await.unwrap();
    }
}
