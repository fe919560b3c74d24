//! The segment being received, and how it reaches the repositories: its received
//! start as a streamed object (`<segment>.<upto>.stream`, refreshed), then, once
//! whole, as the same segment object archive-push writes, after which its streamed
//! objects are deleted.

use crate::error::{Error, Result};
use crate::pg::lsn::Lsn;
use crate::pg::version;
use crate::pg::wal::{segment_name, streamed_name, validate_segment, WalFile};
use crate::repo::wal::{GrowingWal, PushOutcome};
use crate::repo::Repository;

/// One segment's bytes as received: the whole segment's size, zeros after `upto`.
pub(super) struct Segment {
    pub timeline: u32,
    pub segno: u64,
    data: Vec<u8>,
    /// Bytes received.
    pub upto: usize,
    /// Bytes durable in every repository.
    pub stored: usize,
    /// The streamed object last stored for this segment.
    stored_name: Option<String>,
    /// Per repository, the streamed object's encoding so far (only new bytes are
    /// compressed at each store).
    encoders: Vec<GrowingWal>,
}

impl Segment {
    pub(super) fn new(timeline: u32, segno: u64, seg_size: u32) -> Self {
        let data = vec![0; seg_size as usize];
        Segment { timeline, segno, data, upto: 0, stored: 0, stored_name: None, encoders: Vec::new() }
    }

    /// Go on with the following segment (same buffer, zeroed).
    pub(super) fn next_segment(&mut self) {
        self.data.fill(0);
        (self.segno, self.upto, self.stored, self.stored_name) = (self.segno + 1, 0, 0, None);
        self.encoders.clear();
    }

    fn seg_size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The LSN just after the received bytes.
    pub(super) fn received(&self) -> Lsn {
        Lsn(self.segno * self.seg_size() + self.upto as u64)
    }

    /// The LSN just after the durable bytes.
    pub(super) fn durable(&self) -> Lsn {
        Lsn(self.segno * self.seg_size() + self.stored as u64)
    }

    pub(super) fn is_full(&self) -> bool {
        self.upto == self.data.len()
    }

    pub(super) fn has_unstored(&self) -> bool {
        self.upto > self.stored
    }

    /// Take as much of `data` (starting at `start`) as fits in this segment; returns
    /// how many bytes were taken. WAL must arrive in order, without gaps.
    pub(super) fn append(&mut self, start: Lsn, data: &[u8]) -> Result<usize> {
        if start != self.received() {
            return Err(Error::Internal(format!(
                "the server sent WAL from {start}, expected {}: the stream skipped or repeated WAL",
                self.received()
            )));
        }
        let n = data.len().min(self.data.len() - self.upto);
        self.data[self.upto..self.upto + n].copy_from_slice(&data[..n]);
        self.upto += n;
        Ok(n)
    }

    fn name(&self) -> String {
        segment_name(self.timeline, self.segno, self.data.len() as u32)
    }

    /// Refuse WAL of another cluster or version before it reaches the repository.
    fn validate(&self, repo: &Repository) -> Result<()> {
        validate(&self.data, &self.name(), repo)
    }

    /// Store the received start as a streamed object in every repository, then
    /// delete the one it replaces. Durable when this returns.
    pub(super) async fn store_streamed(&mut self, repos: &[Repository], level: i32) -> Result<()> {
        if !self.has_unstored() || self.upto < crate::pg::wal::LONG_HEADER_LEN {
            return Ok(());
        }
        let (upto, started) = (self.upto as u32, std::time::Instant::now());
        let name = streamed_name(self.timeline, self.segno, upto, self.data.len() as u32);
        self.put_streamed(repos, &name, level).await?;
        if let Some(old) = self.stored_name.replace(name.clone()) {
            for repo in repos {
                repo.delete_wal(&[(old.clone(), 0)]).await?;
            }
        }
        self.stored = upto as usize;
        tracing::debug!("stored {name} in {} µs", started.elapsed().as_micros());
        Ok(())
    }

    /// Store the whole segment as archive-push would, then delete its streamed objects.
    pub(super) async fn store_complete(&mut self, repos: &[Repository], level: i32) -> Result<()> {
        let name = self.name();
        self.put_everywhere(repos, &name, &self.data, level).await?;
        self.stored = self.upto;
        for repo in repos {
            let parts = repo.streamed_parts(self.timeline, &name).await?;
            let names: Vec<(String, u64)> = parts.into_iter().map(|(n, _, size)| (n, size)).collect();
            repo.delete_wal(&names).await?;
        }
        tracing::info!("received {name} and stored it in the archive");
        Ok(())
    }

    /// Only the received bytes, and only the new ones compressed: a store costs what
    /// arrived since the last one, not the segment.
    async fn put_streamed(&mut self, repos: &[Repository], name: &str, level: i32) -> Result<()> {
        let segment = self.name();
        if self.encoders.len() != repos.len() {
            self.encoders = repos.iter().map(GrowingWal::new).collect();
        }
        for (repo, encoder) in repos.iter().zip(self.encoders.iter_mut()) {
            validate(&self.data, &segment, repo)?;
            let bytes = &self.data[..self.upto];
            repo.put_wal_growing(self.timeline, name, bytes, encoder, level).await?;
        }
        Ok(())
    }

    async fn put_everywhere(&self, repos: &[Repository], name: &str, bytes: &[u8], level: i32) -> Result<()> {
        for repo in repos {
            self.validate(repo)?;
            match repo.put_wal(self.timeline, name, bytes, level).await {
                Ok(PushOutcome::Stored | PushOutcome::AlreadyArchived) => {}
                // archive_command got there first with other bytes: keep its copy.
                Err(Error::WalMismatch { .. }) => {
                    tracing::error!(
                        "{name} differs from the copy already archived in {}; that copy is kept",
                        repo.location()
                    )
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Check a segment (`data`, its whole size) named `name` against the stanza.
fn validate(data: &[u8], name: &str, repo: &Repository) -> Result<()> {
    let cfg = repo.config();
    let file = WalFile::parse(name).ok_or_else(|| Error::Internal(format!("{name} is not a segment name")))?;
    let major = version::major_of(cfg.pg_version);
    validate_segment(&file, data, cfg.system_identifier, major, cfg.wal_segment_size)
        .map_err(|reason| Error::WalRefused { name: name.to_string(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_is_taken_in_order_up_to_the_segment_end() {
        let mut seg = Segment::new(1, 3, 1 << 20);
        let start = 3 << 20;
        assert_eq!(seg.append(Lsn(start), &[1; 1000]).unwrap(), 1000);
        assert!(seg.append(Lsn(start + 2000), &[2; 10]).is_err(), "a gap in the stream");
        assert!(seg.append(Lsn(start), &[2; 10]).is_err(), "WAL sent twice");
        // Data crossing the segment's end: only this segment's part is taken.
        assert_eq!(seg.append(Lsn(start + 1000), &vec![3; 1 << 20]).unwrap(), (1 << 20) - 1000);
        assert!(seg.is_full() && seg.has_unstored());
        assert_eq!(seg.received(), Lsn(4 << 20));
        seg.next_segment();
        assert_eq!((seg.segno, seg.upto, seg.received()), (4, 0, Lsn(4 << 20)));
        assert!(seg.data.iter().all(|b| *b == 0), "the next segment starts from zeros");
    }
}
