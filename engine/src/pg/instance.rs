//! A PostgreSQL server pgcairn starts itself, for restore drills: binaries found for
//! a major version, settings that keep it private (no TCP, a socket in a 0700
//! directory, trust only there, `archive_mode = off` so a promoted drill never
//! archives a new timeline into the production stanza), started as a non-root OS
//! user, waited for until recovery ends, queried, stopped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Misconfig, Result};
use crate::fsutil::{self, Commit};

/// The OS user a server runs as when pgcairn runs as root (PostgreSQL refuses root).
pub(crate) const SERVER_OS_USER: &str = "postgres";
/// The port names the socket file only: the server listens on no TCP address.
const DRILL_PORT: u16 = 5432;

/// A directory holding `pg_ctl` and `postgres` of one major version.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// `explicit` if given (its major version checked), else the first of the usual
    /// places that holds this major version's server.
    pub(crate) fn find(explicit: Option<&Path>, major: u32) -> Result<Binaries> {
        if let Some(dir) = explicit {
            return match server_major(dir) {
                Some(m) if m == major => Ok(Binaries { dir: dir.to_path_buf() }),
                Some(m) => Err(Error::setting(
                    format!("--pg-bin {} holds PostgreSQL {m}, the backup is PostgreSQL {major}", dir.display()),
                    format!("point --pg-bin at the bin directory of PostgreSQL {major}"),
                )),
                None => Err(Error::setting(
                    format!("--pg-bin {} holds no runnable postgres", dir.display()),
                    "point it at the directory holding pg_ctl and postgres",
                )),
            };
        }
        let mut candidates = vec![
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
            PathBuf::from(format!("/usr/pgsql-{major}/bin")),
            PathBuf::from(format!("/usr/local/pgsql-{major}/bin")),
            PathBuf::from("/usr/local/pgsql/bin"),
        ];
        candidates.extend(std::env::var_os("PATH").iter().flat_map(std::env::split_paths));
        candidates
            .into_iter()
            .find(|d| server_major(d) == Some(major))
            .map(|dir| Binaries { dir })
            .ok_or_else(|| {
                Error::setting(
                    format!("no PostgreSQL {major} server found (looked in /usr/lib/postgresql/{major}/bin, /usr/pgsql-{major}/bin, /usr/local/pgsql/bin and PATH)"),
                    format!("install PostgreSQL {major}'s server package or give its bin directory with --pg-bin"),
                )
            })
    }

    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Refuse, before anything is restored, when `name` is not next to the server.
    pub(crate) fn require(&self, name: &str, why: &str) -> Result<()> {
        if self.bin(name).is_file() {
            return Ok(());
        }
        Err(Error::setting(
            format!("{name} not found in {} ({why})", self.dir.display()),
            format!("install the client package of this major version (e.g. postgresql-client-N), or give --pg-bin a directory with postgres, pg_ctl and {name}"),
        ))
    }
}

/// Remove every `PG*` variable from a client's environment: PGPASSWORD would be sent
/// to the private server, PGHOSTADDR or PGSERVICE could send the client elsewhere.
fn without_libpq_env(cmd: &mut tokio::process::Command) {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
}

/// pg_dump's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// SQL text, for psql.
    Plain,
    /// pg_dump's custom archive, for pg_restore (compressed, selective).
    Custom,
}

