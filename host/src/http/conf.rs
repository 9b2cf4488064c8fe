//! The HTTP configuration a worker serves from: virtual servers with their
//! names and listens, each server's location tree, and the host's own
//! per-location settings (root/alias, try_files, error_page, limits and
//! timeouts), inherited down the tree as nginx merges them.
//!
//! Built once per generation from the plugin configuration nodes
//! ([`crate::plugin::conf::Node`]), which already hold every plugin's
//! merged object for each block.

use crate::config::core::{parse_duration, parse_size, Prefix};
use crate::config::table::ctx;
use crate::config::{ConfError, Directive};
use crate::plugin::conf::Plugins;
use plugin_api::sys;
use regex::{Regex, RegexBuilder};
use std::ffi::c_void;
use crate::tls;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One `error_page` rule.
#[derive(Debug, Clone)]
pub struct ErrorPage {
    /// Statuses it applies to.
    pub codes: Vec<u16>,
    /// `=code`: answer with this status; `=` alone: the target's status.
    pub set: Option<Option<u16>>,
    /// A URI, `@named` location or absolute URL (redirect).
    pub target: String,
}

/// The host's per-location settings (nginx's core location conf).
#[derive(Debug, Clone)]
pub struct Core {
    /// `error_log` in this block or above (below `main`): the requests
    /// served here log there instead of the main log, as nginx's.
    pub error_log: Option<std::rc::Rc<crate::log::Scoped>>,
    /// `root` (absolute, prefix-resolved); `alias` replaces the location's
    /// path instead of being prepended.
    pub root: String,
    /// True when `root` came from `alias`.
    pub alias: bool,
    /// `root` holds variables (expanded per request).
    pub root_vars: bool,
    /// With `alias`: how much of the URI it replaces — the length of the
    /// path of the prefix location that declared it (nested locations
    /// inherit it), or `usize::MAX` when a regex location declared it
    /// (the alias is then the whole path), as nginx's `clcf->alias`.
    pub alias_len: usize,
    /// `try_files` arguments (not inherited, as in nginx).
    pub try_files: Vec<String>,
    /// `error_page` rules (a block with any replaces the inherited list).
    pub error_pages: Vec<ErrorPage>,
    /// `recursive_error_pages`.
    pub recursive_error_pages: bool,
    /// `client_max_body_size` (0 = unlimited).
    pub client_max_body_size: u64,
    /// `client_body_timeout`.
    pub client_body_timeout: Duration,
    /// `keepalive_timeout` (0 disables keepalive).
    pub keepalive_timeout: Duration,
    /// `keepalive_timeout`'s second value: a `Keep-Alive: timeout=N`
    /// header on kept-alive responses.
    pub keepalive_header: Option<u64>,
    /// `keepalive_requests`.
    pub keepalive_requests: u32,
    /// `keepalive_time`: no new request on a connection older than this.
    pub keepalive_time: Duration,
    /// `send_timeout`.
    pub send_timeout: Duration,
    /// `limit_rate` (bytes a second; 0 = unlimited).
    pub limit_rate: u64,
    /// `limit_rate_after`: bytes sent before the limit starts.
    pub limit_rate_after: u64,
    /// `limit_rate` with variables (evaluated for each response).
    pub limit_rate_var: Option<String>,
    /// `limit_rate_after` with variables.
    pub limit_rate_after_var: Option<String>,
    /// `server_tokens`.
    pub server_tokens: bool,
    /// `sendfile`.
    pub sendfile: bool,
    /// `tcp_nopush` (TCP_CORK while a file goes out by sendfile).
    pub tcp_nopush: bool,
    /// `internal` (not inherited).
    pub internal: bool,
    /// `log_not_found`.
    pub log_not_found: bool,
    /// `chunked_transfer_encoding`.
    pub chunked: bool,
    /// `lingering_close off|on|always` as 0/1/2.
    pub lingering_close: u8,
    /// `lingering_time`.
    pub lingering_time: Duration,
    /// `lingering_timeout`.
    pub lingering_timeout: Duration,
    /// `absolute_redirect`.
    pub absolute_redirect: bool,
    /// `port_in_redirect`.
    pub port_in_redirect: bool,
    /// `server_name_in_redirect`.
    pub server_name_in_redirect: bool,
    /// `client_body_buffer_size`: a request body larger than this goes to
    /// a temporary file.
    pub client_body_buffer_size: u64,
    /// `client_body_temp_path`: where those files go.
    pub client_body_temp_path: String,
    /// `client_body_in_file_only off|clean|on` as 0/1/2: every body goes to
    /// a file (kept after the request with `on`).
    pub body_in_file_only: u8,
    /// `types {}`: extension (lowercase) → MIME type; None: nginx's
    /// built-in three.
    pub types: Option<Arc<Types>>,
    /// `default_type`.
    pub default_type: String,
    /// `satisfy any` (else all).
    pub satisfy_any: bool,
    /// `keepalive_disable`: 1 msie6, 2 safari (bits); nginx's default
    /// is msie6.
    pub keepalive_disable: u8,
    /// `gzip_vary`, `gzip_http_version`, `gzip_proxied`, `gzip_disable`:
    /// core directives, as in nginx, read by `http_gzip_ok` for the gzip
    /// filter and `gzip_static` alike.
    pub gzip: GzipTest,
}

/// What nginx's `ngx_http_gzip_ok` consults (core settings).
#[derive(Debug, Clone, Default)]
pub struct GzipTest {
    /// `gzip_vary on`.
    pub vary: bool,
    /// `gzip_http_version 1.0` (else 1.1).
    pub http10: bool,
    /// `gzip_proxied` flags (nginx's values; 0 is `off`).
    pub proxied: u32,
    /// `gzip_disable` regexes (caseless) against the User-Agent.
    pub disable: Option<Arc<Vec<regex::Regex>>>,
    /// `gzip_disable msie6`.
    pub msie6: bool,
}

/// `gzip_proxied` flags, nginx's values.
pub mod proxied {
    /// `off`.
    pub const OFF: u32 = 0x0002;
    /// `expired`.
    pub const EXPIRED: u32 = 0x0004;
    /// `no-cache`.
    pub const NO_CACHE: u32 = 0x0008;
    /// `no-store`.
    pub const NO_STORE: u32 = 0x0010;
    /// `private`.
    pub const PRIVATE: u32 = 0x0020;
    /// `no_last_modified`.
    pub const NO_LM: u32 = 0x0040;
    /// `no_etag`.
    pub const NO_ETAG: u32 = 0x0080;
    /// `auth`.
    pub const AUTH: u32 = 0x0100;
    /// `any`.
    pub const ANY: u32 = 0x0200;
}

/// Extension → MIME type.
pub type Types = plugin_api::hash::Map<String, String>;

/// nginx's built-in types (used when no `types` block is configured).
fn builtin_type(ext: &str) -> Option<&'static str> {
    [("html", "text/html"), ("gif", "image/gif"), ("jpg", "image/jpeg")]
        .iter()
        .find(|(e, _)| e.eq_ignore_ascii_case(ext))
        .map(|(_, t)| *t)
}

impl Core {
    /// The type for `uri`'s extension, as nginx's
    /// `ngx_http_set_content_type`: the `types` map (or the built-in types
    /// when there is no `types` block), else `default_type`.
    pub fn content_type(&self, uri: &str) -> &str {
        // The extension: after the last '.' of the last path segment.
        let b = uri.as_bytes();
        let mut ext = None;
        for i in (0..b.len()).rev() {
            match b[i] {
                b'/' => break,
                b'.' => {
                    ext = Some(&uri[i + 1..]);
                    break;
                }
                _ => {}
            }
        }
        let found = match (&self.types, ext) {
            (Some(types), Some(e)) if e.bytes().any(|b| b.is_ascii_uppercase()) => types.get(&e.to_ascii_lowercase()).map(String::as_str),
            (Some(types), Some(e)) => types.get(e).map(String::as_str),
            (None, Some(e)) => builtin_type(e),
            (_, None) => None,
        };
        found.unwrap_or(&self.default_type)
    }
}

