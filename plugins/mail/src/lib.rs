//! `mail`: nginx's mail proxy. A client talks IMAP, POP3 or SMTP to
//! ngxr; ngxr reads its credentials, asks an HTTP authentication server
//! (`auth_http`) which backend to use, logs in there with them, and then
//! relays bytes both ways (the host's relay, in the worker's loop).
//!
//! ```nginx
//! mail {
//!     server_name mail.example.com;
//!     auth_http   127.0.0.1:9000/auth;
//!     server { listen 143; protocol imap; }
//!     server { listen 110; protocol pop3; }
//!     server { listen 25;  protocol smtp; smtp_auth login plain; }
//! }
//! ```
//!
//! TLS: `listen … ssl` and `starttls on|only` with `ssl_certificate`
//! and friends; the host does the handshake.
//!
//! The directives, what each protocol accepts and answers, what goes to
//! the authentication server and to the backend, and what is not there
//! yet: docs/mail.md. All of it follows nginx's mail modules.

mod auth;
mod imap;
mod pop3;
mod sasl;
mod session;
mod smtp;

use plugin_api::{export_plugin, sys, ConfCx, DirectiveSpec, Plugin};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;

/// A mail protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// IMAP4rev1.
    Imap,
    /// POP3.
    Pop3,
    /// SMTP.
    Smtp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Imap => "imap",
            Proto::Pop3 => "pop3",
            Proto::Smtp => "smtp",
        }
    }
}

/// Authentication methods (bits for `*_auth`).
pub mod method {
    /// LOGIN / USER+PASS / AUTH PLAIN.
    pub const PLAIN: u32 = 1;
    /// AUTH LOGIN.
    pub const LOGIN: u32 = 2;
    /// APOP (POP3).
    pub const APOP: u32 = 4;
    /// AUTH CRAM-MD5.
    pub const CRAM_MD5: u32 = 8;
    /// AUTH EXTERNAL.
    pub const EXTERNAL: u32 = 16;
    /// SMTP without authentication.
    pub const NONE: u32 = 32;
}

/// Where and how to ask the authentication server.
#[derive(Clone, Debug)]
pub struct AuthHttp {
    /// Its address, resolved when the configuration is read.
    pub addr: SocketAddr,
    /// The Host header (the URL's host).
    pub host: String,
    /// The request URI.
    pub uri: String,
}

/// Parses `auth_http`'s URL: `[http://]host[:port][/uri]`.
pub fn parse_auth_http(url: &str) -> Result<AuthHttp, String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.starts_with("unix:") || url.starts_with("https://") {
        return Err(format!("\"auth_http\" URL \"{url}\": only http:// to a host and port is supported"));
    }
    let (hostport, uri) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(format!("no host in \"auth_http\" URL \"{url}\""));
    }
    let has_port = if hostport.starts_with('[') { hostport.contains("]:") } else { hostport.contains(':') };
    let with_port = if has_port { hostport.to_string() } else { format!("{hostport}:80") };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("host not found in \"auth_http\" URL \"{url}\": {e}"))?
        .next()
        .ok_or_else(|| format!("host not found in \"auth_http\" URL \"{url}\""))?;
    let host = if hostport.starts_with('[') {
        hostport[..hostport.find(']').map_or(hostport.len(), |i| i + 1)].to_string()
    } else {
        hostport.split(':').next().unwrap_or(hostport).to_string()
    };
    Ok(AuthHttp { addr, host, uri: uri.to_string() })
}

