//! The storage seam: one small trait every backend implements.
//!
//! # Contract
//! * Keys are relative, `/`-separated, ASCII (`[A-Za-z0-9._-]` segments, never `.` or
//!   `..`); a backend maps them below its root (a directory, or a bucket prefix) and
//!   refuses any other key with a permanent error ([`check_key`]) before touching it.
//! * [`Storage::put_new`] is create-only: if an object exists under the key it fails
//!   with [`StorageErrorKind::AlreadyExists`] and leaves the existing object untouched.
//!   It returns `Ok` only once the object is durable (local: fsync of file and
//!   directory; S3: the PUT was acknowledged). A reader never sees a partial object.
//! * Objects are immutable once written; only `delete` (used by expire) removes them.
//! * [`Storage::get`] / [`Storage::get_range`] / [`Storage::get_ranges`] of a missing
//!   key fail with [`StorageErrorKind::NotFound`]; a range past the end of the object
//!   is an error, never a short read.
//! * [`Storage::list`] returns every key under a prefix (recursively), sorted, with
//!   sizes and modification times; it may be eventually consistent, so correctness never depends on a list
//!   seeing a just-written object: readers find objects by name. An object deleted
//!   while the listing runs may or may not appear; its deletion is never an error.
//! * Errors are classified transient or permanent; [`retry::RetryStorage`] retries the
//!   transient ones.
//!
//! The conformance suite in [`conformance`] checks this contract; it runs against
//! every backend (memory and local in unit tests; S3, Azure Blob and GCS against
//! real servers or their emulators in the integration tests). The cloud backends are
//! one implementation over object_store ([`object::ObjectStorage`]) with a builder
//! per cloud.

// Test doubles and the contract's checks: for unit tests, and for the integration
// tests through the `testing` feature; never in a release binary.
pub(crate) mod azure;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod fault;
pub(crate) mod gcs;
pub(crate) mod local;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub(crate) mod object;
pub(crate) mod retry;
pub(crate) mod s3;
pub(crate) mod throttle;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result, StorageErrorKind};

/// Deletes in flight at once where a backend has no bulk delete.
const PARALLEL_DELETES: usize = 16;

/// One object found by [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's full key, relative to the backend's root.
    pub key: String,
    /// The object's size in bytes.
    pub size: u64,
    /// When it was written (unix seconds), where the backend says; garbage collection
    /// never deletes an object whose age it does not know.
    pub modified: Option<u64>,
}

/// An object store rooted at a stanza; the contract is in the module docs.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Human-readable location of the root, for messages (never contains secrets).
    fn location(&self) -> String;
    /// Writes a new object, durably; fails with `AlreadyExists` if the key is taken.
    async fn put_new(&self, key: &str, data: Bytes) -> Result<()>;
    /// Reads a whole object; `NotFound` if it is missing.
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// Reads the bytes `range` of an object; a range past its end is an error.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;
    /// Reads several ranges of one object, in the order given, as `get_range` would
    /// one by one (same errors). Backends read them together where they can (local:
    /// one open; object stores: object_store's coalesced requests): a backup reads
    /// its parents' changed blocks scattered over packs this way.
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            out.push(self.get_range(key, range.clone()).await?);
        }
        Ok(out)
    }
    /// Every object under `prefix` (recursively), sorted by key, with sizes.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Removes an object: the only change to an object once written.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Delete several objects (expire, stanza-delete); a missing one is no error.
    /// Backends with a bulk API use it (S3: DeleteObjects, up to 1000 keys a
    /// request); by default a few deletes run at a time. On failure some of `keys`
    /// may be gone and the others not.
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        use futures::StreamExt;
        let mut pending = futures::stream::FuturesUnordered::new();
        for key in keys {
            if pending.len() >= PARALLEL_DELETES {
                if let Some(done) = pending.next().await {
                    done?;
                }
            }
            pending.push(self.delete(key));
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        Ok(())
    }
}

/// A shared, type-erased storage backend.
pub type DynStorage = Arc<dyn Storage>;

