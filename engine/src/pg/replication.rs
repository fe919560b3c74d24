//! A small replication-mode connection on postgres-protocol's message codecs:
//! startup with `replication=true`, authentication (trust, password, md5,
//! SCRAM-SHA-256), simple queries and COPY streams. tokio-postgres cannot do this
//! (no `replication` startup parameter, no CopyOut from simple_query).

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{ConnParams, Host};
use super::tls::{ChannelBindingMode, SslMode};
use super::version;
use crate::error::{Error, Misconfig, Result};

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// rustls reads at most one record (~16 KiB) per call: a 256 KiB buffer under it
    /// saves most read syscalls of a multi-GB stream.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::io::BufReader<TcpStream>>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its tag and body (without the length word).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A memory-unit GUC as SHOW prints it (`16MB`, `1GB`, `8192`; units are powers of
/// 1024, as in PostgreSQL's GUC_UNIT_BYTE settings).
pub(crate) fn parse_guc_bytes(v: &str) -> Option<u64> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Largest backend message accepted. BASE_BACKUP's CopyData pieces and every reply
/// to our queries are far smaller; a larger length is a broken or hostile peer and
/// must not decide how much memory we reserve.
const MAX_MESSAGE_LEN: usize = 64 << 20;

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default)]
pub struct ServerMessage {
    /// ERROR, FATAL, WARNING, NOTICE...: the non-localised `V` field, else `S`.
    pub severity: String,
    /// The SQLSTATE code (`C`).
    pub code: String,
    /// The primary message (`M`).
    pub message: String,
    /// The secondary message (`D`), when sent.
    pub detail: Option<String>,
    /// The server's suggestion (`H`), when sent.
    pub hint: Option<String>,
}

impl ServerMessage {
    /// Decodes a message body; fields missing or malformed are left empty, never an error.
    pub fn parse(mut body: &[u8]) -> Self {
        let mut m = ServerMessage::default();
        while let Some((&field, rest)) = body.split_first() {
            if field == 0 {
                break;
            }
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let value = String::from_utf8_lossy(&rest[..end]).into_owned();
            match field {
                b'V' => m.severity = value,
                b'S' if m.severity.is_empty() => m.severity = value,
                b'C' => m.code = value,
                b'M' => m.message = value,
                b'D' => m.detail = Some(value),
                b'H' => m.hint = Some(value),
                _ => {}
            }
            body = rest.get(end + 1..).unwrap_or(&[]);
        }
        m
    }
}

/// Rows of one result set, text format; NULL is `None`.
pub(crate) type Row = Vec<Option<String>>;

/// Decodes a DataRow message body into its columns; an error says how it is malformed.
pub fn parse_data_row(mut body: &[u8]) -> Result<Row, String> {
    if body.len() < 2 {
        return Err("short DataRow".into());
    }
    // The count is an Int16 the server chose: never size an allocation by it
    // (a negative one became a huge usize); every column takes at least 4 bytes.
    let n = body.get_u16() as usize;
    let mut row = Vec::with_capacity(n.min(body.len() / 4));
    for _ in 0..n {
        if body.len() < 4 {
            return Err("short DataRow".into());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            if body.len() < len {
                return Err("short DataRow".into());
            }
            row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
            body.advance(len);
        }
    }
    Ok(row)
}

/// Result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone)]
pub(crate) struct SystemInfo {
    pub system_identifier: u64,
    /// The server's current timeline.
    pub timeline: u32,
}

pub(crate) struct ReplicationConnection {
    stream: Stream,
    /// tls-server-end-point of the server's certificate, when TLS is on.
    channel_binding: Option<Vec<u8>>,
    /// SCRAM-SHA-256-PLUS was chosen; `bound` once the server's final signature
    /// verified (channel_binding=require needs the latter, not just the attempt).
    plus: bool,
    bound: bool,
    /// The SCRAM exchange ended with a verified server signature.
    scram_done: bool,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    params: HashMap<String, String>,
    server_version_num: u32,
}

