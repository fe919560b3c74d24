//! Verify and drill results (§6.8): one sealed object per run, so that `info` and
//! monitoring can show the last proof that backups restore. Only the newest
//! [`RESULTS_KEPT`] of each kind are kept.

use serde::{de::DeserializeOwned, Serialize};

use super::format::RESULT_PREFIX;
use super::Repository;
use crate::error::Result;

/// Results kept per kind; a new one deletes what falls beyond.
const RESULTS_KEPT: usize = 20;

/// The kinds of result objects.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ResultKind {
    Verify,
    Drill,
}

impl ResultKind {
    fn prefix(self) -> String {
        let kind = match self {
            ResultKind::Verify => "verify",
            ResultKind::Drill => "drill",
        };
        format!("{RESULT_PREFIX}{kind}/")
    }
}

impl Repository {
    /// Store a result as `result/<kind>/<UTC time>-<random>` (names sort by time),
    /// then forget the oldest beyond the newest [`RESULTS_KEPT`].
    pub(crate) async fn put_result<T: Serialize>(&self, kind: ResultKind, value: &T) -> Result<String> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.9fZ");
        let key = format!("{}{stamp}-{}", kind.prefix(), hex::encode(crate::crypto::random_bytes::<4>()));
        self.put_meta(&key, value).await?;
        let mut keys = self.result_keys(kind).await?;
        if keys.len() > RESULTS_KEPT {
            keys.truncate(keys.len() - RESULTS_KEPT);
            if let Err(e) = self.storage().delete_many(&keys).await {
                // The result is stored; old ones staying (Object Lock, no delete right) is harmless.
                tracing::warn!("could not delete {} old {kind:?} results: {e}", keys.len());
            }
        }
        Ok(key)
    }

    /// The newest `n` readable results of a kind, newest first. A damaged result is
    /// reported in the log and skipped, never trusted (results are authenticated like
    /// every metadata object).
    pub(crate) async fn latest_results<T: DeserializeOwned>(&self, kind: ResultKind, n: usize) -> Result<Vec<T>> {
        let keys = self.result_keys(kind).await?;
        let mut out = Vec::new();
        for key in keys.iter().rev() {
            if out.len() == n {
                break;
            }
            match self.get_meta(key).await {
                Ok(r) => out.push(r),
                Err(e @ crate::error::Error::Corrupt { .. }) => tracing::warn!("{e}: skipped"),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn result_keys(&self, kind: ResultKind) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self.storage().list(&kind.prefix()).await?.into_iter().map(|o| o.key).collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_are_kept_newest_first_and_pruned() {
        let (_storage, repo) = crate::repo::tests::test_repo(true).await;
        for n in 0..(RESULTS_KEPT + 3) {
            repo.put_result(ResultKind::Drill, &n).await.unwrap();
        }
        let latest: Vec<usize> = repo.latest_results(ResultKind::Drill, 2).await.unwrap();
        assert_eq!(latest, vec![RESULTS_KEPT + 2, RESULTS_KEPT + 1]);
        assert_eq!(repo.result_keys(ResultKind::Drill).await.unwrap().len(), RESULTS_KEPT);
        assert!(repo.latest_results::<usize>(ResultKind::Verify, 5).await.unwrap().is_empty());
    }
}
