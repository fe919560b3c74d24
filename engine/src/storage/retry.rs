//! Retries transient storage errors with exponential backoff. Create-only puts are
//! safe to retry: if an earlier attempt landed, the retry reports `AlreadyExists`,
//! which callers that wrote content-addressed or unique keys may treat as success.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;

use super::{DynStorage, ObjectInfo, Storage};
use crate::error::{Result, StorageErrorKind};

#[derive(Debug)]
pub(crate) struct RetryStorage {
    inner: DynStorage,
    attempts: u32,
    first_delay: Duration,
}

impl RetryStorage {
    pub(crate) fn new(inner: DynStorage) -> Self {
        Self { inner, attempts: 5, first_delay: Duration::from_millis(100) }
    }

    #[cfg(test)]
    pub(crate) fn with_policy(inner: DynStorage, attempts: u32, first_delay: Duration) -> Self {
        Self { inner, attempts: attempts.max(1), first_delay }
    }

    async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>> + Send,
    {
        let mut delay = self.first_delay;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    tracing::warn!(
                        "{what} failed (attempt {attempt} of {}), retrying in {delay:?}: {e}",
                        self.attempts
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[async_trait::async_trait]
impl Storage for RetryStorage {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        let mut attempts = 0;
        let result = self
            .run(&format!("put of {key}"), || {
                attempts += 1;
                self.inner.put_new(key, data.clone())
            })
            .await;
        match result {
            // An earlier attempt may have landed with its reply lost: that is
            // success if the stored bytes are ours.
            Err(e) if attempts > 1 && e.storage_kind() == Some(StorageErrorKind::AlreadyExists) => {
                match self.inner.get(key).await {
                    Ok(stored) if stored == data => Ok(()),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.run(&format!("get of {key}"), || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.run(&format!("get of {key}"), || self.inner.get_range(key, range.clone())).await
    }
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.run(&format!("get of {key}"), || self.inner.get_ranges(key, ranges)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run(&format!("list of {prefix}"), || self.inner.list(prefix)).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.run(&format!("delete of {key}"), || self.inner.delete(key)).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.run(&format!("delete of {} objects", keys.len()), || self.inner.delete_many(keys)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::StorageErrorKind;
    use crate::storage::fault::{Fault, FaultStorage};
    use crate::storage::memory::MemoryStorage;

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let faulty = Arc::new(FaultStorage::new(Arc::new(MemoryStorage::new())));
        faulty.inject(Fault::FailPuts { count: 2, kind: StorageErrorKind::Transient });
        let s = RetryStorage::with_policy(faulty.clone(), 3, Duration::from_millis(1));
        s.put_new("k", Bytes::from_static(b"v")).await.unwrap();
        assert_eq!(s.get("k").await.unwrap(), Bytes::from_static(b"v"));
    }

    /// A put whose reply was lost after it landed: the retry sees "already exists"
    /// with our own bytes, which is success.
    #[tokio::test]
    async fn lost_reply_of_a_landed_put_is_success() {
        let mem = Arc::new(MemoryStorage::new());
        mem.put_new("k", Bytes::from_static(b"v")).await.unwrap();
        let faulty = Arc::new(FaultStorage::new(mem));
        faulty.inject(Fault::FailPuts { count: 1, kind: StorageErrorKind::Transient });
        let s = RetryStorage::with_policy(faulty.clone(), 3, Duration::from_millis(1));
        s.put_new("k", Bytes::from_static(b"v")).await.unwrap();
        faulty.inject(Fault::FailPuts { count: 1, kind: StorageErrorKind::Transient });
        let err = s.put_new("k", Bytes::from_static(b"other")).await.unwrap_err();
        assert_eq!(err.storage_kind(), Some(StorageErrorKind::AlreadyExists));
        // Without a retry, "already exists" is always an error.
        assert!(s.put_new("k", Bytes::from_static(b"v")).await.is_err());
    }

    #[tokio::test]
    async fn gives_up_after_attempts_and_never_retries_permanent() {
        let faulty = Arc::new(FaultStorage::new(Arc::new(MemoryStorage::new())));
        faulty.inject(Fault::FailPuts { count: 5, kind: StorageErrorKind::Transient });
        let s = RetryStorage::with_policy(faulty.clone(), 3, Duration::from_millis(1));
        assert!(s.put_new("k", Bytes::from_static(b"v")).await.is_err());
        assert_eq!(faulty.remaining_put_faults(), 2, "three attempts consumed three faults");

        faulty.inject(Fault::FailPuts { count: 1, kind: StorageErrorKind::Permanent });
        assert!(s.put_new("k2", Bytes::from_static(b"v")).await.is_err());
        assert_eq!(faulty.remaining_put_faults(), 0);
        assert!(s.put_new("k2", Bytes::from_static(b"v")).await.is_ok());
    }
}
