//! TLS in the connection layer: rustls with the *ring* crypto provider.
//!
//! Everything that speaks TLS goes through here: HTTPS listeners (with the
//! server block chosen by SNI before the handshake goes on), plugin
//! connections upgraded with `conn_start_tls` (upstream TLS for the proxy,
//! STARTTLS for mail), and the settings built from `ssl_*` directives.
//!
//! Why *ring*: it builds with nothing but a C compiler, which `.ci/run`
//! already installs; aws-lc-rs (rustls' default) also needs cmake and, on
//! some targets, a Go toolchain or NASM. Both providers offer the same
//! suites to ngxr's users.
//!
//! Configs are built in the master while reading the configuration, so a
//! bad certificate is a config error (and on reload the old generation
//! keeps serving), and the session-ticket key is created before the fork:
//! every worker of a generation accepts every other's tickets.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{Acceptor, ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ProtocolVersion, ServerConfig, SignatureScheme};
use rustls::{CipherSuite, RootCertStore, SupportedCipherSuite};
use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// `ssl_protocols` bits.
pub const TLS12: u8 = 1;
/// See [`TLS12`].
pub const TLS13: u8 = 2;
/// nginx's default `ssl_protocols TLSv1.2 TLSv1.3`.
pub const DEFAULT_PROTOCOLS: u8 = TLS12 | TLS13;
/// nginx's default `ssl_ciphers`.
pub const DEFAULT_CIPHERS: &str = "HIGH:!aNULL:!MD5";

/// Parses `ssl_protocols` arguments. Versions rustls does not speak
/// (SSLv2 … TLSv1.1) are accepted and left out, as a modern OpenSSL does;
/// a list that leaves nothing is an error.
pub fn parse_protocols<S: AsRef<str>>(args: &[S]) -> Result<u8, String> {
    let mut mask = 0;
    for a in args {
        match a.as_ref() {
            "TLSv1.2" => mask |= TLS12,
            "TLSv1.3" => mask |= TLS13,
            "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => {}
            other => return Err(format!("invalid value \"{other}\"")),
        }
    }
    if mask == 0 {
        return Err("no protocol left: ngxr speaks TLSv1.2 and TLSv1.3".into());
    }
    Ok(mask)
}

/// The TLS 1.2 suites rustls offers, with their OpenSSL names and the
/// attributes OpenSSL's cipher-string aliases select on.
struct Suite {
    openssl: &'static str,
    suite: SupportedCipherSuite,
    /// Aliases that match it (besides HIGH/ALL/DEFAULT/…).
    tags: &'static [&'static str],
}

fn tls12_suites() -> [Suite; 6] {
    use provider::cipher_suite::*;
    [
        Suite { openssl: "ECDHE-ECDSA-AES256-GCM-SHA384", suite: TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tags: &["AES256", "AES", "AESGCM", "SHA384", "aECDSA", "ECDSA"] },
        Suite { openssl: "ECDHE-RSA-AES256-GCM-SHA384", suite: TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tags: &["AES256", "AES", "AESGCM", "SHA384", "aRSA"] },
        Suite { openssl: "ECDHE-ECDSA-CHACHA20-POLY1305", suite: TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tags: &["CHACHA20", "SHA256", "aECDSA", "ECDSA"] },
        Suite { openssl: "ECDHE-RSA-CHACHA20-POLY1305", suite: TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, tags: &["CHACHA20", "SHA256", "aRSA"] },
        Suite { openssl: "ECDHE-ECDSA-AES128-GCM-SHA256", suite: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tags: &["AES128", "AES", "AESGCM", "SHA256", "aECDSA", "ECDSA"] },
        Suite { openssl: "ECDHE-RSA-AES128-GCM-SHA256", suite: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tags: &["AES128", "AES", "AESGCM", "SHA256", "aRSA"] },
    ]
}

/// Aliases every offered TLS 1.2 suite matches (all are ECDHE + AEAD).
const ALL_TAGS: &[&str] = &[
    "ALL", "DEFAULT", "HIGH", "ECDHE", "EECDH", "kECDHE", "kEECDH", "AEAD", "TLSv1.2", "COMPLEMENTOFALL",
];

