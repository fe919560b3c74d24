//! Google Cloud Storage backend on object_store: `gs://BUCKET/PREFIX`. Credentials as
//! GCS users expect them: a service-account key file, or (`auto`, the default)
//! Application Default Credentials — GOOGLE_APPLICATION_CREDENTIALS, else the
//! metadata server on Google Cloud; `token` takes a fixed OAuth2 access token (for
//! emulators, or a token minted elsewhere). Create-only writes are puts with
//! `x-goog-if-generation-match: 0`.

use std::sync::Arc;

use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};
use object_store::StaticCredentialProvider;

use super::object::{Cloud, ObjectStorage};
use crate::crypto::Secret;
use crate::error::{Error, Result};

/// How pgcairn authenticates to GCS (`repo-gcs-key-type`, as pgBackRest names it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GcsKeyType {
    /// Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud's user
    /// credentials, else the metadata server.
    #[default]
    Auto,
    /// A service-account key (JSON), from `repo-gcs-key`.
    Service,
    /// An OAuth2 access token, from `repo-gcs-key`.
    Token,
}

/// The GCS settings of a repository (config keys `repo-gcs-*`).
#[derive(Debug, Clone, Default)]
pub struct GcsSettings {
    /// How to authenticate.
    pub key_type: GcsKeyType,
    /// The service-account key (JSON) or the token: the contents of `repo-gcs-key`.
    pub key: Option<Secret>,
    /// The storage service's base URL (`repo-gcs-endpoint`): private endpoints, emulators.
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint (`repo-gcs-allow-http`).
    pub allow_http: bool,
}

impl ObjectStorage {
    /// A GCS bucket below `prefix`; fails on settings that cannot work.
    pub fn gcs(bucket: &str, prefix: &str, settings: &GcsSettings) -> Result<Self> {
        let mut b = match settings.key_type {
            GcsKeyType::Auto => GoogleCloudStorageBuilder::from_env(),
            _ => GoogleCloudStorageBuilder::new(),
        };
        b = b.with_bucket_name(bucket);
        if let Some(ep) = &settings.endpoint {
            let http = Cloud::Gcs.plain_http(ep, settings.allow_http)?;
            b = b.with_client_options(object_store::ClientOptions::new().with_allow_http(http));
        }
        b = with_key(b, settings)?;
        let store = b.build().map_err(|e| {
            Error::setting(
                format!("cannot set up gcs repository gs://{bucket}/{prefix}: {e}"),
                "check repo-gcs-key-type and repo-gcs-key (a service-account key is the JSON file the console gives)",
            )
        })?;
        Ok(Self::new(Arc::new(store), Cloud::Gcs, bucket, prefix))
    }
}

/// object_store takes a GCS endpoint only inside a service-account key
/// (`gcs_base_url`); with a token, that key carries only the endpoint.
fn with_key(b: GoogleCloudStorageBuilder, settings: &GcsSettings) -> Result<GoogleCloudStorageBuilder> {
    let key = settings.key.as_ref().map(|k| k.expose().trim().to_string()).filter(|k| !k.is_empty());
    match (settings.key_type, key) {
        (GcsKeyType::Auto, _) if settings.endpoint.is_some() => Err(Error::setting(
            "repo-gcs-endpoint needs repo-gcs-key-type = service or token",
            "give the service-account key (or a token) with repo-gcs-key",
        )),
        (GcsKeyType::Auto, _) => Ok(b),
        (GcsKeyType::Service, Some(json)) => {
            let mut key: serde_json::Value = serde_json::from_str(&json).map_err(|e| bad_service_key(&e.to_string()))?;
            let Some(fields) = key.as_object_mut() else { return Err(bad_service_key("not a JSON object")) };
            if let Some(ep) = &settings.endpoint {
                fields.insert("gcs_base_url".into(), ep.trim_end_matches('/').into());
            }
            Ok(b.with_service_account_key(key.to_string()))
        }
        (GcsKeyType::Token, Some(token)) => {
            let credential = GcpCredential { bearer: token };
            let b = b.with_credentials(Arc::new(StaticCredentialProvider::new(credential)));
            let Some(ep) = &settings.endpoint else { return Ok(b) };
            let endpoint_only = serde_json::json!({
                "gcs_base_url": ep.trim_end_matches('/'), "disable_oauth": true,
                "private_key": "", "private_key_id": "", "client_email": "",
            });
            Ok(b.with_service_account_key(endpoint_only.to_string()))
        }
        (kind, None) => Err(Error::setting(
            format!(
                "repo-gcs-key-type = {} needs repo-gcs-key, which is not set or empty",
                if kind == GcsKeyType::Token { "token" } else { "service" }
            ),
            "set repo-gcs-key to the service-account key file (service) or a file holding the token (token), readable only by pgcairn's user",
        )),
    }
}

fn bad_service_key(why: &str) -> Error {
    Error::setting(
        format!("repo-gcs-key is not a service-account key: {why}"),
        "use the JSON key file created for the service account (IAM → Service accounts → Keys)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_settings_that_cannot_work_are_named() {
        let service = GcsSettings { key_type: GcsKeyType::Service, ..Default::default() };
        let err = ObjectStorage::gcs("b", "p", &service).unwrap_err().to_string();
        assert!(err.contains("repo-gcs-key"), "{err}");
        let garbage = GcsSettings { key: Some(Secret::new("not json")), ..service };
        let err = ObjectStorage::gcs("b", "p", &garbage).unwrap_err().to_string();
        assert!(err.contains("not a service-account key"), "{err}");
        let auto = GcsSettings { endpoint: Some("https://gcs.example".into()), ..Default::default() };
        let err = ObjectStorage::gcs("b", "p", &auto).unwrap_err().to_string();
        assert!(err.contains("service or token"), "{err}");
    }

    #[test]
    fn plain_http_needs_allowing() {
        let s = GcsSettings {
            key_type: GcsKeyType::Token,
            key: Some(Secret::new("t")),
            endpoint: Some("http://127.0.0.1:9".into()),
            allow_http: false,
        };
        let err = ObjectStorage::gcs("b", "p", &s).unwrap_err().to_string();
        assert!(err.contains("plain HTTP") && err.contains("repo-gcs-allow-http"), "{err}");
        assert!(ObjectStorage::gcs("b", "p", &GcsSettings { allow_http: true, ..s }).is_ok());
    }
}
