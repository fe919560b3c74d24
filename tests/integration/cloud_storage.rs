//! Azure Blob Storage and Google Cloud Storage: the storage contract against their
//! emulators (Azurite, fake-gcs-server), and whole backups through each.

use pgcairn::testing::ObjectStorage;
use pgcairn::{AzureKeyType, AzureSettings, GcsKeyType, GcsSettings, Secret, Storage, StorageErrorKind};

use crate::support::{cloud::AZURITE_ACCOUNT, cloud::AZURITE_KEY, Azurite, FakeGcs};

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