/// The major version `postgres --version` in `dir` reports.
fn server_major(dir: &Path) -> Option<u32> {
    let out = std::process::Command::new(dir.join("postgres")).arg("--version").stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().last()?;
    version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

/// Who runs the server: ourselves, or [`SERVER_OS_USER`] when we are root.
#[derive(Debug, Clone)]
pub(crate) struct OsUser {
    pub name: String,
    /// uid and gid to switch to; None when we are not root.
    pub ids: Option<(u32, u32)>,
}

impl OsUser {
    pub(crate) fn for_server() -> Result<OsUser> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // The passwd entry, not $USER (unset under cron).
            let name = crate::pg::conninfo::os_user_name().unwrap_or_else(|| SERVER_OS_USER.into());
            return Ok(OsUser { name, ids: None });
        }
        let ids = lookup_user(SERVER_OS_USER).ok_or_else(|| {
            Error::misconfigured(
                Misconfig::Server,
                format!("running as root, and there is no OS user {SERVER_OS_USER} to run PostgreSQL as"),
                "run the drill as the PostgreSQL OS user, or create that user",
            )
        })?;
        Ok(OsUser { name: SERVER_OS_USER.into(), ids: Some(ids) })
    }

    /// Whether this process runs as root.
    pub(crate) fn current_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// The owner of `path`, as a user to switch to (None if it cannot be read).
    pub(crate) fn owner_of(path: &Path) -> Option<OsUser> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let name = user_name(meta.uid()).unwrap_or_else(|| meta.uid().to_string());
        Some(OsUser { name, ids: Some((meta.uid(), meta.gid())) })
    }

    /// The user's supplementary groups (from the group database), `gid` included.
    pub(crate) fn groups(&self, gid: u32) -> Vec<libc::gid_t> {
        let Ok(name) = std::ffi::CString::new(self.name.as_str()) else { return vec![gid] };
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        for _ in 0..2 {
            let mut n = groups.len() as libc::c_int;
            // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many
            // and sets `n` to the count (or the count needed, returning -1).
            let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
            if rc >= 0 {
                groups.truncate(n.max(0) as usize);
                return groups;
            }
            groups.resize(n.max(1) as usize, 0);
        }
        vec![gid]
    }

    /// The user's home directory, from the passwd entry.
    pub(crate) fn home(&self) -> Option<std::path::PathBuf> {
        // SAFETY: geteuid has no preconditions.
        let uid = self.ids.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
        // SAFETY: getpwuid returns a pointer into static storage or null; the path
        // is copied out at once and the pointer not kept.
        unsafe {
            let pw = libc::getpwuid(uid);
            if pw.is_null() || (*pw).pw_dir.is_null() {
                return None;
            }
            let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
            Some(std::path::PathBuf::from(std::ffi::OsStr::from_encoded_bytes_unchecked(dir.to_bytes())))
        }
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGPASSWORD").stdin(Stdio::null());
        cmd
    }

    /// Give everything below `dir` to this user (files a root restore created).
    pub(crate) fn own(&self, dir: &Path) -> Result<()> {
        let Some((uid, gid)) = self.ids else { return Ok(()) };
        let ctx = || format!("cannot hand {} to OS user {}", dir.display(), self.name);
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).ctx(ctx)?;
        if dir.symlink_metadata().ctx(ctx)?.is_dir() {
            for entry in std::fs::read_dir(dir).ctx(ctx)? {
                self.own(&entry.ctx(ctx)?.path())?;
            }
        }
        Ok(())
    }
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; the name is
    // copied out at once and the pointer not kept.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; the ids are
    // copied out at once and the pointer not kept.
    unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            return None;
        }
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A server on a restored data directory, private to this run.
pub(crate) struct Instance {
    pub bins: Binaries,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub log: PathBuf,
    pub user: OsUser,
}

