//! The storage conformance suite against a real S3-compatible server.

use pgcairn::testing::ObjectStorage;
use pgcairn::S3Settings;
use pgcairn::Secret;
use pgcairn::Storage;

use crate::support::S3Server;

fn settings(s3: &S3Server) -> S3Settings {
    S3Settings {
        endpoint: Some(s3.endpoint()),
        region: Some(s3.region().into()),
        credentials: Some((s3.access_key().into(), Secret::new(s3.secret_key()))),
        // s3s-fs serves plain HTTP on 127.0.0.1.
        allow_http: true,
        ca_file: None,
    }
}

/// Issue 15: a plain http:// endpoint is refused unless allowed, naming the fix.
#[test]
fn plain_http_endpoint_needs_allowing() {
    let s = S3Settings { endpoint: Some("http://127.0.0.1:9".into()), allow_http: false, ..Default::default() };
    if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return assert!(ObjectStorage::s3("b", "p", &s).is_ok());
    }
    let err = ObjectStorage::s3("b", "p", &s).unwrap_err().to_string();
    assert!(err.contains("plain HTTP") && err.contains("repo-s3-allow-http"), "{err}");
    let allowed = S3Settings { allow_http: true, ..s };
    assert!(ObjectStorage::s3("b", "p", &allowed).is_ok());
}

#[tokio::test]
async fn s3_backend_meets_the_storage_contract() {
    let s3 = S3Server::start();
    let storage = ObjectStorage::s3(s3.bucket(), "conformance/prefix", &settings(&s3)).unwrap();
    pgcairn::testing::conformance::run(&storage).await;
    // Keys land under the prefix, as files the server stores.
    assert!(s3.dir().join(s3.bucket()).join("conformance/prefix/a/b/obj1").is_file());
}

#[tokio::test]
async fn s3_wrong_credentials_are_a_permanent_error() {
    let s3 = S3Server::start();
    let mut bad = settings(&s3);
    bad.credentials = Some((s3.access_key().into(), Secret::new("wrong-secret")));
    let storage = ObjectStorage::s3(s3.bucket(), "x", &bad).unwrap();
    let err = storage.get("config").await.unwrap_err();
    assert!(err.to_string().contains("config"), "{err}");
    assert_ne!(err.storage_kind(), Some(pgcairn::StorageErrorKind::NotFound), "{err}");
}

/// Sequential create-only semantics hold on s3s-fs (checked in the suite above);
/// concurrent ones are a property of the server. Record what this server does so a
/// change in it is noticed.
#[tokio::test]
async fn s3s_fs_concurrent_create_only_puts() {
    let s3 = S3Server::start();
    let storage = ObjectStorage::s3(s3.bucket(), "race", &settings(&s3)).unwrap();
    let puts = (0..8u8).map(|i| storage.put_new("k", bytes::Bytes::from(vec![i; 1000])));
    let results = futures::future::join_all(puts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert!(winners >= 1, "no put succeeded: {results:?}");
    let stored = storage.get("k").await.unwrap();
    assert!(stored.len() == 1000 && stored.iter().all(|b| *b == stored[0]), "stored object is a mix of writers");
    eprintln!("s3s-fs: {winners} of 8 concurrent create-only puts reported success");
}

/// Issue 15: an https endpoint whose certificate does not verify fails at once
/// (not retried as a passing fault), saying so and naming repo-s3-ca-file.
#[test]
fn untrusted_s3_certificate_is_a_clear_permanent_error() {
    let dir = crate::support::TestDir::new("s3tls");
    let d = dir.path();
    let out = std::process::Command::new("openssl")
        .current_dir(d)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout", "k.pem", "-out", "c.pem"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = crate::support::free_port();
    let mut server = std::process::Command::new("openssl")
        .current_dir(d)
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string(), "-cert", "c.pem", "-key", "k.pem"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let p = crate::cli::Pgcairn {
        stanza: "main".into(),
        all_stanzas: false,
        repo: "s3://bucket/prefix".into(),
        env: vec![],
    }
    .with_env("AWS_ACCESS_KEY_ID", "id")
    .with_env("AWS_SECRET_ACCESS_KEY", "secret")
    .with_env("PGCAIRN_REPO_PASSPHRASE", "x");
    let endpoint = format!("--repo-s3-endpoint=https://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let (code, err) = p.fails(&["info", &endpoint]);
    assert!(err.contains("certificate does not verify") && err.contains("repo-s3-ca-file"), "{err}");
    assert_eq!(code, 10, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "retried as transient: {:?}", started.elapsed());
    // Trusting its CA, TLS passes (what follows is not S3, so another error).
    let (_, err) = p.fails(&["info", &endpoint, &format!("--repo-s3-ca-file={}", d.join("c.pem").display())]);
    assert!(!err.contains("certificate does not verify"), "{err}");
    server.kill().ok();
    server.wait().ok();
}