/// One configuration level (main, `mail {}`, `mail { server {} }`):
/// everything optional, merged downwards; a server's is resolved into
/// [`Server`] when its block ends.
#[derive(Clone, Default)]
pub struct Conf {
    protocol: Option<Proto>,
    /// Ports this server listens on (for the protocol default).
    ports: Vec<u16>,
    server_name: Option<String>,
    timeout: Option<u64>,
    max_errors: Option<u32>,
    auth_http: Option<AuthHttp>,
    auth_http_headers: Option<Vec<(String, String)>>,
    auth_http_timeout: Option<u64>,
    pass_error_message: Option<bool>,
    proxy_timeout: Option<u64>,
    proxy_buffer: Option<usize>,
    xclient: Option<bool>,
    smtp_proxy_auth: Option<bool>,
    imap_caps: Option<Vec<String>>,
    imap_auth: Option<u32>,
    imap_buffer: Option<usize>,
    pop3_caps: Option<Vec<String>>,
    pop3_auth: Option<u32>,
    smtp_caps: Option<Vec<String>>,
    smtp_auth: Option<u32>,
    smtp_buffer: Option<usize>,
    smtp_greeting_delay: Option<u64>,
    ssl_certificates: Option<Vec<String>>,
    ssl_keys: Option<Vec<String>>,
    ssl_protocols: Option<String>,
    ssl_ciphers: Option<String>,
    ssl_tickets: Option<bool>,
    starttls: Option<Starttls>,
    /// This server's listeners (boxed: each one's address is its accept
    /// callback's data, and must not move as the Vec grows).
    #[allow(clippy::vec_box)]
    listens: Vec<Box<Listen>>,
    /// A server's settings, complete (set when its block is merged).
    pub server: Option<Rc<Server>>,
}

/// One `listen` of a server: the accept callback's data.
pub struct Listen {
    /// The server's configuration object.
    pub conf: *const Conf,
    /// `listen … ssl`: TLS from the first byte.
    pub ssl: bool,
}

impl Clone for Listen {
    fn clone(&self) -> Listen {
        Listen { conf: self.conf, ssl: self.ssl }
    }
}

/// `starttls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Starttls {
    /// Not offered.
    Off,
    /// Offered.
    On,
    /// Required before any login.
    Only,
}

/// The capability answers of a server, for each TLS situation.
#[derive(Debug, Default)]
pub struct Caps {
    /// Over TLS, or with `starttls off`.
    pub plain: Vec<u8>,
    /// Before STARTTLS with `starttls on`.
    pub starttls: Vec<u8>,
    /// Before STARTTLS with `starttls only`.
    pub only: Vec<u8>,
    /// POP3's AUTH answer.
    pub auth: Vec<u8>,
}

/// A `mail { server {} }`, resolved.
#[derive(Debug)]
pub struct Server {
    /// Its protocol.
    pub proto: Proto,
    /// `server_name` (default: the machine's host name).
    pub name: String,
    /// `timeout`: the client's, and the backend's while logging in.
    pub timeout: u64,
    /// `max_errors`.
    pub max_errors: u32,
    /// `auth_http`.
    pub auth: AuthHttp,
    /// `auth_http_header`s.
    pub auth_headers: Vec<(String, String)>,
    /// `auth_http_timeout`.
    pub auth_timeout: u64,
    /// `proxy_pass_error_message`.
    pub pass_error_message: bool,
    /// `proxy_timeout`: a relayed session ends after this long without
    /// a byte from the client (default 24h).
    pub proxy_timeout: u64,
    /// `proxy_buffer`: the longest backend reply line while logging in.
    pub proxy_buffer: usize,
    /// `xclient`.
    pub xclient: bool,
    /// `proxy_smtp_auth`.
    pub smtp_proxy_auth: bool,
    /// Enabled methods (`method::*`).
    pub methods: u32,
    /// The client's command buffer.
    pub client_buffer: usize,
    /// `smtp_greeting_delay`.
    pub greeting_delay: u64,
    /// The protocol's capability answers, rendered once.
    pub caps: Caps,
    /// The server-side TLS context (`listen … ssl` or `starttls`).
    pub tls: Option<plugin_api::TlsCtx>,
    /// `starttls`.
    pub starttls: Starttls,
}



fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "localhost".into())
}

fn set<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("\"{name}\" directive is duplicate"));
    }
    *slot = Some(v);
    Ok(())
}

