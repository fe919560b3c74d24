//! Connection settings as libpq resolves them: a connection string (key=value or
//! postgresql:// URI), then PG* environment variables, then defaults, and the
//! password from ~/.pgpass (or PGPASSFILE) when none was given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::crypto::Secret;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How to reach the PostgreSQL server: the `pg` setting resolved as libpq would.
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// A TCP host name or address, or a Unix socket directory (default: PGHOST, else the local socket).
    pub host: Host,
    /// TCP port, or the number in the socket's file name (default: PGPORT, else 5432).
    pub port: u16,
    /// The role to connect as (default: PGUSER, else the OS user).
    pub user: String,
    /// The database for SQL connections; None: `postgres`.
    pub dbname: Option<String>,
    /// From the connection string, PGPASSWORD or the password file; None: none found.
    pub password: Option<Secret>,
    /// Shown in pg_stat_activity (default: PGAPPNAME, else `pgcairn`).
    pub application_name: String,
    /// How long to wait for the connection to open (default: PGCONNECT_TIMEOUT, else 30 s).
    pub connect_timeout: Duration,
    /// TLS: sslmode, certificates, channel binding (see `tls.rs`).
    pub tls: super::tls::TlsParams,
}

/// The host: from the string, else PGHOST (a path is a socket directory), else the
/// default socket directory.
fn resolve_host(cfg: &tokio_postgres::Config, env: &dyn Fn(&str) -> Option<String>) -> Host {
    match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Host::Tcp(h.clone()),
        Some(tokio_postgres::config::Host::Unix(p)) => Host::Unix(p.clone()),
        None => match env("PGHOST") {
            Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
            Some(h) if !h.is_empty() => Host::Tcp(h),
            _ => Host::Unix(default_socket_dir()),
        },
    }
}

/// The port: from the string, else PGPORT, else 5432.
fn resolve_port(cfg: &tokio_postgres::Config, env: &dyn Fn(&str) -> Option<String>) -> Result<u16> {
    match (cfg.get_ports().first(), env("PGPORT")) {
        (Some(p), _) => Ok(*p),
        (None, Some(p)) => {
            p.parse().map_err(|_| Error::setting(format!("PGPORT={p} is not a port number"), "set PGPORT to 1-65535"))
        }
        (None, None) => Ok(5432),
    }
}

impl ConnParams {
    /// The same server for an ordinary SQL connection (tokio-postgres), to the
    /// `dbname` given or `postgres`.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Unix(p) => c.host_path(p),
        };
        c.port(self.port).user(&self.user).dbname(self.dbname.as_deref().unwrap_or("postgres"));
        c.application_name(&self.application_name).connect_timeout(self.connect_timeout);
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        c
    }

    /// "host:port" for messages.
    pub fn target(&self) -> String {
        format!("server {}:{} (user {})", self.host, self.port, self.user)
    }

    /// Resolve `conninfo` with the process environment.
    pub fn resolve(conninfo: &str) -> Result<Self> {
        Self::resolve_with(conninfo, &|k| std::env::var(k).ok())
    }

    /// Resolve `conninfo` with `env` standing for the process environment.
    pub fn resolve_with(conninfo: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        // tokio-postgres knows neither verify-ca/verify-full nor the certificate keys.
        let (conninfo, tls_options) = split_tls_options(conninfo);
        let home = env("HOME").map(PathBuf::from);
        let tls = super::tls::TlsParams::resolve(&tls_options, env, home.as_deref())?;
        let cfg = tokio_postgres::Config::from_str(&conninfo).map_err(|e| {
            Error::setting(
                format!("invalid pg connection string: {e}"),
                "use libpq syntax, e.g. \"host=/var/run/postgresql port=5432 user=postgres\"",
            )
        })?;
        // Every TLS key was taken out above; one that reached tokio-postgres means the
        // split went wrong, and its value would be dropped silently.
        if cfg.get_ssl_mode() != tokio_postgres::config::SslMode::Prefer
            || cfg.get_channel_binding() != tokio_postgres::config::ChannelBinding::Prefer
        {
            return Err(Error::setting(
                "the pg connection string's sslmode/channel_binding could not be read",
                "write them as key=value pairs (sslmode=verify-full) or as the URI's query",
            ));
        }
        let host = resolve_host(&cfg, env);
        let port = resolve_port(&cfg, env)?;
        let user = cfg
            .get_user()
            .map(str::to_string)
            .or_else(|| env("PGUSER"))
            .or_else(os_user_name)
            .ok_or_else(|| Error::setting("no PostgreSQL user", "set user= in `pg` or PGUSER"))?;
        let dbname = cfg.get_dbname().map(str::to_string).or_else(|| env("PGDATABASE"));
        let mut password = cfg
            .get_password()
            .map(|p| Secret::new(String::from_utf8_lossy(p).into_owned()))
            .or_else(|| env("PGPASSWORD").map(Secret::new));
        if password.is_none() {
            let file =
                env("PGPASSFILE").map(PathBuf::from).or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")));
            if let Some(file) = file {
                password = pgpass_lookup(&file, &host, port, "replication", &user).map(Secret::new);
            }
        }
        let connect_timeout = cfg
            .get_connect_timeout()
            .copied()
            .or_else(|| env("PGCONNECT_TIMEOUT").and_then(|t| t.parse().ok()).map(Duration::from_secs))
            .unwrap_or(Duration::from_secs(30));
        let application_name = cfg
            .get_application_name()
            .map(str::to_string)
            .or_else(|| env("PGAPPNAME"))
            .unwrap_or_else(|| "pgcairn".into());
        Ok(Self { host, port, user, dbname, password, application_name, connect_timeout, tls })
    }
}

