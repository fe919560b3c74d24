//! The storage contract on object_store, for every cloud backend (S3, Azure Blob,
//! Google Cloud Storage): one implementation of [`Storage`]; the per-cloud modules
//! only build the client from their settings and say how to fix their credentials.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;

use object_store::path::Path as OsPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::{storage_error, ObjectInfo, Storage};
use crate::error::{Error, Result, StorageErrorKind};

/// Which cloud an [`ObjectStorage`] talks to: its URL scheme and the settings that
/// fix what can go wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// Amazon S3 or a compatible server.
    S3,
    /// Azure Blob Storage.
    Azure,
    /// Google Cloud Storage.
    Gcs,
}

impl Cloud {
    /// The scheme of its repository URLs.
    pub fn scheme(self) -> &'static str {
        match self {
            Cloud::S3 => "s3",
            Cloud::Azure => "az",
            Cloud::Gcs => "gs",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cloud::S3 => "S3",
            Cloud::Azure => "Azure",
            Cloud::Gcs => "GCS",
        }
    }

    /// What to set when no credentials were found (the metadata service gave none).
    fn credentials_hint(self) -> &'static str {
        match self {
            Cloud::S3 => "set repo-s3-credentials-file in the config file (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            Cloud::Azure => "set repo-azure-key-type and repo-azure-key-file (an account key or a SAS token), or run where a managed or workload identity is available",
            Cloud::Gcs => "set repo-gcs-key-type = service and repo-gcs-key to a service-account key file, or run where the metadata server grants an identity",
        }
    }

    /// Where the metadata service's instance credentials exist at all.
    fn metadata_service(self) -> &'static str {
        match self {
            Cloud::S3 => "only on EC2/ECS",
            Cloud::Azure => "only on Azure VMs and AKS",
            Cloud::Gcs => "only on Google Cloud",
        }
    }

    /// The prefix of its settings: `repo-s3`, `repo-azure`, `repo-gcs`.
    fn settings(self) -> &'static str {
        match self {
            Cloud::S3 => "repo-s3",
            Cloud::Azure => "repo-azure",
            Cloud::Gcs => "repo-gcs",
        }
    }

    fn endpoint_setting(self) -> String {
        format!("{}-endpoint", self.settings())
    }

    /// Whether endpoint `ep` is plain HTTP, which only `allowed` (`repo-*-allow-http`)
    /// lets through: requests, their credentials and the objects would cross the
    /// network unprotected.
    pub(crate) fn plain_http(self, ep: &str, allowed: bool) -> Result<bool> {
        let http = ep.starts_with("http://");
        if http && !allowed {
            let also = if self == Cloud::S3 { " (or AWS_ALLOW_HTTP=true)" } else { "" };
            return Err(Error::setting(
                format!("{} endpoint {ep} is plain HTTP: requests, their credentials and the repository's (encrypted) objects would cross the network unprotected", self.name()),
                format!("use an https:// endpoint, or set {}-allow-http = true{also} for an emulator or a server on a trusted network", self.settings()),
            ));
        }
        Ok(http)
    }
}

/// A [`Storage`] in a bucket (S3, GCS) or container (Azure), below a key prefix.
#[derive(Debug)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    cloud: Cloud,
    bucket: String,
    prefix: String,
}

impl ObjectStorage {
    /// Wraps a client built by a cloud module; `bucket` is only for messages.
    pub(crate) fn new(store: Arc<dyn ObjectStore>, cloud: Cloud, bucket: &str, prefix: &str) -> Self {
        Self { store, cloud, bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() }
    }

    /// The names of the "directories" right under the prefix (one delimited listing,
    /// not a walk of every object): the stanzas of a repository.
    pub(crate) async fn child_names(&self) -> Result<Vec<String>> {
        let root = (!self.prefix.is_empty()).then(|| OsPath::from(self.prefix.as_str()));
        let listed = self.store.list_with_delimiter(root.as_ref()).await.map_err(|e| self.map_err("list", "", e))?;
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

    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
        map_err(self.cloud, op, key, e)
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

fn map_err(cloud: Cloud, op: &'static str, key: &str, e: object_store::Error) -> Error {
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
    if credentials && (chain.contains("169.254.169.254") || chain.contains("metadata.google.internal")) {
        let detail = format!(
            "no {} credentials: none were configured, and the instance metadata service ({}) gave none ({chain}); hint: {}",
            cloud.name(),
            cloud.metadata_service(),
            cloud.credentials_hint()
        );
        return storage_error(op, key, StorageErrorKind::Permanent, detail);
    }
    if is_certificate_error(&e) {
        let ca = if cloud == Cloud::S3 {
            "set repo-s3-ca-file to the CA that signed it (a private S3 server), or "
        } else {
            ""
        };
        let detail = format!(
            "{}: the {} endpoint's TLS certificate does not verify; hint: {ca}check {}",
            error_chain(&e),
            cloud.name(),
            cloud.endpoint_setting()
        );
        return storage_error(op, key, kind, detail);
    }
    storage_error(op, key, kind, e.to_string())
}

#[async_trait::async_trait]
impl Storage for ObjectStorage {
    fn location(&self) -> String {
        format!("{}://{}/{}", self.cloud.scheme(), self.bucket, self.prefix)
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.store
            .put_opts(&self.path("put", key)?, PutPayload::from(data), opts)
            .await
            .map_err(|e| self.map_err("put", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let r = self.store.get(&self.path("get", key)?).await.map_err(|e| self.map_err("get", key, e))?;
        r.bytes().await.map_err(|e| self.map_err("get", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let want = range.end - range.start;
        let data =
            self.store.get_range(&self.path("get", key)?, range).await.map_err(|e| self.map_err("get", key, e))?;
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

    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let got =
            self.store.get_ranges(&self.path("get", key)?, ranges).await.map_err(|e| self.map_err("get", key, e))?;
        for (data, range) in got.iter().zip(ranges) {
            let want = range.end - range.start;
            if data.len() as u64 != want {
                let detail = format!("short ranged read: {} of {want} bytes", data.len());
                return Err(storage_error("get", key, StorageErrorKind::Permanent, detail));
            }
        }
        if got.len() != ranges.len() {
            let detail = format!("{} of {} ranges came back", got.len(), ranges.len());
            return Err(storage_error("get", key, StorageErrorKind::Permanent, detail));
        }
        Ok(got)
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
            self.store.list(Some(&list_path)).try_collect().await.map_err(|e| self.map_err("list", prefix, e))?;
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
                Err(e) => return Err(self.map_err("delete", &format!("{} keys", keys.len()), e)),
            }
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path("delete", key)?).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", key, e)),
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
        let mapped = map_err(Cloud::S3, "get", "config", e);
        let text = mapped.to_string();
        assert!(text.contains("no S3 credentials") && text.contains("repo-s3-credentials-file"), "{text}");
        assert_eq!(mapped.storage_kind(), Some(StorageErrorKind::Permanent));
        let missing = object_store::Error::NotFound { path: "pg-metadata/main/config".into(), source: "404".into() };
        assert_eq!(map_err(Cloud::S3, "get", "config", missing).storage_kind(), Some(StorageErrorKind::NotFound));
    }
}