impl Core {
    fn defaults(prefix: &Prefix) -> Core {
        Core {
            error_log: None,
            root: prefix.resolve("html").to_string_lossy().into_owned(),
            alias: false,
            root_vars: false,
            alias_len: 0,
            try_files: Vec::new(),
            error_pages: Vec::new(),
            recursive_error_pages: false,
            client_max_body_size: 1024 * 1024,
            client_body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            keepalive_header: None,
            keepalive_requests: 1000,
            keepalive_time: Duration::from_secs(3600),
            send_timeout: Duration::from_secs(60),
            limit_rate: 0,
            limit_rate_after: 0,
            limit_rate_var: None,
            limit_rate_after_var: None,
            server_tokens: true,
            sendfile: false,
            tcp_nopush: false,
            internal: false,
            log_not_found: true,
            chunked: true,
            lingering_close: 1,
            lingering_time: Duration::from_secs(30),
            lingering_timeout: Duration::from_secs(5),
            absolute_redirect: true,
            port_in_redirect: true,
            server_name_in_redirect: false,
            client_body_buffer_size: 16 * 1024,
            client_body_temp_path: prefix.resolve("client_body_temp").to_string_lossy().into_owned(),
            body_in_file_only: 0,
            types: None,
            default_type: "text/plain".to_string(),
            satisfy_any: false,
            keepalive_disable: 1,
            gzip: GzipTest::default(),
        }
    }
}

/// How a location matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The server level itself (used when no location matches).
    Server,
    /// `location = /x`.
    Exact,
    /// `location /x`.
    Prefix,
    /// `location ^~ /x`: a match stops the regex search.
    NoRegex,
    /// `location ~ re` / `location ~* re`.
    Regex,
    /// `location @name`: only reachable by internal redirects.
    Named,
    /// An `if` or `limit_except` block: never searched; a request switches
    /// to it (nginx's unnamed location).
    Cond,
}

/// One location (or the server level, at index 0 of [`Server::locs`]).
pub struct Loc {
    /// How it matches.
    pub kind: Kind,
    /// The path, regex source or name, as written.
    pub path: String,
    /// The compiled regex for `~`/`~*`.
    pub regex: Option<Regex>,
    /// Per plugin: its merged object for this location.
    pub confs: Vec<*mut c_void>,
    /// The content handler set here (or inherited from server/http level).
    pub content: Option<(usize, sys::HttpHandlerFn)>,
    /// The host's settings.
    pub core: Core,
    /// Nested exact, prefix and regex locations, in file order.
    pub exact: Vec<usize>,
    /// See `exact`.
    pub prefix: Vec<usize>,
    /// See `exact`.
    pub regexes: Vec<usize>,
    /// `limit_except`: the methods allowed (a [`method_bit`] mask) and the
    /// block the others switch to.
    pub limit_except: Option<(u32, usize)>,
}

impl Loc {
    fn new(kind: Kind, path: String, regex: Option<Regex>, confs: Vec<*mut c_void>, content: Option<(usize, sys::HttpHandlerFn)>, core: Core) -> Loc {
        Loc { kind, path, regex, confs, content, core, exact: Vec::new(), prefix: Vec::new(), regexes: Vec::new(), limit_except: None }
    }
}