/// The connection string without its TLS keys, and those keys (libpq's key/value
/// syntax: bare or single-quoted values with backslash escapes; or a URI's query).
fn split_tls_options(conninfo: &str) -> (String, BTreeMap<String, String>) {
    use super::tls::TLS_KEYS;
    let mut tls = BTreeMap::new();
    if let Some(after) = conninfo.strip_prefix("postgresql://").or_else(|| conninfo.strip_prefix("postgres://")) {
        // libpq: the user info ends at the first '@' met before any '/'; the query
        // starts at the first '?' after it (a password may hold '?').
        let info_end = after.find(['@', '/']).filter(|&i| after[i..].starts_with('@')).map_or(0, |i| i + 1);
        let Some(q) = after[info_end..].find('?') else { return (conninfo.to_string(), tls) };
        let split = conninfo.len() - after.len() + info_end + q;
        let (base, query) = (&conninfo[..split], &conninfo[split + 1..]);
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k);
            if TLS_KEYS.contains(&key.as_str()) {
                tls.insert(key, percent_decode(v));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, tls);
    }
    let mut kept = Vec::new();
    for (key, value) in conninfo_pairs(conninfo) {
        if TLS_KEYS.contains(&key.as_str()) {
            tls.insert(key, value);
        } else {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    (kept.join(" "), tls)
}

/// %XX decoding as libpq does it for URIs (a '+' stays a '+'); a malformed escape is
/// kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key = value` pairs of a libpq connection string; anything malformed is passed
/// through as a pair tokio-postgres will refuse with its own message.
fn conninfo_pairs(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return out;
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        it.next_if_eq(&'=');
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        out.push((key, conninfo_value(&mut it)));
    }
}

fn conninfo_value(it: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut value = String::new();
    let quoted = it.next_if_eq(&'\'').is_some();
    while let Some(c) = it.next() {
        match c {
            '\\' => value.extend(it.next()),
            '\'' if quoted => break,
            c if c.is_whitespace() && !quoted => break,
            c => value.push(c),
        }
    }
    value
}

fn default_socket_dir() -> PathBuf {
    // Debian's libpq is built with /var/run/postgresql; upstream's default is /tmp.
    let debian = PathBuf::from("/var/run/postgresql");
    if debian.is_dir() {
        debian
    } else {
        PathBuf::from("/tmp")
    }
}

/// The effective OS user's name (libpq's default user).
pub(crate) fn os_user_name() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
    }
}

