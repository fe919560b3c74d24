//! Azure Blob Storage and Google Cloud Storage: the storage contract against their
//! emulators (Azurite, fake-gcs-server), and whole backups through each.

use pgcairn::testing::ObjectStorage;
use pgcairn::{AzureKeyType, AzureSettings, GcsKeyType, GcsSettings, Secret, Storage, StorageErrorKind};

use std::path::Path;
use std::time::Duration;

use crate::archive::{archive_push_bin, wait_archived};
use crate::cli::{passphrase_env, wait_promoted, Pgcairn};
use crate::support::cloud::{AZURITE_ACCOUNT, AZURITE_KEY, MOTO_BUCKET};
use crate::support::{chown_to_postgres, private_file, Cluster, PgVersion, TestDir};
use crate::support::{Azurite, FakeGcs, MotoS3};

fn azure_settings(azurite: &Azurite) -> AzureSettings {
    AzureSettings {
        account: Some(AZURITE_ACCOUNT.into()),
        key_type: AzureKeyType::Shared,
        key: Some(Secret::new(AZURITE_KEY)),
        endpoint: Some(azurite.endpoint()),
        allow_http: true,
    }
}

fn gcs_settings(gcs: &FakeGcs) -> GcsSettings {
    GcsSettings {
        key_type: GcsKeyType::Token,
        key: Some(Secret::new("emulator-token")),
        endpoint: Some(gcs.endpoint()),
        allow_http: true,
    }
}

#[tokio::test]
async fn azure_backend_meets_the_storage_contract() {
    let azurite = Azurite::start();
    let storage = ObjectStorage::azure(azurite.container(), "conformance/prefix", &azure_settings(&azurite)).unwrap();
    pgcairn::testing::conformance::run(&storage).await;
    pgcairn::testing::conformance::run_concurrent_create(&storage).await;
}

#[tokio::test]
async fn gcs_backend_meets_the_storage_contract() {
    let gcs = FakeGcs::start();
    let storage = ObjectStorage::gcs(gcs.bucket(), "conformance/prefix", &gcs_settings(&gcs)).unwrap();
    pgcairn::testing::conformance::run(&storage).await;
    pgcairn::testing::conformance::run_concurrent_create(&storage).await;
}

/// A wrong account key is refused by the server: a permanent error naming the
/// object, never taken for a missing one.
#[tokio::test]
async fn azure_wrong_key_is_not_absent() {
    let azurite = Azurite::start();
    let mut bad = azure_settings(&azurite);
    bad.key = Some(Secret::new("d3Jvbmcta2V5"));
    let storage = ObjectStorage::azure(azurite.container(), "x", &bad).unwrap();
    let err = storage.get("config").await.unwrap_err();
    assert!(err.to_string().contains("config"), "{err}");
    assert_ne!(err.storage_kind(), Some(StorageErrorKind::NotFound), "{err}");
}

/// How a test reaches one cloud repository: its URL and the config-file lines that
/// go with it (what an operator writes), secret files already in place.
struct CloudRepo {
    url: String,
    config: String,
    /// A secret that must appear in no file pgcairn writes into the data directory.
    secret: String,
}

fn azurite_repo(azurite: &Azurite, dir: &Path) -> CloudRepo {
    let key = dir.join("azure.key");
    private_file(&key, &format!("{AZURITE_KEY}\n"));
    let config = format!(
        "repo-azure-account = \"{AZURITE_ACCOUNT}\"\nrepo-azure-key-file = \"{}\"\nrepo-azure-endpoint = \"{}\"\nrepo-azure-allow-http = true\n",
        key.display(),
        azurite.endpoint()
    );
    CloudRepo { url: format!("az://{}/seed", azurite.container()), config, secret: AZURITE_KEY.into() }
}

fn gcs_repo(gcs: &FakeGcs, dir: &Path) -> CloudRepo {
    let token = "emulator-token-for-the-seed-drill";
    let key = dir.join("gcs.token");
    private_file(&key, token);
    let config = format!(
        "repo-gcs-key-type = \"token\"\nrepo-gcs-key = \"{}\"\nrepo-gcs-endpoint = \"{}\"\nrepo-gcs-allow-http = true\n",
        key.display(),
        gcs.endpoint()
    );
    CloudRepo { url: format!("gs://{}/seed", gcs.bucket()), config, secret: token.into() }
}

