//! S3-compatible backend on object_store. Credentials, region and endpoint come from
//! the standard AWS_* environment variables, overridable by [`S3Settings`]; requests
//! are path-style so local endpoints (MinIO, s3s-fs) work, and plain http is allowed
//! only for an `http://` endpoint.

use std::str::FromStr;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;

use super::object::{Cloud, ObjectStorage};
use crate::error::{Error, Result};

/// Optional overrides of the AWS_* environment (config keys `repo-s3-endpoint`,
/// `repo-s3-region`). The CLI takes credentials from the environment only (they
/// are secrets); library callers may pass them here.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// The server's URL; None: AWS_ENDPOINT_URL or AWS_ENDPOINT, else AWS itself.
    pub endpoint: Option<String>,
    /// The region; None: AWS_REGION or AWS_DEFAULT_REGION, else us-east-1.
    pub region: Option<String>,
    /// Access key id and secret access key; None: from the environment.
    pub credentials: Option<(String, crate::crypto::Secret)>,
    /// Allow a plain `http://` endpoint (`repo-s3-allow-http`; also AWS_ALLOW_HTTP=true).
    pub allow_http: bool,
    /// Extra trusted CA certificates, PEM (`repo-s3-ca-file`), for private S3 servers.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Trust the CA certificates in `path` besides the system's (private S3 servers).
fn ca_options(path: &std::path::Path) -> Result<object_store::ClientOptions> {
    let bad = |e: String| {
        Error::setting(
            format!("repo-s3-ca-file {}: {e}", path.display()),
            "give a PEM file of the CA certificates that signed the S3 server's certificate",
        )
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let from_env = std::env::vars().filter_map(|(k, v)| {
        match object_store::aws::AmazonS3ConfigKey::from_str(&k.to_ascii_lowercase()).ok()? {
            object_store::aws::AmazonS3ConfigKey::Client(key) => Some((key, v)),
            _ => None,
        }
    });
    let options = from_env.fold(object_store::ClientOptions::new(), |o, (k, v)| o.with_config(k, v));
    Ok(certs.into_iter().fold(options, |o, c| o.with_root_certificate(c)))
}

impl ObjectStorage {
    /// An S3 bucket below `prefix`; fails on settings object_store refuses.
    pub fn s3(bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Self> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        if std::env::var("AWS_ALLOW_INVALID_CERTIFICATES").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(Error::setting(
                "AWS_ALLOW_INVALID_CERTIFICATES=true would turn off the S3 endpoint's certificate check",
                "unset it; for a private CA set repo-s3-ca-file",
            ));
        }
        // Client options first: with_client_options replaces them all, so the CA file's
        // options start from the AWS_* client settings of the environment.
        if let Some(ca) = &settings.ca_file {
            b = b.with_client_options(ca_options(ca)?);
        }
        if let Some(ep) = &endpoint {
            b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
            let env_allows = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
            if Cloud::S3.plain_http(ep, settings.allow_http || env_allows)? {
                b = b.with_allow_http(true);
            }
        }
        if let Some((id, secret)) = &settings.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret.expose());
        }
        // Every put carries x-amz-checksum-sha256: S3 then refuses bytes damaged on the
        // way, and a bucket under Object Lock refuses puts without a checksum header.
        // The hash is the one SigV4 already computes over the payload.
        b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        if let Some(r) = &settings.region {
            b = b.with_region(r);
        } else if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            b = b.with_region("us-east-1");
        }
        let store = b.build().map_err(|e| {
            Error::setting(
                format!("cannot set up s3 repository s3://{bucket}/{prefix}: {e}"),
                "set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, for a non-AWS server, AWS_ENDPOINT_URL",
            )
        })?;
        Ok(Self::new(Arc::new(store), Cloud::S3, bucket, prefix))
    }
}