/// Find a password in a pgpass file. Lines are host:port:database:user:password with
/// `*` wildcards and `\` escapes. As in libpq, a Unix-socket host matches
/// "localhost", and a file readable by group or others is ignored.
pub(crate) fn pgpass_lookup(file: &Path, host: &Host, port: u16, database: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access and is ignored: chmod 0600 {}",
            file.display(),
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host_name = match host {
        Host::Tcp(h) => h.clone(),
        Host::Unix(_) => "localhost".to_string(),
    };
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&fields[0], &host_name) && m(&fields[1], &port) && m(&fields[2], database) && m(&fields[3], user) {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

// Invariant: `out` starts with one field and only grows, so it has a last one.
#[allow(clippy::expect_used)]
fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("never empty").push(n);
                }
            }
            ':' => out.push(String::new()),
            c => out.last_mut().expect("never empty").push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn key_value_string_and_uri() {
        let p = ConnParams::resolve_with("host=db1 port=6543 user=backup dbname=x", &env_of(&[])).unwrap();
        assert_eq!((p.host, p.port, p.user.as_str()), (Host::Tcp("db1".into()), 6543, "backup"));
        let p = ConnParams::resolve_with("postgresql://u:pw@h2:7000/db", &env_of(&[])).unwrap();
        assert_eq!((p.host, p.port, p.user.as_str()), (Host::Tcp("h2".into()), 7000, "u"));
        assert_eq!(p.password.unwrap().expose(), "pw");
        let p = ConnParams::resolve_with("host=/tmp/sock", &env_of(&[])).unwrap();
        assert_eq!(p.host, Host::Unix("/tmp/sock".into()));
    }

    #[test]
    fn environment_fills_gaps_but_string_wins() {
        let env = env_of(&[("PGHOST", "/run/pg"), ("PGPORT", "5444"), ("PGUSER", "envuser"), ("PGPASSWORD", "envpw")]);
        let p = ConnParams::resolve_with("", &env).unwrap();
        assert_eq!((p.host, p.port, p.user.as_str()), (Host::Unix("/run/pg".into()), 5444, "envuser"));
        assert_eq!(p.password.unwrap().expose(), "envpw");
        let p = ConnParams::resolve_with("port=1 user=flag", &env).unwrap();
        assert_eq!((p.port, p.user.as_str()), (1, "flag"));
        let p = ConnParams::resolve_with("sslmode=require host=db", &env_of(&[])).unwrap();
        assert_eq!(p.tls.mode, super::super::tls::SslMode::Require);
    }

    /// TLS keys are taken out before tokio-postgres (which refuses them) sees the
    /// string; quoting and URIs as libpq has them.
    #[test]
    fn tls_keys_in_strings_and_uris() {
        use super::super::tls::{ChannelBindingMode, RootCert, SslMode};
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my ca.crt");
        std::fs::write(&ca, "").unwrap();
        let s = format!(
            "host=db user='o\\'brien' sslmode=verify-full sslrootcert='{}' channel_binding=require",
            ca.display()
        );
        let p = ConnParams::resolve_with(&s, &env_of(&[])).unwrap();
        assert_eq!((p.user.as_str(), p.tls.mode), ("o'brien", SslMode::VerifyFull));
        assert_eq!(p.tls.root_cert, Some(RootCert::File(ca.clone())));
        assert_eq!(p.tls.channel_binding, ChannelBindingMode::Require);
        let uri = "postgresql://u@db:5433/postgres?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.crt&application_name=x";
        let p = ConnParams::resolve_with(uri, &env_of(&[])).unwrap();
        assert_eq!((p.port, p.tls.mode, p.application_name.as_str()), (5433, SslMode::VerifyCa, "x"));
        assert_eq!(p.tls.root_cert, Some(RootCert::File("/etc/ca.crt".into())));
        // Environment and libpq's defaults: prefer; require with a root file is verify-ca.
        assert_eq!(ConnParams::resolve_with("host=db", &env_of(&[])).unwrap().tls.mode, SslMode::Prefer);
        let env = env_of(&[("PGSSLMODE", "require"), ("PGSSLROOTCERT", ca.to_str().unwrap())]);
        assert_eq!(ConnParams::resolve_with("host=db", &env).unwrap().tls.mode, SslMode::VerifyCa);
        // Refused: unknown modes, system roots without verify-full, bad versions.
        for bad in [
            "sslmode=maybe",
            "sslmode=require sslrootcert=system",
            "ssl_min_protocol_version=SSLv3",
            "channel_binding=yes",
        ] {
            assert!(ConnParams::resolve_with(&format!("host=db {bad}"), &env_of(&[])).is_err(), "{bad}");
        }
        // Regression (issue 15 review): a '?' in the password moved the query, and
        // sslmode=require was dropped (prefer); '+' in a path became a space.
        let uri = "postgresql://backup:s3cr?t@db/postgres?sslmode=require&sslrootcert=/etc/ca+db.pem";
        let p = ConnParams::resolve_with(uri, &env_of(&[])).unwrap();
        assert_eq!(p.password.as_ref().map(|s| s.expose().to_string()).as_deref(), Some("s3cr?t"));
        assert_eq!(p.tls.root_cert, Some(RootCert::File("/etc/ca+db.pem".into())));
        assert_eq!(p.tls.mode, SslMode::Require, "no root file: require stays require");
        let p =
            ConnParams::resolve_with("host=db sslmode=verify-full sslrootcert=system sslsni=0", &env_of(&[])).unwrap();
        assert_eq!((p.tls.root_cert, p.tls.sni), (Some(RootCert::System), false));
    }

    #[test]
    fn pgpass_matching() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(
            &f,
            "# comment\nother:5432:*:bob:nope\nlocalhost:5433:replication:bob:s\\:ecret\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let unix = Host::Unix("/tmp".into());
        assert_eq!(pgpass_lookup(&f, &unix, 5433, "replication", "bob").as_deref(), Some("s:ecret"));
        assert_eq!(pgpass_lookup(&f, &Host::Tcp("db".into()), 1, "replication", "eve").as_deref(), Some("fallback"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pgpass_lookup(&f, &unix, 5433, "replication", "bob"), None, "world-readable file ignored");
    }
}