fn methods(proto: Proto, args: &[&str], name: &str) -> Result<u32, String> {
    let mut m = 0;
    for a in args {
        m |= match (proto, a.to_ascii_lowercase().as_str()) {
            (_, "plain") => method::PLAIN,
            (Proto::Imap | Proto::Smtp, "login") => method::LOGIN,
            (Proto::Pop3, "apop") => method::APOP,
            (_, "cram-md5") => method::CRAM_MD5,
            (_, "external") => method::EXTERNAL,
            (Proto::Smtp, "none") => method::NONE,
            _ => return Err(format!("invalid value \"{a}\" in \"{name}\" directive")),
        };
    }
    Ok(m)
}

fn proto_for_port(port: u16) -> Option<Proto> {
    match port {
        143 | 993 => Some(Proto::Imap),
        110 | 995 => Some(Proto::Pop3),
        25 | 587 | 465 => Some(Proto::Smtp),
        _ => None,
    }
}

/// The capability answers, as nginx renders them.
fn capabilities(proto: Proto, caps: Option<&Vec<String>>, m: u32) -> Caps {
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let names = [(method::PLAIN, "PLAIN"), (method::LOGIN, "LOGIN"), (method::CRAM_MD5, "CRAM-MD5"), (method::EXTERNAL, "EXTERNAL")];
    match proto {
        Proto::Imap => {
            let caps = caps.cloned().unwrap_or_else(|| owned(&["IMAP4", "IMAP4rev1", "UIDPLUS"]));
            let base = format!("* CAPABILITY{}", caps.iter().map(|c| format!(" {c}")).collect::<String>());
            let auth: String = names.iter().filter(|(b, _)| m & b != 0).map(|(_, n)| format!(" AUTH={n}")).collect();
            Caps {
                plain: format!("{base}{auth}\r\n").into_bytes(),
                starttls: format!("{base}{auth} STARTTLS\r\n").into_bytes(),
                only: format!("{base} STARTTLS LOGINDISABLED\r\n").into_bytes(),
                auth: Vec::new(),
            }
        }
        Proto::Pop3 => {
            let caps = caps.cloned().unwrap_or_else(|| owned(&["TOP", "USER", "UIDL"]));
            let list: String = caps.iter().map(|c| format!("{c}\r\n")).collect();
            let no_user: String = caps.iter().filter(|c| !c.eq_ignore_ascii_case("USER")).map(|c| format!("{c}\r\n")).collect();
            // nginx lists PLAIN, LOGIN (which "plain" brings with it),
            // CRAM-MD5, EXTERNAL, in that order, in both answers.
            let m = if m & method::PLAIN != 0 { m | method::LOGIN } else { m };
            let on: Vec<&str> = names.iter().filter(|(b, _)| m & b != 0).map(|(_, n)| *n).collect();
            let sasl = format!("SASL{}\r\n", on.iter().map(|n| format!(" {n}")).collect::<String>());
            let head = "+OK Capability list follows\r\n";
            Caps {
                plain: format!("{head}{list}{sasl}.\r\n").into_bytes(),
                starttls: format!("{head}{list}{sasl}STLS\r\n.\r\n").into_bytes(),
                only: format!("{head}{no_user}STLS\r\n.\r\n").into_bytes(),
                auth: format!("+OK methods supported:\r\n{}.\r\n", on.iter().map(|n| format!("{n}\r\n")).collect::<String>()).into_bytes(),
            }
        }
        Proto::Smtp => {
            // The EHLO answer's lines after "250-<name>" (rendered per
            // session, which adds the name and the 250 prefixes).
            let caps = caps.cloned().unwrap_or_default();
            let on: String = names.iter().filter(|(b, _)| m & b != 0).map(|(_, n)| format!(" {n}")).collect();
            let auth = if on.is_empty() { Vec::new() } else { vec![format!("AUTH{on}")] };
            let join = |extra: &[&str], with_auth: bool| {
                let mut l = caps.clone();
                if with_auth {
                    l.extend(auth.iter().cloned());
                }
                l.extend(extra.iter().map(|s| s.to_string()));
                l.join("\n").into_bytes()
            };
            Caps { plain: join(&[], true), starttls: join(&["STARTTLS"], true), only: join(&["STARTTLS"], false), auth: Vec::new() }
        }
    }
}