/// The seed drill on a cloud repository configured as an operator would: one config
/// file that the server's archive-push and archive-get read too. Archive into it,
/// back up, 1000 rows 'test', note the time, 1000 rows 'after', restore to the noted
/// time and recover through archive-get: 1000 / 0.
fn seed_drill(version: PgVersion, repo: CloudRepo, dir: &Path) {
    let cluster = Cluster::init(version);
    let config = dir.join("pgcairn.toml");
    let key = dir.join("repo.key");
    private_file(&config, &format!("repo = \"{}\"\n{}", repo.url, repo.config));
    let p = Pgcairn { stanza: "main".into(), all_stanzas: false, repo: String::new(), env: vec![passphrase_env()] }
        .with_env("PGCAIRN_CONFIG", &config.display().to_string());
    let pg = format!("--pg={}", cluster.conninfo());
    p.ok(&["stanza-create", &pg]);
    p.ok(&["key-file", &format!("--output={}", key.display())]);
    chown_to_postgres(&key);
    private_file(&config, &format!("repo = \"{}\"\nrepo-key-file = \"{}\"\n{}", repo.url, key.display(), repo.config));
    let push = format!("{} --config={} --stanza=main %p", archive_push_bin().display(), config.display());
    cluster.psql(&format!("ALTER SYSTEM SET archive_command = '{push}'; ALTER SYSTEM SET archive_mode = on;"));
    cluster.stop();
    cluster.start();

    let label = p.backup(&cluster.conninfo());
    cluster.psql("CREATE TABLE seed (v text); INSERT INTO seed SELECT 'test' FROM generate_series(1, 1000);");
    std::thread::sleep(Duration::from_millis(1100));
    let target = cluster.psql("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    cluster.psql("INSERT INTO seed SELECT 'after' FROM generate_series(1, 1000); SELECT pg_switch_wal();");
    wait_archived(&cluster);

    let data = dir.join("restored");
    let out = p.ok(&[
        "restore",
        &format!("--pg-data={}", data.display()),
        "--type=time",
        &format!("--target={target}"),
        "--target-action=promote",
    ]);
    assert!(out.contains(&label), "{out}");
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains(&repo.secret), "a secret in the recovery settings: {auto}");
    std::fs::write(data.join("postgresql.auto.conf"), auto + "\narchive_mode = off\n").unwrap();
    let restored = Cluster::start_restored(version, &data);
    wait_promoted(&restored);
    let counts =
        restored.psql("SELECT count(*) FILTER (WHERE v = 'test'), count(*) FILTER (WHERE v = 'after') FROM seed");
    assert_eq!(counts, "1000|0", "{}", restored.server_log());
}

#[test]
fn seed_drill_on_azure() {
    let azurite = Azurite::start();
    let dir = TestDir::new("azure-seed");
    seed_drill(PgVersion::V17, azurite_repo(&azurite, dir.path()), dir.path());
}

#[test]
fn seed_drill_on_gcs() {
    let gcs = FakeGcs::start();
    let dir = TestDir::new("gcs-seed");
    seed_drill(PgVersion::V15, gcs_repo(&gcs, dir.path()), dir.path());
}

fn moto_settings(moto: &MotoS3) -> pgcairn::S3Settings {
    pgcairn::S3Settings {
        endpoint: Some(moto.endpoint()),
        region: Some("us-east-1".into()),
        credentials: Some(("moto-key".into(), Secret::new("moto-secret"))),
        allow_http: true,
        ca_file: None,
    }
}

/// moto is the second S3 implementation: the contract holds on a bucket under Object
/// Lock (versioned, every object retained), concurrent create-only puts included.
#[tokio::test]
async fn s3_backend_meets_the_storage_contract_under_object_lock() {
    let moto = MotoS3::start();
    let storage = ObjectStorage::s3(MOTO_BUCKET, "conformance", &moto_settings(&moto)).unwrap();
    pgcairn::testing::conformance::run(&storage).await;
    pgcairn::testing::conformance::run_concurrent_create(&storage).await;
}

/// Keys under `prefix` whose newest version is a delete marker, and how many object
/// versions (not markers) the bucket keeps under it.
fn versions(moto: &MotoS3, prefix: &str) -> (Vec<String>, usize) {
    let out = moto.boto(&format!(
        "p = s3.get_paginator('list_object_versions')\n\
         kept, hidden = 0, []\n\
         for page in p.paginate(Bucket={MOTO_BUCKET:?}, Prefix={prefix:?}):\n\
         \x20   kept += len(page.get('Versions', []))\n\
         \x20   hidden += [d['Key'] for d in page.get('DeleteMarkers', []) if d['IsLatest']]\n\
         print(kept)\n\
         for k in hidden: print(k)"
    ));
    let mut lines = out.lines();
    let kept = lines.next().unwrap().parse().unwrap();
    (lines.map(str::to_string).collect(), kept)
}