/// Refuse a key outside the contract (an absolute path, a `.` or `..` segment, an
/// empty segment, characters outside `[A-Za-z0-9._-]`) before it reaches a backend:
/// a name from outside must never address anything beyond the stanza's root.
/// A list prefix may be empty or end with `/`.
pub fn check_key(op: &'static str, key: &str, prefix: bool) -> Result<()> {
    let body = if prefix { key.strip_suffix('/').unwrap_or(key) } else { key };
    if prefix && body.is_empty() {
        return Ok(());
    }
    let bad_segment = |seg: &str| {
        seg.is_empty()
            || seg == "."
            || seg == ".."
            || !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if body.split('/').any(bad_segment) {
        return Err(storage_error(
            op,
            key,
            StorageErrorKind::Permanent,
            "not a valid object key (relative, `/`-separated segments of [A-Za-z0-9._-], no `.` or `..`)",
        ));
    }
    Ok(())
}

pub(crate) fn storage_error(op: &'static str, key: &str, kind: StorageErrorKind, detail: impl Into<String>) -> Error {
    Error::Storage { op, key: key.to_string(), kind, detail: detail.into() }
}

/// How to reach each cloud a repository may live in: the `repo-s3-*`, `repo-azure-*`
/// and `repo-gcs-*` settings; only the one matching the repository's scheme is used.
#[derive(Debug, Clone, Default)]
pub struct CloudSettings {
    /// For `s3://` repositories.
    pub s3: s3::S3Settings,
    /// For `az://` repositories.
    pub azure: azure::AzureSettings,
    /// For `gs://` repositories.
    pub gcs: gcs::GcsSettings,
}

/// Where a repository lives: parsed from the `repo` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    /// A directory on a local (or mounted) file system: an absolute path.
    Local(std::path::PathBuf),
    /// A bucket (S3, GCS) or container (Azure) in a cloud, below a key prefix.
    Cloud {
        /// Which cloud: the URL's scheme.
        cloud: object::Cloud,
        /// The bucket's (container's) name.
        bucket: String,
        /// The key prefix in the bucket, without leading or trailing `/`; may be empty.
        prefix: String,
    },
}

const LOCATION_FORMS: &str =
    "use an absolute path, file:///path, s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or gs://BUCKET/PREFIX";

impl RepoLocation {
    /// Accepts a plain path, `file:///path`, `s3://bucket[/prefix]`,
    /// `az://container[/prefix]` (the account is `repo-azure-account`) or `gs://bucket[/prefix]`.
    pub fn parse(s: &str) -> Result<Self> {
        let clouds = [object::Cloud::S3, object::Cloud::Azure, object::Cloud::Gcs];
        for cloud in clouds {
            if let Some(rest) = s.strip_prefix(cloud.scheme()).and_then(|r| r.strip_prefix("://")) {
                return Self::parse_cloud(s, cloud, rest);
            }
        }
        let path = match s.strip_prefix("file://") {
            Some(p) => p,
            None if s.contains("://") => {
                return Err(Error::setting(format!("repo {s} has an unsupported scheme"), LOCATION_FORMS));
            }
            None => s,
        };
        if path.is_empty() {
            return Err(Error::setting("repo is empty", LOCATION_FORMS));
        }
        let path = std::path::PathBuf::from(path);
        if !path.is_absolute() {
            return Err(Error::setting(format!("repo {s} is a relative path"), "use an absolute path"));
        }
        Ok(RepoLocation::Local(path))
    }