impl Conf {
    fn resolve(&self) -> Result<Server, String> {
        let proto = match self.protocol {
            Some(p) => p,
            None => self.ports.iter().find_map(|&p| proto_for_port(p)).ok_or("unknown mail protocol for server")?,
        };
        let auth = self.auth_http.clone().ok_or("no \"auth_http\" is defined for server")?;
        let (methods, buffer, caps) = match proto {
            Proto::Imap => (self.imap_auth.unwrap_or(method::PLAIN), self.imap_buffer.unwrap_or(4096), self.imap_caps.as_ref()),
            // nginx keeps 128 bytes for a POP3 command; RFC 2449 allows
            // 255 and AUTH PLAIN answers need more.
            Proto::Pop3 => (self.pop3_auth.unwrap_or(method::PLAIN), 1024, self.pop3_caps.as_ref()),
            Proto::Smtp => (self.smtp_auth.unwrap_or(method::PLAIN | method::LOGIN), self.smtp_buffer.unwrap_or(4096), self.smtp_caps.as_ref()),
        };
        let caps = capabilities(proto, caps, methods);
        let starttls = self.starttls.unwrap_or(Starttls::Off);
        Ok(Server {
            proto,
            name: self.server_name.clone().unwrap_or_else(host_name),
            timeout: self.timeout.unwrap_or(60_000),
            max_errors: self.max_errors.unwrap_or(5),
            auth,
            auth_headers: self.auth_http_headers.clone().unwrap_or_default(),
            auth_timeout: self.auth_http_timeout.unwrap_or(60_000),
            pass_error_message: self.pass_error_message.unwrap_or(false),
            proxy_timeout: self.proxy_timeout.unwrap_or(24 * 3600 * 1000),
            proxy_buffer: self.proxy_buffer.unwrap_or(4096),
            xclient: self.xclient.unwrap_or(true),
            smtp_proxy_auth: self.smtp_proxy_auth.unwrap_or(false),
            methods,
            client_buffer: buffer,
            greeting_delay: self.smtp_greeting_delay.unwrap_or(0),
            caps,
            tls: None,
            starttls,
        })
    }

    /// The server's TLS context, if `listen … ssl` or `starttls` wants one.
    fn tls(&self, cx: &ConfCx<'_>) -> Result<Option<plugin_api::TlsCtx>, String> {
        if self.starttls.unwrap_or(Starttls::Off) == Starttls::Off && !self.listens.iter().any(|l| l.ssl) {
            return Ok(None);
        }
        let certs = self.ssl_certificates.clone().unwrap_or_default();
        let keys = self.ssl_keys.clone().unwrap_or_default();
        if certs.is_empty() {
            return Err("no \"ssl_certificate\" is defined for server".into());
        }
        if keys.len() < certs.len() {
            return Err(format!("no \"ssl_certificate_key\" is defined for certificate \"{}\"", certs[keys.len()]));
        }
        let o = plugin_api::TlsOptions {
            server: true,
            tickets: self.ssl_tickets.unwrap_or(true),
            certificates: certs.iter().zip(&keys).map(|(c, k)| (cx.conf_path(c), cx.conf_path(k))).collect(),
            protocols: self.ssl_protocols.clone().unwrap_or_default(),
            ciphers: self.ssl_ciphers.clone().unwrap_or_default(),
            ..plugin_api::TlsOptions::default()
        };
        cx.tls(&o).map(Some)
    }
}

