//! BASE_BACKUP over a replication connection, PostgreSQL 15+ framing: after the
//! start-position and tablespace result sets, one COPY OUT stream whose CopyData
//! messages start with a type byte: 'n' new archive (name, tablespace location),
//! 'd' archive or manifest bytes, 'p' progress, 'm' manifest follows. After
//! CopyDone comes the end-position result set.

use bytes::{Buf, Bytes};

use super::lsn::Lsn;
use super::replication::{log_notice, parse_data_row, ReplicationConnection, Row, ServerMessage};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub(crate) struct BaseBackupOptions {
    pub label: String,
    pub fast_checkpoint: bool,
    /// Include the WAL needed for consistency in the main archive.
    pub wal: bool,
    pub verify_checksums: bool,
    /// Ask the server for size estimates (an extra pass over the data directory).
    pub progress: bool,
    /// Let the server wait until its archiver has the backup's last segment.
    pub wait_for_archive: bool,
    /// Send only what changed since the manifest given with [`upload_manifest`]
    /// (PostgreSQL 17+, WAL summaries).
    pub incremental: bool,
}

impl BaseBackupOptions {
    pub(crate) fn command(&self) -> String {
        let label = self.label.replace('\'', "''");
        let mut opts = vec![
            format!("LABEL '{label}'"),
            format!("CHECKPOINT '{}'", if self.fast_checkpoint { "fast" } else { "spread" }),
            "MANIFEST 'yes'".to_string(),
            "MANIFEST_CHECKSUMS 'CRC32C'".to_string(),
            "TABLESPACE_MAP".to_string(),
            format!("VERIFY_CHECKSUMS {}", self.verify_checksums),
        ];
        if self.incremental {
            opts.push("INCREMENTAL".into());
        }
        if self.wal {
            opts.push("WAL".into());
        }
        if self.progress {
            opts.push("PROGRESS".into());
        }
        if !self.wait_for_archive {
            opts.push("WAIT false".into());
        }
        format!("BASE_BACKUP ( {} )", opts.join(", "))
    }
}

