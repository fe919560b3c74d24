//! Where CPU work runs: on a rayon pool — the global one unless the caller gives its
//! own (a bound on cores) — awaited from async code without holding a runtime thread.

use std::sync::Arc;

use crate::error::{Error, Result};

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
