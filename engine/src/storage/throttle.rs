//! The bandwidth limit (`bandwidth-max`): every byte a command moves to or from its
//! repositories waits its turn in one token bucket per process, so a backup, restore,
//! copy or archive drainer on a shared link averages at most the limit (issue 26).
//! Listing and deleting carry no payload and are not charged.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{DynStorage, ObjectInfo, Storage};
use crate::error::Result;

/// Payloads smaller than this never wait (metadata: lock heartbeats, manifests,
/// key slots); they are still charged, so the average holds.
const NO_WAIT: u64 = 64 << 10;

/// The process's limit, set once at start-up by [`limit_bandwidth`].
static LIMIT: OnceLock<Arc<Bandwidth>> = OnceLock::new();

/// Cap what this process moves to and from repositories at `bytes_per_second`
/// (from the `bandwidth-max` setting). The first call wins.
pub fn limit_bandwidth(bytes_per_second: u64) {
    let _ = LIMIT.set(Arc::new(Bandwidth::new(bytes_per_second)));
}

/// `inner`, throttled when a limit is set.
pub(crate) fn throttled(inner: DynStorage) -> DynStorage {
    match LIMIT.get() {
        Some(bw) => Arc::new(ThrottledStorage { inner, bw: bw.clone() }),
        None => inner,
    }
}

/// A token bucket without burst: each transfer takes the next `len / rate` seconds
/// of the link and waits for their end; concurrent transfers queue behind one another.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    bytes_per_second: f64,
    /// When the link is free again.
    free_at: Mutex<Option<Instant>>,
}

impl Bandwidth {
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Bandwidth { bytes_per_second: bytes_per_second.max(1) as f64, free_at: Mutex::new(None) }
    }

    /// Take the next `len / rate` seconds of the link and wait until they are over:
    /// no transfer is done before the link could have carried it, so even the first
    /// and the last count. Objects under [`NO_WAIT`] are charged but go at once: a
    /// lock heartbeat queued behind pack uploads would look abandoned.
    pub(crate) async fn take(&self, len: u64) {
        let end = {
            let mut free_at = self.free_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let start = free_at.map_or(now, |t| t.max(now));
            let end = start + Duration::from_secs_f64(len as f64 / self.bytes_per_second);
            *free_at = Some(end);
            end
        };
        if len >= NO_WAIT {
            tokio::time::sleep_until(end).await;
        }
    }
}

/// A storage whose payloads go through the process's [`Bandwidth`].
#[derive(Debug)]
struct ThrottledStorage {
    inner: DynStorage,
    bw: Arc<Bandwidth>,
}

#[async_trait::async_trait]
impl Storage for ThrottledStorage {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        self.bw.take(data.len() as u64).await;
        self.inner.put_new(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        let data = self.inner.get(key).await?;
        // The size is known only now: the next transfer waits for this one.
        self.bw.take(data.len() as u64).await;
        Ok(data)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.bw.take(range.end.saturating_sub(range.start)).await;
        self.inner.get_range(key, range).await
    }
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.bw.take(ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum()).await;
        self.inner.get_ranges(key, ranges).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    /// 8 puts at once and 8 whole reads of 256 KiB at 1 MiB/s: each takes the next
    /// 250 ms of the link, whatever the overlap (paused time: exact).
    #[tokio::test(start_paused = true)]
    async fn transfers_average_the_limit() {
        let s = ThrottledStorage { inner: Arc::new(MemoryStorage::new()), bw: Arc::new(Bandwidth::new(1 << 20)) };
        let keys: Vec<String> = (0..8).map(|i| format!("o{i}")).collect();
        let started = Instant::now();
        let puts = keys.iter().map(|k| s.put_new(k, Bytes::from(vec![7u8; 256 << 10])));
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::from_millis(2000), "8 turns of 250 ms");
        for k in &keys {
            assert_eq!(s.get(k).await.unwrap().len(), 256 << 10);
        }
        // A whole read is charged when it arrives.
        assert_eq!(started.elapsed(), Duration::from_millis(4000));
        s.list("").await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(4000), "a listing is not charged");
        s.get_range("o0", 0..(256 << 10)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(4250));
        // Regression (review of issue 26): a lock heartbeat waited behind the packs
        // queued before it; past 300 s the lock looked abandoned. Small objects go at once.
        let pack = s.put_new("o8", Bytes::from(vec![7u8; 256 << 10]));
        let beat = s.put_new("lock/beat", Bytes::from_static(b"{}"));
        let (pack, beat) = tokio::join!(pack, async {
            beat.await.unwrap();
            started.elapsed()
        });
        pack.unwrap();
        assert_eq!(beat, Duration::from_millis(4250), "the heartbeat did not wait for the pack's turn");
        assert_eq!(started.elapsed(), Duration::from_millis(4500));
    }
}