impl Instance {
    /// Settings appended after restore's recovery settings (so they win): no TCP, a
    /// private socket, trust on it only, no archiving, no replication, no TLS files.
    pub(crate) fn configure(&self, hba: &Path) -> Result<()> {
        let conf = self.data.join("postgresql.conf");
        if !conf.exists() {
            // Debian keeps postgresql.conf in /etc: the backup has none.
            fsutil::write_file(
                &conf,
                b"# written by pgcairn drill: the backup had no postgresql.conf\n",
                Commit::Replace,
            )
            .ctx(|| format!("cannot write {}", conf.display()))?;
        }
        fsutil::write_file(hba, b"local all all trust\n", Commit::Replace)
            .ctx(|| format!("cannot write {}", hba.display()))?;
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "''"));
        let settings = [
            "\n# drill settings written by pgcairn drill".to_string(),
            "listen_addresses = ''".into(),
            format!("port = {DRILL_PORT}"),
            format!("unix_socket_directories = {}", quote(&self.socket_dir)),
            format!("hba_file = {}", quote(hba)),
            "archive_mode = off".into(),
            "primary_conninfo = ''".into(),
            "ssl = off".into(),
            "logging_collector = off".into(),
            "external_pid_file = ''".into(),
            "cluster_name = 'pgcairn-drill'".into(),
            // Production commands that would reach outside the drill, or hang it.
            "archive_cleanup_command = ''".into(),
            "recovery_end_command = ''".into(),
            "max_logical_replication_workers = 0".into(),
            "synchronous_standby_names = ''".into(),
            "huge_pages = try".into(),
            String::new(),
        ];
        let auto = self.data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&settings.join("\n"));
        fsutil::write_file(&auto, text.as_bytes(), Commit::Replace).ctx(|| format!("cannot write {}", auto.display()))
    }

    /// Ask postgres itself (`-C`) what the settings that keep the drill private
    /// resolve to: a restored postgresql.conf could set data_directory or include a
    /// file that wins over postgresql.auto.conf. Refuses to start otherwise.
    pub(crate) async fn check_private(&self) -> Result<()> {
        let want = [
            ("data_directory", self.data.display().to_string()),
            ("listen_addresses", String::new()),
            ("archive_mode", "off".to_string()),
            ("unix_socket_directories", self.socket_dir.display().to_string()),
            ("archive_cleanup_command", String::new()),
        ];
        for (name, value) in want {
            let out = self
                .user
                .command(&self.bins.bin("postgres"))
                .arg("-D")
                .arg(&self.data)
                .args(["-C", name])
                .output()
                .await
                .ctx(|| "cannot run postgres -C".to_string())?;
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let same = got == value
                || std::fs::canonicalize(&got).ok() == std::fs::canonicalize(&value).ok() && !got.is_empty();
            if !out.status.success() || !same {
                return Err(Error::misconfigured(
                    Misconfig::Server,
                    format!("the restored configuration sets {name} = {got:?} where the drill needs {value:?}; {}", String::from_utf8_lossy(&out.stderr).trim()),
                    "the backup's postgresql.conf (or a file it includes) overrides the drill's settings: the drill does not start a server that could reach outside its directory",
                ));
            }
        }
        Ok(())
    }

    /// Start the server without waiting (recovery may take long; see `wait_recovered`).
    pub(crate) async fn start(&self) -> Result<()> {
        let status = self
            .user
            .command(&self.bins.bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-W", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .ctx(|| "cannot run pg_ctl".to_string())?;
        if !status.status.success() {
            return Err(self.failed("pg_ctl could not start PostgreSQL", &String::from_utf8_lossy(&status.stderr)));
        }
        Ok(())
    }

    /// Wait until the server accepts connections and is out of recovery; an error
    /// with the end of its log when it stops or `timeout` passes first.
    pub(crate) async fn wait_recovered(&self, timeout: Duration) -> Result<()> {
        let begun = Instant::now();
        let deadline = begun + timeout;
        loop {
            match self.try_connect("postgres").await {
                Ok(client) => {
                    let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
                    if matches!(row.map(|r| r.get::<_, bool>(0)), Ok(false)) {
                        return Ok(());
                    }
                }
                // The server answers but refuses the role or database: waiting cannot help.
                Err(e) if e.as_db_error().is_some_and(|d| refuses_us(d.code())) => {
                    return Err(Error::misconfigured(
                        Misconfig::Server,
                        format!("the drilled cluster refuses role {:?} or database postgres: {e}", self.user.name),
                        "the drill connects as the role named like the OS user running the server (initdb's default superuser); a cluster whose bootstrap superuser or postgres database is named otherwise cannot be drilled yet",
                    ));
                }
                Err(_) if begun.elapsed() > Duration::from_secs(2) && !self.data.join("postmaster.pid").exists() => {
                    return Err(self.failed("PostgreSQL stopped during recovery", ""));
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                return Err(self.failed(&format!("recovery did not end within {} s", timeout.as_secs()), ""));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A connection over the private socket as the cluster's bootstrap superuser
    /// (the OS user's name, as initdb makes it by default).
    pub(crate) async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        self.try_connect(db).await.map_err(|e| Error::Connect {
            target: format!("drill server on {}", self.socket_dir.display()),
            detail: e.to_string(),
        })
    }

    async fn try_connect(&self, db: &str) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.socket_dir).port(DRILL_PORT).user(&self.user.name).dbname(db);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// `pg_amcheck --all --heapallindexed`: Ok(None) passed, Ok(Some(outcome)) failed
    /// (corruption, exit 2, or pg_amcheck could not complete); Err when it cannot run
    /// here (not installed, no amcheck extension).
    pub(crate) async fn amcheck(&self, skip: &[String]) -> std::result::Result<Option<AmcheckFailure>, String> {
        let bin = self.bins.bin("pg_amcheck");
        if !bin.exists() {
            return Err(format!("{} not found", bin.display()));
        }
        let mut cmd = tokio::process::Command::new(bin);
        without_libpq_env(&mut cmd);
        let out = cmd
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &DRILL_PORT.to_string(), "-U", &self.user.name])
            .args(["--all", "--heapallindexed", "--install-missing", "--no-password"])
            // A pattern in double quotes is a literal name (psql's pattern rules).
            .args(skip.iter().map(|name| format!("--exclude-database=\"{}\"", name.replace('"', "\"\""))))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run pg_amcheck: {e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(None)
        } else if text.contains("extension \"amcheck\" is not available") {
            Err("the amcheck extension is not installed with this PostgreSQL".into())
        } else if out.status.code() == Some(2) {
            Ok(Some(AmcheckFailure::Corruption(tail(&text, 20))))
        } else {
            Ok(Some(AmcheckFailure::DidNotComplete(tail(&text, 20))))
        }
    }

    /// `pg_dump` of database `db` on the private socket, the selection and format
    /// as given; stdout and stderr for the caller to set.
    pub(crate) fn pg_dump(
        &self,
        db: &str,
        format: DumpFormat,
        tables: &[String],
        schemas: &[String],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.bins.bin("pg_dump"));
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &DRILL_PORT.to_string(), "-U", &self.user.name, "--no-password"])
            // A connection string naming the database only: a name holding `=` or a
            // URI is a name, never another host (review of issue 25).
            .arg(format!("--dbname=dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'")))
            .arg(match format {
                DumpFormat::Plain => "--format=plain",
                DumpFormat::Custom => "--format=custom",
            })
            .args(tables.iter().map(|t| format!("--table={t}")))
            .args(schemas.iter().map(|n| format!("--schema={n}")))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        without_libpq_env(&mut cmd);
        cmd
    }

    /// Stop fast; immediate if that does not finish within a minute. False when the
    /// server may still run (its directory must then be kept).
    pub(crate) async fn stop(&self) -> bool {
        for mode in ["fast", "immediate"] {
            let done = self
                .user
                .command(&self.bins.bin("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", "60", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if done.is_ok_and(|s| s.success()) || !self.data.join("postmaster.pid").exists() {
                return true;
            }
        }
        false
    }

    fn failed(&self, what: &str, detail: &str) -> Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Error::misconfigured(
            Misconfig::Server,
            format!("{what}{}{detail}; the end of its log:\n{}", if detail.is_empty() { "" } else { ": " }, tail(&log, 15)),
            "the log names the cause (a missing extension library, a setting this host cannot honour, WAL the archive lacks); rerun with --drill-keep to keep the directory",
        )
    }
}

/// Why pg_amcheck did not pass: it found corruption (its exit status 2), or it
/// could not complete (a connection or resource error: no verdict on the data).
#[derive(Debug)]
pub(crate) enum AmcheckFailure {
    Corruption(String),
    DidNotComplete(String),
}

/// Refusals that no amount of waiting for recovery changes.
fn refuses_us(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    [SqlState::INVALID_AUTHORIZATION_SPECIFICATION, SqlState::INVALID_CATALOG_NAME, SqlState::INVALID_PASSWORD]
        .contains(code)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_debian_server_by_major_and_refuses_wrong_one() {
        let found = Binaries::find(None, 15).unwrap();
        assert!(found.bin("pg_ctl").exists(), "{found:?}");
        let err = Binaries::find(Some(&found.dir), 17).unwrap_err();
        assert!(err.to_string().contains("holds PostgreSQL 15"), "{err}");
        let err = Binaries::find(Some(Path::new("/nonexistent")), 15).unwrap_err();
        assert!(err.to_string().contains("no runnable postgres"), "{err}");
        let err = Binaries::find(None, 9).unwrap_err();
        assert!(err.to_string().contains("--pg-bin"), "{err}");
    }
}
