//! Physical WAL streaming, the walsender's CopyBoth mode: replication slots
//! (READ_REPLICATION_SLOT, CREATE_REPLICATION_SLOT), TIMELINE_HISTORY,
//! START_REPLICATION, the XLogData and keepalive messages, standby status updates,
//! and the end of a timeline (the server's CopyDone, then the next timeline).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::lsn::Lsn;
use super::replication::{log_notice, ReplicationConnection, Row, ServerMessage};
use crate::error::{Error, Result};

/// What IDENTIFY_SYSTEM says of the server (what wal-receive needs of it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    pub system_identifier: u64,
}

/// A physical replication slot as READ_REPLICATION_SLOT reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Absent,
    /// It exists but holds no WAL: invalidated (`wal_status = lost`) or never reserved.
    Lost,
    /// It holds WAL from `restart` on `timeline`.
    Holds {
        restart: Lsn,
        timeline: u32,
    },
}

/// One message of a running stream.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// WAL bytes starting at `start`.
    Data { start: Lsn, data: Bytes },
    /// The server's WAL end; `reply` when it wants a status update now.
    Keepalive { reply: bool },
    /// The timeline ended; streaming goes on with `next` from `start`.
    TimelineEnd { next: u32, start: Lsn },
}

fn field<'a>(conn: &ReplicationConnection, row: &'a Row, i: usize, what: &str) -> Result<&'a str> {
    row.get(i).and_then(|c| c.as_deref()).ok_or_else(|| conn.protocol(format!("{what} is missing")))
}

fn lsn_field(conn: &ReplicationConnection, row: &Row, i: usize, what: &str) -> Result<Lsn> {
    field(conn, row, i, what)?.parse().map_err(|e: String| conn.protocol(format!("{what}: {e}")))
}

/// A slot name PostgreSQL accepts (lower-case letters, digits, underscore, at most 63).
pub(crate) fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl ReplicationConnection {
    /// Run a replication command that answers one row.
    async fn one_row(&mut self, command: &str) -> Result<Row> {
        let sets = self.simple_query(command).await?;
        sets.first().and_then(|s| s.first()).cloned().ok_or_else(|| self.protocol(format!("{command} returned no row")))
    }

    /// IDENTIFY_SYSTEM: system identifier, timeline and WAL position.
    pub(crate) async fn identity(&mut self) -> Result<Identity> {
        let row = self.one_row("IDENTIFY_SYSTEM").await?;
        let system_identifier = field(self, &row, 0, "systemid")?.parse().map_err(|_| self.protocol("bad systemid"))?;
        Ok(Identity { system_identifier })
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+). `name` must be a valid slot name.
    pub(crate) async fn read_slot(&mut self, name: &str) -> Result<Slot> {
        let row = self.one_row(&format!("READ_REPLICATION_SLOT {name}")).await?;
        match row.first().cloned().flatten().as_deref() {
            None => Ok(Slot::Absent),
            Some("physical") => match (row.get(1).cloned().flatten(), row.get(2).cloned().flatten()) {
                (Some(lsn), Some(tli)) => Ok(Slot::Holds {
                    restart: lsn.parse().map_err(|e: String| self.protocol(e))?,
                    timeline: tli.parse().map_err(|_| self.protocol("bad restart_tli"))?,
                }),
                _ => Ok(Slot::Lost),
            },
            Some(other) => Err(Error::misconfigured(
                crate::error::Misconfig::Server,
                format!("replication slot {name} on {} is a {other} slot", self.target()),
                "wal-receive needs a physical slot: name another one in wal-receive-slot",
            )),
        }
    }

    /// CREATE_REPLICATION_SLOT … PHYSICAL RESERVE_WAL: the slot holds WAL from now
    /// (read it back for where: a physical slot's consistent_point is 0/0).
    pub(crate) async fn create_slot(&mut self, name: &str) -> Result<Slot> {
        self.simple_query(&format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL")).await?;
        self.read_slot(name).await
    }

    /// TIMELINE_HISTORY: the history file of `timeline` (its name and content).
    pub(crate) async fn timeline_history(&mut self, timeline: u32) -> Result<(String, Vec<u8>)> {
        let row = self.one_row(&format!("TIMELINE_HISTORY {timeline}")).await?;
        Ok((field(self, &row, 0, "filename")?.to_string(), field(self, &row, 1, "content")?.as_bytes().to_vec()))
    }
}

/// A replication slot as `pg_replication_slots` shows it (for check and metrics).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotState {
    /// The slot's name.
    pub name: String,
    /// A receiver streams from it now.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL's words).
    pub wal_status: String,
    /// WAL the slot keeps on the server: its end of WAL minus the slot's restart LSN.
    pub retained_bytes: Option<i64>,
}

/// The slot `name` on the server `client` is connected to; None when it does not exist.
pub(crate) async fn slot_state(
    client: &tokio_postgres::Client,
    name: &str,
) -> std::result::Result<Option<SlotState>, tokio_postgres::Error> {
    let sql = "SELECT active, coalesce(wal_status, ''), \
               ((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END) \
                - restart_lsn)::bigint \
               FROM pg_replication_slots WHERE slot_name = $1";
    let row = client.query_opt(sql, &[&name]).await?;
    Ok(row.map(|r| SlotState {
        name: name.to_string(),
        active: r.get(0),
        wal_status: r.get(1),
        retained_bytes: r.get(2),
    }))
}

/// The slot wal-receive uses unless `wal-receive-slot` names another: `pgcairn_<stanza>`.
pub fn default_slot(stanza: &str) -> String {
    let name: String =
        stanza.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("pgcairn_{name}").chars().take(63).collect()
}