/// Aliases and OpenSSL suite-name words that exist but select nothing
/// rustls offers (so `!aNULL`, `!MD5`, `AES128-SHA` … are fine).
const KNOWN_WORDS: &[&str] = &[
    "aNULL", "eNULL", "NULL", "MD5", "RC4", "DES", "3DES", "IDEA", "SEED", "EXP", "EXPORT", "LOW", "MEDIUM", "PSK",
    "SRP", "DSS", "aDSS", "DH", "DHE", "EDH", "kDHE", "kEDH", "ADH", "AECDH", "kRSA", "RSA", "SHA", "SHA1", "CAMELLIA",
    "ARIA", "CCM", "CCM8", "CBC", "SSLv3", "TLSv1", "TLSv1.0", "SUITEB128", "SUITEB192", "kPSK", "aPSK", "ECDHEPSK",
    "DHEPSK", "RSAPSK", "GOST", "COMPLEMENTOFDEFAULT", "aGOST", "aECDH", "kECDH", "ECDH", "AESCCM", "AESCCM8",
];

/// Words an OpenSSL suite name like `DHE-RSA-AES128-SHA256` is made of.
const NAME_WORDS: &[&str] = &[
    "ECDHE", "DHE", "EDH", "ADH", "AECDH", "RSA", "ECDSA", "DSS", "PSK", "SRP", "AES128", "AES256", "AES", "GCM", "CCM",
    "CCM8", "SHA", "SHA256", "SHA384", "CHACHA20", "POLY1305", "CAMELLIA128", "CAMELLIA256", "DES", "CBC3", "CBC", "RC4",
    "MD5", "NULL", "SEED", "IDEA", "ARIA128", "ARIA256", "EXP", "EXP1024", "KRB5", "GOST94", "GOST89", "CNT",
];

/// Parses an OpenSSL cipher string into the TLS 1.2 suites it selects,
/// in order. TLS 1.3 suites are always on (as `ssl_ciphers` does not
/// touch them in OpenSSL either). Unknown words are an error.
pub fn parse_ciphers(spec: &str) -> Result<Vec<SupportedCipherSuite>, String> {
    let table = tls12_suites();
    let mut list: Vec<usize> = Vec::new();
    let mut banned: Vec<usize> = Vec::new();
    for item in spec.split([':', ',', ' ']).filter(|s| !s.is_empty()) {
        let (op, body) = match item.as_bytes()[0] {
            b'!' | b'-' | b'+' => (item.as_bytes()[0], &item[1..]),
            _ => (0, item),
        };
        if body.starts_with('@') {
            continue; // @STRENGTH, @SECLEVEL=n
        }
        let sel = select(&table, body).ok_or_else(|| format!("unknown cipher \"{body}\""))?;
        match op {
            b'!' => {
                banned.extend(&sel);
                list.retain(|i| !sel.contains(i));
            }
            b'-' => list.retain(|i| !sel.contains(i)),
            b'+' => {
                let (moved, kept): (Vec<usize>, Vec<usize>) = list.iter().partition(|i| sel.contains(i));
                list = kept;
                list.extend(moved);
            }
            _ => {
                for i in sel {
                    if !list.contains(&i) && !banned.contains(&i) {
                        list.push(i);
                    }
                }
            }
        }
    }
    Ok(list.into_iter().map(|i| table[i].suite).collect())
}

/// The suites one cipher-string word (or `A+B` intersection) selects;
/// None when the word means nothing to OpenSSL either.
fn select(table: &[Suite], word: &str) -> Option<Vec<usize>> {
    let mut out: Option<Vec<usize>> = None;
    for part in word.split('+') {
        let one: Vec<usize> = if ALL_TAGS.contains(&part) {
            (0..table.len()).collect()
        } else if let Some(i) = table.iter().position(|s| s.openssl == part || s.suite.suite().as_str() == Some(part)) {
            vec![i]
        } else if table.iter().any(|s| s.tags.contains(&part)) {
            (0..table.len()).filter(|&i| table[i].tags.contains(&part)).collect()
        } else if KNOWN_WORDS.contains(&part)
            || part.starts_with("TLS_")
            || (part.contains('-') && part.split('-').all(|w| NAME_WORDS.contains(&w)))
        {
            Vec::new()
        } else {
            return None;
        };
        out = Some(match out {
            None => one,
            Some(prev) => prev.into_iter().filter(|i| one.contains(i)).collect(),
        });
    }
    out
}

fn versions(mask: u8) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if mask & TLS13 != 0 {
        v.push(&rustls::version::TLS13);
    }
    if mask & TLS12 != 0 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// A provider limited to `protocols` and `ciphers`.
