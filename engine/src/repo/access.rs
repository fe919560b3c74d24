//! How every command reaches and unlocks a stanza's repository: the location, the
//! stanza, cloud settings and the key (a key file or a passphrase), resolved by the
//! caller from its settings, opened here next to [`Repository::open`].

use std::path::PathBuf;

use crate::crypto::Secret;
use crate::error::{Error, Result};
use crate::repo::{KeyCache, Repository};
use crate::storage::{CloudSettings, DynStorage, RepoLocation};

/// How to reach and unlock a stanza's repository; every command opens it through
/// this. The caller resolves it from its settings.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    /// Its number among the stanza's repositories: 1 for `repo`, 2–4 for `repo2`…`repo4`.
    pub number: usize,
    /// Where the repository lives (`repo`).
    pub location: RepoLocation,
    /// The stanza, below the repository's root.
    pub stanza: String,
    /// How to reach the cloud `location` is in (unused for a local repository).
    pub cloud: CloudSettings,
    /// How to obtain the stanza's master key.
    pub unlock: Unlock,
}

/// How to unlock a stanza: a key file, or a passphrase.
#[derive(Debug, Clone)]
pub enum Unlock {
    /// A key file from `pgcairn key-file`: no key derivation (the per-segment hot path).
    KeyFile(PathBuf),
    /// The passphrase (None for an unencrypted stanza), and this user's key cache
    /// when it is on (`key-cache`).
    Passphrase(Option<Secret>, Option<KeyCache>),
}

impl RepoAccess {
    /// The stanza's storage (with retries), without opening the repository.
    pub fn storage(&self) -> Result<DynStorage> {
        self.location.open(&self.stanza, &self.cloud)
    }

    /// `e`, saying which repository it happened in.
    pub fn context(&self, e: Error) -> Error {
        Error::InRepository { number: self.number, location: self.location.describe(), source: Box::new(e) }
    }

    /// `e`, naming this repository when it is one of `repos` (more than one) and
    /// the error does not name one already: a lone repository's errors read as before.
    pub(crate) fn context_among(&self, repos: usize, e: Error) -> Error {
        match (&e, repos) {
            (_, 0 | 1) | (Error::InRepository { .. }, _) => e,
            _ => self.context(e),
        }
    }

    /// Opens the stanza, unlocking it as `unlock` says.
    pub async fn open(&self) -> Result<Repository> {
        let storage = self.storage()?;
        let opened = match &self.unlock {
            Unlock::KeyFile(path) => Repository::open_with_key_file(storage, &self.stanza, path).await,
            Unlock::Passphrase(p, cache) => {
                Repository::open_cached(storage, &self.stanza, p.as_ref(), cache.as_ref()).await
            }
        };
        match opened {
            // A mistyped stanza: name the ones that exist (a failed listing keeps the error as it is).
            Err(Error::RepoNotInitialised { location, stanza, .. }) => {
                let existing = self.location.list_stanzas(&self.cloud).await.unwrap_or_default();
                Err(Error::RepoNotInitialised { location, stanza, existing })
            }
            other => other,
        }
    }
}
