//! Progress reporting seam: the engine counts bytes, the CLI draws (or not).

pub trait Progress: Send + Sync {
    /// Work begins; `total` bytes if known.
    fn begin(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Reports nothing (non-interactive runs, tests).
pub struct NoProgress;
impl Progress for NoProgress {}
