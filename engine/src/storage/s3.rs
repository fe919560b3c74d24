//! S3-compatible backend on object_store. Credentials, region and endpoint come from
//! the standard AWS_* environment variables, overridable by [`S3Settings`]; requests
//! are path-style so local endpoints (MinIO, s3s-fs) work, and plain http is allowed
//! only for an `http://` endpoint.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use std::str::FromStr;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as OsPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::{storage_error, ObjectInfo, Storage};
use crate::error::{Error, Result, StorageErrorKind};

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

/// A [`Storage`] in an S3 bucket, below a key prefix.
#[derive(Debug)]
pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
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

impl S3Storage {
    /// A backend for `bucket` below `prefix`; fails on settings object_store refuses.
    pub fn new(bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Self> {
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
            if ep.starts_with("http://") {
                let env_allows = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
                if !settings.allow_http && !env_allows {
                    return Err(Error::setting(
                        format!("S3 endpoint {ep} is plain HTTP: requests, credentials' signatures and the repository's (encrypted) objects would cross the network unprotected"),
                        "use an https:// endpoint, or set repo-s3-allow-http = true (or AWS_ALLOW_HTTP=true) for a server on a trusted network",
                    ));
                }
                b = b.with_allow_http(true);
            }
        }
        if let Some((id, secret)) = &settings.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret.expose());
        }
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
        Ok(Self { store: Arc::new(store), bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() })
    }

    /// The names of the "directories" right under the prefix (one delimited listing,
    /// not a walk of every object): the stanzas of a repository.
    pub(crate) async fn child_names(&self) -> Result<Vec<String>> {
        let root = (!self.prefix.is_empty()).then(|| OsPath::from(self.prefix.as_str()));
        let listed = self.store.list_with_delimiter(root.as_ref()).await.map_err(|e| map_err("list", "", e))?;
        Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect())
    }

    fn path(&self, op: &'static str, key: &str) -> Result<OsPath> {
        super::check_key(op, key, false)?;
        Ok(self.dir(key))
    }

    fn dir(&self, key: &str) -> OsPath {
        if self.prefix.is_empty() {
            OsPath::from(key)
        } else {
            OsPath::from(format!("{}/{key}", self.prefix))
        }
    }
}

/// The error and its sources, one after the other (object_store's Display stops at
/// the first level, where "error sending request" hides the TLS reason).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Whether a rustls certificate error is among the sources (not any word in a URL:
/// a bucket named "certificates" must not turn timeouts into permanent errors).
fn is_certificate_error(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        let tls = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        // reqwest may box the rustls error where a downcast cannot reach it; its text
        // ("invalid peer certificate", with spaces) cannot come from a URL.
        if matches!(tls, Some(rustls::Error::InvalidCertificate(_)))
            || s.to_string().contains("invalid peer certificate")
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn map_err(op: &'static str, key: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => StorageErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => StorageErrorKind::AlreadyExists,
        E::NotSupported { .. } | E::NotImplemented | E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            StorageErrorKind::Permanent
        }
        // A TLS certificate that does not verify will not verify on a retry either.
        _ if is_certificate_error(&e) => StorageErrorKind::Permanent,
        // object_store already retried requests internally; what is left may still
        // be a passing network or throttling fault.
        _ => StorageErrorKind::Transient,
    };
    // Regression (issue 21, item 13): without credentials object_store asks the
    // instance metadata service, and the operator saw its raw 403 or timeout.
    let chain = error_chain(&e);
    let credentials = matches!(&e, E::Generic { .. } | E::Unauthenticated { .. } | E::PermissionDenied { .. });
    if credentials && chain.contains("169.254.169.254") {
        let detail = format!(
            "no S3 credentials: none were configured, and the instance metadata service (only on EC2/ECS) gave none ({chain}); hint: set repo-s3-credentials-file in the config file (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        );
        return storage_error(op, key, StorageErrorKind::Permanent, detail);
    }
    if is_certificate_error(&e) {
        let detail = format!(
            "{}: the S3 endpoint's TLS certificate does not verify; hint: set repo-s3-ca-file to the CA that signed it (a private S3 server), or check repo-s3-endpoint",
            error_chain(&e)
        );
        return storage_error(op, key, kind, detail);
    }
    storage_error(op, key, kind, e.to_string())
}

#[async_trait::async_trait]
impl Storage for S3Storage {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.store
            .put_opts(&self.path("put", key)?, PutPayload::from(data), opts)
            .await
            .map_err(|e| map_err("put", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let r = self.store.get(&self.path("get", key)?).await.map_err(|e| map_err("get", key, e))?;
        r.bytes().await.map_err(|e| map_err("get", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let want = range.end - range.start;
        let data = self.store.get_range(&self.path("get", key)?, range).await.map_err(|e| map_err("get", key, e))?;
        if data.len() as u64 != want {
            return Err(storage_error(
                "get",
                key,
                StorageErrorKind::Permanent,
                format!("short ranged read: {} of {want} bytes", data.len()),
            ));
        }
        Ok(data)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        super::check_key("list", prefix, true)?;
        // object_store lists by path segments; list the directory part, filter the rest.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let root = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let list_path = self.dir(dir);
        let metas: Vec<_> =
            self.store.list(Some(&list_path)).try_collect().await.map_err(|e| map_err("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let key = full.strip_prefix(&root).unwrap_or(&full).to_string();
                let modified = u64::try_from(m.last_modified.timestamp()).ok();
                key.starts_with(prefix).then_some(ObjectInfo { key, size: m.size, modified })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        use futures::StreamExt;
        let paths = keys.iter().map(|k| self.path("delete", k)).collect::<Result<Vec<_>>>()?;
        let results: Vec<_> =
            self.store.delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed()).collect().await;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map_err("delete", &format!("{} keys", keys.len()), e)),
            }
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path("delete", key)?).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 21, item 13): without credentials the operator saw the
    /// instance metadata service's raw error; it now says what is missing and where
    /// to set it, and is not retried as transient. A missing object whose name holds
    /// "metadata" stays a missing object (review finding).
    #[test]
    fn no_credentials_is_named() {
        let raw = "Error performing token request: HTTP error: error sending request for url (http://169.254.169.254/latest/api/token): 403 Forbidden";
        let e = object_store::Error::Generic { store: "S3", source: raw.into() };
        let mapped = map_err("get", "config", e);
        let text = mapped.to_string();
        assert!(text.contains("no S3 credentials") && text.contains("repo-s3-credentials-file"), "{text}");
        assert_eq!(mapped.storage_kind(), Some(StorageErrorKind::Permanent));
        let missing = object_store::Error::NotFound { path: "pg-metadata/main/config".into(), source: "404".into() };
        assert_eq!(map_err("get", "config", missing).storage_kind(), Some(StorageErrorKind::NotFound));
    }
}