    fn parse_cloud(s: &str, cloud: object::Cloud, rest: &str) -> Result<Self> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let scheme = cloud.scheme();
        if bucket.is_empty() {
            let what = if cloud == object::Cloud::Azure { "container" } else { "bucket" };
            return Err(Error::setting(
                format!("repo {s} names no {what}"),
                format!("use {scheme}://{}/PREFIX", what.to_uppercase()),
            ));
        }
        // Regression (issue 21, item 13): s3://bucket/../x was taken as a prefix.
        if prefix.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(Error::setting(
                format!("repo {s}: a prefix has no . or .. segments"),
                format!("write the prefix as it is, e.g. {scheme}://{bucket}/pgcairn"),
            ));
        }
        Ok(RepoLocation::Cloud { cloud, bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() })
    }

    /// The repository as an operator wrote it: a path, or SCHEME://bucket/prefix.
    pub fn describe(&self) -> String {
        match self {
            RepoLocation::Local(root) => root.display().to_string(),
            RepoLocation::Cloud { cloud, bucket, prefix } => format!("{}://{bucket}/{prefix}", cloud.scheme()),
        }
    }

    /// The cloud backend for this location's bucket below `prefix`.
    fn object_storage(
        cloud: object::Cloud,
        bucket: &str,
        prefix: &str,
        settings: &CloudSettings,
    ) -> Result<object::ObjectStorage> {
        match cloud {
            object::Cloud::S3 => object::ObjectStorage::s3(bucket, prefix, &settings.s3),
            object::Cloud::Azure => object::ObjectStorage::azure(bucket, prefix, &settings.azure),
            object::Cloud::Gcs => object::ObjectStorage::gcs(bucket, prefix, &settings.gcs),
        }
    }

    /// The stanzas this repository holds (what a mistyped `--stanza` is told, what
    /// `--all-stanzas` reads): the names right under the repository that hold a
    /// `config` — a stanza-delete that stopped midway (config gone first) is none.
    ///
    /// Only a config known to be absent rules a name out: one that cannot be read
    /// (permissions, a flaky store) keeps its name, so reading that stanza fails
    /// visibly instead of the stanza vanishing from monitoring.
    pub async fn list_stanzas(&self, cloud: &CloudSettings) -> Result<Vec<String>> {
        let children = match self {
            RepoLocation::Local(root) => match std::fs::read_dir(root) {
                Ok(dir) => dir
                    .flatten()
                    .filter(|e| e.file_type().map_or(true, |t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(local::map_io("list", "", root, e)),
            },
            RepoLocation::Cloud { cloud: c, bucket, prefix } => {
                Self::object_storage(*c, bucket, prefix, cloud)?.child_names().await?
            }
        };
        let mut names = Vec::new();
        for name in children {
            let Ok(stanza) = self.open(&name, cloud) else { continue }; // not a stanza name (.tmp …)
            match stanza.get("config").await {
                Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => {}
                _ => names.push(name),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Refuse a local repository whose parent directory does not exist: a mistyped
    /// path must not be created silently (stanza-create; issue 14).
    pub fn check_creatable(&self) -> Result<()> {
        let RepoLocation::Local(root) = self else { return Ok(()) };
        let parent = root.parent().unwrap_or(root);
        if root.is_dir() || parent.is_dir() {
            return Ok(());
        }
        Err(Error::setting(
            format!("repo {} does not exist, nor does its parent {}", root.display(), parent.display()),
            "check `repo` for a typo; if this is the path you mean, create its parent directory first (owned by the user pgcairn runs as)",
        ))
    }

    /// Open the backend rooted at this location plus `sub` (the stanza), with retries.
    pub fn open(&self, sub: &str, settings: &CloudSettings) -> Result<DynStorage> {
        check_key("open", sub, false)?;
        let inner: DynStorage = match self {
            RepoLocation::Local(root) => Arc::new(local::LocalStorage::new(root.join(sub))),
            RepoLocation::Cloud { cloud, bucket, prefix } => {
                let full = if prefix.is_empty() { sub.to_string() } else { format!("{prefix}/{sub}") };
                Arc::new(Self::object_storage(*cloud, bucket, &full, settings)?)
            }
        };
        Ok(throttle::throttled(Arc::new(retry::RetryStorage::new(inner))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_an_s3_prefix_are_refused() {
        for bad in ["s3://b/../x", "s3://b/a/./x", "s3://b/a/..", "az://c/../x", "gs://b/./x"] {
            assert!(RepoLocation::parse(bad).unwrap_err().to_string().contains(". or .."), "{bad}");
        }
        assert!(RepoLocation::parse("s3://b/a..b/x").is_ok());
    }

    #[test]
    fn parses_locations() {
        assert_eq!(RepoLocation::parse("/var/lib/r").unwrap(), RepoLocation::Local("/var/lib/r".into()));
        assert_eq!(RepoLocation::parse("file:///var/lib/r").unwrap(), RepoLocation::Local("/var/lib/r".into()));
        let cloud = |cloud, bucket: &str, prefix: &str| RepoLocation::Cloud {
            cloud,
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        assert_eq!(RepoLocation::parse("s3://b/p/q/").unwrap(), cloud(object::Cloud::S3, "b", "p/q"));
        assert_eq!(RepoLocation::parse("az://c/p").unwrap(), cloud(object::Cloud::Azure, "c", "p"));
        assert_eq!(RepoLocation::parse("gs://x").unwrap(), cloud(object::Cloud::Gcs, "x", ""));
        assert_eq!(RepoLocation::parse("gs://x/a/b").unwrap().describe(), "gs://x/a/b");
        assert!(RepoLocation::parse("relative/dir").is_err());
        assert!(RepoLocation::parse("s3://").is_err());
        let err = RepoLocation::parse("az:///p").unwrap_err().to_string();
        assert!(err.contains("names no container"), "{err}");
        let err = RepoLocation::parse("wasb://c/p").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme") && err.contains("az://CONTAINER"), "{err}");
    }
}