async fn open_socket(p: &ConnParams) -> Result<Stream> {
    let connect = async {
        match &p.host {
            Host::Tcp(h) => TcpStream::connect((h.as_str(), p.port)).await.map(|s| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Host::Unix(dir) => UnixStream::connect(dir.join(format!(".s.PGSQL.{}", p.port))).await.map(Stream::Unix),
        }
    };
    match tokio::time::timeout(p.connect_timeout, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Error::Connect { target: p.target(), detail: e.to_string() }),
        Err(_) => {
            Err(Error::Connect { target: p.target(), detail: format!("timed out after {:?}", p.connect_timeout) })
        }
    }
}

/// SSLRequest, then the TLS handshake when the server agrees; a server that does not
/// is an error only when sslmode requires TLS. Returns the stream and the
/// certificate's tls-server-end-point for SCRAM channel binding.
async fn negotiate_tls(mut tcp: TcpStream, p: &ConnParams) -> Result<(Stream, Option<Vec<u8>>)> {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]; // 80877103
    let target = p.target();
    // Certificates and keys are read first: a bad file fails whatever the server says.
    let config = super::tls::client_config(&p.tls)?;
    let io = |e: std::io::Error| Error::Connect { target: target.clone(), detail: e.to_string() };
    tcp.write_all(&SSL_REQUEST).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {}
        b'N' if p.tls.requires_tls() => {
            let problem =
                format!("{target} does not accept TLS connections, and sslmode={} requires TLS", p.tls.mode.as_str());
            let hint = "turn TLS on in postgresql.conf (ssl = on, ssl_cert_file, ssl_key_file) and reload, or connect with sslmode=prefer on a trusted network";
            return Err(Error::misconfigured(Misconfig::Server, problem, hint));
        }
        b'N' => return Ok((Stream::Tcp(tcp), None)),
        other => return Err(Error::Protocol { target, detail: format!("unexpected answer {other:#x} to SSLRequest") }),
    }
    let Host::Tcp(host) = &p.host else { return Err(Error::Internal("TLS over a Unix socket".into())) };
    let name = super::tls::server_name(host)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let buffered = tokio::io::BufReader::with_capacity(256 * 1024, tcp);
    let handshake = connector.connect(name, buffered).await;
    let tls = handshake.map_err(|e| super::tls::handshake_error(&target, host, &e, p.tls.mode))?;
    let session = tls.get_ref().1;
    let binding = session.peer_certificates().and_then(|c| c.first()).and_then(|c| super::tls::tls_server_end_point(c));
    tracing::info!(
        "TLS with {target}: {:?}, {:?}, sslmode={}",
        session.protocol_version(),
        session.negotiated_cipher_suite().map(|c| c.suite()),
        p.tls.mode.as_str()
    );
    Ok((Stream::Tls(Box::new(tls)), binding))
}

impl ReplicationConnection {
    pub(crate) async fn connect(p: &ConnParams) -> Result<Self> {
        // sslmode=allow: plain first, TLS when pg_hba.conf wants it (libpq's order).
        let first_tls = p.tls.tries_tls() && p.tls.mode != SslMode::Allow;
        match Self::connect_with(p, first_tls).await {
            Err(Error::AuthRejected { detail, .. })
                if p.tls.mode == SslMode::Allow && detail.contains("no encryption") =>
            {
                Self::connect_with(p, true).await
            }
            other => other,
        }
    }