fn merge_opt<T: Clone>(child: &mut Option<T>, parent: &Option<T>) {
    if child.is_none() {
        child.clone_from(parent);
    }
}

/// The plugin.
pub struct Mail;

const M: u32 = sys::CTX_MAIL | sys::CTX_MAIL_SERVER;

fn directives() -> Vec<DirectiveSpec<Conf>> {
    vec![
        DirectiveSpec::<Conf>::new("mail", sys::CTX_MAIN, 0, 0, |_, _, _| Ok(())).block(sys::CTX_MAIL).unique(),
        DirectiveSpec::<Conf>::new("server", sys::CTX_MAIL, 0, 0, |_, _, _| Ok(())).block(sys::CTX_MAIL_SERVER),
        DirectiveSpec::<Conf>::new("listen", sys::CTX_MAIL_SERVER, 1, sys::ARGS_ANY, listen),
        DirectiveSpec::<Conf>::new("protocol", sys::CTX_MAIL_SERVER, 1, 1, |c, a, _| {
            let p = match a[0] {
                "imap" => Proto::Imap,
                "pop3" => Proto::Pop3,
                "smtp" => Proto::Smtp,
                p => return Err(format!("unknown protocol \"{p}\"")),
            };
            set(&mut c.protocol, p, "protocol")
        })
        .unique(),
        DirectiveSpec::<Conf>::new("server_name", M, 1, 1, |c, a, _| set(&mut c.server_name, a[0].to_string(), "server_name")),
        DirectiveSpec::<Conf>::new("timeout", M, 1, 1, |c, a, cx| set(&mut c.timeout, cx.time_ms(a[0])?, "timeout")),
        DirectiveSpec::<Conf>::new("max_errors", M, 1, 1, |c, a, _| {
            let n = a[0].parse().map_err(|_| format!("invalid number \"{}\"", a[0]))?;
            set(&mut c.max_errors, n, "max_errors")
        }),
        DirectiveSpec::<Conf>::new("resolver", M, 1, sys::ARGS_ANY, |_, a, _| match a {
            ["off"] => Ok(()),
            _ => Err("\"resolver\" in mail is not supported yet: only \"resolver off\" (so no Client-Host is sent)".into()),
        }),
        DirectiveSpec::<Conf>::new("resolver_timeout", M, 1, 1, |_, a, cx| cx.time_ms(a[0]).map(|_| ())),
        DirectiveSpec::<Conf>::new("auth_http", M, 1, 1, |c, a, _| set(&mut c.auth_http, parse_auth_http(a[0])?, "auth_http")),
        DirectiveSpec::<Conf>::new("auth_http_header", M, 2, 2, |c, a, _| {
            if a.iter().any(|s| s.contains(['\r', '\n'])) {
                return Err("a line break in \"auth_http_header\"".into());
            }
            c.auth_http_headers.get_or_insert_with(Vec::new).push((a[0].to_string(), a[1].to_string()));
            Ok(())
        }),
        DirectiveSpec::<Conf>::new("auth_http_timeout", M, 1, 1, |c, a, cx| set(&mut c.auth_http_timeout, cx.time_ms(a[0])?, "auth_http_timeout")),
        DirectiveSpec::<Conf>::new("auth_http_pass_client_cert", M, 1, 1, |_, a, cx| cx.flag(a[0]).map(|_| ())),
        DirectiveSpec::<Conf>::new("proxy", M, 1, 1, |_, a, cx| cx.flag(a[0]).map(|_| ())),
        DirectiveSpec::<Conf>::new("proxy_pass_error_message", M, 1, 1, |c, a, cx| set(&mut c.pass_error_message, cx.flag(a[0])?, "proxy_pass_error_message")),
        DirectiveSpec::<Conf>::new("proxy_timeout", M, 1, 1, |c, a, cx| set(&mut c.proxy_timeout, cx.time_ms(a[0])?, "proxy_timeout")),
        DirectiveSpec::<Conf>::new("proxy_buffer", M, 1, 1, |c, a, cx| set(&mut c.proxy_buffer, cx.size(a[0])?.max(64) as usize, "proxy_buffer")),
        DirectiveSpec::<Conf>::new("proxy_protocol", M, 1, 1, |_, a, cx| match cx.flag(a[0])? {
            false => Ok(()),
            true => Err("\"proxy_protocol\" in mail is not supported yet".into()),
        }),
        DirectiveSpec::<Conf>::new("xclient", M, 1, 1, |c, a, cx| set(&mut c.xclient, cx.flag(a[0])?, "xclient")),
        DirectiveSpec::<Conf>::new("proxy_smtp_auth", M, 1, 1, |c, a, cx| set(&mut c.smtp_proxy_auth, cx.flag(a[0])?, "proxy_smtp_auth")),
        DirectiveSpec::<Conf>::new("imap_capabilities", M, 1, sys::ARGS_ANY, |c, a, _| set(&mut c.imap_caps, a.iter().map(|s| s.to_string()).collect(), "imap_capabilities")),
        DirectiveSpec::<Conf>::new("imap_auth", M, 1, sys::ARGS_ANY, |c, a, _| set(&mut c.imap_auth, methods(Proto::Imap, a, "imap_auth")?, "imap_auth")),
        DirectiveSpec::<Conf>::new("imap_client_buffer", M, 1, 1, |c, a, cx| set(&mut c.imap_buffer, cx.size(a[0])?.max(64) as usize, "imap_client_buffer")),
        DirectiveSpec::<Conf>::new("pop3_capabilities", M, 1, sys::ARGS_ANY, |c, a, _| set(&mut c.pop3_caps, a.iter().map(|s| s.to_string()).collect(), "pop3_capabilities")),
        DirectiveSpec::<Conf>::new("pop3_auth", M, 1, sys::ARGS_ANY, |c, a, _| set(&mut c.pop3_auth, methods(Proto::Pop3, a, "pop3_auth")?, "pop3_auth")),
        DirectiveSpec::<Conf>::new("smtp_capabilities", M, 1, sys::ARGS_ANY, |c, a, _| set(&mut c.smtp_caps, a.iter().map(|s| s.to_string()).collect(), "smtp_capabilities")),
        DirectiveSpec::<Conf>::new("smtp_auth", M, 1, sys::ARGS_ANY, |c, a, _| set(&mut c.smtp_auth, methods(Proto::Smtp, a, "smtp_auth")?, "smtp_auth")),
        DirectiveSpec::<Conf>::new("smtp_client_buffer", M, 1, 1, |c, a, cx| set(&mut c.smtp_buffer, cx.size(a[0])?.max(64) as usize, "smtp_client_buffer")),
        DirectiveSpec::<Conf>::new("smtp_greeting_delay", M, 1, 1, |c, a, cx| set(&mut c.smtp_greeting_delay, cx.time_ms(a[0])?, "smtp_greeting_delay")),
        DirectiveSpec::<Conf>::new("starttls", M, 1, 1, |c, a, _| {
            let v = match a[0] {
                "off" => Starttls::Off,
                "on" => Starttls::On,
                "only" => Starttls::Only,
                v => return Err(format!("invalid value \"{v}\" in \"starttls\" directive, it must be \"on\", \"off\" or \"only\"")),
            };
            set(&mut c.starttls, v, "starttls")
        }),
        DirectiveSpec::<Conf>::new("ssl", M, 1, 1, |_, a, _| match a[0] {
            "off" => Ok(()),
            _ => Err("the \"ssl\" directive is obsolete (as in nginx 1.25.1): use the \"listen ... ssl\" parameter".into()),
        }),
        DirectiveSpec::<Conf>::new("ssl_certificate", M, 1, 1, |c, a, _| {
            c.ssl_certificates.get_or_insert_with(Vec::new).push(a[0].to_string());
            Ok(())
        }),
        DirectiveSpec::<Conf>::new("ssl_certificate_key", M, 1, 1, |c, a, _| {
            c.ssl_keys.get_or_insert_with(Vec::new).push(a[0].to_string());
            Ok(())
        }),
        DirectiveSpec::<Conf>::new("ssl_protocols", M, 1, sys::ARGS_ANY, |c, a, _| set(&mut c.ssl_protocols, a.join(" "), "ssl_protocols")),
        DirectiveSpec::<Conf>::new("ssl_ciphers", M, 1, 1, |c, a, _| set(&mut c.ssl_ciphers, a[0].to_string(), "ssl_ciphers")),
        DirectiveSpec::<Conf>::new("ssl_session_tickets", M, 1, 1, |c, a, cx| set(&mut c.ssl_tickets, cx.flag(a[0])?, "ssl_session_tickets")),
        DirectiveSpec::<Conf>::new("ssl_prefer_server_ciphers", M, 1, 1, |_, a, cx| cx.flag(a[0]).map(|_| ())),
        DirectiveSpec::<Conf>::new("ssl_session_cache", M, 1, 2, |_, _, _| Ok(())),
        DirectiveSpec::<Conf>::new("ssl_session_timeout", M, 1, 1, |_, a, cx| cx.time_ms(a[0]).map(|_| ())),
    ]
}