fn provider_for(protocols: u8, ciphers: &str) -> Result<Arc<CryptoProvider>, String> {
    let tls12 = parse_ciphers(ciphers)?;
    if protocols == TLS12 && tls12.is_empty() {
        return Err(format!("no TLSv1.2 cipher suite left in \"{ciphers}\""));
    }
    let mut p = provider::default_provider();
    let tls13: Vec<SupportedCipherSuite> =
        p.cipher_suites.iter().copied().filter(|s| matches!(s, SupportedCipherSuite::Tls13(_))).collect();
    p.cipher_suites = tls13.into_iter().chain(tls12).collect();
    Ok(Arc::new(p))
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot load {what} \"{}\": {}", path.display(), crate::config::parser::os_err(&e)))
}

/// A TLS file name from the configuration: as nginx, relative names are
/// taken from the main configuration file's directory.
pub fn conf_path(conf_dir: &Path, name: &str) -> std::path::PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        conf_dir.join(p)
    }
}

/// Loads a PEM certificate chain and its key, checking they belong
/// together.
pub fn load_key_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let pem = read_file("certificate", cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot load certificate \"{}\": {e:?}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("cannot load certificate \"{}\": no PEM certificate in it", cert.display()));
    }
    let pem = read_file("certificate key", key)?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("cannot load certificate key \"{}\": {e:?}", key.display()))?;
    let prov = provider::default_provider();
    let signer = prov
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("cannot load certificate key \"{}\": {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    // Only a proven mismatch is refused: a certificate the check cannot
    // read (an X.509 v1 certificate, as `openssl req -x509` makes without
    // extensions) is served, as nginx serves it.
    match ck.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(format!(
            "certificate key \"{}\" does not match certificate \"{}\" (key values mismatch)",
            key.display(),
            cert.display()
        )),
        _ => Ok(Arc::new(ck)),
    }
}

/// `ssl_session_cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCache {
    /// `off`: no session IDs at all.
    Off,
    /// `none` (nginx's default): nothing stored server-side.
    None,
    /// `builtin[:n]` / `shared:name:size`: this many sessions, per worker.
    Sessions(usize),
}

/// Parses `ssl_session_cache` arguments.
pub fn parse_session_cache<S: AsRef<str>>(args: &[S]) -> Result<SessionCache, String> {
    let mut n = 0usize;
    for a in args {
        let a = a.as_ref();
        match a {
            "off" if args.len() == 1 => return Ok(SessionCache::Off),
            "none" if args.len() == 1 => return Ok(SessionCache::None),
            "builtin" => n += 20480,
            _ => {
                if let Some(k) = a.strip_prefix("builtin:") {
                    n += k.parse::<usize>().map_err(|_| format!("invalid session cache \"{a}\""))?;
                } else if let Some(rest) = a.strip_prefix("shared:") {
                    let (_, size) = rest.rsplit_once(':').ok_or_else(|| format!("invalid session cache \"{a}\""))?;
                    let bytes = crate::config::core::parse_size(size).ok_or_else(|| format!("invalid session cache \"{a}\""))?;
                    // nginx: one megabyte holds about 4000 sessions.
                    n += (bytes / 256).max(1);
                } else {
                    return Err(format!("invalid session cache \"{a}\""));
                }
            }
        }
    }
    Ok(SessionCache::Sessions(n))
}

/// A block's TLS server settings, from `ssl_*` directives.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// `ssl_protocols`.
    pub protocols: u8,
    /// `ssl_ciphers`.
    pub ciphers: String,
    /// `ssl_prefer_server_ciphers`.
    pub prefer_server_ciphers: bool,
    /// `ssl_session_cache`.
    pub session_cache: SessionCache,
    /// `ssl_session_tickets`.
    pub tickets: bool,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
}

impl Default for ServerOpts {
    fn default() -> ServerOpts {
        ServerOpts {
            protocols: DEFAULT_PROTOCOLS,
            ciphers: DEFAULT_CIPHERS.into(),
            prefer_server_ciphers: false,
            session_cache: SessionCache::None,
            tickets: true,
            alpn: Vec::new(),
        }
    }
}

/// Several certificates (RSA and ECDSA, say): the first whose key can sign
/// with a scheme the client offers.
#[derive(Debug)]
struct Certs(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        self.0.iter().find(|c| c.key.choose_scheme(schemes).is_some()).or(self.0.first()).cloned()
    }
}

