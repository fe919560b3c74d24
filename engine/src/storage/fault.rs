//! Fault injection wrapper for tests: fails puts or reads, or corrupts what gets return.

// A test double: a poisoned lock means a test already panicked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use super::{storage_error, DynStorage, ObjectInfo, Storage};
use crate::error::{Result, StorageErrorKind};

/// A fault to inject; each replaces the previous fault of its kind.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The next `count` puts fail with `kind` (and store nothing).
    FailPuts {
        /// How many puts fail.
        count: u32,
        /// The storage error they fail with.
        kind: StorageErrorKind,
    },
    /// Every read of keys starting with `prefix` has one byte flipped.
    CorruptReads {
        /// Keys whose reads are corrupted start with this.
        prefix: String,
    },
    /// Every read of keys starting with `prefix` fails with `kind` (an outage).
    FailReads {
        /// Keys whose reads fail start with this.
        prefix: String,
        /// The storage error they fail with.
        kind: StorageErrorKind,
    },
    /// Every read of keys starting with `prefix` answers only after `delay` (a slow
    /// or distant store).
    SlowReads {
        /// Keys whose reads are slow start with this.
        prefix: String,
        /// How long each read takes at least.
        delay: std::time::Duration,
    },
    /// Deletes of keys starting with `prefix` fail permanently (S3 Object Lock).
    RefuseDeletes {
        /// Keys whose deletes fail start with this.
        prefix: String,
    },
}

/// A storage that passes everything to `inner` except the faults injected.
#[derive(Debug)]
pub struct FaultStorage {
    inner: DynStorage,
    failing_puts: Mutex<(u32, StorageErrorKind)>,
    corrupt_prefix: Mutex<Option<String>>,
    failing_reads: Mutex<Option<(String, StorageErrorKind)>>,
    refused_deletes: Mutex<Option<String>>,
    slow_reads: Mutex<Option<(String, std::time::Duration)>>,
}

impl FaultStorage {
    /// Wraps `inner`, with no fault yet.
    pub fn new(inner: DynStorage) -> Self {
        Self {
            inner,
            failing_puts: Mutex::new((0, StorageErrorKind::Transient)),
            corrupt_prefix: Mutex::new(None),
            failing_reads: Mutex::new(None),
            refused_deletes: Mutex::new(None),
            slow_reads: Mutex::new(None),
        }
    }

    /// Starts `fault`.
    pub fn inject(&self, fault: Fault) {
        match fault {
            Fault::FailPuts { count, kind } => *self.failing_puts.lock().unwrap() = (count, kind),
            Fault::CorruptReads { prefix } => *self.corrupt_prefix.lock().unwrap() = Some(prefix),
            Fault::FailReads { prefix, kind } => *self.failing_reads.lock().unwrap() = Some((prefix, kind)),
            Fault::RefuseDeletes { prefix } => *self.refused_deletes.lock().unwrap() = Some(prefix),
            Fault::SlowReads { prefix, delay } => *self.slow_reads.lock().unwrap() = Some((prefix, delay)),
        }
    }

    /// Let deletes through again.
    pub fn allow_deletes(&self) {
        *self.refused_deletes.lock().unwrap() = None;
    }

    /// Lift every read fault.
    pub fn heal_reads(&self) {
        *self.corrupt_prefix.lock().unwrap() = None;
        *self.failing_reads.lock().unwrap() = None;
        *self.slow_reads.lock().unwrap() = None;
    }

    async fn slow_down(&self, key: &str) {
        let delay = self.slow_reads.lock().unwrap().as_ref().filter(|(p, _)| key.starts_with(p.as_str())).map(|s| s.1);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }

    fn read_fault(&self, key: &str) -> Result<()> {
        match &*self.failing_reads.lock().unwrap() {
            Some((p, kind)) if key.starts_with(p.as_str()) => Err(storage_error("get", key, *kind, "injected fault")),
            _ => Ok(()),
        }
    }

    /// How many of the injected put failures are still to come.
    pub fn remaining_put_faults(&self) -> u32 {
        self.failing_puts.lock().unwrap().0
    }

    fn maybe_corrupt(&self, key: &str, data: Bytes) -> Bytes {
        match &*self.corrupt_prefix.lock().unwrap() {
            Some(p) if key.starts_with(p.as_str()) && !data.is_empty() => {
                let mut v = data.to_vec();
                let mid = v.len() / 2;
                v[mid] ^= 0x5a;
                Bytes::from(v)
            }
            _ => data,
        }
    }
}

#[async_trait::async_trait]
impl Storage for FaultStorage {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        {
            let mut f = self.failing_puts.lock().unwrap();
            if f.0 > 0 {
                f.0 -= 1;
                return Err(storage_error("put", key, f.1, "injected fault"));
            }
        }
        self.inner.put_new(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.slow_down(key).await;
        self.read_fault(key)?;
        let d = self.inner.get(key).await?;
        Ok(self.maybe_corrupt(key, d))
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.slow_down(key).await;
        self.read_fault(key)?;
        let d = self.inner.get_range(key, range).await?;
        Ok(self.maybe_corrupt(key, d))
    }
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.slow_down(key).await;
        self.read_fault(key)?;
        let got = self.inner.get_ranges(key, ranges).await?;
        Ok(got.into_iter().map(|d| self.maybe_corrupt(key, d)).collect())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        if self.refused_deletes.lock().unwrap().as_deref().is_some_and(|p| key.starts_with(p)) {
            return Err(storage_error("delete", key, StorageErrorKind::Permanent, "Access Denied (object locked)"));
        }
        self.inner.delete(key).await
    }
}