/// `listen address[:port] [ssl] [bind] [backlog=…] …` in a mail server.
fn listen(c: &mut Conf, a: &[&str], cx: &ConfCx<'_>) -> Result<(), String> {
    let mut ssl = false;
    for opt in &a[1..] {
        let known = ["bind", "ipv6only=on", "ipv6only=off", "so_keepalive=on", "so_keepalive=off"].contains(opt)
            || ["backlog=", "rcvbuf=", "sndbuf=", "so_keepalive="].iter().any(|p| opt.starts_with(p));
        match *opt {
            "ssl" => ssl = true,
            "proxy_protocol" => return Err("\"listen ... proxy_protocol\" in mail is not supported yet".into()),
            _ if known => {}
            _ => return Err(format!("invalid parameter \"{opt}\"")),
        }
    }
    let port = a[0].rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    if let Some(p) = port {
        c.ports.push(p);
    }
    let l = Box::new(Listen { conf: c as *const Conf, ssl });
    let data = &*l as *const Listen as *mut std::ffi::c_void;
    c.listens.push(l);
    // SAFETY: data is a boxed Listen owned by this server block's
    // configuration object, which the host keeps (and merges in place)
    // for the generation's life; the box does not move when the Vec grows.
    unsafe { cx.listen(a[0], session::on_accept, data) }
}