/// Builds a server config. The ticket key is made here: build it in the
/// master so every worker shares it.
pub fn server_config(keys: Vec<Arc<CertifiedKey>>, o: &ServerOpts) -> Result<Arc<ServerConfig>, String> {
    let prov = provider_for(o.protocols, &o.ciphers)?;
    let mut c = ServerConfig::builder_with_provider(prov)
        .with_protocol_versions(&versions(o.protocols))
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Certs(keys)));
    c.ignore_client_order = o.prefer_server_ciphers;
    c.alpn_protocols = o.alpn.clone();
    c.session_storage = match o.session_cache {
        SessionCache::Off | SessionCache::None => Arc::new(NoServerSessionStorage {}),
        SessionCache::Sessions(n) => ServerSessionMemoryCache::new(n),
    };
    if o.tickets {
        let t = provider::Ticketer::new().map_err(|e| e.to_string())?;
        // The ticketer refuses tickets longer than the longest it has made
        // itself; a worker whose first connection brings another worker's
        // ticket would refuse it. One long ticket made here, before the
        // fork, sets that bound in every worker.
        t.encrypt(&[0u8; 2048]);
        c.ticketer = t;
    } else if !matches!(o.session_cache, SessionCache::Sessions(_)) {
        c.send_tls13_tickets = 0;
    }
    Ok(Arc::new(c))
}

/// TLS client settings for connections a plugin opens (proxy_ssl_*).
#[derive(Debug, Clone, Default)]
pub struct ClientOpts {
    /// Verify the server's certificate chain and name.
    pub verify: bool,
    /// PEM file of trusted CA certificates (required with `verify`).
    pub trusted: Option<std::path::PathBuf>,
    /// Send SNI.
    pub sni: bool,
    /// Reuse sessions.
    pub reuse: bool,
    /// Protocol bits (0: the default).
    pub protocols: u8,
    /// OpenSSL cipher string (empty: the default).
    pub ciphers: String,
    /// Client certificate and key.
    pub identity: Option<Arc<CertifiedKey>>,
}

/// Accepts any certificate (`proxy_ssl_verify off`), still checking the
/// handshake signatures so the session keys are sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds a client config.
pub fn client_config(o: &ClientOpts) -> Result<Arc<ClientConfig>, String> {
    let protocols = if o.protocols == 0 { DEFAULT_PROTOCOLS } else { o.protocols };
    let ciphers = if o.ciphers.is_empty() { "DEFAULT" } else { &o.ciphers };
    let prov = provider_for(protocols, ciphers)?;
    let b = ClientConfig::builder_with_provider(prov.clone())
        .with_protocol_versions(&versions(protocols))
        .map_err(|e| e.to_string())?;
    let b = if o.verify {
        let path = o.trusted.as_deref().ok_or("no trusted certificate given for verification")?;
        let pem = read_file("trusted certificate", path)?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| format!("cannot load trusted certificate \"{}\": {e:?}", path.display()))?;
            roots.add(c).map_err(|e| format!("cannot load trusted certificate \"{}\": {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("cannot load trusted certificate \"{}\": no PEM certificate in it", path.display()));
        }
        b.with_root_certificates(roots)
    } else {
        b.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(prov)))
    };
    let mut c = match &o.identity {
        Some(id) => b.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(id.clone()))),
        None => b.with_no_client_auth(),
    };
    c.enable_sni = o.sni;
    if !o.reuse {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(c))
}

/// Starts a client session for `name` (a DNS name or an IP address).
pub fn client_session(cfg: &Arc<ClientConfig>, name: &str) -> Result<Connection, String> {
    let sn = ServerName::try_from(name.to_string()).map_err(|_| format!("invalid TLS server name \"{name}\""))?;
    ClientConnection::new(cfg.clone(), sn).map(Connection::Client).map_err(|e| e.to_string())
}

/// Starts a server session (STARTTLS: the client's hello comes next).
pub fn server_session(cfg: &Arc<ServerConfig>) -> Result<Connection, String> {
    rustls::ServerConnection::new(cfg.clone()).map(Connection::Server).map_err(|e| e.to_string())
}

/// What the first bytes on a TLS port turned out to be.
pub enum Hello {
    /// Not all of the ClientHello is here yet.
    Pending,
    /// The handshake goes on with the config chosen for the client's SNI.
    Tls,
    /// The client speaks plain text (nginx's "plain HTTP request was sent
    /// to HTTPS port").
    Plain,
}

/// A TCP socket, with or without TLS on top.
pub struct Stream<S> {
    /// The socket.
    pub tcp: S,
    tls: Option<Box<Tls>>,
}

