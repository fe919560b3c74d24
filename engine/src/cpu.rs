//! Where CPU work runs: on a rayon pool — the global one unless the caller gives its
//! own (a bound on cores) — awaited from async code without holding a runtime thread.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Cap the CPU work of this process (compression, encryption, hashing) at `threads`
/// threads: rayon's global pool is built with that many (the `process-max` setting,
/// issue 26). Call before any CPU work; a pool already built stays as it is.
pub fn limit_cores(threads: usize) {
    let built = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build_global();
    if let Err(e) = built {
        tracing::debug!("the CPU pool was already started: {e}");
    }
}

/// A handle on the pool CPU work goes to.
#[derive(Clone, Default)]
pub(crate) struct Cpu(Option<Arc<rayon::ThreadPool>>);

impl Cpu {
    /// rayon's global pool.
    pub(crate) fn global() -> Self {
        Self(None)
    }

    /// Run `work` on the pool and wait for it.
    pub(crate) async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = move || {
            let _ = tx.send(work());
        };
        match &self.0 {
            Some(pool) => pool.spawn(job),
            None => rayon::spawn(job),
        }
        rx.await.map_err(|_| Error::Internal("a CPU worker stopped".into()))
    }
}