/// CopyData messages of at most this many bytes carry an uploaded manifest.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// `UPLOAD_MANIFEST`: hand the server the prior backup's backup_manifest, which the
/// next `BASE_BACKUP ( INCREMENTAL )` on this connection is taken against. The
/// server checks it (version 2, this system's identifier, its checksum).
pub(crate) async fn upload_manifest(conn: &mut ReplicationConnection, manifest: &[u8]) -> Result<()> {
    conn.send_query("UPLOAD_MANIFEST").await?;
    let mut sent = false;
    let mut error = None;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'G' if !sent => {
                for chunk in manifest.chunks(UPLOAD_CHUNK) {
                    conn.send_copy_data(chunk).await?;
                }
                conn.send_copy_done().await?;
                sent = true;
            }
            b'E' => error = Some(conn.server_error(ServerMessage::parse(&f.body))),
            b'N' => log_notice(&ServerMessage::parse(&f.body)),
            b'C' | b'T' | b'D' => {}
            b'Z' => break,
            other => {
                let detail = format!("unexpected message {:?} after UPLOAD_MANIFEST", other as char);
                return Err(Error::Protocol { target: conn.target().to_string(), detail });
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TablespaceInfo {
    /// None for the main data directory.
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Estimated size in bytes (with PROGRESS), else None.
    pub size: Option<u64>,
}

#[derive(Debug)]
pub(crate) enum BackupEvent {
    Start {
        lsn: Lsn,
        timeline: u32,
    },
    Tablespaces(Vec<TablespaceInfo>),
    /// A new tar archive begins: "base.tar" for the data directory, "<oid>.tar" for a tablespace.
    ArchiveStart {
        name: String,
        location: Option<String>,
    },
    ArchiveData(Bytes),
    /// A progress report (ignored: pgcairn counts the bytes itself).
    Progress,
    ManifestData(Bytes),
    /// The backup's stop position.
    End {
        lsn: Lsn,
    },
    Done,
}

/// Drives one BASE_BACKUP command; call [`BaseBackupStream::next`] until `Done`.
pub(crate) struct BaseBackupStream<'a> {
    conn: &'a mut ReplicationConnection,
    result_sets: usize,
    rows: Option<Vec<Row>>,
    in_manifest: bool,
    checksum_warnings: Vec<String>,
    finished: bool,
}

impl<'a> BaseBackupStream<'a> {
    pub(crate) async fn start(conn: &'a mut ReplicationConnection, opts: &BaseBackupOptions) -> Result<Self> {
        conn.send_query(&opts.command()).await?;
        Ok(Self {
            conn,
            result_sets: 0,
            rows: None,
            in_manifest: false,
            checksum_warnings: Vec::new(),
            finished: false,
        })
    }

    fn protocol(&self, d: impl Into<String>) -> Error {
        Error::Protocol { target: self.conn.target().to_string(), detail: d.into() }
    }

    pub(crate) async fn next(&mut self) -> Result<BackupEvent> {
        if self.finished {
            return Ok(BackupEvent::Done);
        }
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'd' => {
                    if let Some(event) = self.copy_data(f.body)? {
                        return Ok(event);
                    }
                }
                b'T' => self.rows = Some(Vec::new()),
                b'D' => {
                    let row = parse_data_row(&f.body).map_err(|e| self.protocol(e))?;
                    match self.rows.as_mut() {
                        Some(rows) => rows.push(row),
                        None => return Err(self.protocol("DataRow without RowDescription")),
                    }
                }
                b'C' => {
                    if let Some(rows) = self.rows.take() {
                        self.result_sets += 1;
                        return self.result_set(rows);
                    }
                }
                b'H' | b'c' => {}
                b'N' => {
                    let m = ServerMessage::parse(&f.body);
                    if m.message.contains("checksum verification failed") {
                        self.checksum_warnings.push(m.message.clone());
                    }
                    log_notice(&m);
                }
                b'E' => {
                    let m = ServerMessage::parse(&f.body);
                    self.drain_to_ready().await;
                    if !self.checksum_warnings.is_empty() {
                        let files = self.checksum_warnings.iter().map(|w| checksum_file(w)).collect();
                        return Err(Error::ChecksumFailure { target: self.conn.target().to_string(), files });
                    }
                    return Err(self.conn.server_error(m));
                }
                b'Z' => {
                    self.finished = true;
                    return Ok(BackupEvent::Done);
                }
                other => return Err(self.protocol(format!("unexpected message {:?} in BASE_BACKUP", other as char))),
            }
        }
    }

    /// One CopyData message of the new-style (PostgreSQL 15+) BASE_BACKUP stream;
    /// `None` for the one that only announces the manifest.
    fn copy_data(&mut self, mut body: Bytes) -> Result<Option<BackupEvent>> {
        if body.is_empty() {
            return Err(self.protocol("empty CopyData"));
        }
        Ok(Some(match body.get_u8() {
            b'd' if self.in_manifest => BackupEvent::ManifestData(body),
            b'd' => BackupEvent::ArchiveData(body),
            b'n' => {
                let mut parts = body.split(|b| *b == 0);
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let loc = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let location = (!loc.is_empty()).then_some(loc);
                BackupEvent::ArchiveStart { name, location }
            }
            b'p' if body.len() >= 8 => BackupEvent::Progress,
            b'm' => {
                self.in_manifest = true;
                return Ok(None);
            }
            other => return Err(self.protocol(format!("unknown CopyData type {:?}", other as char))),
        }))
    }

    fn result_set(&self, rows: Vec<Row>) -> Result<BackupEvent> {
        let lsn_row = |rows: &[Row]| -> Result<(Lsn, u32)> {
            let r = rows.first().ok_or_else(|| self.protocol("empty position result"))?;
            let lsn = r.first().cloned().flatten().unwrap_or_default().parse::<Lsn>().map_err(|e| self.protocol(e))?;
            let tli =
                r.get(1).cloned().flatten().unwrap_or_default().parse().map_err(|_| self.protocol("bad timeline"))?;
            Ok((lsn, tli))
        };
        match self.result_sets {
            1 => lsn_row(&rows).map(|(lsn, timeline)| BackupEvent::Start { lsn, timeline }),
            2 => Ok(BackupEvent::Tablespaces(
                rows.into_iter()
                    .map(|r| TablespaceInfo {
                        oid: r.first().cloned().flatten().and_then(|s| s.parse().ok()),
                        location: r.get(1).cloned().flatten(),
                        size: r.get(2).cloned().flatten().and_then(|s| s.parse::<u64>().ok()).map(|kb| kb * 1024),
                    })
                    .collect(),
            )),
            _ => lsn_row(&rows).map(|(lsn, _)| BackupEvent::End { lsn }),
        }
    }

    async fn drain_to_ready(&mut self) {
        while let Ok(f) = self.conn.read_frame().await {
            if f.tag == b'Z' {
                break;
            }
        }
        self.finished = true;
    }
}

/// The file named in `checksum verification failed in file "base/5/1234", block 0: ...`.
fn checksum_file(warning: &str) -> String {
    warning.split('"').nth(1).map(|s| s.to_string()).unwrap_or_else(|| warning.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_text() {
        let o = BaseBackupOptions {
            label: "it's".into(),
            fast_checkpoint: true,
            wal: true,
            verify_checksums: true,
            progress: false,
            wait_for_archive: true,
            incremental: false,
        };
        let c = o.command();
        assert!(c.starts_with("BASE_BACKUP ( LABEL 'it''s', CHECKPOINT 'fast', MANIFEST 'yes'"), "{c}");
        assert!(c.contains("WAL") && c.contains("TABLESPACE_MAP") && c.contains("VERIFY_CHECKSUMS true"));
        assert!(!c.contains("PROGRESS") && !c.contains("INCREMENTAL"));
        let c = BaseBackupOptions { incremental: true, ..o }.command();
        assert!(c.contains(", INCREMENTAL"), "{c}");
    }

    #[test]
    fn names_file_of_checksum_warning() {
        assert_eq!(
            checksum_file(
                "checksum verification failed in file \"./base/5/16384\", block 0: calculated 1 but expected 2"
            ),
            "./base/5/16384"
        );
    }
}