enum Tls {
    /// Waiting for the ClientHello (server side, SNI not known yet); the
    /// flag says its first byte was seen to start a TLS record.
    Accepting(Acceptor, bool),
    /// A session (handshaking or established).
    Open(Connection),
}

/// The negotiated parameters, for `$ssl_*` variables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    /// "TLSv1.2" / "TLSv1.3".
    pub protocol: &'static str,
    /// OpenSSL's name for the suite.
    pub cipher: &'static str,
    /// The session was resumed (`$ssl_session_reused`).
    pub reused: bool,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e.to_string())
}

impl<S: Read + Write> Stream<S> {
    /// A plain stream.
    pub fn plain(tcp: S) -> Stream<S> {
        Stream { tcp, tls: None }
    }

    /// A server stream that first reads the ClientHello.
    pub fn accepting(tcp: S) -> Stream<S> {
        Stream { tcp, tls: Some(Box::new(Tls::Accepting(Acceptor::default(), false))) }
    }

    /// Puts a session on top of the socket (STARTTLS, upstream TLS).
    pub fn start(&mut self, session: Connection) {
        self.tls = Some(Box::new(Tls::Open(session)));
    }

    /// TLS is on.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The handshake has not finished yet.
    pub fn handshaking(&self) -> bool {
        match self.tls.as_deref() {
            Some(Tls::Accepting(..)) => true,
            Some(Tls::Open(c)) => c.is_handshaking(),
            None => false,
        }
    }

    /// The client's SNI name, once known.
    pub fn server_name(&self) -> Option<&str> {
        match self.tls.as_deref() {
            Some(Tls::Open(Connection::Server(s))) => s.server_name(),
            _ => None,
        }
    }

    /// Negotiated protocol and suite (None before the handshake is done).
    pub fn info(&self) -> Option<Info> {
        let Some(Tls::Open(c)) = self.tls.as_deref() else { return None };
        let protocol = match c.protocol_version()? {
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            _ => "unknown",
        };
        Some(Info {
            protocol,
            cipher: openssl_name(c.negotiated_cipher_suite()?.suite()),
            reused: c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        })
    }

    /// Server side, SNI first: reads the ClientHello, then asks `choose`
    /// for the config of the server the client named. With `peek`, a
    /// first byte that cannot start a TLS record means plain text.
    pub fn accept(&mut self, peek: impl FnOnce(&mut S) -> io::Result<Option<u8>>, choose: impl FnOnce(Option<&str>) -> Option<Arc<ServerConfig>>) -> io::Result<Hello> {
        let Some(tls) = self.tls.as_deref_mut() else { return Ok(Hello::Tls) };
        let Tls::Accepting(acc, seen) = tls else { return Ok(Hello::Tls) };
        if !*seen {
            match peek(&mut self.tcp)? {
                None => return Ok(Hello::Pending),
                // 0x16: a handshake record; 0x80: an SSLv2-framed hello.
                Some(b) if b != 0x16 && b & 0x80 == 0 => {
                    self.tls = None;
                    return Ok(Hello::Plain);
                }
                Some(_) => *seen = true,
            }
        }
        loop {
            match acc.read_tls(&mut self.tcp) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Hello::Pending),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            match acc.accept() {
                Ok(None) => continue,
                Ok(Some(hello)) => {
                    let Some(cfg) = choose(hello.client_hello().server_name()) else {
                        return Err(other("no TLS configuration for this address"));
                    };
                    match hello.into_connection(cfg) {
                        Ok(conn) => {
                            *tls = Tls::Open(Connection::Server(conn));
                            self.flush_tls()?;
                            return Ok(Hello::Tls);
                        }
                        Err((e, mut alert)) => {
                            let _ = alert.write_all(&mut self.tcp);
                            return Err(other(e));
                        }
                    }
                }
                Err((e, mut alert)) => {
                    let _ = alert.write_all(&mut self.tcp);
                    return Err(other(e));
                }
            }
        }
    }

    /// Drives a handshake on a session put on with [`Stream::start`]:
    /// Ok(true) when done, Ok(false) when it waits for the peer.
    pub fn handshake(&mut self) -> io::Result<bool> {
        while self.handshaking() {
            if !self.flush_tls()? {
                return Ok(false);
            }
            if !self.handshaking() {
                break;
            }
            if !self.read_records()? {
                return Ok(false);
            }
        }
        self.flush_tls()?;
        Ok(true)
    }

    /// Reads and processes TLS records: Ok(false) when the socket has
    /// nothing now.
    fn read_records(&mut self) -> io::Result<bool> {
        let Some(Tls::Open(c)) = self.tls.as_deref_mut() else { return Ok(false) };
        loop {
            match c.read_tls(&mut self.tcp) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Err(e) = c.process_new_packets() {
            // Send the alert rustls queued, then fail.
            let _ = c.write_tls(&mut self.tcp);
            return Err(other(e));
        }
        Ok(true)
    }

    /// Writes pending TLS records: Ok(true) when none are left.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        let Some(Tls::Open(c)) = self.tls.as_deref_mut() else { return Ok(true) };
        while c.wants_write() {
            match c.write_tls(&mut self.tcp) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Sends close_notify, best effort.
    pub fn close_notify(&mut self) {
        if let Some(Tls::Open(c)) = self.tls.as_deref_mut() {
            c.send_close_notify();
            let _ = self.flush_tls();
        }
    }
}

impl<S: Read + Write> Read for Stream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.tcp.read(buf);
        }
        loop {
            let Some(Tls::Open(c)) = self.tls.as_deref_mut() else { return Err(ErrorKind::WouldBlock.into()) };
            match c.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: end of stream.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // Handshake replies (and key updates) go out before reading on.
            match self.flush_tls() {
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            match self.read_records() {
                Ok(true) => {}
                Ok(false) => return Err(ErrorKind::WouldBlock.into()),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.flush_tls()?;
        }
    }
}

