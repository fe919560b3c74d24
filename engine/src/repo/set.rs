//! A stanza's repositories (`repo`, `repo2` … `repo4`), in order: WAL fans out to all
//! of them, reads fall back from one to the next. Each repository has its own keys and
//! is opened lazily, once, when first needed; one that cannot be opened or read only
//! sends the reader to the next.

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::pg::wal::WalFile;
use crate::repo::access::RepoAccess;
use crate::repo::Repository;

/// The repositories of a stanza, first to last (design brief §18).
#[derive(Debug)]
pub(crate) struct RepoSet {
    members: Vec<Member>,
}

#[derive(Debug)]
struct Member {
    access: RepoAccess,
    opened: OnceCell<Repository>,
}

impl RepoSet {
    /// The set of `repos`, in the order reads try them; at least one.
    pub(crate) fn new(repos: Vec<RepoAccess>) -> Result<Self> {
        if repos.is_empty() {
            return Err(Error::Internal("a repository set without a repository".into()));
        }
        Ok(Self { members: repos.into_iter().map(|access| Member { access, opened: OnceCell::new() }).collect() })
    }

    /// Repository `i` (0-based), opened on first use; a failure is not remembered,
    /// so the next call tries again (an outage may have passed).
    pub(crate) async fn open(&self, i: usize) -> Result<&Repository> {
        let m = self.members.get(i).ok_or_else(|| Error::Internal(format!("no repository {i} in the set")))?;
        m.opened.get_or_try_init(|| m.access.open()).await.map_err(|e| self.tag(i, e))
    }

    /// The first repository that opens; with one repository, its own error.
    pub(crate) async fn open_any(&self) -> Result<&Repository> {
        let mut first_error = None;
        for i in 0..self.members.len() {
            match self.open(i).await {
                Ok(repo) => return Ok(repo),
                Err(e) => {
                    tracing::warn!("{e}; trying the next repository");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Internal("empty repository set".into())))
    }

    /// `e` from repository `i`, naming it when there are several.
    fn tag(&self, i: usize, e: Error) -> Error {
        self.members[i].access.context_among(self.members.len(), e)
    }

    /// A WAL file from the first repository that has a valid copy. A repository that
    /// lacks it, cannot be reached or holds a damaged copy sends the read to the next
    /// (logged). None only when every repository answered that it has no such file;
    /// otherwise, with no valid copy anywhere, the first failure (so an outage is never
    /// taken for the end of the archive).
    pub(crate) async fn get_wal(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(file) = WalFile::parse(name) else { return Ok(None) };
        let mut first_error = None;
        for i in 0..self.members.len() {
            let found = match self.open(i).await {
                Ok(repo) => repo.get_wal(file.timeline(), name).await.map_err(|e| self.tag(i, e)),
                Err(e) => Err(e),
            };
            match found {
                Ok(Some(data)) => {
                    if i > 0 {
                        tracing::warn!("{name} served from repository {}", self.members[i].access.number);
                    }
                    return Ok(Some(data));
                }
                Ok(None) if self.members.len() > 1 => {
                    tracing::info!("{name} is not in repository {}", self.members[i].access.number);
                }
                Ok(None) => {}
                Err(e) => {
                    if self.members.len() > 1 {
                        tracing::warn!("{e}; trying the next repository for {name}");
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }
}

/// Where archive-get reads WAL from: one opened repository, or a [`RepoSet`].
#[async_trait::async_trait]
pub(crate) trait WalSource: Send + Sync {
    /// The WAL file `name`, authenticated; None when it is not archived.
    async fn wal(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// The streamed copy of segment `name` that ends the archive, when there is one
    /// ([`Repository::streamed_wal`]): asked only for the requested segment, never
    /// fetched ahead (it grows while wal-receive runs).
    async fn streamed(&self, name: &str) -> Result<Option<Vec<u8>>>;
}

#[async_trait::async_trait]
impl WalSource for Repository {
    async fn wal(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match WalFile::parse(name) {
            Some(file) => self.get_wal(file.timeline(), name).await,
            None => Ok(None),
        }
    }
    async fn streamed(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.streamed_wal(name).await
    }
}

#[async_trait::async_trait]
impl WalSource for RepoSet {
    async fn wal(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.get_wal(name).await
    }
    /// The first repository with a streamed copy; an error only when none has one.
    async fn streamed(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut first_error = None;
        for i in 0..self.members.len() {
            let found = match self.open(i).await {
                Ok(repo) => repo.streamed_wal(name).await.map_err(|e| self.tag(i, e)),
                Err(e) => Err(e),
            };
            match found {
                Ok(Some(data)) => return Ok(Some(data)),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }
}
