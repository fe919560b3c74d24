//! In-memory backend for unit tests only.

// A test double: a poisoned lock means a test already panicked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use super::{storage_error, ObjectInfo, Storage};
use crate::error::{Result, StorageErrorKind};

/// A [`Storage`] holding its objects in a map, lost when dropped.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<String, Bytes>>,
    /// When each object was written (unix seconds); tests may backdate them.
    modified: Mutex<BTreeMap<String, u64>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Test hook: replace an object's bytes (simulates corruption at rest).
    pub fn overwrite(&self, key: &str, data: Bytes) {
        self.objects.lock().unwrap().insert(key.to_string(), data);
    }

    /// Make every object under `prefix` look `secs` seconds older (garbage collection tests).
    pub fn backdate(&self, prefix: &str, secs: u64) {
        for (k, t) in self.modified.lock().unwrap().iter_mut() {
            if k.starts_with(prefix) {
                *t = t.saturating_sub(secs);
            }
        }
    }
}

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    fn location(&self) -> String {
        "memory".into()
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        super::check_key("put", key, false)?;
        let mut map = self.objects.lock().unwrap();
        if map.contains_key(key) {
            return Err(storage_error("put", key, StorageErrorKind::AlreadyExists, "object exists"));
        }
        map.insert(key.to_string(), data);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.modified.lock().unwrap().insert(key.to_string(), now);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        super::check_key("get", key, false)?;
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| storage_error("get", key, StorageErrorKind::NotFound, "no such object"))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let data = self.get(key).await?;
        if range.end > data.len() as u64 || range.start > range.end {
            return Err(storage_error("get", key, StorageErrorKind::Permanent, "range outside the object"));
        }
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        super::check_key("list", prefix, true)?;
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
                modified: self.modified.lock().unwrap().get(k).copied(),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        super::check_key("delete", key, false)?;
        self.objects.lock().unwrap().remove(key);
        self.modified.lock().unwrap().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        let s = super::MemoryStorage::new();
        super::super::conformance::run(&s).await;
        super::super::conformance::run_concurrent_create(&s).await;
    }
}