    async fn connect_with(p: &ConnParams, try_tls: bool) -> Result<Self> {
        let target = p.target();
        // connect_timeout covers the TLS negotiation too: a silent peer must not hang
        // a cron job (review finding).
        let negotiate = async {
            match open_socket(p).await? {
                // libpq never uses TLS on a Unix socket, whatever sslmode says.
                Stream::Tcp(tcp) if try_tls => negotiate_tls(tcp, p).await,
                plain => Ok((plain, None)),
            }
        };
        let timed_out =
            || Error::Connect { target: target.clone(), detail: format!("timed out after {:?}", p.connect_timeout) };
        let (stream, channel_binding) =
            tokio::time::timeout(p.connect_timeout, negotiate).await.map_err(|_| timed_out())??;
        let mut conn = Self {
            stream,
            channel_binding,
            plus: false,
            bound: false,
            scram_done: false,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::new(),
            target,
            params: HashMap::new(),
            server_version_num: 0,
        };
        conn.startup(p).await?;
        tracing::info!("connected to {} (PostgreSQL {})", conn.target, conn.server_version_num);
        Ok(conn)
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// server_version_num, e.g. 170004.
    pub(crate) fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    pub(super) fn protocol(&self, detail: impl Into<String>) -> Error {
        Error::Protocol { target: self.target.clone(), detail: detail.into() }
    }

    async fn flush(&mut self) -> Result<()> {
        let buf = self.wbuf.split();
        self.stream
            .write_all(&buf)
            .await
            .map_err(|e| Error::Connect { target: self.target.clone(), detail: e.to_string() })?;
        self.stream.flush().await.map_err(|e| Error::Connect { target: self.target.clone(), detail: e.to_string() })
    }

    /// Read one whole backend message. The tag is peeked before parsing so tags
    /// that postgres-protocol's parser does not know ('W', 'v') pass through.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if self.rbuf.len() >= 5 {
                // Invariant: a 4-byte range of a buffer checked to hold at least 5 bytes.
                #[allow(clippy::expect_used)]
                let len = u32::from_be_bytes(self.rbuf[1..5].try_into().expect("4 bytes")) as usize;
                if !(4..=MAX_MESSAGE_LEN).contains(&len) {
                    return Err(self.protocol(format!("message length {len} is invalid")));
                }
                if self.rbuf.len() > len {
                    let mut msg = self.rbuf.split_to(1 + len);
                    let tag = msg[0];
                    msg.advance(5);
                    return Ok(Frame { tag, body: msg.freeze() });
                }
                self.rbuf.reserve(1 + len - self.rbuf.len());
            }
            if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
                self.rbuf.reserve(256 * 1024);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| Error::Connect { target: self.target.clone(), detail: e.to_string() })?;
            if n == 0 {
                return Err(Error::Connect {
                    target: self.target.clone(),
                    detail: "the server closed the connection".into(),
                });
            }
        }
    }

    async fn startup(&mut self, p: &ConnParams) -> Result<()> {
        let params =
            [("user", p.user.as_str()), ("replication", "true"), ("application_name", p.application_name.as_str())];
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => self.authenticate(p, f.body, &mut scram).await?,
                b'S' => {
                    let mut parts = f.body.split(|b| *b == 0);
                    if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                        self.params
                            .insert(String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned());
                    }
                }
                b'K' | b'N' | b'v' => {}
                b'E' => return Err(self.startup_error(ServerMessage::parse(&f.body), p)),
                b'Z' => break,
                other => return Err(self.protocol(format!("unexpected message {:?} during startup", other as char))),
            }
        }
        self.check_server_version()
    }

    /// Answer one authentication request: cleartext or md5 password, or a step of
    /// SCRAM-SHA-256 (whose state lives in `scram` across messages).
    async fn authenticate(&mut self, p: &ConnParams, mut body: Bytes, scram: &mut Option<ScramSha256>) -> Result<()> {
        if body.len() < 4 {
            return Err(self.protocol("short authentication message"));
        }
        match body.get_i32() {
            // A server that says "ok" in the middle of SCRAM skipped proving it knows
            // the password (regression test in this module's tests).
            0 if scram.is_some() && !self.scram_done => {
                return Err(self.protocol("the server ended authentication before SCRAM finished"))
            }
            0 if p.tls.channel_binding == ChannelBindingMode::Require && !self.bound => {
                return Err(self.unbound("without SCRAM (trust, peer or cert authentication)"))
            }
            0 => return Ok(()),
            3 | 5 if p.tls.channel_binding == ChannelBindingMode::Require => {
                return Err(self.unbound("with a password or md5 exchange"))
            }
            3 => {
                let pw = self.password(p)?;
                frontend::password_message(pw.as_bytes(), &mut self.wbuf).map_err(|e| self.protocol(e.to_string()))?;
            }
            5 => {
                let salt: [u8; 4] =
                    body.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| self.protocol("short md5 salt"))?;
                let pw = self.password(p)?;
                let hash = postgres_protocol::authentication::md5_hash(p.user.as_bytes(), pw.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                    .map_err(|e| self.protocol(e.to_string()))?;
            }
            10 => {
                let mechs: Vec<&[u8]> = body.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                if !mechs.iter().any(|m| *m == b"SCRAM-SHA-256") {
                    return Err(self.protocol("server offers no SASL mechanism pgcairn supports (SCRAM-SHA-256)"));
                }
                let plus_offered = mechs.iter().any(|m| *m == b"SCRAM-SHA-256-PLUS");
                let (mechanism, binding) = self.scram_binding(p, plus_offered)?;
                let pw = self.password(p)?;
                let s = ScramSha256::new(pw.as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
                    .map_err(|e| self.protocol(e.to_string()))?;
                *scram = Some(s);
            }
            11 => {
                let s = scram.as_mut().ok_or_else(|| self.protocol("SASL continue without start"))?;
                s.update(&body).map_err(|e| self.protocol(format!("SCRAM: {e}")))?;
                let msg = s.message().to_vec();
                frontend::sasl_response(&msg, &mut self.wbuf).map_err(|e| self.protocol(e.to_string()))?;
            }
            12 => {
                let s = scram.as_mut().ok_or_else(|| self.protocol("SASL final without start"))?;
                s.finish(&body)
                    .map_err(|e| self.protocol(format!("the server's SCRAM signature does not verify: {e}")))?;
                self.scram_done = true;
                self.bound = self.plus;
                return Ok(());
            }
            other => return Err(self.protocol(format!("unsupported authentication request {other}"))),
        }
        self.flush().await
    }

    /// SCRAM-SHA-256-PLUS over TLS when the server offers it (channel_binding
    /// prefer/require), else plain SCRAM saying whether we could have bound.
    fn scram_binding(&mut self, p: &ConnParams, plus_offered: bool) -> Result<(&'static str, ChannelBinding)> {
        let mode = p.tls.channel_binding;
        let tls = matches!(self.stream, Stream::Tls(_));
        match (&self.channel_binding, plus_offered) {
            (Some(hash), true) if mode != ChannelBindingMode::Disable => {
                self.plus = true;
                Ok(("SCRAM-SHA-256-PLUS", ChannelBinding::tls_server_end_point(hash.clone())))
            }
            _ if mode == ChannelBindingMode::Require => Err(self.unbound("without offering SCRAM-SHA-256-PLUS")),
            // We could bind (TLS) but the server did not offer it: say so ('y').
            _ if tls && mode != ChannelBindingMode::Disable => Ok(("SCRAM-SHA-256", ChannelBinding::unrequested())),
            _ => Ok(("SCRAM-SHA-256", ChannelBinding::unsupported())),
        }
    }

    fn unbound(&self, how: &str) -> Error {
        let tls = if matches!(self.stream, Stream::Tls(_)) { "" } else { " (and the connection is not TLS)" };
        Error::misconfigured(
            Misconfig::Server,
            format!("channel_binding=require, but {} authenticates {how}{tls}", self.target),
            "use a `hostssl ... scram-sha-256` line in pg_hba.conf and a password stored as SCRAM (password_encryption = scram-sha-256), or channel_binding=prefer",
        )
    }

    /// Refuse a server outside the majors pgcairn knows (their WAL and files differ).
    fn check_server_version(&mut self) -> Result<()> {
        let version = self.params.get("server_version").cloned().unwrap_or_default();
        self.server_version_num = version::parse_server_version(&version)
            .ok_or_else(|| self.protocol(format!("cannot parse server_version {version:?}")))?;
        let major = version::major_of(self.server_version_num);
        if !(version::MIN_MAJOR..=version::MAX_MAJOR).contains(&major) {
            let problem = format!("{} runs PostgreSQL {version}", self.target);
            let hint = format!("pgcairn supports PostgreSQL {} to {}", version::MIN_MAJOR, version::MAX_MAJOR);
            return Err(Error::misconfigured(Misconfig::Server, problem, hint));
        }
        Ok(())
    }

    fn password(&self, p: &ConnParams) -> Result<String> {
        p.password.as_ref().map(|s| s.expose().to_string()).ok_or_else(|| Error::AuthRejected {
            target: self.target.clone(),
            detail: "the server asks for a password and none was given".into(),
            hint: "put it in ~/.pgpass (host:port:replication:user:password, mode 0600) or PGPASSWORD; never in the `pg` setting on a command line".into(),
        })
    }

    fn startup_error(&self, m: ServerMessage, p: &ConnParams) -> Error {
        let user = &p.user;
        let hint = match m.code.as_str() {
            "28000" | "28P01" => startup_hint(&m.message, &m.code, p, super::conninfo::os_user_name().as_deref()),
            "42501" => format!("grant the attribute: ALTER ROLE {user} REPLICATION (or use a role that has it)"),
            "53300" => {
                "the server has no free WAL sender slot: raise max_wal_senders or wait for other clients".to_string()
            }
            "57P03" => return Error::Connect { target: self.target.clone(), detail: m.message },
            _ => {
                return Error::Server { target: self.target.clone(), code: m.code, message: m.message, hint: m.hint };
            }
        };
        Error::AuthRejected { target: self.target.clone(), detail: m.message, hint }
    }

    /// Turn an ErrorResponse received after startup into an error.
    pub(crate) fn server_error(&self, m: ServerMessage) -> Error {
        let message = match m.detail {
            Some(d) => format!("{}: {d}", m.message),
            None => m.message,
        };
        Error::Server { target: self.target.clone(), code: m.code, message, hint: m.hint }
    }

    /// Send a simple query without waiting for its result (for COPY streams).
    pub(crate) async fn send_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await
    }

    /// Run a simple query; returns the rows of every result set.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Row>>> {
        self.send_query(sql).await?;
        let mut sets: Vec<Vec<Row>> = Vec::new();
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'T' => sets.push(Vec::new()),
                b'D' => {
                    let row = parse_data_row(&f.body).map_err(|e| self.protocol(e))?;
                    sets.last_mut().ok_or_else(|| self.protocol("DataRow without RowDescription"))?.push(row);
                }
                b'E' => error = Some(self.server_error(ServerMessage::parse(&f.body))),
                b'N' => log_notice(&ServerMessage::parse(&f.body)),
                b'C' | b'I' | b'S' => {}
                b'Z' => break,
                other => return Err(self.protocol(format!("unexpected message {:?} in simple query", other as char))),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(sets),
        }
    }

    /// `SHOW name` (allowed on replication connections).
    pub(crate) async fn show(&mut self, name: &str) -> Result<String> {
        let sets = self.simple_query(&format!("SHOW {name}")).await?;
        sets.first()
            .and_then(|s| s.first())
            .and_then(|r| r.first().cloned().flatten())
            .ok_or_else(|| self.protocol(format!("SHOW {name} returned no value")))
    }

    /// wal_segment_size in bytes ("16MB" → 16777216).
    pub(crate) async fn wal_segment_size(&mut self) -> Result<u32> {
        let v = self.show("wal_segment_size").await?;
        parse_guc_bytes(&v)
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| self.protocol(format!("cannot parse wal_segment_size {v:?}")))
    }

    pub(crate) async fn identify_system(&mut self) -> Result<SystemInfo> {
        let sets = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row =
            sets.first().and_then(|s| s.first()).ok_or_else(|| self.protocol("IDENTIFY_SYSTEM returned no row"))?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemInfo {
            system_identifier: field(0).parse().map_err(|_| self.protocol("bad systemid"))?,
            timeline: field(1).parse().map_err(|_| self.protocol("bad timeline"))?,
        })
    }

    /// Send one CopyData message (the client's half of a CopyBoth stream).
    pub(super) async fn send_copy_data(&mut self, data: &[u8]) -> Result<()> {
        frontend::CopyData::new(data).map_err(|e| self.protocol(e.to_string()))?.write(&mut self.wbuf);
        self.flush().await
    }

    /// End the client's half of a COPY stream.
    pub(super) async fn send_copy_done(&mut self) -> Result<()> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await
    }

    pub(crate) async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
    }
}