/// Methods `limit_except` knows, as nginx; bit 0 is any other method.
const METHODS: [&str; 14] = ["GET", "HEAD", "POST", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "OPTIONS", "PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "PATCH"];

/// The request method's bit for a `limit_except` mask.
pub fn method_bit(m: &str) -> u32 {
    METHODS.iter().position(|&k| k == m).map_or(1, |i| 2 << i)
}

/// `limit_except`'s methods (GET allows HEAD too, as in nginx).
fn limit_except_mask(d: &Directive) -> Result<u32, ConfError> {
    let mut mask = 0;
    for a in &d.args {
        let up = a.to_ascii_uppercase();
        if !METHODS.contains(&up.as_str()) {
            return Err(d.err(format!("invalid method \"{a}\"")));
        }
        mask |= method_bit(&up);
        if up == "GET" {
            mask |= method_bit("HEAD");
        }
    }
    Ok(mask)
}

/// A `server_name` entry.
#[derive(Debug)]
pub enum Name {
    /// `example.com` (lowercase).
    Exact(String),
    /// `*.example.com` (stored `.example.com`) or `.example.com`, which
    /// also matches `example.com` itself (stored with `also_bare`).
    Suffix(String, bool),
    /// `www.example.*` (stored `www.example.`).
    PrefixWild(String),
    /// `~regex`.
    Regex(Regex),
}

/// One `server {}`.
pub struct Server {
    /// Addresses its `listen` directives name.
    pub listens: Vec<SocketAddr>,
    /// Addresses it is `default_server` for.
    pub default_for: Vec<SocketAddr>,
    /// `server_name`s.
    pub names: Vec<Name>,
    /// The first name (`$server_name`).
    pub primary_name: String,
    /// A regex name with capture groups: the name is looked up even when
    /// this is the address's only server.
    pub name_captures: bool,
    /// Locations; 0 is the server level.
    pub locs: Vec<Loc>,
    /// `@name` locations.
    pub named: Vec<(String, usize)>,
    /// Prefix locations ending in '/' with their own content handler
    /// (`proxy_pass`): a request for the name without the '/' is
    /// redirected to it (nginx's auto_redirect).
    pub auto_redirect: Vec<usize>,
    /// Bit (n - 1) % 64 set for each of those names' lengths n: most URIs
    /// are ruled out by their length alone.
    pub auto_redirect_lens: u64,
    /// `client_header_timeout`.
    pub header_timeout: Duration,
    /// `large_client_header_buffers` size: the longest line.
    pub large_header: usize,
    /// …and count × size: the whole head.
    pub max_head: usize,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `underscores_in_headers`.
    pub underscores_in_headers: bool,
    /// `ignore_invalid_headers`.
    pub ignore_invalid_headers: bool,
    /// TLS settings, for a server reached on an `ssl` address.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Conditional blocks (`if`): (block id, location index).
    pub conds: Vec<(u32, usize)>,
}

/// A generation's HTTP configuration.
#[derive(Default)]
pub struct HttpConf {
    /// `http { server {} }` blocks in order.
    pub servers: Vec<Server>,
    /// Every listen address, with whether it is `ssl`.
    pub listen_ssl: Vec<(SocketAddr, bool)>,
    /// Per listen address: `proxy_protocol` on some `listen` for it.
    pub listen_pp: Vec<(SocketAddr, bool)>,
}

/// `ssl_*` settings of a block being read.
#[derive(Clone, Default)]
struct Ssl {
    /// `ssl_certificate` / `ssl_certificate_key` pairs, with positions.
    certs: Vec<(String, Directive)>,
    keys: Vec<(String, Directive)>,
    /// This block set its own lists (they replace the inherited ones).
    own_certs: bool,
    own_keys: bool,
    opts: tls::ServerOpts,
    /// Where protocols/ciphers were set, for errors in building.
    at: Option<Directive>,
}

impl Ssl {
    fn apply(&mut self, d: &Directive, conf_dir: &Path) -> Result<(), ConfError> {
        let path = |a: &str| tls::conf_path(conf_dir, a).to_string_lossy().into_owned();
        match d.name.as_str() {
            "ssl_certificate" => {
                if !self.own_certs {
                    self.own_certs = true;
                    self.certs.clear();
                }
                self.certs.push((path(&d.args[0]), d.clone()));
            }
            "ssl_certificate_key" => {
                if !self.own_keys {
                    self.own_keys = true;
                    self.keys.clear();
                }
                self.keys.push((path(&d.args[0]), d.clone()));
            }
            "ssl_protocols" => {
                self.opts.protocols = tls::parse_protocols(&d.args).map_err(|e| d.err(format!("{e} in \"ssl_protocols\"")))?;
                self.at = Some(d.clone());
            }
            "ssl_ciphers" => {
                tls::parse_ciphers(&d.args[0]).map_err(|e| d.err(format!("{e} in \"ssl_ciphers\"")))?;
                self.opts.ciphers = d.args[0].clone();
                self.at = Some(d.clone());
            }
            "ssl_prefer_server_ciphers" => self.opts.prefer_server_ciphers = d.flag()?,
            "ssl_session_tickets" => self.opts.tickets = d.flag()?,
            "ssl_session_cache" => {
                self.opts.session_cache = tls::parse_session_cache(&d.args).map_err(|e| d.err(e))?;
            }
            "ssl_session_timeout" => {
                dur(d, 0)?;
            }
            "ssl_buffer_size" => {
                size(d, 0)?;
            }
            // Read as nginx reads it (a missing file refuses the
            // configuration); nothing uses it yet (no stapling, no client
            // certificates).
            "ssl_trusted_certificate" => {
                let p = path(&d.args[0]);
                if let Err(e) = std::fs::read(&p) {
                    return Err(d.err(format!("cannot load certificate \"{p}\": {e}")));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A block's children applied over the inherited settings.
    fn block(parent: &Ssl, d: &Directive, conf_dir: &Path) -> Result<Ssl, ConfError> {
        let mut s = Ssl { own_certs: false, own_keys: false, ..parent.clone() };
        for c in d.children() {
            s.apply(c, conf_dir)?;
        }
        Ok(s)
    }

    /// Loads the certificates and builds the server config; `listen` is
    /// the directive that asked for TLS.
    fn build(&self, listen: &Directive) -> Result<Arc<rustls::ServerConfig>, ConfError> {
        if self.certs.is_empty() {
            return Err(listen.err("no \"ssl_certificate\" is defined for the \"listen ... ssl\" directive"));
        }
        let mut keys = Vec::new();
        for (i, (cert, at)) in self.certs.iter().enumerate() {
            let Some((key, _)) = self.keys.get(i) else {
                return Err(at.err(format!("no \"ssl_certificate_key\" is defined for certificate \"{cert}\"")));
            };
            keys.push(tls::load_key_pair(Path::new(cert), Path::new(key)).map_err(|e| at.err(e))?);
        }
        let mut opts = self.opts.clone();
        opts.alpn = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        tls::server_config(keys, &opts).map_err(|e| self.at.as_ref().unwrap_or(listen).err(e))
    }
}

/// The host's directives that live in http/server/location blocks.
pub const DIRECTIVES: &[(&str, u32, usize, usize)] = {
    use ctx::*;
    const H: u32 = HTTP | SERVER | LOCATION;
    const HS: u32 = HTTP | SERVER;
    const ANY: usize = usize::MAX;
    &[
        ("root", H | IF, 1, 1),
        ("alias", LOCATION, 1, 1),
        ("try_files", SERVER | LOCATION, 2, ANY),
        ("error_page", H | IF, 2, ANY),
        ("recursive_error_pages", H, 1, 1),
        ("client_max_body_size", H, 1, 1),
        ("client_body_timeout", H, 1, 1),
        ("client_body_buffer_size", H, 1, 1),
        ("client_body_temp_path", H, 1, 4),
        ("client_body_in_file_only", H, 1, 1),
        ("client_body_in_single_buffer", H, 1, 1),
        ("client_header_timeout", HS, 1, 1),
        ("client_header_buffer_size", HS, 1, 1),
        ("large_client_header_buffers", HS, 2, 2),
        ("keepalive_timeout", H, 1, 2),
        ("keepalive_requests", H, 1, 1),
        ("keepalive_time", H, 1, 1),
        ("send_timeout", H, 1, 1),
        ("limit_rate", H | IF, 1, 1),
        ("limit_rate_after", H | IF, 1, 1),
        ("server_tokens", H, 1, 1),
        ("sendfile", H | IF, 1, 1),
        ("tcp_nopush", H, 1, 1),
        ("tcp_nodelay", H, 1, 1),
        ("internal", LOCATION, 0, 0),
        ("log_not_found", H, 1, 1),
        ("chunked_transfer_encoding", H, 1, 1),
        ("lingering_close", H, 1, 1),
        ("lingering_time", H, 1, 1),
        ("lingering_timeout", H, 1, 1),
        ("absolute_redirect", H, 1, 1),
        ("port_in_redirect", H, 1, 1),
        ("server_name_in_redirect", H, 1, 1),
        ("merge_slashes", HS, 1, 1),
        ("underscores_in_headers", HS, 1, 1),
        ("ignore_invalid_headers", HS, 1, 1),
        ("reset_timedout_connection", H, 1, 1),
        ("server_names_hash_bucket_size", HTTP, 1, 1),
        ("server_names_hash_max_size", HTTP, 1, 1),
        ("variables_hash_max_size", HTTP, 1, 1),
        ("variables_hash_bucket_size", HTTP, 1, 1),
        ("msie_padding", H, 1, 1),
        ("ssl_certificate", HS, 1, 1),
        ("ssl_certificate_key", HS, 1, 1),
        ("ssl_protocols", HS, 1, ANY),
        ("ssl_ciphers", HS, 1, 1),
        ("ssl_prefer_server_ciphers", HS, 1, 1),
        ("ssl_session_cache", HS, 1, 2),
        ("ssl_session_timeout", HS, 1, 1),
        ("ssl_session_tickets", HS, 1, 1),
        ("ssl_buffer_size", HS, 1, 1),
        ("ssl_dhparam", HS, 1, 1),
        ("ssl_ecdh_curve", HS, 1, 1),
        ("ssl_stapling", HS, 1, 1),
        ("ssl_stapling_verify", HS, 1, 1),
        ("ssl_stapling_responder", HS, 1, 1),
        ("ssl_stapling_file", HS, 1, 1),
        ("ssl_trusted_certificate", HS, 1, 1),
        ("resolver", H, 1, ANY),
        ("resolver_timeout", H, 1, 1),
        ("http2", HS, 1, 1),
        ("http2_max_concurrent_streams", HS, 1, 1),
        ("http2_recv_buffer_size", HTTP, 1, 1),
        ("http2_chunk_size", H, 1, 1),
        ("http2_body_preread_size", HS, 1, 1),
        ("http2_idle_timeout", HS, 1, 1),
        ("http2_recv_timeout", HS, 1, 1),
        ("http2_max_requests", HS, 1, 1),
        ("http2_max_field_size", HS, 1, 1),
        ("http2_max_header_size", HS, 1, 1),
        ("http2_streams_index_size", HS, 1, 1),
        ("http2_push", H, 1, 1),
        ("http2_push_preload", H, 1, 1),
        ("default_type", H, 1, 1),
        ("gzip_vary", H, 1, 1),
        ("gzip_http_version", H, 1, 1),
        ("gzip_proxied", H, 1, ANY),
        ("gzip_disable", H, 1, ANY),
        ("satisfy", H, 1, 1),
        ("types_hash_max_size", H, 1, 1),
        ("types_hash_bucket_size", H, 1, 1),
        ("connection_pool_size", HS, 1, 1),
        ("request_pool_size", HS, 1, 1),
        ("sendfile_max_chunk", H, 1, 1),
        ("read_ahead", H, 1, 1),
        ("subrequest_output_buffer_size", H, 1, 1),
        ("directio", H | IF, 1, 1),
        ("aio", H, 1, 1),
        ("log_subrequest", H, 1, 1),
        ("open_log_file_cache", H, 1, 4),
        ("keepalive_disable", H, 1, 2),
        ("output_buffers", H, 2, 2),
        ("postpone_output", H, 1, 1),
        ("send_lowat", H, 1, 1),
    ]
};

/// Logs that `feature` (a directive, or a listen parameter, as named in
/// nginx) is accepted where `d` is but does nothing yet.
pub fn not_yet(d: &Directive, feature: &str) {
    let what = match feature {
        "http2" => "HTTP/2 is not implemented: clients get HTTP/1.1 (TLS's ALPN offers http/1.1 only)",
        "ssl_stapling" => "OCSP stapling is not implemented: no OCSP response is stapled (as nginx when the responder cannot be reached)",
        "resolver" => "no resolver is implemented: host names in proxy_pass with variables are not resolved (502)",
        _ => "accepted, but not implemented",
    };
    thread_local!(static SAID: std::cell::RefCell<std::collections::HashSet<(String, u32, String)>> = Default::default());
    // (A listen line is read twice: for the sockets and for its server.)
    if SAID.with(|s| s.borrow_mut().insert((d.file.to_string(), d.line, feature.to_string()))) {
        crate::log!(Warn, "\"{feature}\": {what} in {}:{}", d.file, d.line);
    }
}

fn dur(d: &Directive, i: usize) -> Result<Duration, ConfError> {
    parse_duration(&d.args[i]).ok_or_else(|| d.err(format!("\"{}\" directive invalid value", d.name)))
}

/// A size, or a value with variables to evaluate per request (then 0).
fn size_or_var(d: &Directive) -> Result<(u64, Option<String>), ConfError> {
    if d.args[0].contains('$') {
        return Ok((0, Some(d.args[0].clone())));
    }
    Ok((size(d, 0)?, None))
}

fn size(d: &Directive, i: usize) -> Result<u64, ConfError> {
    parse_size(&d.args[i]).map(|n| n as u64).ok_or_else(|| d.err(format!("\"{}\" directive invalid value", d.name)))
}

/// Server-level header settings being read.
struct Head {
    header_timeout: Duration,
    large_header: usize,
    max_head: usize,
    merge_slashes: bool,
    underscores: bool,
    ignore_invalid: bool,
}

impl Head {
    fn apply(&mut self, d: &Directive) -> Result<(), ConfError> {
        match d.name.as_str() {
            "client_header_timeout" => self.header_timeout = dur(d, 0)?,
            "large_client_header_buffers" => {
                let n: usize = d.args[0].parse().ok().filter(|&n| n > 0).ok_or_else(|| d.invalid(0))?;
                let s = size(d, 1)? as usize;
                if s == 0 {
                    return Err(d.invalid(1));
                }
                self.large_header = s;
                self.max_head = n * s;
            }
            "merge_slashes" => self.merge_slashes = d.flag()?,
            "underscores_in_headers" => self.underscores = d.flag()?,
            "ignore_invalid_headers" => self.ignore_invalid = d.flag()?,
            _ => {}
        }
        Ok(())
    }
}

/// Applies one host directive of a block to `c`; `first_error_page`
/// tracks whether this block replaced the inherited error_page list yet.
fn apply_core(c: &mut Core, d: &Directive, prefix: &Prefix, fresh_pages: &mut bool, in_loc: bool) -> Result<(), ConfError> {
    match d.name.as_str() {
        "root" | "alias" => {
            let mut p = prefix.resolve(&d.args[0]).to_string_lossy().into_owned();
            if d.name == "root" && p.len() > 1 && p.ends_with('/') {
                p.pop();
            }
            c.root_vars = p.contains('$');
            c.root = p;
            c.alias = d.name == "alias";
        }
        "try_files" => c.try_files = d.args.clone(),
        "error_page" => {
            if !*fresh_pages {
                c.error_pages.clear();
                *fresh_pages = true;
            }
            let mut args: &[String] = &d.args;
            let target = args.last().cloned().unwrap_or_default();
            args = &args[..args.len() - 1];
            let mut set = None;
            if let Some(last) = args.last().filter(|a| a.starts_with('=')) {
                set = Some(if last.len() == 1 {
                    None
                } else {
                    Some(last[1..].parse::<u16>().ok().filter(|c| (100..600).contains(c)).ok_or_else(|| d.err(format!("invalid value \"{last}\"")))?)
                });
                args = &args[..args.len() - 1];
            }
            if args.is_empty() {
                return Err(d.err("invalid number of arguments in \"error_page\" directive"));
            }
            let mut codes = Vec::new();
            for a in args {
                let code = a.parse::<u16>().ok().filter(|c| (300..600).contains(c)).ok_or_else(|| {
                    d.err(format!("value \"{a}\" must be between 300 and 599"))
                })?;
                codes.push(code);
            }
            c.error_pages.push(ErrorPage { codes, set, target });
        }
        "recursive_error_pages" => c.recursive_error_pages = d.flag()?,
        "client_max_body_size" => c.client_max_body_size = size(d, 0)?,
        "client_body_timeout" => c.client_body_timeout = dur(d, 0)?,
        "client_body_buffer_size" => c.client_body_buffer_size = size(d, 0)?,
        "client_body_temp_path" => {
            if d.args.len() > 1 {
                // nginx's hashed levels: accepted, files go in the top
                // directory (they live no longer than their request).
                for l in &d.args[1..] {
                    if !matches!(l.as_str(), "1" | "2") {
                        return Err(d.err(format!("invalid value \"{l}\"")));
                    }
                }
            }
            c.client_body_temp_path = prefix.resolve(&d.args[0]).to_string_lossy().into_owned();
        }
        "client_body_in_file_only" => {
            c.body_in_file_only = match d.args[0].as_str() {
                "off" => 0,
                "clean" => 1,
                "on" => 2,
                v => return Err(d.err(format!("invalid value \"{v}\" in \"client_body_in_file_only\" directive, it must be \"on\", \"clean\" or \"off\""))),
            }
        }
        "client_body_in_single_buffer" => {
            d.flag()?;
        }
        "types" => {
            let mut m = Types::default();
            for ch in d.children() {
                if ch.args.is_empty() {
                    return Err(ch.err(format!("invalid number of arguments in \"{}\" of \"types\" block", ch.name)));
                }
                for e in &ch.args {
                    m.insert(e.to_ascii_lowercase(), ch.name.clone());
                }
            }
            c.types = Some(Arc::new(m));
        }
        "default_type" => c.default_type = d.args[0].clone(),
        "gzip_vary" => c.gzip.vary = d.flag()?,
        "gzip_http_version" => {
            c.gzip.http10 = match d.args[0].as_str() {
                "1.0" => true,
                "1.1" => false,
                v => return Err(d.err(format!("invalid value \"{v}\" in \"gzip_http_version\" directive, it must be \"1.0\" or \"1.1\""))),
            }
        }
        "gzip_proxied" => {
            let mut f = 0;
            for v in &d.args {
                f |= match v.as_str() {
                    "off" => proxied::OFF,
                    "expired" => proxied::EXPIRED,
                    "no-cache" => proxied::NO_CACHE,
                    "no-store" => proxied::NO_STORE,
                    "private" => proxied::PRIVATE,
                    "no_last_modified" => proxied::NO_LM,
                    "no_etag" => proxied::NO_ETAG,
                    "auth" => proxied::AUTH,
                    "any" => proxied::ANY,
                    v => return Err(d.err(format!("invalid value \"{v}\" in \"gzip_proxied\" directive"))),
                };
            }
            c.gzip.proxied = f;
        }
        "gzip_disable" => {
            let mut list = Vec::new();
            for v in &d.args {
                if v == "msie6" {
                    c.gzip.msie6 = true;
                    continue;
                }
                let re = regex::RegexBuilder::new(&plugin_api::http::pcre_compat(v)).case_insensitive(true).build();
                list.push(re.map_err(|e| d.err(format!("regex \"{v}\" is invalid: {}", e.to_string().lines().last().unwrap_or(""))))?);
            }
            c.gzip.disable = Some(Arc::new(list));
        }
        "satisfy" => {
            c.satisfy_any = match d.args[0].as_str() {
                "all" => false,
                "any" => true,
                v => return Err(d.err(format!("invalid value \"{v}\" in \"satisfy\" directive, it must be \"all\" or \"any\""))),
            }
        }
        "keepalive_timeout" => {
            c.keepalive_timeout = dur(d, 0)?;
            c.keepalive_header = if d.args.len() > 1 { Some(dur(d, 1)?.as_secs()) } else { None };
        }
        "keepalive_requests" => c.keepalive_requests = d.args[0].parse().map_err(|_| d.invalid(0))?,
        "keepalive_time" => c.keepalive_time = dur(d, 0)?,
        "send_timeout" => c.send_timeout = dur(d, 0)?,
        "limit_rate" => (c.limit_rate, c.limit_rate_var) = size_or_var(d)?,
        "limit_rate_after" => (c.limit_rate_after, c.limit_rate_after_var) = size_or_var(d)?,
        "server_tokens" => {
            c.server_tokens = match d.args[0].as_str() {
                "build" => true,
                _ => d.flag()?,
            }
        }
        "sendfile" => c.sendfile = d.flag()?,
        "internal" if in_loc => c.internal = true,
        "log_not_found" => c.log_not_found = d.flag()?,
        "chunked_transfer_encoding" => c.chunked = d.flag()?,
        "lingering_close" => {
            c.lingering_close = match d.args[0].as_str() {
                "off" => 0,
                "on" => 1,
                "always" => 2,
                _ => return Err(d.invalid(0)),
            }
        }
        "lingering_time" => c.lingering_time = dur(d, 0)?,
        "lingering_timeout" => c.lingering_timeout = dur(d, 0)?,
        "absolute_redirect" => c.absolute_redirect = d.flag()?,
        "port_in_redirect" => c.port_in_redirect = d.flag()?,
        "server_name_in_redirect" => c.server_name_in_redirect = d.flag()?,
        "tcp_nopush" => c.tcp_nopush = d.flag()?,
        "tcp_nodelay" | "reset_timedout_connection" | "msie_padding" | "log_subrequest" | "ssl_stapling_verify" | "http2_push_preload" => {
            d.flag()?;
        }
        // Accepted so that common configurations load; what they would
        // do is not there yet, and the log says so (docs/nginx-compat.md).
        "http2" | "ssl_stapling" => {
            let on = d.flag()?;
            if on {
                not_yet(d, &d.name);
            }
        }
        "resolver" => not_yet(d, "resolver"),
        "resolver_timeout" | "http2_idle_timeout" | "http2_recv_timeout" => {
            dur(d, 0)?;
        }
        "http2_max_concurrent_streams" | "http2_max_requests" | "http2_streams_index_size" => {
            d.args[0].parse::<u64>().map_err(|_| d.invalid(0))?;
        }
        "http2_recv_buffer_size" | "http2_chunk_size" | "http2_body_preread_size" | "http2_max_field_size" | "http2_max_header_size" => {
            size(d, 0)?;
        }
        "http2_push" | "ssl_stapling_responder" | "ssl_stapling_file" => {}
        // nginx's memory-pool and hash-table sizes, and sendfile chunking:
        // ngxr sizes these itself; the values are checked and otherwise
        // change nothing (see docs/nginx-compat.md).
        "types_hash_max_size" | "types_hash_bucket_size" | "connection_pool_size" | "request_pool_size" | "sendfile_max_chunk" | "read_ahead" | "subrequest_output_buffer_size" => {
            size(d, 0)?;
        }
        "directio" if d.args[0] != "off" => {
            size(d, 0)?;
        }
        "aio" if !matches!(d.args[0].as_str(), "on" | "off" | "threads") && !d.args[0].starts_with("threads=") => {
            return Err(d.invalid(0));
        }
        "open_log_file_cache" => {
            // The log plugin opens each file once: it is always cached.
            for a in &d.args {
                let ok = a == "off" || ["max=", "inactive=", "min_uses=", "valid="].iter().any(|p| a.starts_with(p));
                if !ok {
                    return Err(d.err(format!("invalid \"open_log_file_cache\" parameter \"{a}\"")));
                }
            }
        }
        "keepalive_disable" => {
            let mut m = 0u8;
            for a in &d.args {
                m |= match a.as_str() {
                    "none" => 0,
                    "msie6" => 1,
                    "safari" => 2,
                    _ => return Err(d.err(format!("invalid value \"{a}\" in \"keepalive_disable\" directive"))),
                };
            }
            c.keepalive_disable = m;
        }
        _ => {}
    }
    Ok(())
}

/// Reads a block's host directives over a copy of the parent's settings.
fn block_core(parent: &Core, d: &Directive, prefix: &Prefix, in_loc: bool) -> Result<Core, ConfError> {
    let mut c = parent.clone();
    c.try_files.clear();
    c.internal = false;
    // A block's own error_log lines replace the inherited ones.
    let logs: Vec<_> = d.children().iter().filter(|ch| ch.name == "error_log").map(|ch| crate::config::core::parse_error_log(ch, prefix)).collect::<Result<_, _>>()?;
    if !logs.is_empty() {
        let at = d.children().iter().find(|ch| ch.name == "error_log").unwrap_or(d);
        c.error_log = Some(crate::log::Scoped::open(&logs).map_err(|e| at.err(e))?);
    }
    let mut fresh = false;
    let (mut root, mut alias) = (None::<&Directive>, None::<&Directive>);
    for ch in d.children() {
        match ch.name.as_str() {
            "root" if root.is_some() => return Err(ch.err("\"root\" directive is duplicate")),
            "alias" if alias.is_some() => return Err(ch.err("\"alias\" directive is duplicate")),
            "root" if alias.is_some() => return Err(ch.err("\"root\" directive is duplicate, \"alias\" directive was specified earlier")),
            "alias" if root.is_some() => return Err(ch.err("\"alias\" directive is duplicate, \"root\" directive was specified earlier")),
            "root" => root = Some(ch),
            "alias" => alias = Some(ch),
            _ => {}
        }
        apply_core(&mut c, ch, prefix, &mut fresh, in_loc)?;
    }
    Ok(c)
}

fn location_kind(d: &Directive) -> Result<(Kind, String, Option<Regex>), ConfError> {
    let regex = |src: &str, ci: bool| {
        RegexBuilder::new(&plugin_api::http::pcre_compat(src))
            .case_insensitive(ci)
            .build()
            .map_err(|e| d.err(format!("pcre2_compile() failed: {} in \"{src}\"", first_line(&e.to_string()))))
    };
    let (m, p) = split_location(d).ok_or_else(|| d.err(format!("invalid location modifier \"{}\"", d.args[0])))?;
    Ok(match m {
        "=" => (Kind::Exact, p.to_string(), None),
        "^~" => (Kind::NoRegex, p.to_string(), None),
        "~" => (Kind::Regex, p.to_string(), Some(regex(p, false)?)),
        "~*" => (Kind::Regex, p.to_string(), Some(regex(p, true)?)),
        "@" => (Kind::Named, format!("@{p}"), None),
        _ => (Kind::Prefix, p.to_string(), None),
    })
}

/// A `location`'s modifier ("", "=", "^~", "~", "~*", or "@" for a named
/// location) and its URI, pattern or name, in either spelling
/// (`location = /x` or `location =/x`). None for an unknown modifier.
pub fn split_location(d: &Directive) -> Option<(&str, &str)> {
    let (a0, a1) = (d.args.first()?.as_str(), d.args.get(1).map(String::as_str));
    if let Some(p) = a1 {
        return ["=", "^~", "~", "~*"].contains(&a0).then_some((a0, p));
    }
    for m in ["@", "=", "^~", "~*", "~"] {
        if let Some(p) = a0.strip_prefix(m).filter(|p| m == "@" || !p.is_empty()) {
            return Some((m, p));
        }
    }
    Some(("", a0))
}

fn first_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).map_or(s, str::trim)
}

fn server_name(d: &Directive, n: &str) -> Result<Option<Name>, ConfError> {
    if let Some(re) = n.strip_prefix('~') {
        let r = RegexBuilder::new(&plugin_api::http::pcre_compat(re))
            .case_insensitive(true)
            .build()
            .map_err(|e| d.err(format!("pcre2_compile() failed: {} in \"{re}\"", first_line(&e.to_string()))))?;
        return Ok(Some(Name::Regex(r)));
    }
    let n = n.to_ascii_lowercase();
    // `server_name ""` takes requests without a Host, as nginx's.
    if n.is_empty() || n == "\"\"" {
        return Ok(Some(Name::Exact(String::new())));
    }
    if n == "_" {
        return Ok(None);
    }
    if n.contains('/') {
        return Err(d.err(format!("server name \"{n}\" has suspicious symbols")));
    }
    Ok(Some(if let Some(rest) = n.strip_prefix("*.") {
        Name::Suffix(format!(".{rest}"), false)
    } else if n.starts_with('.') {
        Name::Suffix(n, true)
    } else if let Some(rest) = n.strip_suffix(".*") {
        Name::PrefixWild(format!("{rest}."))
    } else if n.contains('*') {
        return Err(d.err(format!("invalid server name or wildcard \"{n}\"")));
    } else {
        Name::Exact(n)
    }))
}

/// True when a server listening on `a` takes connections made to `local`
/// (the same address, or a wildcard address on its port).
fn covers(a: &SocketAddr, local: SocketAddr) -> bool {
    *a == local || (a.ip().is_unspecified() && a.port() == local.port())
}

/// A per-address listen flag for connections made to `local`: the
/// exact address's, else its port's wildcard's.
fn listen_flag(list: &[(SocketAddr, bool)], local: SocketAddr) -> bool {
    let exact = list.iter().find(|(a, _)| *a == local);
    let wild = || list.iter().find(|(a, _)| a.ip().is_unspecified() && a.port() == local.port() && a.is_ipv4() == local.is_ipv4());
    exact.or_else(wild).is_some_and(|&(_, on)| on)
}

impl HttpConf {
    /// Every `client_body_temp_path` in use (for the directories to be
    /// made before workers need them).
    pub fn temp_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.servers.iter().flat_map(|s| s.locs.iter().map(|l| l.core.client_body_temp_path.clone())).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Builds the HTTP configuration from the plugins' configuration nodes.
    pub fn build(plugins: &Plugins, prefix: &Prefix, conf_dir: &Path, default_addr: SocketAddr) -> Result<HttpConf, ConfError> {
        let nodes = &plugins.nodes;
        let mut out = HttpConf::default();
        let base = Core::defaults(prefix);
        let mut http_core = base.clone();
        let mut http_head = Head {
            header_timeout: Duration::from_secs(60),
            large_header: 8 * 1024,
            max_head: 32 * 1024,
            merge_slashes: true,
            underscores: false,
            ignore_invalid: true,
        };
        let mut http_content = None;
        let mut http_ssl = Ssl::default();
        // Per server: its TLS settings and the listen that named `ssl` (or
        // any listen, for servers sharing an ssl address).
        let mut ssl: Vec<(Ssl, Option<Directive>)> = Vec::new();
        // Node index → (server index, loc index) for locations' parents.
        let mut where_: Vec<Option<(usize, usize)>> = vec![None; nodes.len()];
        for (ni, n) in nodes.iter().enumerate() {
            match (n.level, n.in_ctx) {
                (ctx::HTTP, _) => {
                    http_core = block_core(&base, &n.d, prefix, false)?;
                    for ch in n.d.children() {
                        http_head.apply(ch)?;
                    }
                    http_content = n.content;
                    http_ssl = Ssl::block(&Ssl::default(), &n.d, conf_dir)?;
                }
                (ctx::SERVER, ctx::HTTP) => {
                    let core = block_core(&http_core, &n.d, prefix, false)?;
                    let mut head = Head { ..http_head };
                    for ch in n.d.children() {
                        head.apply(ch)?;
                    }
                    let mut s = Server {
                        listens: Vec::new(),
                        default_for: Vec::new(),
                        names: Vec::new(),
                        primary_name: String::new(),
                        name_captures: false,
                        locs: vec![Loc::new(Kind::Server, String::new(), None, n.confs.clone(), n.content.or(http_content), core)],
                        named: Vec::new(),
                        auto_redirect: Vec::new(),
                        auto_redirect_lens: 0,
                        header_timeout: head.header_timeout,
                        large_header: head.large_header,
                        max_head: head.max_head,
                        merge_slashes: head.merge_slashes,
                        underscores_in_headers: head.underscores,
                        ignore_invalid_headers: head.ignore_invalid,
                        tls: None,
                        conds: Vec::new(),
                    };
                    let mut listen_at = None;
                    let mut named = false;
                    for c in n.d.children() {
                        match c.name.as_str() {
                            "listen" => {
                                let (l, _) = crate::config::core::parse_listen(c)?;
                                for (list, on) in [(&mut out.listen_ssl, l.ssl), (&mut out.listen_pp, l.proxy_protocol)] {
                                    match list.iter_mut().find(|(a, _)| *a == l.addr) {
                                        Some((_, was)) => *was |= on,
                                        None => list.push((l.addr, on)),
                                    }
                                }
                                if l.ssl || listen_at.is_none() {
                                    listen_at = Some(c.clone());
                                }
                                if l.default_server {
                                    if out.servers.iter().any(|o| o.default_for.contains(&l.addr)) {
                                        return Err(c.err(format!("a duplicate default server for {}", l.addr)));
                                    }
                                    s.default_for.push(l.addr);
                                }
                                s.listens.push(l.addr);
                            }
                            "server_name" => {
                                for a in &c.args {
                                    let a = if a.eq_ignore_ascii_case("$hostname") { crate::sys::hostname() } else { a.clone() };
                                    // $server_name is the first name as
                                    // written (a regex with its '~'),
                                    // lowercase, without a leading '.'.
                                    if !named {
                                        named = true;
                                        s.primary_name = if a.starts_with('~') { a.clone() } else { a.to_ascii_lowercase().trim_start_matches('.').to_string() };
                                    }
                                    if let Some(name) = server_name(c, &a)? {
                                        s.name_captures |= matches!(&name, Name::Regex(r) if r.captures_len() > 1);
                                        s.names.push(name);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    if s.listens.is_empty() {
                        s.listens.push(default_addr);
                        if !out.listen_ssl.iter().any(|(a, _)| *a == default_addr) {
                            out.listen_ssl.push((default_addr, false));
                        }
                    }
                    ssl.push((Ssl::block(&http_ssl, &n.d, conf_dir)?, listen_at.or_else(|| Some(n.d.clone()))));
                    out.servers.push(s);
                    where_[ni] = Some((out.servers.len() - 1, 0));
                }
                (ctx::LOCATION, _) => {
                    let Some((si, parent)) = n.parent.and_then(|p| where_[p]) else { continue };
                    let s = &mut out.servers[si];
                    let (kind, path, regex) = location_kind(&n.d)?;
                    let pl = &s.locs[parent];
                    if pl.kind == Kind::Named {
                        return Err(n.d.err(format!("location \"{path}\" could not be inside the named location \"{}\"", pl.path)));
                    }
                    if pl.kind == Kind::Exact {
                        return Err(n.d.err(format!("location \"{path}\" could not be inside the exact location \"{}\"", pl.path)));
                    }
                    if kind == Kind::Named && parent != 0 {
                        return Err(n.d.err(format!("named location \"{path}\" can be on the server level only")));
                    }
                    if matches!(kind, Kind::Prefix | Kind::NoRegex | Kind::Exact)
                        && matches!(pl.kind, Kind::Prefix | Kind::NoRegex)
                        && !path.starts_with(&pl.path)
                    {
                        return Err(n.d.err(format!("location \"{path}\" is outside location \"{}\"", pl.path)));
                    }
                    let mut core = block_core(&pl.core, &n.d, prefix, true)?;
                    if n.d.children().iter().any(|c| c.name == "alias") {
                        core.alias_len = if kind == Kind::Regex { usize::MAX } else { path.len() };
                    }
                    // A content handler set at server/http level is inherited;
                    // one set in a location is not (as nginx's clcf->handler).
                    let content = n.content.or(if pl.kind == Kind::Server { pl.content } else { None });
                    let dup = |list: &[usize], locs: &[Loc]| list.iter().any(|&i| locs[i].path == path);
                    let me = s.locs.len();
                    if n.content.is_some() && matches!(kind, Kind::Prefix | Kind::NoRegex) && path.len() > 1 && path.ends_with('/') {
                        s.auto_redirect.push(me);
                        s.auto_redirect_lens |= 1 << ((path.len() - 1) % 64);
                    }
                    match kind {
                        Kind::Exact if dup(&s.locs[parent].exact, &s.locs) => {
                            return Err(n.d.err(format!("duplicate location \"{path}\"")))
                        }
                        Kind::Prefix | Kind::NoRegex if dup(&s.locs[parent].prefix, &s.locs) => {
                            return Err(n.d.err(format!("duplicate location \"{path}\"")))
                        }
                        Kind::Named if s.named.iter().any(|(p, _)| *p == path) => {
                            return Err(n.d.err(format!("duplicate location \"{path}\"")))
                        }
                        Kind::Exact => s.locs[parent].exact.push(me),
                        Kind::Prefix | Kind::NoRegex => s.locs[parent].prefix.push(me),
                        Kind::Regex => s.locs[parent].regexes.push(me),
                        Kind::Named => s.named.push((path.clone(), me)),
                        Kind::Server | Kind::Cond => {}
                    }
                    s.locs.push(Loc::new(kind, path, regex, n.confs.clone(), content, core));
                    where_[ni] = Some((si, me));
                }
                (ctx::IF | ctx::LIMIT_EXCEPT, _) => {
                    let Some((si, parent)) = n.parent.and_then(|p| where_[p]) else { continue };
                    let s = &mut out.servers[si];
                    let pl = &s.locs[parent];
                    let core = block_core(&pl.core, &n.d, prefix, true)?;
                    // The enclosing location's content handler stays unless
                    // the block sets its own (nginx keeps r->content_handler).
                    let content = n.content.or(pl.content);
                    let path = pl.path.clone();
                    let me = s.locs.len();
                    if n.level == ctx::LIMIT_EXCEPT {
                        s.locs[parent].limit_except = Some((limit_except_mask(&n.d)?, me));
                    } else {
                        s.conds.push((ni as u32 + 1, me));
                    }
                    s.locs.push(Loc::new(Kind::Cond, path, None, n.confs.clone(), content, core));
                    where_[ni] = Some((si, me));
                }
                _ => {}
            }
        }
        for (si, (conf, at)) in ssl.into_iter().enumerate() {
            let on_ssl = out.servers[si].listens.iter().any(|a| out.listen_ssl.contains(&(*a, true)));
            if let (true, Some(at)) = (on_ssl, at) {
                out.servers[si].tls = Some(conf.build(&at)?);
            }
        }
        Ok(out)
    }

    /// The server (and its TLS config) for a handshake on `local` whose
    /// SNI is `sni`: the named server if it has TLS, else `default`, else
    /// the first TLS server on that port.
    pub fn tls_server<'s>(&'s self, local: SocketAddr, sni: Option<&str>, default: &'s Server) -> Option<(&'s Server, Arc<rustls::ServerConfig>)> {
        let named = sni.and_then(|n| self.find_server(local, &n.to_ascii_lowercase()));
        let port = |s: &&Server| s.listens.iter().any(|a| a.port() == local.port());
        let s = named
            .filter(|s| s.tls.is_some())
            .or(Some(default).filter(|s| s.tls.is_some()))
            .or_else(|| self.servers.iter().filter(port).find(|s| s.tls.is_some()))
            .unwrap_or(default);
        // is_ssl(local) implies some server on this port has TLS (build
        // refuses an ssl listen without a certificate).
        let cfg = s.tls.clone().or_else(|| self.servers.iter().find_map(|s| s.tls.clone()))?;
        Some((s, cfg))
    }

    /// Whether connections accepted on `local` speak TLS: the listen for
    /// exactly that address decides, else the wildcard of its port.
    pub fn is_ssl(&self, local: SocketAddr) -> bool {
        listen_flag(&self.listen_ssl, local)
    }

    /// Connections to `local` start with a PROXY protocol header.
    pub fn is_proxy_protocol(&self, local: SocketAddr) -> bool {
        listen_flag(&self.listen_pp, local)
    }

    /// The server for a connection on `local` with `host` (lowercase, no
    /// port): exact name, longest `*.` suffix, longest `.*` prefix, first
    /// matching regex, else the address's default server.
    pub fn find_server(&self, local: SocketAddr, host: &str) -> Option<&Server> {
        self.find_server_by(local, host).0
    }

    /// `find_server`, and the regex name that chose it (its captures are
    /// the request's variables, as nginx's).
    pub fn find_server_by(&self, local: SocketAddr, host: &str) -> (Option<&Server>, Option<&Regex>) {
        let on = |s: &&Server| s.listens.iter().any(|a| covers(a, local));
        let cands = || self.servers.iter().filter(on);
        // (An empty host finds `server_name ""`.)
        if let Some(s) = cands().find(|s| s.names.iter().any(|n| matches!(n, Name::Exact(e) if e == host))) {
            return (Some(s), None);
        }
        if !host.is_empty() {
            let best = |f: &dyn Fn(&Name) -> Option<usize>| {
                cands().filter_map(|s| s.names.iter().filter_map(f).max().map(|l| (l, s))).max_by_key(|(l, _)| *l).map(|(_, s)| s)
            };
            let suffix = |n: &Name| match n {
                Name::Suffix(sfx, bare) if host.ends_with(sfx.as_str()) || (*bare && host == &sfx[1..]) => Some(sfx.len()),
                _ => None,
            };
            if let Some(s) = best(&suffix) {
                return (Some(s), None);
            }
            let pre = |n: &Name| match n {
                Name::PrefixWild(p) if host.starts_with(p.as_str()) => Some(p.len()),
                _ => None,
            };
            if let Some(s) = best(&pre) {
                return (Some(s), None);
            }
            for s in cands() {
                for n in &s.names {
                    if let Name::Regex(r) = n {
                        if r.is_match(host) {
                            return (Some(s), Some(r));
                        }
                    }
                }
            }
        }
        (self.default_server(local), None)
    }

    /// How many servers listen on `local` (counting stops at 2).
    pub fn servers_on(&self, local: SocketAddr) -> usize {
        self.servers.iter().filter(|s| s.listens.iter().any(|a| covers(a, local))).take(2).count()
    }

    /// The default server for `local`: the one marked `default_server`
    /// for that address (or the wildcard of its port), else the first.
    pub fn default_server(&self, local: SocketAddr) -> Option<&Server> {
        self.servers
            .iter()
            .find(|s| s.default_for.contains(&local))
            .or_else(|| self.servers.iter().find(|s| s.default_for.iter().any(|a| covers(a, local))))
            .or_else(|| self.servers.iter().find(|s| s.listens.iter().any(|a| covers(a, local))))
    }
}

/// The outcome of a location search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    None,
    /// A prefix match (regexes may still win).
    Prefix(usize, bool),
    /// Exact or regex match: final.
    Final(usize),
}

impl Server {
    /// nginx's auto_redirect: `uri` (found at `found` by prefix or not at
    /// all) is the name of a location with its own content handler minus
    /// the trailing '/', so the client is sent to the name.
    #[inline]
    pub fn auto_redirect(&self, uri: &str, found: usize) -> bool {
        self.auto_redirect_lens & (1 << (uri.len() % 64)) != 0 && self.auto_redirect_slow(uri, found)
    }

    fn auto_redirect_slow(&self, uri: &str, found: usize) -> bool {
        self.auto_redirect.iter().any(|&i| {
            let p = self.locs[i].path.as_bytes();
            p.len() == uri.len() + 1 && p.starts_with(uri.as_bytes())
        }) && !matches!(self.locs[found].kind, Kind::Exact | Kind::Regex)
    }

    /// The location for `uri`, nginx's way: an exact match wins; else the
    /// longest prefix, whose nested locations are searched next; unless it
    /// is `^~`, regexes are then tried in order (nested ones first) and
    /// the first that matches wins; else the longest prefix; else the
    /// server level (0).
    pub fn find_location(&self, uri: &str) -> usize {
        match self.search(0, uri) {
            Found::None => 0,
            Found::Prefix(i, _) | Found::Final(i) => i,
        }
    }

    fn search(&self, at: usize, uri: &str) -> Found {
        let l = &self.locs[at];
        if let Some(&i) = l.exact.iter().find(|&&i| self.locs[i].path == uri) {
            return Found::Final(i);
        }
        let mut found = Found::None;
        let mut noregex = false;
        let best = l
            .prefix
            .iter()
            .filter(|&&i| uri.starts_with(self.locs[i].path.as_str()))
            .max_by_key(|&&i| self.locs[i].path.len());
        if let Some(&p) = best {
            noregex = self.locs[p].kind == Kind::NoRegex;
            found = Found::Prefix(p, noregex);
            match self.search(p, uri) {
                Found::Final(i) => return Found::Final(i),
                Found::Prefix(i, nr) => found = Found::Prefix(i, nr),
                Found::None => {}
            }
        }
        if !noregex {
            for &r in &l.regexes {
                if self.locs[r].regex.as_ref().is_some_and(|re| re.is_match(uri)) {
                    return match self.search(r, uri) {
                        Found::None => Found::Final(r),
                        Found::Prefix(i, _) | Found::Final(i) => Found::Final(i),
                    };
                }
            }
        }
        found
    }

    /// The location of conditional block `id` (`http_enter_block`).
    pub fn cond_block(&self, id: u32) -> Option<usize> {
        self.conds.iter().find(|c| c.0 == id).map(|c| c.1)
    }

    /// The location a request for `method` uses in location `at`: its
    /// `limit_except` block when the method is not one it allows.
    #[inline]
    pub fn limit_except(&self, at: usize, method: &str) -> usize {
        match self.locs[at].limit_except {
            Some((allowed, block)) if allowed & method_bit(method) == 0 => block,
            _ => at,
        }
    }

    /// The `@name` location.
    pub fn named(&self, name: &str) -> Option<usize> {
        self.named.iter().find(|(n, _)| n == name).map(|&(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(conf: &str) -> Server {
        let dir = std::env::temp_dir();
        let parsed = crate::config::parser::parse_str(conf, "t.conf").unwrap();
        let reg = crate::config::table::Registry::core();
        reg.check(&parsed).unwrap();
        let mut p = Plugins::new(Vec::new(), dir.clone());
        p.configure(&parsed, &reg).unwrap();
        let addr = "0.0.0.0:80".parse().unwrap();
        HttpConf::build(&p, &Prefix(dir.clone()), &dir, addr).unwrap().servers.remove(0)
    }

    #[test]
    fn nginx_location_order() {
        let s = server(
            "http { server {
                location = / { }
                location / { }
                location /documents/ { location ~ \\.txt$ { } }
                location ^~ /images/ { }
                location ~* \\.(gif|jpg|jpeg)$ { }
                location @fallback { }
            } }",
        );
        let path = |u: &str| {
            let l = &s.locs[s.find_location(u)];
            format!("{:?} {}", l.kind, l.path)
        };
        assert_eq!(path("/"), "Exact /");
        assert_eq!(path("/index.html"), "Prefix /");
        assert_eq!(path("/documents/document.html"), "Prefix /documents/");
        assert_eq!(path("/documents/a.txt"), "Regex \\.txt$");
        assert_eq!(path("/images/1.gif"), "NoRegex /images/");
        assert_eq!(path("/documents/1.JPG"), "Regex \\.(gif|jpg|jpeg)$");
        assert_eq!(path("/x.jpg"), "Regex \\.(gif|jpg|jpeg)$");
        assert_eq!(s.named("@fallback").map(|i| s.locs[i].kind), Some(Kind::Named));
    }

    #[test]
    fn inheritance_and_errors() {
        let s = server(
            "http { client_max_body_size 5m; root /srv; error_page 404 /404.html;
              server { location /a { error_page 500 = /err; location /a/b { } } location /c { alias /data/; internal; } } }",
        );
        let a = &s.locs[s.find_location("/a")];
        assert_eq!(a.core.client_max_body_size, 5 << 20);
        assert_eq!(a.core.root, "/srv");
        assert_eq!(a.core.error_pages.len(), 1);
        assert_eq!(a.core.error_pages[0].codes, vec![500]);
        let b = &s.locs[s.find_location("/a/b/x")];
        assert_eq!(b.core.error_pages[0].set, Some(None));
        let c = &s.locs[s.find_location("/c/x")];
        assert!(c.core.alias && c.core.internal);
        assert!(!b.core.internal);
        assert_eq!(s.locs[0].core.error_pages[0].target, "/404.html");
    }

    #[test]
    fn types_by_extension_and_inheritance() {
        let s = server(
            "http { types { text/plain txt; image/png png PNG2; } default_type application/octet-stream;
              server { location /own { types { text/css css; } } location /def { default_type text/x-d; } location /none { } } }",
        );
        let core = |u: &str| &s.locs[s.find_location(u)].core;
        let t = core("/x");
        assert_eq!(t.content_type("/x/a.txt"), "text/plain");
        assert_eq!(t.content_type("/x/A.PNG"), "image/png", "extensions match case-insensitively");
        assert_eq!(t.content_type("/x/a.png2"), "image/png");
        assert_eq!(t.content_type("/x.txt/noext"), "application/octet-stream", "a dot in a directory is no extension");
        assert_eq!(t.content_type("/a.tar.gz"), "application/octet-stream");
        assert_eq!(t.content_type("/a."), "application/octet-stream");
        // A block's own types replace the inherited map; default_type alone
        // keeps it.
        assert_eq!((core("/own/a.css").content_type("/a.css"), core("/own/a.txt").content_type("/a.txt")), ("text/css", "application/octet-stream"));
        assert_eq!((core("/def/a.txt").content_type("/a.txt"), core("/def/a.bin").content_type("/a.bin")), ("text/plain", "text/x-d"));
        // Without a types block: nginx's built-in three, else text/plain.
        let b = server("http { server { } }");
        assert_eq!((b.locs[0].core.content_type("/i.GIF"), b.locs[0].core.content_type("/i.txt")), ("image/gif", "text/plain"));
    }
}