impl Plugin for Mail {
    const NAME: &'static str = "mail";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        directives()
    }

    fn merge_in(cx: &ConfCx<'_>, level: u32, parent: &Conf, child: &mut Conf) -> Result<(), String> {
        merge_opt(&mut child.server_name, &parent.server_name);
        merge_opt(&mut child.timeout, &parent.timeout);
        merge_opt(&mut child.max_errors, &parent.max_errors);
        merge_opt(&mut child.auth_http, &parent.auth_http);
        merge_opt(&mut child.auth_http_headers, &parent.auth_http_headers);
        merge_opt(&mut child.auth_http_timeout, &parent.auth_http_timeout);
        merge_opt(&mut child.pass_error_message, &parent.pass_error_message);
        merge_opt(&mut child.proxy_timeout, &parent.proxy_timeout);
        merge_opt(&mut child.proxy_buffer, &parent.proxy_buffer);
        merge_opt(&mut child.xclient, &parent.xclient);
        merge_opt(&mut child.smtp_proxy_auth, &parent.smtp_proxy_auth);
        merge_opt(&mut child.imap_caps, &parent.imap_caps);
        merge_opt(&mut child.imap_auth, &parent.imap_auth);
        merge_opt(&mut child.imap_buffer, &parent.imap_buffer);
        merge_opt(&mut child.pop3_caps, &parent.pop3_caps);
        merge_opt(&mut child.pop3_auth, &parent.pop3_auth);
        merge_opt(&mut child.smtp_caps, &parent.smtp_caps);
        merge_opt(&mut child.smtp_auth, &parent.smtp_auth);
        merge_opt(&mut child.smtp_buffer, &parent.smtp_buffer);
        merge_opt(&mut child.smtp_greeting_delay, &parent.smtp_greeting_delay);
        merge_opt(&mut child.ssl_certificates, &parent.ssl_certificates);
        merge_opt(&mut child.ssl_keys, &parent.ssl_keys);
        merge_opt(&mut child.ssl_protocols, &parent.ssl_protocols);
        merge_opt(&mut child.ssl_ciphers, &parent.ssl_ciphers);
        merge_opt(&mut child.ssl_tickets, &parent.ssl_tickets);
        merge_opt(&mut child.starttls, &parent.starttls);
        if level == sys::CTX_MAIL_SERVER && !child.ports.is_empty() {
            let mut srv = child.resolve()?;
            srv.tls = child.tls(cx)?;
            child.server = Some(Rc::new(srv));
        }
        Ok(())
    }
}

