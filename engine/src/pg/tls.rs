//! TLS to PostgreSQL with libpq's settings and their meaning: `sslmode` (disable,
//! allow, prefer — the default —, require, verify-ca, verify-full), `sslrootcert` (a
//! file, or `system`), `sslcert`/`sslkey` (client certificates), `sslcrl`, `sslsni`,
//! `ssl_min_protocol_version` and `channel_binding`, from the connection string, the
//! `PGSSL*`/`PGCHANNELBINDING` variables and libpq's defaults (`~/.postgresql/…`).
//! rustls with the ring provider (architecture.md says why); the replication client
//! and ordinary SQL connections (check, metrics) use the same configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS when the server refuses the plain connection.
    Allow,
    /// TLS when the server offers it (the default).
    Prefer,
    /// TLS or nothing; the certificate is not checked (unless a root certificate
    /// file exists: then as verify-ca, as libpq does).
    Require,
    /// TLS, the certificate chain checked against sslrootcert.
    VerifyCa,
    /// verify-ca, and the host name must be one of the certificate's names.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Its name in the connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// libpq's channel_binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never SCRAM-SHA-256-PLUS.
    Disable,
    /// SCRAM-SHA-256-PLUS when TLS is used and the server offers it (the default).
    Prefer,
    /// Only SCRAM-SHA-256-PLUS: trust, md5, password and plain SCRAM are refused.
    Require,
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`, PostgreSQL 16+).
    System,
}

/// The TLS settings of one connection, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// sslmode, after libpq's rule: require with a root certificate file is verify-ca.
    pub mode: SslMode,
    /// sslrootcert; None: no file at the default place.
    pub root_cert: Option<RootCert>,
    /// sslcert and sslkey, when a client certificate is used.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// sslcrl.
    pub crl: Option<PathBuf>,
    /// sslsni: send the host name in the handshake (not for IP addresses).
    pub sni: bool,
    /// ssl_min_protocol_version = TLSv1.3 (else TLSv1.2, libpq's default).
    pub min_tls13: bool,
    /// channel_binding.
    pub channel_binding: ChannelBindingMode,
}

impl Default for TlsParams {
    fn default() -> Self {
        TlsParams {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            crl: None,
            sni: true,
            min_tls13: false,
            channel_binding: ChannelBindingMode::Prefer,
        }
    }
}

/// The connection-string keys this module owns (tokio-postgres does not know them).
pub(crate) const TLS_KEYS: [&str; 9] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "ssl_min_protocol_version",
    "channel_binding",
];

fn bad(key: &str, value: &str, hint: &str) -> Error {
    Error::setting(format!("invalid {key}={value:?} in the pg connection string (or its PG* variable)"), hint)
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl TlsParams {
    /// From the connection string's TLS keys, then the environment, then libpq's
    /// defaults; `home` holds `.postgresql/`.
    pub(crate) fn resolve(opts: &BTreeMap<String, String>, env: Env, home: Option<&Path>) -> Result<Self> {
        let get = |key: &str, var: &str| opts.get(key).cloned().or_else(|| env(var)).filter(|v| !v.is_empty());
        let mode_text = get("sslmode", "PGSSLMODE").unwrap_or_else(|| "prefer".into());
        let mut mode = SslMode::parse(&mode_text).ok_or_else(|| {
            bad("sslmode", &mode_text, "use disable, allow, prefer, require, verify-ca or verify-full")
        })?;
        let dot = |name: &str| home.map(|h| h.join(".postgresql").join(name));
        let root_cert = match get("sslrootcert", "PGSSLROOTCERT") {
            Some(v) if v == "system" => Some(RootCert::System),
            Some(v) => Some(RootCert::File(PathBuf::from(v))),
            None => dot("root.crt").filter(|p| p.is_file()).map(RootCert::File),
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(bad("sslmode", mode.as_str(), "sslrootcert=system needs sslmode=verify-full (as in libpq): the system's roots only mean something with the host name checked"));
        }
        if mode == SslMode::Require && matches!(&root_cert, Some(RootCert::File(p)) if p.is_file()) {
            mode = SslMode::VerifyCa; // libpq: a root certificate file makes require verify the chain
        }
        Ok(TlsParams {
            mode,
            root_cert,
            client_cert: client_cert(&get, &dot)?,
            crl: crl(&get, &dot)?,
            sni: get("sslsni", "PGSSLSNI").is_none_or(|v| v != "0"),
            min_tls13: min_protocol(get("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"))?,
            channel_binding: channel_binding(get("channel_binding", "PGCHANNELBINDING"))?,
        })
    }

    /// Whether this connection may or must try TLS at all.
    pub(crate) fn tries_tls(&self) -> bool {
        self.mode != SslMode::Disable
    }

    /// Whether a server without TLS is an error.
    pub(crate) fn requires_tls(&self) -> bool {
        self.mode >= SslMode::Require
    }
}

fn client_cert(
    get: &dyn Fn(&str, &str) -> Option<String>,
    dot: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>> {
    let cert = get("sslcert", "PGSSLCERT").map(PathBuf::from).or_else(|| dot("postgresql.crt").filter(|p| p.is_file()));
    let Some(cert) = cert else { return Ok(None) };
    let key = get("sslkey", "PGSSLKEY").map(PathBuf::from).or_else(|| dot("postgresql.key"));
    let key = key.ok_or_else(|| bad("sslcert", &cert.display().to_string(), "give its key with sslkey"))?;
    Ok(Some((cert, key)))
}

/// sslcrl, else `~/.postgresql/root.crl` when it exists (libpq); sslcrldir is not
/// supported and refused rather than ignored.
fn crl(get: &dyn Fn(&str, &str) -> Option<String>, dot: &dyn Fn(&str) -> Option<PathBuf>) -> Result<Option<PathBuf>> {
    if let Some(dir) = get("sslcrldir", "PGSSLCRLDIR") {
        return Err(bad(
            "sslcrldir",
            &dir,
            "pgcairn reads one CRL file: concatenate the lists into one PEM file and set sslcrl",
        ));
    }
    Ok(get("sslcrl", "PGSSLCRL").map(PathBuf::from).or_else(|| dot("root.crl").filter(|p| p.is_file())))
}

fn min_protocol(v: Option<String>) -> Result<bool> {
    match v.as_deref() {
        None | Some("TLSv1") | Some("TLSv1.1") | Some("TLSv1.2") => Ok(false), // rustls speaks 1.2 and 1.3 only
        Some("TLSv1.3") => Ok(true),
        Some(other) => Err(bad("ssl_min_protocol_version", other, "use TLSv1.2 or TLSv1.3")),
    }
}

fn channel_binding(v: Option<String>) -> Result<ChannelBindingMode> {
    match v.as_deref() {
        None | Some("prefer") => Ok(ChannelBindingMode::Prefer),
        Some("disable") => Ok(ChannelBindingMode::Disable),
        Some("require") => Ok(ChannelBindingMode::Require),
        Some(other) => Err(bad("channel_binding", other, "use disable, prefer or require")),
    }
}

/// The rustls configuration for `p` (ring provider, TLS 1.2+ or 1.3 only).
pub(crate) fn client_config(p: &TlsParams) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        if p.min_tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match p.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let webpki = webpki_verifier(p, provider.clone())?;
            Arc::new(PgVerifier { webpki: Some(webpki), check_name: p.mode == SslMode::VerifyFull, provider })
        }
        _ => Arc::new(PgVerifier { webpki: None, check_name: false, provider }),
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut config = match &p.client_cert {
        Some((cert, key)) => {
            let (chain, private_key) = load_client_cert(cert, key)?;
            builder.with_client_auth_cert(chain, private_key).map_err(|e| {
                Error::setting(
                    format!("sslcert {} / sslkey {}: {e}", cert.display(), key.display()),
                    "give a certificate and its own key, PEM",
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = p.sni;
    Ok(Arc::new(config))
}

fn webpki_verifier(p: &TlsParams, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    match &p.root_cert {
        Some(RootCert::File(path)) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::setting(format!("sslrootcert {}: {e}", path.display()), "give a PEM file of the CA certificates that signed the server's certificate"))?;
            roots.add_parsable_certificates(certs);
        }
        Some(RootCert::System) => add_system_roots(&mut roots, rustls_native_certs::load_native_certs())?,
        None => {
            return Err(Error::setting(
                format!("sslmode={} needs a root certificate, and ~/.postgresql/root.crt does not exist", p.mode.as_str()),
                "set sslrootcert to the CA file that signed the server's certificate (or sslrootcert=system with verify-full), or use sslmode=require to encrypt without checking the server",
            ))
        }
    }
    let mut builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crl) = &p.crl {
        let crls = CertificateRevocationListDer::pem_file_iter(crl)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::setting(
                    format!("sslcrl {}: {e}", crl.display()),
                    "give a PEM file of certificate revocation lists",
                )
            })?;
        builder = builder.with_crls(crls);
    }
    builder.build().map_err(|e| Error::setting(format!("sslrootcert: {e}"), "the file holds no usable CA certificate"))
}

/// The client certificate chain and key; the key must be private, as libpq requires
/// (0600 or stricter, or 0640 when owned by root).
fn load_client_cert(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(key).map_err(|e| {
        Error::setting(format!("sslkey {}: {e}", key.display()), "give the client certificate's key file")
    })?;
    let mode = meta.permissions().mode() & 0o777;
    let private = mode & 0o077 == 0 || (meta.uid() == 0 && mode & 0o037 == 0);
    if !private {
        return Err(Error::setting(
            format!("sslkey {} is accessible by group or others (mode {mode:o})", key.display()),
            format!("chmod 600 {} (libpq refuses it too)", key.display()),
        ));
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::setting(format!("sslcert {}: {e}", cert.display()), "give the client certificate, PEM"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::setting(format!("sslkey {}: {e}", key.display()), "give the client certificate's private key, PEM")
    })?;
    Ok((chain, key))
}

/// require: any certificate (the handshake's signatures are still checked);
/// verify-ca: the chain; verify-full: the chain and the name.
#[derive(Debug)]
struct PgVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else { return Ok(ServerCertVerified::assertion()) };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name || common_name_matches(end_entity, intermediates, server_name) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's fallback: a certificate without a subjectAltName extension is matched by
/// its Common Name (webpki only reads subjectAltName). The chain was verified before
/// this is asked; only the name check fell through.
fn common_name_matches(
    cert: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
) -> bool {
    use x509_cert::der::Decode;
    let ServerName::DnsName(host) = server_name else { return false };
    // webpki applies a CA's name constraints to subjectAltName only: with one in the
    // chain, a CN could escape them, so there is no fallback.
    let constrained = intermediates.iter().any(|c| {
        x509_cert::Certificate::from_der(c).map_or(true, |c| {
            c.tbs_certificate.extensions.iter().flatten().any(|e| e.extn_id.to_string() == "2.5.29.30")
        })
    });
    if constrained {
        return false;
    }
    let Ok(parsed) = x509_cert::Certificate::from_der(cert) else { return false };
    let tbs = &parsed.tbs_certificate;
    let has_san = tbs.extensions.iter().flatten().any(|e| e.extn_id.to_string() == "2.5.29.17");
    if has_san {
        return false;
    }
    let host = host.as_ref().to_ascii_lowercase();
    tbs.subject.0.iter().flat_map(|rdn| rdn.0.iter()).filter(|atv| atv.oid.to_string() == "2.5.4.3").any(|atv| {
        let cn = String::from_utf8_lossy(atv.value.value()).to_ascii_lowercase();
        match cn.strip_prefix("*.") {
            // A wildcard covers exactly one leftmost label, as libpq does.
            Some(rest) => host.split_once('.').is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
            None => cn == host,
        }
    })
}

/// The server name for the handshake (a DNS name or an IP address).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        Error::setting(
            format!("host {host} cannot be checked against a certificate: {e}"),
            "connect by DNS name or IP address",
        )
    })
}

/// RFC 5929 tls-server-end-point: the hash of the server's certificate, with the
/// hash of its signature algorithm (SHA-1 and MD5 raised to SHA-256). None for
/// algorithms without one (Ed25519): channel binding is then impossible, as in libpq.
pub(crate) fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert).ok()?;
    let oid = parsed.signature_algorithm.oid.to_string();
    let hash = match oid.as_str() {
        // md5/sha1/sha256 with RSA, ecdsa-with-SHA1/SHA256, RSASSA-PSS (SHA-256 by far the most common)
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.113549.1.1.10" => sha2::Sha256::digest(cert).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert).to_vec(),
        _ => return None,
    };
    Some(hash)
}

/// sslrootcert=system: the platform's store (SSL_CERT_FILE / SSL_CERT_DIR when set);
/// an empty store is an error of its own, not every server's "unknown issuer".
fn add_system_roots(roots: &mut RootCertStore, store: rustls_native_certs::CertificateResult) -> Result<()> {
    let (added, _) = roots.add_parsable_certificates(store.certs);
    if added == 0 {
        let why: Vec<String> = store.errors.iter().map(|e| e.to_string()).collect();
        let why = if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) };
        return Err(Error::setting(
            format!("sslrootcert=system: the system's certificate store holds no CA certificate{why}"),
            "install the ca-certificates package, point SSL_CERT_FILE at a CA bundle, or set sslrootcert to a CA file",
        ));
    }
    Ok(())
}

/// A readable explanation of a failed handshake, naming the host and, for a name
/// mismatch, the certificate's names.
pub(crate) fn handshake_error(target: &str, host: &str, e: &std::io::Error, mode: SslMode) -> Error {
    let detail = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. })) => format!(
            "the server's certificate is not valid for {host}: it names {}",
            if presented.is_empty() { "nothing".to_string() } else { presented.join(", ") }
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the server's certificate is not signed by a CA in sslrootcert".to_string()
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    };
    let hint = match mode {
        SslMode::VerifyFull => "connect by a name the certificate carries, or give the server a certificate for this name; sslrootcert must hold its CA",
        SslMode::VerifyCa => "set sslrootcert to the CA that signed the server's certificate",
        _ => "check the server's ssl settings (ssl_cert_file, ssl_key_file) and its log",
    };
    Error::misconfigured(
        crate::error::Misconfig::Server,
        format!("TLS with {target} failed (sslmode={}): {detail}", mode.as_str()),
        hint,
    )
}

/// An ordinary SQL connection (check, metrics) with the same TLS settings as the
/// replication client: the rustls configuration above behind tokio-postgres' TLS
/// traits (tokio-postgres speaks only disable/prefer/require; verification is ours).
pub(crate) async fn sql_connect(p: &super::ConnParams) -> Result<tokio_postgres::Client> {
    use tokio_postgres::config::{ChannelBinding as Cb, SslMode as Mode};
    let mut config = p.sql_config();
    config.ssl_mode(match p.tls.mode {
        SslMode::Disable => Mode::Disable,
        SslMode::Allow | SslMode::Prefer => Mode::Prefer,
        _ => Mode::Require,
    });
    config.channel_binding(match p.tls.channel_binding {
        ChannelBindingMode::Disable => Cb::Disable,
        ChannelBindingMode::Prefer => Cb::Prefer,
        ChannelBindingMode::Require => Cb::Require,
    });
    let connect_error = |e: tokio_postgres::Error| sql_connect_error(p, &e);
    let (client, connection) = match (&p.host, p.tls.mode) {
        (super::conninfo::Host::Unix(_), _) | (_, SslMode::Disable) => {
            let (c, conn) = config.connect(tokio_postgres::NoTls).await.map_err(connect_error)?;
            tokio::spawn(conn);
            return Ok(c);
        }
        _ => config.connect(MakeRustls(client_config(&p.tls)?)).await.map_err(connect_error)?,
    };
    tokio::spawn(connection);
    Ok(client)
}

/// A failed SQL connection; a failed TLS handshake says why, as the replication
/// client does. Regression (issue 21, item 13): `check --archive-only` reported a
/// verify-full host mismatch as "error performing TLS handshake; check that
/// PostgreSQL is running".
fn sql_connect_error(p: &super::ConnParams, e: &tokio_postgres::Error) -> Error {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let (true, super::conninfo::Host::Tcp(host)) =
                (io.get_ref().is_some_and(|i| i.is::<rustls::Error>()), &p.host)
            {
                return handshake_error(&p.target(), host, io, p.tls.mode);
            }
        }
        source = s.source();
    }
    Error::Connect { target: p.target(), detail: e.to_string() }
}

#[derive(Clone)]
struct MakeRustls(Arc<ClientConfig>);

struct RustlsConnect(Arc<ClientConfig>, ServerName<'static>);

/// tokio-rustls' stream with the channel binding tokio-postgres asks for.
struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect(self.0.clone(), ServerName::try_from(domain.to_string())?))
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.0).connect(self.1, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let cert = self.0.get_ref().1.peer_certificates().and_then(|c| c.first());
        match cert.and_then(|c| tls_server_end_point(c)) {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for RustlsStream<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for RustlsStream<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty system store names itself and the way out, rather than failing each
    /// handshake with "not signed by a CA".
    #[test]
    fn empty_system_store_is_named() {
        let empty = rustls_native_certs::CertificateResult::default();
        let err = add_system_roots(&mut RootCertStore::empty(), empty).unwrap_err().to_string();
        assert!(err.contains("holds no CA certificate") && err.contains("SSL_CERT_FILE"), "{err}");
    }
}
