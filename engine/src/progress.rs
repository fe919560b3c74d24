//! Progress reporting seam: the engine counts bytes, the CLI draws (or not).

/// Receives byte counts from a long operation (backup, restore); every method is a no-op by default.
pub trait Progress: Send + Sync {
    /// Work begins; `total` bytes if known.
    fn begin(&self, _what: &str, _total: Option<u64>) {}
    /// `bytes` more were processed since the last call.
    fn advance(&self, _bytes: u64) {}
    /// The work begun last is done.
    fn finish(&self) {}
}

/// Reports nothing (non-interactive runs, tests).
pub struct NoProgress;
impl Progress for NoProgress {}
