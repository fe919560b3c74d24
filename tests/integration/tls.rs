//! Issue 15: TLS on the replication and SQL connections with libpq's sslmode
//! semantics, client certificates and SCRAM channel binding, against a real
//! PostgreSQL with `ssl = on` and certificates made here with openssl.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::Pgcairn;
use crate::support::pg::PASSWORD;
use crate::support::{chown_to_postgres, Cluster, PgVersion, TestDir};

/// A CA, a second (wrong) CA, a server certificate for DNS name `localhost` only,
/// and a client certificate for role `cert_user`.
struct Certs {
    dir: TestDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Certs {
    fn make() -> Certs {
        let dir = TestDir::new("certs");
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "ca2"] {
            let (key, crt, subj) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=pgcairn test {ca}"));
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &crt];
            args.extend(ec);
            openssl(d, &args);
        }
        std::fs::write(d.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        // Extensions make version 3 certificates (webpki refuses version 1).
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for name in ["server", "client"] {
            let subj = if name == "server" { "/CN=localhost" } else { "/CN=cert_user" };
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            let mut args = vec!["req", "-subj", subj, "-keyout", &key, "-out", &csr];
            args.extend(ec);
            openssl(d, &args);
            let mut sign = vec!["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key"];
            sign.extend(["-CAcreateserial", "-days", "2", "-out", &crt, "-extfile", &ext]);
            openssl(d, &sign);
        }
        for key in ["server.key", "client.key"] {
            std::fs::set_permissions(d.join(key), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A PostgreSQL 15 cluster with TLS on; roles for client certificates and a
/// TLS-only role; the harness's other lines (trust for postgres, scram_user) stay.
fn tls_cluster(certs: &Certs) -> Cluster {
    let cluster = Cluster::init(PgVersion::V15);
    for f in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(certs.path(f), cluster.data_dir().join(f)).unwrap();
    }
    chown_to_postgres(cluster.data_dir());
    let hba = cluster.data_dir().join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).unwrap();
    text.push_str("hostssl replication cert_user 127.0.0.1/32 cert\nhostssl replication ssl_only 127.0.0.1/32 trust\n");
    std::fs::write(&hba, text).unwrap();
    cluster.psql(
        "CREATE ROLE cert_user LOGIN REPLICATION; CREATE ROLE ssl_only LOGIN REPLICATION;
         ALTER SYSTEM SET ssl = on; ALTER SYSTEM SET ssl_cert_file = 'server.crt';
         ALTER SYSTEM SET ssl_key_file = 'server.key'; ALTER SYSTEM SET ssl_ca_file = 'ca.crt';
         SELECT pg_reload_conf();",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    cluster
}

fn pg(cluster: &Cluster, host: &str, user: &str, tls: &str) -> String {
    format!("--pg=host={host} port={} user={user} {tls}", cluster.port())
}

#[test]
fn tls_modes_certificates_and_channel_binding() {
    let certs = Certs::make();
    let cluster = tls_cluster(&certs);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path()).with_env("PGPASSWORD", PASSWORD);
    let root = |ca: &str| format!("sslrootcert={}", certs.path(ca).display());

    // require: encrypted, certificate not checked (no root certificate given).
    let out = p.run(&["--log-level=info", "stanza-create", &pg(&cluster, "127.0.0.1", "postgres", "sslmode=require")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("TLS with") && err.contains("sslmode=require"), "{err}");

    // verify-ca with another CA: refused, saying why.
    let (code, err) = p.fails(&[
        "stanza-create",
        &pg(&cluster, "localhost", "postgres", &format!("sslmode=verify-ca {}", root("ca2.crt"))),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not signed by a CA in sslrootcert"), "{err}");
    // verify-ca with the right CA passes even by IP (the name is not checked) ...
    p.ok(&["stanza-create", &pg(&cluster, "127.0.0.1", "postgres", &format!("sslmode=verify-ca {}", root("ca.crt")))]);
    // ... verify-full by IP fails naming the host and the certificate's names.
    let (code, err) = p.fails(&[
        "stanza-create",
        &pg(&cluster, "127.0.0.1", "postgres", &format!("sslmode=verify-full {}", root("ca.crt"))),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not valid for 127.0.0.1") && err.contains("localhost"), "{err}");
    // Regression (issue 21, item 13): the SQL connection of `check --archive-only`
    // said "error performing TLS handshake; check that PostgreSQL is running".
    let mismatch = pg(&cluster, "127.0.0.1", "postgres", &format!("sslmode=verify-full {}", root("ca.crt")));
    let out = p.run(&["check", "--archive-only", &mismatch]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not valid for 127.0.0.1") && !text.contains("PostgreSQL is running"), "{text}");

    // Client certificate authentication (hostssl ... cert); a key others can read is refused.
    let client = format!(
        "sslmode=verify-full {} sslcert={} sslkey={}",
        root("ca.crt"),
        certs.path("client.crt").display(),
        certs.path("client.key").display()
    );
    p.ok(&["stanza-create", &pg(&cluster, "localhost", "cert_user", &client)]);
    std::fs::set_permissions(certs.path("client.key"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = p.fails(&["stanza-create", &pg(&cluster, "localhost", "cert_user", &client)]);
    assert!(code == 3 && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(certs.path("client.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // A hostssl-only role: disable fails with pg_hba's message; allow retries with TLS.
    let (code, err) = p.fails(&["stanza-create", &pg(&cluster, "127.0.0.1", "ssl_only", "sslmode=disable")]);
    assert!(code == 6 && err.contains("no encryption"), "{err}");
    p.ok(&["stanza-create", &pg(&cluster, "127.0.0.1", "ssl_only", "sslmode=allow")]);

    // Channel binding: SCRAM-SHA-256-PLUS over TLS works; required against trust fails.
    let bound = format!("sslmode=verify-full {} channel_binding=require", root("ca.crt"));
    p.ok(&["stanza-create", &pg(&cluster, "localhost", "scram_user", &bound)]);
    let (code, err) = p.fails(&["stanza-create", &pg(&cluster, "localhost", "postgres", &bound)]);
    assert!(code == 3 && err.contains("channel_binding=require") && err.contains("without SCRAM"), "{err}");
    // The SQL connection (metrics reads pg_stat_archiver) binds the same way.
    let metrics = p.ok(&["metrics", &pg(&cluster, "localhost", "scram_user", &bound)]);
    assert!(metrics.contains("pgcairn_archiver_archived_total"), "{metrics}");

    // sslrootcert=system: the platform's store, which honours SSL_CERT_FILE as OpenSSL
    // does — our CA there is trusted, another CA there is not.
    let system = pg(&cluster, "localhost", "postgres", "sslmode=verify-full sslrootcert=system");
    let ca = certs.path("ca.crt").display().to_string();
    p.clone().with_env("SSL_CERT_FILE", &ca).ok(&["stanza-create", &system]);
    let ca2 = certs.path("ca2.crt").display().to_string();
    let (code, err) = p.clone().with_env("SSL_CERT_FILE", &ca2).fails(&["stanza-create", &system]);
    assert!(code == 3 && err.contains("not signed"), "{err}");

    // TLS 1.3 only, and md5 under channel_binding=require (refused: no SCRAM-PLUS).
    p.ok(&[
        "stanza-create",
        &pg(
            &cluster,
            "localhost",
            "postgres",
            &format!("sslmode=verify-full {} ssl_min_protocol_version=TLSv1.3", root("ca.crt")),
        ),
    ]);
    let (code, err) = p.fails(&["stanza-create", &pg(&cluster, "localhost", "md5_user", &bound)]);
    assert!(code == 3 && err.contains("channel_binding=require"), "{err}");
    revoked_server_is_refused(&p, &cluster, &certs);

    verify_full_backup_restores(&p, &cluster, &bound);
    common_name_without_san(&p, &cluster, &certs);
}

/// verify-full on a certificate without subjectAltName falls back to its Common Name
/// (libpq's rule): CN=localhost passes for localhost, not for another name.
fn common_name_without_san(p: &Pgcairn, cluster: &Cluster, certs: &Certs) {
    let d = certs.dir.path();
    std::fs::write(d.join("cn.ext"), "basicConstraints=CA:FALSE\n").unwrap();
    let mut req = vec!["req", "-subj", "/CN=localhost", "-keyout", "cn.key", "-out", "cn.csr"];
    req.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]);
    openssl(d, &req);
    openssl(
        d,
        &[
            "x509", "-req", "-in", "cn.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "2", "-out", "cn.crt",
            "-extfile", "cn.ext",
        ],
    );
    for (from, to) in [("cn.crt", "server.crt"), ("cn.key", "server.key")] {
        std::fs::copy(d.join(from), cluster.data_dir().join(to)).unwrap();
    }
    chown_to_postgres(cluster.data_dir());
    cluster.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let full = format!("sslmode=verify-full sslrootcert={}", certs.path("ca.crt").display());
    p.ok(&["stanza-create", &pg(cluster, "localhost", "postgres", &full)]);
    let (code, err) = p.fails(&["stanza-create", &pg(cluster, "127.0.0.1", "postgres", &full)]);
    assert!(code == 3 && err.contains("not valid for 127.0.0.1"), "{err}");
}

/// sslcrl: an empty CRL lets the server in; once its certificate is revoked, refused.
fn revoked_server_is_refused(p: &Pgcairn, cluster: &Cluster, certs: &Certs) {
    let d = certs.dir.path();
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n",
    )
    .unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("crlnumber"), "01\n").unwrap();
    let ca = ["-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"];
    let crl = |out: &str| {
        let mut args = vec!["ca", "-gencrl", "-out", out];
        args.extend(ca);
        openssl(d, &args);
    };
    crl("empty.crl");
    let with = |file: &str| {
        let tls = format!(
            "sslmode=verify-full sslrootcert={} sslcrl={}",
            certs.path("ca.crt").display(),
            certs.path(file).display()
        );
        pg(cluster, "localhost", "postgres", &tls)
    };
    p.ok(&["stanza-create", &with("empty.crl")]);
    let mut revoke = vec!["ca", "-revoke", "server.crt"];
    revoke.extend(ca);
    openssl(d, &revoke);
    crl("revoked.crl");
    let (code, err) = p.fails(&["stanza-create", &with("revoked.crl")]);
    assert!(code == 3 && err.to_lowercase().contains("revoked"), "{err}");
}

/// verify-full with channel binding: a backup over it restores with the same data.
fn verify_full_backup_restores(p: &Pgcairn, cluster: &Cluster, tls: &str) {
    cluster.psql("CREATE TABLE over_tls AS SELECT g FROM generate_series(1, 5000) g");
    let out = p.ok(&["backup", "--start-fast", &pg(cluster, "localhost", "scram_user", tls)]);
    let label = out.lines().last().unwrap().trim().to_string();
    let target = TestDir::new("restore");
    let data = target.path().join("data");
    p.ok(&["restore", &format!("--pg-data={}", data.display()), "--type=none", &format!("--set={label}")]);
    let restored = Cluster::start_restored(PgVersion::V15, &data);
    assert_eq!(restored.psql("SELECT count(*) FROM over_tls"), "5000");
}

/// require against a server without TLS fails at once; prefer falls back to plain.
#[test]
fn tls_required_but_not_offered() {
    let cluster = Cluster::init(PgVersion::V15);
    let repo = TestDir::new("repo");
    let p = Pgcairn::local(repo.path());
    let (code, err) = p.fails(&["stanza-create", &pg(&cluster, "127.0.0.1", "postgres", "sslmode=require")]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not accept TLS connections") && err.contains("ssl = on"), "{err}");
    p.ok(&["stanza-create", &pg(&cluster, "127.0.0.1", "postgres", "sslmode=prefer")]);
    let (code, err) = p.fails(&[
        "stanza-create",
        &pg(&cluster, "127.0.0.1", "postgres", "sslmode=verify-full sslrootcert=/nonexistent/ca.crt"),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("sslrootcert /nonexistent/ca.crt"), "{err}");
}

/// Least privilege: a role with LOGIN REPLICATION only takes a backup that restores;
/// check names the GRANT it lacks, then passes with it; metrics needs nothing more.
#[test]
fn minimal_role_backs_up_and_check_names_the_grant() {
    let a = crate::archive::Archiving::new(PgVersion::V15, "");
    let hba = a.cluster.data_dir().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local replication pgcairn trust\nlocal all pgcairn trust\n{text}")).unwrap();
    a.cluster.psql("CREATE ROLE pgcairn LOGIN REPLICATION; SELECT pg_reload_conf();");
    std::thread::sleep(std::time::Duration::from_millis(300));
    a.cluster.psql("CREATE TABLE least AS SELECT g FROM generate_series(1, 3000) g");
    let pg = format!("--pg=host={} port={} user=pgcairn", a.cluster.socket_dir().display(), a.cluster.port());

    let (code, err) = a.p.fails(&["check", &pg]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("permission denied") && err.contains("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO pgcairn"),
        "{err}"
    );
    a.cluster.psql("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO pgcairn");
    assert!(a.p.ok(&["check", &pg]).contains("check ok"));
    let (code, err) = a.p.fails(&["check", "--restore-point", &pg]);
    assert!(code == 7 && err.contains("pg_create_restore_point"), "{err}");
    assert!(a.p.ok(&["metrics", &pg]).contains("pgcairn_archiver_archived_total"));

    let out = a.p.ok(&["backup", "--start-fast", &pg]);
    let label = out.lines().last().unwrap().trim().to_string();
    let target = TestDir::new("restore");
    let data = target.path().join("data");
    let key = format!("--repo-key-file={}", a.key.display());
    a.p.ok(&[
        "restore",
        &format!("--pg-data={}", data.display()),
        &format!("--set={label}"),
        "--type=immediate",
        "--target-action=promote",
        &key,
    ]);
    let restored = Cluster::start_restored(PgVersion::V15, &data);
    crate::cli::wait_promoted(&restored);
    assert_eq!(restored.psql("SELECT count(*) FROM least"), "3000");
}