/// Server WARNINGs are the operator's business; NOTICEs (e.g. "WAL archiving is
/// not enabled" when the backup carries its WAL anyway) only at info level.
pub(crate) fn log_notice(m: &ServerMessage) {
    if m.severity == "WARNING" {
        tracing::warn!("server warning: {}", m.message);
    } else {
        tracing::info!("server {}: {}", m.severity.to_lowercase(), m.message);
    }
}

/// What to do about an authentication refusal (SQLSTATE 28000/28P01), from the
/// server's message (English; other languages get the generic hint). Regression
/// (issue 14): an unknown role got a password hint, and a socket connection
/// without a pg_hba line got a `host` line to add.
pub(crate) fn startup_hint(message: &str, code: &str, p: &ConnParams, os_user: Option<&str>) -> String {
    let user = &p.user;
    let reload = "then reload PostgreSQL (SELECT pg_reload_conf())";
    let message = message.to_lowercase();
    if code == "28P01" || message.contains("password authentication failed") {
        return format!(
            "check the password of role {user} (~/.pgpass with database field `replication`, or PGPASSWORD)"
        );
    }
    if message.contains("does not exist") {
        let me = os_user.unwrap_or("?");
        return format!("create the role (CREATE ROLE {user} LOGIN REPLICATION) or connect as an existing one with user= in `pg` or PGUSER (the default is the OS user, {me})");
    }
    if message.contains("not permitted to log in") {
        return format!("allow it: ALTER ROLE {user} LOGIN");
    }
    if message.contains("peer authentication failed") || message.contains("ident authentication failed") {
        let me = os_user.unwrap_or("?");
        return format!("peer authentication needs the OS user to match the role: this runs as {me}, not {user}; run pgcairn as {user}, map {me} to {user} in pg_ident.conf, or use scram-sha-256 on that pg_hba.conf line");
    }
    if message.contains("rejects") {
        return format!("a `reject` line in pg_hba.conf matches this connection first: change or move it, {reload}");
    }
    if message.contains("no pg_hba.conf entry") {
        let line = match &p.host {
            Host::Unix(_) if os_user == Some(user.as_str()) => format!("local replication {user} peer"),
            Host::Unix(_) => format!("local replication {user} scram-sha-256"),
            Host::Tcp(_) => {
                let addr = message.split("host \"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("ADDRESS");
                let mask = if addr.contains(':') { "128" } else { "32" };
                format!("host replication {user} {addr}/{mask} scram-sha-256")
            }
        };
        return format!("add `{line}` to pg_hba.conf (a line for database \"all\" does not cover replication connections), {reload}");
    }
    format!(
        "role {user} was refused: check pg_hba.conf (the server log says which line) and the role's password, {reload}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 15 review): a server (or a man in the middle) answering
    /// AuthenticationOk right after our SCRAM-SHA-256(-PLUS) first message was taken
    /// as authenticated — and counted as channel-bound under channel_binding=require —
    /// without ever proving it knows the password. Now refused.
    #[tokio::test]
    async fn authentication_ok_in_the_middle_of_scram_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = UnixStream::pair().unwrap();
        let fake = tokio::spawn(async move {
            let mut len = [0u8; 4];
            server.read_exact(&mut len).await.unwrap(); // startup message
            let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            server.read_exact(&mut rest).await.unwrap();
            let sasl = b"SCRAM-SHA-256\0\0";
            let mut msg = vec![b'R'];
            msg.extend(((8 + sasl.len()) as u32).to_be_bytes());
            msg.extend(10i32.to_be_bytes());
            msg.extend(sasl);
            server.write_all(&msg).await.unwrap();
            let mut head = [0u8; 5]; // our SASLInitialResponse
            server.read_exact(&mut head).await.unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4];
            server.read_exact(&mut rest).await.unwrap();
            server.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).await.unwrap(); // AuthenticationOk
            server
        });
        let p = ConnParams::resolve_with("host=/nonexistent user=u password=secret", &|_| None).unwrap();
        let mut conn = ReplicationConnection {
            stream: Stream::Unix(client),
            channel_binding: None,
            plus: false,
            bound: false,
            scram_done: false,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            target: "fake".into(),
            params: HashMap::new(),
            server_version_num: 0,
        };
        let err = conn.startup(&p).await.unwrap_err().to_string();
        assert!(err.contains("ended authentication before SCRAM finished"), "{err}");
        drop(fake.await);
    }

    /// The name a client sends in its TLS ClientHello (SNI), as a fake server reads it.
    async fn sni_sent(conninfo: &str) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let fake = tokio::spawn(async move {
            let mut request = [0u8; 8];
            server.read_exact(&mut request).await.unwrap();
            server.write_all(b"S").await.unwrap();
            let mut acceptor = rustls::server::Acceptor::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its ClientHello");
                acceptor.read_tls(&mut &buf[..n]).unwrap();
                if let Some(accepted) = acceptor.accept().map_err(|(e, _)| e).unwrap() {
                    return accepted.client_hello().server_name().map(str::to_string);
                }
            }
        });
        let p = ConnParams::resolve_with(conninfo, &|_| None).unwrap();
        let negotiate = negotiate_tls(client, &p);
        let both = async { tokio::join!(fake, negotiate) }; // the handshake fails: no certificate
        let (sni, _) = tokio::time::timeout(std::time::Duration::from_secs(30), both).await.expect("hung");
        sni.unwrap()
    }

    /// Issue 15: sslsni as libpq — the host name in the handshake unless sslsni=0,
    /// never an IP address.
    #[tokio::test]
    async fn sslsni_sends_the_host_name_unless_turned_off() {
        assert_eq!(sni_sent("host=db.example.com sslmode=require").await.as_deref(), Some("db.example.com"));
        assert_eq!(sni_sent("host=db.example.com sslmode=require sslsni=0").await, None);
        assert_eq!(sni_sent("host=127.0.0.1 sslmode=require sslsni=1").await, None);
    }

    /// Issue 14: each refusal gets the fix that applies to it (messages as PostgreSQL 15-18 word them).
    #[test]
    fn startup_hints_name_the_fix() {
        let none = |_: &str| None;
        let socket = ConnParams::resolve_with("host=/run/postgresql user=backup", &none).unwrap();
        let tcp = ConnParams::resolve_with("host=db.example user=backup", &none).unwrap();
        let hint = |m: &str, p: &ConnParams, os: &str| startup_hint(m, "28000", p, Some(os));
        let unknown = hint("role \"backup\" does not exist", &socket, "postgres");
        assert!(unknown.contains("CREATE ROLE backup") && !unknown.contains("password"), "{unknown}");
        let no_line =
            "no pg_hba.conf entry for replication connection from host \"[local]\", user \"backup\", no encryption";
        assert!(hint(no_line, &socket, "postgres").contains("`local replication backup scram-sha-256`"));
        assert!(hint(no_line, &socket, "backup").contains("`local replication backup peer`"));
        let no_line_tcp =
            "no pg_hba.conf entry for replication connection from host \"10.1.2.3\", user \"backup\", no encryption";
        assert!(hint(no_line_tcp, &tcp, "x").contains("`host replication backup 10.1.2.3/32 scram-sha-256`"));
        assert!(hint("Peer authentication failed for user \"backup\"", &socket, "root").contains("runs as root"));
        assert!(hint("pg_hba.conf rejects replication connection for host", &tcp, "x").contains("`reject` line"));
        assert!(hint("role \"backup\" is not permitted to log in", &tcp, "x").contains("ALTER ROLE backup LOGIN"));
        let pw = startup_hint("password authentication failed for user \"backup\"", "28P01", &tcp, None);
        assert!(pw.contains("password of role backup"), "{pw}");
    }

    #[test]
    fn guc_sizes_as_show_prints_them() {
        assert_eq!(parse_guc_bytes("16MB"), Some(16 << 20));
        assert_eq!(parse_guc_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_guc_bytes("8192"), Some(8192));
        assert_eq!(parse_guc_bytes("64kB"), Some(64 << 10));
        assert_eq!(parse_guc_bytes("16MiB"), None);
        assert_eq!(parse_guc_bytes("MB"), None);
    }

    /// Regression: a DataRow whose Int16 column count was negative became a huge
    /// usize that sized `Vec::with_capacity` (found reviewing the decoders).
    #[test]
    fn negative_column_count_is_an_error_not_an_allocation() {
        let body = [0xff, 0xff, 0, 0, 0, 1, b'x'];
        assert!(parse_data_row(&body).is_err());
    }
}