export_plugin!(Mail);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_http_urls() {
        let a = parse_auth_http("http://127.0.0.1:9000/mail/auth").unwrap();
        assert_eq!((a.addr.to_string().as_str(), a.host.as_str(), a.uri.as_str()), ("127.0.0.1:9000", "127.0.0.1", "/mail/auth"));
        let a = parse_auth_http("127.0.0.1:8080").unwrap();
        assert_eq!((a.addr.port(), a.uri.as_str()), (8080, "/"));
        let a = parse_auth_http("localhost/auth").unwrap();
        assert_eq!((a.addr.port(), a.host.as_str()), (80, "localhost"));
        assert!(parse_auth_http("unix:/tmp/x.sock").is_err());
        assert!(parse_auth_http("https://127.0.0.1/").is_err());
    }

    #[test]
    fn capability_answers() {
        let imap = capabilities(Proto::Imap, None, method::PLAIN | method::CRAM_MD5);
        assert_eq!(imap.plain, b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=CRAM-MD5\r\n");
        assert_eq!(imap.starttls, b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=CRAM-MD5 STARTTLS\r\n");
        assert_eq!(imap.only, b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS STARTTLS LOGINDISABLED\r\n");
        let pop3 = capabilities(Proto::Pop3, None, method::PLAIN);
        assert_eq!(pop3.plain, b"+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\n.\r\n");
        assert_eq!(pop3.starttls, b"+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n");
        assert_eq!(pop3.only, b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\n.\r\n");
        assert_eq!(pop3.auth, b"+OK methods supported:\r\nPLAIN\r\nLOGIN\r\n.\r\n");
        let smtp = capabilities(Proto::Smtp, Some(&vec!["SIZE 10485760".into(), "8BITMIME".into()]), method::PLAIN | method::LOGIN);
        assert_eq!(smtp.plain, b"SIZE 10485760\n8BITMIME\nAUTH PLAIN LOGIN");
        assert_eq!(smtp.only, b"SIZE 10485760\n8BITMIME\nSTARTTLS");
    }

    #[test]
    fn protocol_from_port() {
        let c = Conf { ports: vec![110], auth_http: Some(parse_auth_http("127.0.0.1:1").unwrap()), ..Conf::default() };
        assert_eq!(c.resolve().unwrap().proto, Proto::Pop3);
        let c = Conf { ports: vec![8143], auth_http: c.auth_http.clone(), ..Conf::default() };
        assert_eq!(c.resolve().unwrap_err(), "unknown mail protocol for server");
        let c = Conf { ports: vec![143], ..Conf::default() };
        assert_eq!(c.resolve().unwrap_err(), "no \"auth_http\" is defined for server");
    }
}