/// Object Lock for real (issue 23, item 4), on moto's S3 with the bucket's default
/// retention (GOVERNANCE, 1 day):
/// - pgcairn works unchanged: backups, expire (its deletes become delete markers on a
///   versioned bucket; S3 refuses only the deletion of a retained *version*, which
///   pgcairn never asks for), verify;
/// - what expire removed is still in the bucket, and pgcairn's own credentials cannot
///   destroy it: deleting a retained version is refused;
/// - after an attacker with those credentials deletes every object, removing the delete
///   markers brings the repository back whole: verify passes and the expired backup
///   restores (the ransomware drill the setup in docs/operations.md is for).
///
/// Regression (issue 23, item 4): the first run of this test failed at stanza-create —
/// a bucket under Object Lock refuses every put without Content-MD5 or a checksum
/// header (MissingUploadObjectWithObjectLockHeaders), and puts carried neither. S3
/// puts now carry x-amz-checksum-sha256.
#[test]
fn object_lock_keeps_what_expire_and_an_attacker_delete() {
    let moto = MotoS3::start();
    let cluster = Cluster::init(PgVersion::V15);
    let mut p = Pgcairn {
        stanza: "main".into(),
        all_stanzas: false,
        repo: format!("s3://{MOTO_BUCKET}/locked"),
        env: moto.aws_env(),
    };
    p.env.extend([passphrase_env(), ("PGCAIRN_ARCHIVE_COPY".into(), "true".into())]);
    let pg = format!("--pg={}", cluster.conninfo());
    p.ok(&["stanza-create", &pg]);
    cluster.psql("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000);");
    let first = p.backup(&cluster.conninfo());
    cluster.psql("INSERT INTO t SELECT generate_series(1, 1000);");
    let second = p.backup(&cluster.conninfo());
    p.ok(&["expire", "--retention-full=1"]);
    let info: serde_json::Value = serde_json::from_str(&p.ok(&["info", "--output=json"])).unwrap();
    let labels: Vec<&str> = info["backups"].as_array().unwrap().iter().map(|b| b["label"].as_str().unwrap()).collect();
    assert_eq!(labels, [second.as_str()], "{info}");
    let (hidden, _) = versions(&moto, "locked/main/");
    assert!(hidden.iter().any(|k| k.contains(&first)), "expire left no delete marker for {first}: {hidden:?}");

    // pgcairn's credentials cannot destroy a retained version.
    let refused = moto.boto(&format!(
        "v = s3.list_object_versions(Bucket={MOTO_BUCKET:?}, Prefix='locked/main/config')['Versions'][0]\n\
         try:\n    s3.delete_object(Bucket={MOTO_BUCKET:?}, Key=v['Key'], VersionId=v['VersionId']); print('deleted')\n\
         except Exception as e:\n    print('refused', e)"
    ));
    assert!(refused.starts_with("refused") && refused.contains("AccessDenied"), "{refused}");

    // An attacker deletes everything; restore has nothing to read.
    moto.boto(&format!(
        "for page in s3.get_paginator('list_objects_v2').paginate(Bucket={MOTO_BUCKET:?}, Prefix='locked/'):\n\
         \x20   for o in page.get('Contents', []): s3.delete_object(Bucket={MOTO_BUCKET:?}, Key=o['Key'])"
    ));
    let (code, err) = p.fails(&["info"]);
    assert_ne!(code, 0, "{err}");
    // The owner removes the delete markers: every object is back.
    moto.boto(&format!(
        "for page in s3.get_paginator('list_object_versions').paginate(Bucket={MOTO_BUCKET:?}, Prefix='locked/'):\n\
         \x20   for d in page.get('DeleteMarkers', []):\n\
         \x20       if d['IsLatest']: s3.delete_object(Bucket={MOTO_BUCKET:?}, Key=d['Key'], VersionId=d['VersionId'])"
    ));
    let (hidden, kept) = versions(&moto, "locked/");
    assert!(hidden.is_empty() && kept > 0, "{hidden:?}");
    let verify: serde_json::Value = serde_json::from_str(&p.ok(&["verify", "--output=json"])).unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    let dir = TestDir::new("locked-restore");
    let data = dir.path().join("data");
    p.ok(&["restore", &format!("--pg-data={}", data.display()), &format!("--set={first}"), "--type=none"]);
    let restored = Cluster::start_restored(PgVersion::V15, &data);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "1000");
}