impl<S: Read + Write> Write for Stream<S> {
    /// Takes what the session's send buffer has room for; WouldBlock when
    /// it is full and the socket cannot take records now.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(Tls::Open(c)) = self.tls.as_deref_mut() else {
            return match self.tls {
                None => self.tcp.write(buf),
                Some(_) => Err(ErrorKind::WouldBlock.into()),
            };
        };
        let n = c.writer().write(buf)?;
        match self.flush_tls() {
            Ok(_) => {}
            Err(e) if n == 0 => return Err(e),
            Err(_) => {}
        }
        if n == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.flush_tls()? {
            true => Ok(()),
            false => Err(ErrorKind::WouldBlock.into()),
        }
    }
}

/// OpenSSL's name for a suite (what nginx's `$ssl_cipher` shows).
pub fn openssl_name(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        other => tls12_suites().iter().find(|x| x.suite.suite() == other).map_or("unknown", |x| x.openssl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(spec: &str) -> Result<Vec<&'static str>, String> {
        Ok(parse_ciphers(spec)?.into_iter().map(|s| openssl_name(s.suite())).collect())
    }

    #[test]
    fn cipher_strings() {
        assert_eq!(names("HIGH:!aNULL:!MD5").unwrap().len(), 6);
        assert_eq!(names("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384").unwrap(), [
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384"
        ]);
        // Mozilla's intermediate list: the DHE suites exist but rustls has none.
        let moz = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
                   ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
                   DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";
        assert_eq!(names(moz).unwrap().len(), 6);
        assert_eq!(names("ECDHE+AESGCM:!ECDSA").unwrap(), ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256"]);
        assert_eq!(names("CHACHA20:AES128:+CHACHA20").unwrap()[..2], ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]);
        assert_eq!(names("!AES256:HIGH").unwrap().len(), 4);
        assert_eq!(names("AES128-SHA").unwrap().len(), 0);
        assert_eq!(names("HIGH:FOO").unwrap_err(), "unknown cipher \"FOO\"");
        assert!(names("ECDHE-RSA-AES128-GCM-SHA999").is_err());
        assert!(provider_for(TLS12, "AES128-SHA").is_err());
        assert!(provider_for(TLS12 | TLS13, "AES128-SHA").is_ok());
    }

    #[test]
    fn protocols_and_caches() {
        assert_eq!(parse_protocols(&["TLSv1", "TLSv1.2"]), Ok(TLS12));
        assert!(parse_protocols(&["TLSv1.1"]).is_err());
        assert!(parse_protocols(&["TLSv9"]).is_err());
        assert_eq!(parse_session_cache(&["none"]), Ok(SessionCache::None));
        assert_eq!(parse_session_cache(&["shared:SSL:1m"]), Ok(SessionCache::Sessions(4096)));
        assert_eq!(parse_session_cache(&["builtin:100", "shared:x:1k"]), Ok(SessionCache::Sessions(104)));
        assert!(parse_session_cache(&["shared:SSL"]).is_err());
    }
}