/// A running START_REPLICATION stream. [`WalStream::next`] may be cancelled and
/// called again (a timer in a `select!`): what it has read is kept here.
pub(crate) struct WalStream {
    conn: ReplicationConnection,
    /// The server ended the timeline (CopyDone); what followed so far.
    ending: Option<Ending>,
    /// The COPY is over (the server's CopyDone came): no more status updates, which
    /// the server would take for a protocol violation.
    copy_over: bool,
}

#[derive(Default)]
struct Ending {
    done_sent: bool,
    next: Option<(u32, Lsn)>,
    error: Option<Error>,
}

/// Microseconds since 2000-01-01, the walsender protocol's clock.
fn pg_now() -> i64 {
    const PG_EPOCH: Duration = Duration::from_secs(946_684_800);
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    since.saturating_sub(PG_EPOCH).as_micros() as i64
}

impl WalStream {
    /// START_REPLICATION on `slot` from `start` on `timeline`; waits for CopyBoth.
    pub(crate) async fn start(mut conn: ReplicationConnection, slot: &str, timeline: u32, start: Lsn) -> Result<Self> {
        conn.send_query(&format!("START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE {timeline}")).await?;
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                b'W' => return Ok(WalStream { conn, ending: None, copy_over: false }),
                b'N' => log_notice(&ServerMessage::parse(&f.body)),
                b'E' => return Err(conn.server_error(ServerMessage::parse(&f.body))),
                other => {
                    return Err(conn.protocol(format!("unexpected message {:?} after START_REPLICATION", other as char)))
                }
            }
        }
    }

    /// The next message of the stream.
    pub(crate) async fn next(&mut self) -> Result<StreamEvent> {
        if self.ending.is_some() {
            return self.timeline_end().await;
        }
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'd' => return self.copy_data(f.body),
                b'c' => {
                    (self.ending, self.copy_over) = (Some(Ending::default()), true);
                    return self.timeline_end().await;
                }
                b'N' => log_notice(&ServerMessage::parse(&f.body)),
                b'E' => return Err(self.conn.server_error(ServerMessage::parse(&f.body))),
                other => {
                    return Err(self.conn.protocol(format!("unexpected message {:?} in the WAL stream", other as char)))
                }
            }
        }
    }

    fn copy_data(&self, mut body: Bytes) -> Result<StreamEvent> {
        let short = || self.conn.protocol("short message in the WAL stream");
        match body.first().copied() {
            Some(b'w') if body.len() >= 25 => {
                body.advance(1);
                let start = Lsn(body.get_u64());
                body.advance(16); // the server's WAL end and clock
                Ok(StreamEvent::Data { start, data: body })
            }
            Some(b'k') if body.len() >= 18 => Ok(StreamEvent::Keepalive { reply: body[17] != 0 }),
            Some(b'w' | b'k') => Err(short()),
            other => Err(self.conn.protocol(format!("unknown WAL stream message {other:?}"))),
        }
    }

    /// The server ended the timeline: answer CopyDone, read the next timeline.
    async fn timeline_end(&mut self) -> Result<StreamEvent> {
        if !self.ending.as_ref().is_some_and(|e| e.done_sent) {
            // Marked first: cancelled mid-send, the stream is broken anyway (the next
            // read fails and wal-receive reconnects), never sent twice.
            self.ending.get_or_insert_with(Ending::default).done_sent = true;
            self.conn.send_copy_done().await?;
        }
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'D' => {
                    let row = super::replication::parse_data_row(&f.body).map_err(|e| self.conn.protocol(e))?;
                    let tli = field(&self.conn, &row, 0, "next_tli")?;
                    let tli = tli.parse().map_err(|_| self.conn.protocol("bad next_tli"))?;
                    let start = lsn_field(&self.conn, &row, 1, "next_tli_startpos")?;
                    self.ending.get_or_insert_with(Ending::default).next = Some((tli, start));
                }
                b'E' => {
                    let e = self.conn.server_error(ServerMessage::parse(&f.body));
                    self.ending.get_or_insert_with(Ending::default).error = Some(e);
                }
                b'Z' => break,
                _ => {}
            }
        }
        let ending = self.ending.take().unwrap_or_default();
        if let Some(e) = ending.error {
            return Err(e);
        }
        let (next, start) =
            ending.next.ok_or_else(|| self.conn.protocol("the timeline ended without naming the next one"))?;
        Ok(StreamEvent::TimelineEnd { next, start })
    }

    /// A standby status update: `written` received, `flushed` durable (PostgreSQL's
    /// synchronous replication waits on it), nothing applied.
    pub(crate) async fn status(&mut self, written: Lsn, flushed: Lsn) -> Result<()> {
        if self.copy_over {
            return Ok(());
        }
        let mut m = BytesMut::with_capacity(34);
        m.put_u8(b'r');
        m.put_u64(written.0);
        m.put_u64(flushed.0);
        m.put_u64(0);
        m.put_i64(pg_now());
        m.put_u8(0);
        self.conn.send_copy_data(&m).await
    }

    /// Give the connection back after a timeline end (to start the next one).
    pub(crate) fn into_connection(self) -> ReplicationConnection {
        self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_as_postgresql_takes_them() {
        assert!(valid_slot_name("pgcairn_main"));
        for bad in ["", "Main", "a-b", "a b", "x;DROP", &"a".repeat(64)] {
            assert!(!valid_slot_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_clock_counts_from_2000() {
        // 2026 is ~26.9 years after 2000-01-01.
        let years = pg_now() as f64 / 1e6 / 86400.0 / 365.25;
        assert!((20.0..100.0).contains(&years), "{years}");
    }
}
