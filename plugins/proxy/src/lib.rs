//! The `proxy` plugin: nginx's `proxy_pass` and `upstream`.
//!
//! The location's content handler drives one exchange per attempt as a
//! state machine that the host calls again (`Status::Again` + resume) on
//! every readiness event of the upstream connection, on timers, and when
//! the client has drained queued output. Everything runs in the worker's
//! event loop; nothing blocks.
//!
//! Request: the body is read first (as nginx's `proxy_request_buffering
//! on`), then the head (method, rewritten URI, `proxy_set_header`s, the
//! client's other headers) and the body go out with a Content-Length.
//! Response: the head is parsed (httparse), filtered (hop-by-hop and
//! hidden headers, `proxy_redirect`) and sent; the body is passed on by
//! Content-Length, chunked or close-delimited framing. With
//! `proxy_buffering on` what the client cannot take yet goes to an
//! unlinked temporary file (sent with sendfile) up to
//! `proxy_max_temp_file_size`, so the upstream is released early; with
//! `off`, or past that size, the upstream is read only as fast as the
//! client takes the data.

pub mod upstream;

use plugin_api::http::{escape_uri, Chunked, Step};
use plugin_api::io::Conn;
use plugin_api::template::Template;
use plugin_api::{export_plugin, sys, ConfCx, DirectiveSpec, Piece, Plugin, Request, Status};
use std::cell::RefCell;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};
use upstream::{Idle, Upstream};

mod cache;
mod cgi;
mod fastcgi;
mod memcached;

use cgi::Proto;

/// A number unique within this worker (temporary file names).
pub fn session_serial() -> u64 {
    thread_local!(static N: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    N.with(|n| {
        n.set(n.get() + 1);
        n.get()
    })
}

const LOC: u32 = sys::CTX_LOCATION;
const ANY: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

/// `proxy_next_upstream` conditions.
mod next {
    pub const ERROR: u32 = 1;
    pub const TIMEOUT: u32 = 2;
    pub const INVALID_HEADER: u32 = 4;
    pub const HTTP_500: u32 = 8;
    pub const HTTP_502: u32 = 16;
    pub const HTTP_503: u32 = 32;
    pub const HTTP_504: u32 = 64;
    pub const HTTP_403: u32 = 128;
    pub const HTTP_404: u32 = 256;
    pub const HTTP_429: u32 = 512;
    pub const NON_IDEMPOTENT: u32 = 1024;
    pub const OFF: u32 = 1 << 30;
}

/// The target of `proxy_pass`.
#[derive(Debug)]
pub struct Pass {
    /// `http://host:port` as written (no URI part).
    pub base: String,
    /// `host[:port]` as written: `$proxy_host`, and the upstream's name.
    pub host: String,
    /// The URI part, if any ("/two/").
    pub uri: Option<String>,
    /// The location's name (prefix) the URI part replaces.
    pub loc_prefix: String,
    /// Addresses when `host` resolved at configuration time.
    pub addrs: Vec<String>,
    /// The group, bound when configuration is complete.
    pub group: RefCell<Option<Rc<Upstream>>>,
    /// `https://`: TLS to the upstream.
    pub tls: bool,
    /// The URL holds variables: rendered per request into a Pass of its
    /// own (this one keeps only `tls`).
    pub url: Option<Template>,
    /// Made from such a URL: its URI part (if any) replaces the request's
    /// whole target, and `proxy_redirect default` does not apply (nginx).
    pub dynamic: bool,
    /// What the upstream speaks: HTTP, or a CGI family (see [`cgi`]).
    pub proto: Proto,
}

/// `proxy_redirect`.
#[derive(Debug, Clone)]
pub enum Redirect {
    /// `off`.
    Off,
    /// Rules (`default` expands to one from proxy_pass and the location).
    Rules(Vec<RedirectRule>),
}

/// One `proxy_redirect from to;`.
#[derive(Debug, Clone)]
pub enum RedirectRule {
    /// `default`: from proxy_pass's URL to the location.
    Default,
    /// A prefix (text with variables) and its replacement.
    Prefix(Template, Template),
    /// `~regex` / `~*regex` and a replacement with `$1`… and variables.
    Regex(regex::Regex, Template),
}

/// Per-block configuration.
#[derive(Default)]
pub struct Conf {
    pass: Option<Rc<Pass>>,
    headers: Option<Rc<Vec<(String, Template)>>>,
    hide: Option<Vec<String>>,
    pass_headers: Option<Vec<String>>,
    http11: Option<bool>,
    buffering: Option<bool>,
    buffer_size: Option<usize>,
    buffers: Option<(usize, usize)>,
    max_temp: Option<u64>,
    temp_path: Option<String>,
    redirect: Option<Redirect>,
    intercept: Option<bool>,
    /// `proxy_ignore_headers X-Accel-Redirect`.
    ignore_xa_redirect: Option<bool>,
    connect_timeout: Option<u64>,
    send_timeout: Option<u64>,
    read_timeout: Option<u64>,
    next_up: Option<u32>,
    next_tries: Option<u32>,
    next_timeout: Option<u64>,
    /// `proxy_ssl_verify`, `proxy_ssl_trusted_certificate`,
    /// `proxy_ssl_server_name`, `proxy_ssl_name`, `proxy_ssl_protocols`,
    /// `proxy_ssl_ciphers`, `proxy_ssl_session_reuse`,
    /// `proxy_ssl_certificate` + `_key`.
    ssl_verify: Option<bool>,
    ssl_trusted: Option<String>,
    ssl_server_name: Option<bool>,
    ssl_name: Option<String>,
    ssl_protocols: Option<String>,
    ssl_ciphers: Option<String>,
    ssl_reuse: Option<bool>,
    ssl_cert: Option<String>,
    ssl_key: Option<String>,
    /// The TLS context for an `https://` proxy_pass (built in merge).
    tls: Option<plugin_api::TlsCtx>,
    /// Upstream groups (shared by every block once merged).
    groups: Rc<RefCell<Vec<Rc<Upstream>>>>,
    /// `proxy_cache zone|off` and the other `proxy_cache_*` directives.
    cache: Option<Option<String>>,
    cache_key: Option<Rc<Template>>,
    cache_valid: Option<Rc<cache::Valid>>,
    cache_methods: Option<u32>,
    cache_bypass: Option<Rc<Vec<Template>>>,
    no_cache: Option<Rc<Vec<Template>>>,
    cache_use_stale: Option<u32>,
    cache_convert_head: Option<bool>,
    cache_revalidate: Option<bool>,
    cache_lock: Option<bool>,
    cache_lock_timeout: Option<u64>,
    cache_lock_age: Option<u64>,
    /// `proxy_cookie_domain` and `proxy_cookie_path` rules (Some(empty):
    /// `off`).
    cookie_domain: Option<Rc<Vec<RedirectRule>>>,
    cookie_path: Option<Rc<Vec<RedirectRule>>>,
    /// `proxy_cookie_flags` rules: the cookie's name (text with variables,
    /// or a caseless regex) and its flags (Some(empty): `off`).
    cookie_flags: Option<Rc<Vec<CookieFlags>>>,
    /// `proxy_method`, `proxy_set_body`.
    method: Option<Template>,
    set_body: Option<Template>,
    /// `proxy_pass_request_body`, `proxy_pass_request_headers`.
    pass_body: Option<bool>,
    pass_req_headers: Option<bool>,
    /// `proxy_ignore_headers` bits for the cache (`cache::ignore`).
    ignore_cache: Option<u32>,
    /// This location's cache, resolved when merged.
    cache_conf: Option<Rc<cache::CacheConf>>,
    /// `fastcgi_param`, `scgi_param`, `uwsgi_param` (in `Proto::CGI`
    /// order): a block with any replaces the inherited list, as nginx's.
    params: [Option<Rc<Vec<cgi::Param>>>; 3],
    /// `uwsgi_modifier1`, `uwsgi_modifier2`.
    uwsgi_modifiers: Option<(u8, u8)>,
    /// `fastcgi_index`, `fastcgi_split_path_info`.
    fcgi_index: Option<String>,
    fcgi_split: Option<Rc<regex::Regex>>,
    /// `fastcgi_catch_stderr`: stderr text that makes the response head
    /// invalid.
    fcgi_catch: Option<Rc<Vec<String>>>,
    /// `fastcgi_keep_conn`.
    fcgi_keep: Option<bool>,
    /// The `fastcgi_*`, `scgi_*` and `uwsgi_*` twins of the upstream
    /// settings (timeouts, buffers, headers, next upstream), and
    /// memcached's, in `Proto::SIDED` order: in a location that passes to that family they
    /// replace the `proxy_*` ones when merged.
    sides: [Option<Box<Conf>>; 4],
    /// `memcached_gzip_flag`.
    memcached_gzip_flag: Option<u32>,
}

/// Copies the upstream settings that have `fastcgi_*` twins.
macro_rules! tuning {
    ($m:ident, $p:expr, $c:expr) => {
        $m!($p, $c, hide, pass_headers, pass_body, pass_req_headers, buffering, buffer_size, buffers, max_temp, temp_path, intercept, ignore_xa_redirect, ignore_cache, connect_timeout, send_timeout, read_timeout, next_up, next_tries, next_timeout)
    };
}

/// Unset child values inherit.
macro_rules! inherit_fields {
    ($p:expr, $c:expr, $($f:ident),*) => { $( if $c.$f.is_none() { $c.$f = $p.$f.clone(); } )* };
}

/// The child takes them all, set or not.
macro_rules! take_fields {
    ($p:expr, $c:expr, $($f:ident),*) => { $( $c.$f = $p.$f.clone(); )* };
}

/// nginx's unsafe URI check for X-Accel-Redirect: a "." or ".." path
/// segment, escaped or not.
fn unsafe_uri(path: &str) -> bool {
    let b = path.as_bytes();
    let mut dec = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                dec.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                dec.push(c);
                i += 1;
            }
        }
    }
    dec.split(|&c| c == b'/').any(|seg| seg == b"." || seg == b"..")
}

/// Splits what follows `http://` into the host and the URI part, if any.
/// A Unix-domain socket is written `unix:/path` and ends at the next ':'
/// (`http://unix:/run/app.sock:/uri`), as nginx's.
fn split_host(rest: &str) -> (&str, Option<String>) {
    if let Some(path) = rest.strip_prefix("unix:") {
        return match path.find(':') {
            Some(i) => (&rest[..5 + i], Some(path[i + 1..].to_string()).filter(|u| !u.is_empty())),
            None => (rest, None),
        };
    }
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    }
}

/// The TLS name for a proxy_pass host: without its port (and brackets).
fn tls_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

fn set_opt<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("\"{name}\" directive is duplicate"));
    }
    *slot = Some(v);
    Ok(())
}

fn parse_pass(c: &mut Conf, a: &[&str], cx: &ConfCx<'_>) -> Result<(), String> {
    let url = a[0];
    if url.contains('$') {
        // Resolved per request (dynamic_pass): an upstream group by name,
        // or an address (there is no resolver for names at run time).
        // The URL is checked once rendered ("http:/$uri" is one), as
        // nginx's.
        let tls = url.len() >= 6 && url[..6].eq_ignore_ascii_case("https:");
        set_opt(
            &mut c.pass,
            Rc::new(Pass {
                base: String::new(),
                tls,
                host: String::new(),
                uri: None,
                loc_prefix: String::new(),
                addrs: Vec::new(),
                group: RefCell::new(None),
                url: Some(Template::parse(url)),
                dynamic: false,
                proto: Proto::Http,
            }),
            "proxy_pass",
        )?;
        return serve_here(cx);
    }
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else {
        return Err(format!("invalid URL prefix in \"{url}\""));
    };
    let (host, uri) = split_host(rest);
    if host.is_empty() {
        return Err(format!("no host in \"{url}\""));
    }
    let (modifier, name) = cx.location().unwrap_or_default();
    if uri.is_some() && (modifier == "~" || modifier == "~*" || modifier == "@") {
        return Err("\"proxy_pass\" cannot have URI part in location given by regular expression, or inside named location".into());
    }
    let addrs = upstream::resolve(host).unwrap_or_default();
    set_opt(
        &mut c.pass,
        Rc::new(Pass {
            base: format!("{scheme}://{host}"),
            tls: scheme == "https",
            host: host.to_string(),
            uri,
            loc_prefix: if modifier == "@" { String::new() } else { name },
            addrs,
            group: RefCell::new(None),
            url: None,
            dynamic: false,
            proto: Proto::Http,
        }),
        "proxy_pass",
    )?;
    serve_here(cx)
}

/// The location proxies: the proxy is its content handler, and the
/// proxy's variables exist.
fn serve_here(cx: &ConfCx<'_>) -> Result<(), String> {
    cx.set_content_handler::<Proxy>()?;
    for v in ["upstream_addr", "upstream_status", "upstream_response_time", "upstream_connect_time", "upstream_header_time", "upstream_response_length", "upstream_bytes_received", "upstream_bytes_sent", "proxy_host", "proxy_port", "proxy_add_x_forwarded_for", "upstream_cache_status"] {
        cx.define_variable(v, var_get(v))?;
    }
    cx.define_variable_prefix("upstream_http_", upstream_http)?;
    cx.define_variable_prefix("upstream_cookie_", upstream_cookie)
}

thread_local! {
    /// Implicit groups for addresses proxy_pass URLs with variables have
    /// named (their peers' failure state and pools last between requests).
    static DYN_GROUPS: RefCell<std::collections::HashMap<String, Rc<Upstream>>> = RefCell::new(std::collections::HashMap::new());
}

/// The Pass for this request of a proxy_pass URL with variables: an
/// upstream group by that name, else an IP address (and port); a host
/// name needs a resolver ngxr does not have (502, as nginx without one).
fn dynamic_pass(req: &Request<'_>, conf: &Conf, tpl: &Pass) -> Result<Rc<Pass>, Status> {
    let mut out = Vec::new();
    if let Some(t) = &tpl.url {
        t.render(&mut out, |v, o| o.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
    }
    let url = String::from_utf8_lossy(&out).into_owned();
    let (scheme, rest) = match url.split_once("://") {
        Some((s @ ("http" | "https"), r)) => (s, r),
        _ => {
            plugin_api::log(sys::LOG_ERR, &format!("invalid URL prefix in \"{url}\""));
            return Err(Status::Http(500));
        }
    };
    let (host, uri) = split_host(rest);
    if host.is_empty() {
        plugin_api::log(sys::LOG_ERR, &format!("no host in \"{url}\""));
        return Err(Status::Http(500));
    }
    let group = conf.groups.borrow().iter().find(|u| u.name == host).cloned().or_else(|| {
        DYN_GROUPS.with(|g| {
            if let Some(u) = g.borrow().get(host) {
                return Some(u.clone());
            }
            let port = if scheme == "https" { 443 } else { 80 };
            let addr = if host.starts_with("unix:") {
                upstream::resolve(host).ok()?.swap_remove(0)
            } else {
                host
                .parse::<std::net::SocketAddr>()
                .ok()
                .or_else(|| host.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, port)))
                .or_else(|| host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).and_then(|h| h.parse::<std::net::IpAddr>().ok()).map(|ip| std::net::SocketAddr::new(ip, port)))?
                .to_string()
            };
            let u = Rc::new(Upstream::implicit(host, &[addr]));
            g.borrow_mut().insert(host.to_string(), u.clone());
            Some(u)
        })
    });
    let Some(group) = group else {
        plugin_api::log(sys::LOG_ERR, &format!("no resolver defined to resolve {host}"));
        return Err(Status::Http(502));
    };
    if (scheme == "https") != tpl.tls {
        plugin_api::log(sys::LOG_ERR, &format!("\"{url}\": the scheme must be the one proxy_pass names ({})", if tpl.tls { "https" } else { "http" }));
        return Err(Status::Http(500));
    }
    Ok(Rc::new(Pass {
        base: format!("{scheme}://{host}"),
        tls: tpl.tls,
        host: host.to_string(),
        uri,
        loc_prefix: String::new(),
        addrs: Vec::new(),
        group: RefCell::new(Some(group)),
        url: None,
        dynamic: true,
        proto: tpl.proto,
    }))
}

/// What the proxy's variables are made of, copied by the state machine
/// at each attempt's end (before any response head goes out) into buffers kept
/// from one request to the next: readable while the state itself is busy,
/// e.g. from a header filter that runs inside the proxy's own
/// `send_header` (add_header X-Up $upstream_addr). Formatted only when a
/// variable is read.
#[derive(Default)]
struct Snap {
    addrs: Vec<usize>,
    statuses: Vec<u16>,
    times: Vec<u64>,
    conn_times: Vec<Option<u64>>,
    head_times: Vec<Option<u64>>,
    bytes: Vec<(u64, u64, u64)>,
    group: Option<Rc<Upstream>>,
    proxy_host: String,
    https: bool,
    /// `$upstream_cache_status` (MISS, BYPASS, EXPIRED, STALE, HIT).
    cache_status: &'static str,
    /// The last upstream response head, as received (status line first).
    head: Vec<u8>,
    /// What earlier locations' proxying left, before an internal redirect
    /// to a location that proxies again: per list variable, its text
    /// (nginx joins the groups with " : ").
    earlier: Option<Box<[String; 8]>>,
}

/// The list variables, in `Snap::earlier` order.
const LIST_VARS: [&str; 8] = ["upstream_addr", "upstream_status", "upstream_response_time", "upstream_connect_time", "upstream_header_time", "upstream_response_length", "upstream_bytes_received", "upstream_bytes_sent"];

impl Snap {
    /// Turns what earlier attempts recorded into text, making room for a
    /// new location's proxying (after an internal redirect).
    fn freeze(&mut self) {
        if self.addrs.is_empty() && self.statuses.is_empty() {
            return;
        }
        let mut earlier = self.earlier.take().unwrap_or_default();
        for (i, name) in LIST_VARS.iter().enumerate() {
            let now = list_value(self, name);
            if now.is_empty() {
                continue;
            }
            if !earlier[i].is_empty() {
                earlier[i].push_str(" : ");
            }
            earlier[i].push_str(&now);
        }
        self.earlier = Some(earlier);
        self.addrs.clear();
        self.statuses.clear();
        self.times.clear();
        self.conn_times.clear();
        self.head_times.clear();
        self.bytes.clear();
    }

    /// Clears it for another request, keeping its buffers.
    fn clear(&mut self) {
        self.addrs.clear();
        self.statuses.clear();
        self.times.clear();
        self.conn_times.clear();
        self.head_times.clear();
        self.bytes.clear();
        self.group = None;
        self.proxy_host.clear();
        self.cache_status = "";
        self.head.clear();
        if self.head.capacity() > KEEP_BUF {
            self.head = Vec::new();
        }
        self.earlier = None;
    }
}

/// A list variable's value from this location's attempts ("" if none).
fn list_value(s: &Snap, name: &str) -> String {
    match name {
        "upstream_addr" => join(&s.addrs, |&a, out| match (a, &s.group) {
            (NO_PEER, Some(g)) => out.push_str(&g.name),
            (i, Some(g)) => out.push_str(&g.peers[i].text),
            _ => {}
        }),
        "upstream_status" => join(&s.statuses, |c, out| out.push_str(&c.to_string())),
        "upstream_response_time" => join(&s.times, |ms, out| secs(*ms, out)),
        "upstream_connect_time" => join(&s.conn_times, secs_or_dash),
        "upstream_header_time" => join(&s.head_times, secs_or_dash),
        "upstream_response_length" => join(&s.bytes, |b, out| out.push_str(&b.0.to_string())),
        "upstream_bytes_received" => join(&s.bytes, |b, out| out.push_str(&b.1.to_string())),
        _ => join(&s.bytes, |b, out| out.push_str(&b.2.to_string())),
    }
}

/// A list variable: earlier locations' groups, then this one's.
fn list_var(r: &mut Request<'_>, name: &str) -> Option<String> {
    let snap = snap_of(r);
    let s = snap.try_borrow().ok()?;
    let now = list_value(&s, name);
    let i = LIST_VARS.iter().position(|v| *v == name)?;
    let v = match s.earlier.as_ref().map(|e| e[i].as_str()).filter(|e| !e.is_empty()) {
        Some(e) if now.is_empty() => e.to_string(),
        Some(e) => format!("{e} : {now}"),
        None => now,
    };
    Some(v).filter(|v| !v.is_empty())
}

/// The request's variables: kept across internal redirects (ABI 1.11
/// request data), else (an older host) with this location's state.
fn snap_of(r: &mut Request<'_>) -> Rc<RefCell<Snap>> {
    if let Some(v) = r.data::<Vars>() {
        return v.0.clone();
    }
    let st = r.ctx::<Holder>().0.clone();
    let mut st = st.borrow_mut();
    st.snap.get_or_insert_with(Default::default).clone()
}

/// The proxy's variables for one request (request data: they outlive a
/// location's proxying, as nginx's r->upstream_states). Recycled within
/// the worker like states.
struct Vars(Rc<RefCell<Snap>>);

thread_local! {
    static SNAPS: RefCell<Vec<Rc<RefCell<Snap>>>> = const { RefCell::new(Vec::new()) };
}

impl Default for Vars {
    fn default() -> Self {
        Vars(SNAPS.with(|p| p.borrow_mut().pop()).unwrap_or_default())
    }
}

impl Drop for Vars {
    fn drop(&mut self) {
        recycle(&SNAPS, &self.0, Snap::clear);
    }
}

/// The header lines of a kept head: (name, value without the spaces
/// around it).
fn head_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|&b| b == b'\n').skip(1).filter_map(|l| {
        let at = l.iter().position(|&b| b == b':')?;
        let v = &l[at + 1..];
        let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
        let end = v.iter().rposition(|&b| b != b' ' && b != b'\t' && b != b'\r').map_or(start, |e| e + 1);
        Some((&l[..at], &v[start..end.max(start)]))
    })
}

/// `$upstream_http_NAME`: the upstream's NAME headers ('_' for '-', any
/// case), several joined with ", " as nginx.
fn upstream_http(r: &mut Request<'_>, name: &str) -> Option<String> {
    let snap = snap_of(r);
    let s = snap.try_borrow().ok()?;
    let mut out: Option<String> = None;
    for (k, v) in head_lines(&s.head) {
        let same = k.len() == name.len() && k.iter().zip(name.bytes()).all(|(&a, b)| (if a == b'-' { b'_' } else { a.to_ascii_lowercase() }) == b.to_ascii_lowercase());
        if same {
            let o = out.get_or_insert_with(String::new);
            if !o.is_empty() {
                o.push_str(", ");
            }
            o.push_str(&String::from_utf8_lossy(v));
        }
    }
    out
}

/// `$upstream_cookie_NAME`: the value of cookie NAME the upstream set.
fn upstream_cookie(r: &mut Request<'_>, name: &str) -> Option<String> {
    let snap = snap_of(r);
    let s = snap.try_borrow().ok()?;
    let found = head_lines(&s.head).filter(|(k, _)| k.eq_ignore_ascii_case(b"set-cookie")).find_map(|(_, v)| {
        let v = String::from_utf8_lossy(v);
        let first = v.split(';').next()?;
        let (n, val) = first.split_once('=')?;
        // Spaces around the name and value go, tabs do not (nginx).
        let val = val.trim_matches(' ');
        (n.trim_matches(' ').eq_ignore_ascii_case(name) && !val.is_empty()).then(|| val.to_string())
    });
    found
}

fn secs(ms: u64, out: &mut String) {
    // Milliseconds, shown as seconds: "0.012" (nginx truncates too).
    let _ = std::fmt::Write::write_fmt(out, format_args!("{}.{:03}", ms / 1000, ms % 1000));
}

/// "-" for an attempt that never got that far, as nginx.
fn secs_or_dash(t: &Option<u64>, out: &mut String) {
    match t {
        Some(ms) => secs(*ms, out),
        None => out.push('-'),
    }
}

fn var_get(name: &str) -> fn(&mut Request<'_>) -> Option<String> {
    match name {
        "upstream_addr" => |r| list_var(r, "upstream_addr"),
        "upstream_status" => |r| list_var(r, "upstream_status"),
        "upstream_response_time" => |r| list_var(r, "upstream_response_time"),
        "upstream_connect_time" => |r| list_var(r, "upstream_connect_time"),
        "upstream_header_time" => |r| list_var(r, "upstream_header_time"),
        "upstream_response_length" => |r| list_var(r, "upstream_response_length"),
        "upstream_bytes_received" => |r| list_var(r, "upstream_bytes_received"),
        "upstream_bytes_sent" => |r| list_var(r, "upstream_bytes_sent"),
        "proxy_host" => |r| with_snap(r, |s| s.proxy_host.clone()),
        "upstream_cache_status" => |r| with_snap(r, |s| s.cache_status.to_string()),
        // The port of proxy_pass's host (80 or 443 when it names none).
        "proxy_port" => |r| {
            with_snap(r, |s| {
                let h = s.proxy_host.as_str();
                let port = h.rsplit_once(':').filter(|(a, p)| !a.ends_with(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).map(|(_, p)| p.to_string());
                if h.is_empty() {
                    String::new()
                } else {
                    port.unwrap_or_else(|| if s.https { "443" } else { "80" }.to_string())
                }
            })
        },
        _ => |r| Some(forwarded_for(r)),
    }
}

impl State {
    /// Copies what the variables are made of into the snapshot.
    fn snap(&self) {
        let Some(Ok(mut v)) = self.snap.as_ref().map(|s| s.try_borrow_mut()) else { return };
        v.addrs.clone_from(&self.addrs);
        v.statuses.clone_from(&self.statuses);
        v.times.clone_from(&self.times);
        v.conn_times.clone_from(&self.conn_times);
        v.head_times.clone_from(&self.head_times);
        v.bytes.clone_from(&self.bytes);
        v.group.clone_from(&self.group);
        v.proxy_host.clone_from(&self.proxy_host);
        v.https = self.https;
    }

    /// Keeps the upstream's response head as it came, for
    /// `$upstream_http_*` and `$upstream_cookie_*` (in the snapshot's
    /// buffer, reused: no allocation in steady state).
    fn keep_raw_head(&self, head: &[u8]) {
        let Some(Ok(mut v)) = self.snap.as_ref().map(|s| s.try_borrow_mut()) else { return };
        v.head.clear();
        v.head.extend_from_slice(head);
    }

    /// Answers from a cache entry, whose headers are then the upstream's
    /// (as nginx's variables see them on a hit).
    fn serve_cached(&self, req: &mut Request<'_>, e: &cache::Entry) -> Status {
        if let Some(Ok(mut v)) = self.snap.as_ref().map(|s| s.try_borrow_mut()) {
            v.head.clear();
            v.head.extend_from_slice(b"HTTP/1.1 200\r\n");
            for (k, val) in &e.headers {
                for part in [k.as_bytes(), b": ", val.as_bytes(), b"\r\n"] {
                    v.head.extend_from_slice(part);
                }
            }
        }
        serve_entry(req, e)
    }

    /// Gives the cache fill lock back (the entry is in place, or will not
    /// be: waiting requests look again).
    fn unlock(&mut self) {
        if let Some(l) = self.cache_lock.take() {
            cache::unlock(l);
        }
    }

    /// Sets `$upstream_cache_status` (readable at once, even from header
    /// filters running inside this step).
    fn set_cache_status(&mut self, st: &'static str) {
        if let Some(Ok(mut v)) = self.snap.as_ref().map(|s| s.try_borrow_mut()) {
            v.cache_status = st;
        }
    }

    /// Looks the request up in its location's cache: Some(status) when a
    /// fresh entry answered it.
    fn cache_lookup(&mut self, req: &mut Request<'_>, cc: &Rc<cache::CacheConf>, bit: u32) -> Option<Status> {
        if cc.methods & bit == 0 {
            return None;
        }
        let truthy = |ts: &[Template], host: &str| {
            ts.iter().any(|t| {
                let mut v = Vec::new();
                render_into(req, t, host, &mut v);
                !v.is_empty() && v != b"0"
            })
        };
        let zone = match &cc.zone {
            cache::ZoneRef::Fixed(z) => z.clone(),
            cache::ZoneRef::Var(t) => {
                let mut name = Vec::new();
                render_into(req, t, &self.proxy_host, &mut name);
                let name = String::from_utf8_lossy(&name);
                match cache::ZONES.with(|z| z.borrow().get(name.as_ref()).cloned()) {
                    Some(z) => z,
                    // nginx: an empty value means no cache here.
                    None if name.is_empty() => return None,
                    None => {
                        plugin_api::log(sys::LOG_ERR, &format!("cache \"{name}\" not found"));
                        self.phase = Phase::Finished;
                        return Some(Status::Error);
                    }
                }
            }
        };
        let bypass = truthy(&cc.bypass, &self.proxy_host);
        self.cache_store_ok = !truthy(&cc.no_cache, &self.proxy_host);
        let mut key = std::mem::take(&mut self.cache_key);
        key.clear();
        render_into(req, &cc.key, &self.proxy_host, &mut key);
        let path = cache::file_path(&zone, &key);
        self.cache = Some(cc.clone());
        self.cache_zone = Some(zone.clone());
        // The main entry: it holds the response, or (Vary) the variant
        // of the request that fetched it last, and the header names the
        // other variants are found by.
        let main = cache::open(&path, &key);
        self.cache_main_vary = Some(main.as_ref().map(|e| e.vary.clone()));
        let found = match main {
            Some(e) if !bypass => self.pick_variant(req, &zone, &key, e),
            _ => None,
        };
        if bypass {
            self.set_cache_status("BYPASS");
        } else if let Some((e, at)) = found {
            if e.fresh() {
                self.set_cache_status("HIT");
                self.phase = Phase::Finished;
                return Some(self.serve_cached(req, &e));
            }
            self.set_cache_status("EXPIRED");
            self.stale_entry = Some(e);
            self.stale_at = Some(at);
        } else {
            self.set_cache_status("MISS");
            // One request at a time fills a missing entry; the others
            // look again every 50 ms until it is there, the lock is
            // gone, or proxy_cache_lock_timeout passed.
            if let Some((timeout, age)) = cc.lock.filter(|_| self.cache_lock.is_none() && self.cache_store_ok) {
                match cache::try_lock(&path, age) {
                    cache::Lock::Held(l) => self.cache_lock = Some(l),
                    cache::Lock::Busy => {
                        let now = Instant::now();
                        let since = *self.lock_wait.get_or_insert(now);
                        if now.saturating_duration_since(since) < timeout {
                            self.cache_key = key;
                            return match plugin_api::io::resume_timer(req, 50) {
                                Ok(_) => Some(Status::Again),
                                Err(_) => Some(Status::Error),
                            };
                        }
                        self.cache_store_ok = false;
                    }
                }
            }
        }
        self.cache_key = key;
        self.cache_path = Some(path);
        None
    }

    /// The entry that answers this request, given the main entry `e` for
    /// `key`: itself, unless it varies (Vary) and this request has other
    /// values for its headers; then the variant with this request's values
    /// (keyed by the main entry's header names), if kept and still
    /// varying the same way. With where it lives.
    fn pick_variant(&self, req: &Request<'_>, zone: &cache::Zone, key: &[u8], e: cache::Entry) -> Option<(cache::Entry, cache::At)> {
        let main_at = || (key.to_vec(), cache::file_path(zone, key));
        let Some((names, stored)) = e.vary.clone() else { return Some((e, main_at())) };
        let mine = cache::variant(&|n| req.header(n).map(str::to_string), &names);
        if stored == mine {
            return Some((e, main_at()));
        }
        let vk = cache::variant_key(key, &mine);
        let vp = cache::file_path(zone, &vk);
        let v = cache::open(&vp, &vk)?;
        if let Some((n2, s2)) = &v.vary {
            if cache::variant(&|n| req.header(n).map(str::to_string), n2) != *s2 {
                return None;
            }
        }
        Some((v, (vk, vp)))
    }

    /// Where a response is kept, and its Vary record: a response without
    /// Vary replaces the main entry; one with Vary becomes the main entry
    /// when there is none, when the header names changed, or when this is
    /// the main entry's own variant, and a variant beside it otherwise.
    fn store_at(&self, vary: Option<cache::Vary>) -> Option<(cache::At, Option<cache::Vary>)> {
        let (key, path) = (self.cache_key.clone(), self.cache_path.clone()?);
        let Some((names, mine)) = vary else { return Some(((key, path), None)) };
        let beside = matches!(&self.cache_main_vary, Some(Some(Some((n, stored)))) if *n == names && *stored != mine);
        if !beside {
            return Some(((key, path), Some((names, mine))));
        }
        let zone = self.cache_zone.as_ref()?;
        let vk = cache::variant_key(&key, &mine);
        let vp = cache::file_path(zone, &vk);
        Some(((vk, vp), Some((names, mine))))
    }

    /// Answers from the expired entry if proxy_cache_use_stale allows it
    /// for `bit`.
    fn serve_stale(&mut self, req: &mut Request<'_>, bit: u32) -> Option<Status> {
        if self.cache.as_ref()?.use_stale & bit == 0 {
            return None;
        }
        let e = self.stale_entry.take()?;
        self.set_cache_status("STALE");
        self.store = None;
        self.phase = Phase::Finished;
        Some(self.serve_cached(req, &e))
    }
}

/// "a, b, c" (nginx's list of attempts).
fn join<T>(items: &[T], each: impl Fn(&T, &mut String)) -> String {
    let mut out = String::new();
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        each(t, &mut out);
    }
    out
}

/// A variable from the request's proxy state (unset when empty).
fn with_snap(r: &mut Request<'_>, f: fn(&Snap) -> String) -> Option<String> {
    let snap = snap_of(r);
    let s = snap.try_borrow().ok()?;
    Some(f(&s)).filter(|v| !v.is_empty())
}

/// Whether `hay` contains `needle` (lowercase ASCII), ignoring case.
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

fn forwarded_for(r: &Request<'_>) -> String {
    let addr = r.var("remote_addr").unwrap_or("").to_string();
    match r.header("x-forwarded-for") {
        Some(x) if !x.is_empty() => format!("{x}, {addr}"),
        _ => addr,
    }
}

fn next_mask(a: &[&str]) -> Result<u32, String> {
    let mut m = 0;
    for w in a {
        m |= match *w {
            "error" => next::ERROR,
            "timeout" => next::TIMEOUT,
            "invalid_header" => next::INVALID_HEADER,
            "http_500" => next::HTTP_500,
            "http_502" => next::HTTP_502,
            "http_503" => next::HTTP_503,
            "http_504" => next::HTTP_504,
            "http_403" => next::HTTP_403,
            "http_404" => next::HTTP_404,
            "http_429" => next::HTTP_429,
            "non_idempotent" => next::NON_IDEMPOTENT,
            // memcached_next_upstream's: a key not found (a 404).
            "not_found" => next::HTTP_404,
            "off" if a.len() == 1 => next::OFF,
            _ => return Err(format!("invalid value \"{w}\"")),
        };
    }
    Ok(m)
}

fn directives() -> Vec<DirectiveSpec<Conf>> {
    vec![
        DirectiveSpec::new("proxy_pass", LOC | sys::CTX_IF | sys::CTX_LIMIT_EXCEPT, 1, 1, parse_pass),
        DirectiveSpec::<Conf>::new("upstream", sys::CTX_HTTP, 1, 1, |c, a, cx| {
            let children = cx.block_children();
            let time = |s: &str| cx.time_ms(s);
            let up = Upstream::parse(a[0], &children, &time)?;
            let mut g = c.groups.borrow_mut();
            if g.iter().any(|u| u.name == a[0]) {
                return Err(format!("duplicate upstream \"{}\"", a[0]));
            }
            g.push(Rc::new(up));
            Ok(())
        })
        .opaque_block(),
        DirectiveSpec::new("proxy_set_header", ANY, 2, 2, |c, a, _| {
            let list = c.headers.get_or_insert_with(|| Rc::new(Vec::new()));
            Rc::get_mut(list).ok_or("proxy_set_header list is shared")?.push((a[0].to_string(), Template::parse(a[1])));
            Ok(())
        }),
        DirectiveSpec::new("proxy_hide_header", ANY, 1, 1, |c, a, _| {
            c.hide.get_or_insert_with(Vec::new).push(a[0].to_ascii_lowercase());
            Ok(())
        }),
        DirectiveSpec::new("proxy_pass_header", ANY, 1, 1, |c, a, _| {
            c.pass_headers.get_or_insert_with(Vec::new).push(a[0].to_ascii_lowercase());
            Ok(())
        }),
        DirectiveSpec::new("proxy_pass_request_body", ANY, 1, 1, |c, a, cx| set_opt(&mut c.pass_body, cx.flag(a[0])?, "proxy_pass_request_body")),
        DirectiveSpec::new("proxy_pass_request_headers", ANY, 1, 1, |c, a, cx| set_opt(&mut c.pass_req_headers, cx.flag(a[0])?, "proxy_pass_request_headers")),
        DirectiveSpec::new("proxy_http_version", ANY, 1, 1, |c, a, _| {
            let v = match a[0] {
                "1.0" => false,
                "1.1" => true,
                v => return Err(format!("invalid value \"{v}\" in \"proxy_http_version\" directive, it must be \"1.0\" or \"1.1\"")),
            };
            set_opt(&mut c.http11, v, "proxy_http_version")
        }),
        DirectiveSpec::new("proxy_buffering", ANY, 1, 1, |c, a, cx| set_opt(&mut c.buffering, cx.flag(a[0])?, "proxy_buffering")),
        DirectiveSpec::new("proxy_request_buffering", ANY, 1, 1, |_, a, cx| cx.flag(a[0]).map(|_| ())),
        DirectiveSpec::new("proxy_buffer_size", ANY, 1, 1, |c, a, cx| set_opt(&mut c.buffer_size, cx.size(a[0])? as usize, "proxy_buffer_size")),
        DirectiveSpec::new("proxy_buffers", ANY, 2, 2, |c, a, cx| {
            let n: usize = a[0].parse().ok().filter(|&n| n > 0).ok_or(format!("invalid value \"{}\"", a[0]))?;
            set_opt(&mut c.buffers, (n, cx.size(a[1])? as usize), "proxy_buffers")
        }),
        DirectiveSpec::new("proxy_busy_buffers_size", ANY, 1, 1, |_, a, cx| cx.size(a[0]).map(|_| ())),
        // nginx's hash and write-chunk sizes: ngxr sizes these itself; the
        // values are checked and change nothing.
        DirectiveSpec::new("proxy_temp_file_write_size", ANY, 1, 1, |_, a, cx| cx.size(a[0]).map(|_| ())),
        DirectiveSpec::new("proxy_headers_hash_max_size", ANY, 1, 1, |_, a, cx| cx.size(a[0]).map(|_| ())),
        DirectiveSpec::new("proxy_headers_hash_bucket_size", ANY, 1, 1, |_, a, cx| cx.size(a[0]).map(|_| ())),
        DirectiveSpec::new("proxy_max_temp_file_size", ANY, 1, 1, |c, a, cx| set_opt(&mut c.max_temp, cx.size(a[0])?, "proxy_max_temp_file_size")),
        DirectiveSpec::new("proxy_temp_path", ANY, 1, 4, |c, a, cx| set_opt(&mut c.temp_path, cx.full_path(a[0]), "proxy_temp_path")),
        DirectiveSpec::new("proxy_redirect", ANY, 1, 2, |c, a, _| {
            let r = c.redirect.get_or_insert_with(|| Redirect::Rules(Vec::new()));
            match (a, &mut *r) {
                (["off"], _) => *r = Redirect::Off,
                (["default"], Redirect::Rules(v)) => v.push(RedirectRule::Default),
                ([from, to], Redirect::Rules(v)) => v.push(rewrite_rule(from, to, false)?),
                (_, Redirect::Off) => return Err("\"proxy_redirect off\" cannot be mixed with other rules".into()),
                _ => return Err("invalid parameter in \"proxy_redirect\"".into()),
            }
            Ok(())
        }),
        DirectiveSpec::new("proxy_method", ANY, 1, 1, |c, a, _| set_opt(&mut c.method, Template::parse(a[0]), "proxy_method")),
        DirectiveSpec::new("proxy_set_body", ANY, 1, 1, |c, a, _| set_opt(&mut c.set_body, Template::parse(a[0]), "proxy_set_body")),
        DirectiveSpec::new("proxy_cookie_domain", ANY, 1, 2, |c, a, _| cookie_rule(&mut c.cookie_domain, a, true)),
        DirectiveSpec::new("proxy_cookie_path", ANY, 1, 2, |c, a, _| cookie_rule(&mut c.cookie_path, a, false)),
        DirectiveSpec::new("proxy_cookie_flags", ANY, 1, 4, |c, a, _| cookie_flags_rule(c, a)),
        DirectiveSpec::new("proxy_ignore_headers", ANY, 1, sys::ARGS_ANY, |c, a, _| {
            let mut xa = false;
            let mut bits = 0;
            for h in a {
                let known = ["X-Accel-Redirect", "X-Accel-Expires", "X-Accel-Limit-Rate", "X-Accel-Buffering", "X-Accel-Charset", "Expires", "Cache-Control", "Set-Cookie", "Vary"];
                if !known.iter().any(|k| k.eq_ignore_ascii_case(h)) {
                    return Err(format!("invalid value \"{h}\" in \"proxy_ignore_headers\" directive"));
                }
                xa |= h.eq_ignore_ascii_case("X-Accel-Redirect");
                for (name, bit) in [("Cache-Control", cache::ignore::CACHE_CONTROL), ("Expires", cache::ignore::EXPIRES), ("Set-Cookie", cache::ignore::SET_COOKIE), ("X-Accel-Expires", cache::ignore::X_ACCEL_EXPIRES), ("Vary", cache::ignore::VARY), ("X-Accel-Limit-Rate", cache::ignore::LIMIT_RATE)] {
                    if h.eq_ignore_ascii_case(name) {
                        bits |= bit;
                    }
                }
            }
            c.ignore_cache = Some(bits);
            set_opt(&mut c.ignore_xa_redirect, xa, "proxy_ignore_headers")
        }),
        DirectiveSpec::new("proxy_cache_path", sys::CTX_HTTP, 2, sys::ARGS_ANY, |_, a, cx| {
            let z = cache::parse_path(a, |v| cx.size(v), |v| cx.time_ms(v), |v| cx.full_path(v))?;
            cx.add_path(&z.dir.to_string_lossy())?;
            cache::ZONES.with(|zs| {
                let mut zs = zs.borrow_mut();
                if zs.contains_key(&z.name) {
                    return Err(format!("duplicate zone \"{}\"", z.name));
                }
                zs.insert(z.name.clone(), Rc::new(z));
                Ok(())
            })
        }),
        DirectiveSpec::new("proxy_cache", ANY, 1, 1, |c, a, _| {
            let v = if a[0] == "off" { None } else { Some(a[0].to_string()) };
            set_opt(&mut c.cache, v, "proxy_cache")
        }),
        DirectiveSpec::new("proxy_cache_key", ANY, 1, 1, |c, a, _| set_opt(&mut c.cache_key, Rc::new(Template::parse(a[0])), "proxy_cache_key")),
        DirectiveSpec::new("proxy_cache_valid", ANY, 1, sys::ARGS_ANY, |c, a, cx| {
            let v = cache::parse_valid(a, |t| cx.time_ms(t))?;
            let list = c.cache_valid.get_or_insert_with(|| Rc::new(Vec::new()));
            Rc::get_mut(list).ok_or("proxy_cache_valid list is shared")?.push(v);
            Ok(())
        }),
        DirectiveSpec::new("proxy_cache_methods", ANY, 1, sys::ARGS_ANY, |c, a, _| {
            // GET and HEAD are always cached, as nginx.
            let mut m = 1 | 2;
            for w in a {
                m |= match *w {
                    "GET" => 1,
                    "HEAD" => 2,
                    "POST" => 4,
                    _ => return Err(format!("invalid value \"{w}\" in \"proxy_cache_methods\" directive")),
                };
            }
            set_opt(&mut c.cache_methods, m, "proxy_cache_methods")
        }),
        DirectiveSpec::new("proxy_cache_bypass", ANY, 1, sys::ARGS_ANY, |c, a, _| {
            let list = c.cache_bypass.get_or_insert_with(|| Rc::new(Vec::new()));
            Rc::get_mut(list).ok_or("proxy_cache_bypass list is shared")?.extend(a.iter().map(|t| Template::parse(t)));
            Ok(())
        }),
        DirectiveSpec::new("proxy_no_cache", ANY, 1, sys::ARGS_ANY, |c, a, _| {
            let list = c.no_cache.get_or_insert_with(|| Rc::new(Vec::new()));
            Rc::get_mut(list).ok_or("proxy_no_cache list is shared")?.extend(a.iter().map(|t| Template::parse(t)));
            Ok(())
        }),
        DirectiveSpec::new("proxy_cache_use_stale", ANY, 1, sys::ARGS_ANY, |c, a, _| set_opt(&mut c.cache_use_stale, cache::parse_stale(a)?, "proxy_cache_use_stale")),
        DirectiveSpec::new("proxy_cache_convert_head", ANY, 1, 1, |c, a, cx| set_opt(&mut c.cache_convert_head, cx.flag(a[0])?, "proxy_cache_convert_head")),
        DirectiveSpec::new("proxy_cache_min_uses", ANY, 1, 1, |_, a, _| match a[0] {
            "1" => Ok(()),
            _ => Err("\"proxy_cache_min_uses\" above 1 is not supported yet".into()),
        }),
        // Collapsing concurrent misses into one upstream request is an
        // optimisation ngxr does not make yet: each miss goes upstream,
        // and the last to finish is kept. The answers are the same.
        DirectiveSpec::new("proxy_cache_lock", ANY, 1, 1, |c, a, cx| set_opt(&mut c.cache_lock, cx.flag(a[0])?, "proxy_cache_lock")),
        DirectiveSpec::new("proxy_cache_lock_timeout", ANY, 1, 1, |c, a, cx| set_opt(&mut c.cache_lock_timeout, cx.time_ms(a[0])?, "proxy_cache_lock_timeout")),
        DirectiveSpec::new("proxy_cache_lock_age", ANY, 1, 1, |c, a, cx| set_opt(&mut c.cache_lock_age, cx.time_ms(a[0])?, "proxy_cache_lock_age")),
        DirectiveSpec::new("proxy_cache_revalidate", ANY, 1, 1, |c, a, cx| set_opt(&mut c.cache_revalidate, cx.flag(a[0])?, "proxy_cache_revalidate")),
        DirectiveSpec::new("proxy_cache_background_update", ANY, 1, 1, |_, a, cx| match cx.flag(a[0])? {
            false => Ok(()),
            true => Err("\"proxy_cache_background_update on\" is not supported yet".into()),
        }),
        DirectiveSpec::new("proxy_cache_max_range_offset", ANY, 1, 1, |_, _, _| Ok(())),
        DirectiveSpec::new("proxy_intercept_errors", ANY, 1, 1, |c, a, cx| set_opt(&mut c.intercept, cx.flag(a[0])?, "proxy_intercept_errors")),
        DirectiveSpec::new("proxy_connect_timeout", ANY, 1, 1, |c, a, cx| set_opt(&mut c.connect_timeout, cx.time_ms(a[0])?, "proxy_connect_timeout")),
        DirectiveSpec::new("proxy_send_timeout", ANY, 1, 1, |c, a, cx| set_opt(&mut c.send_timeout, cx.time_ms(a[0])?, "proxy_send_timeout")),
        DirectiveSpec::new("proxy_read_timeout", ANY, 1, 1, |c, a, cx| set_opt(&mut c.read_timeout, cx.time_ms(a[0])?, "proxy_read_timeout")),
        DirectiveSpec::new("proxy_next_upstream", ANY, 1, sys::ARGS_ANY, |c, a, _| set_opt(&mut c.next_up, next_mask(a)?, "proxy_next_upstream")),
        DirectiveSpec::new("proxy_next_upstream_tries", ANY, 1, 1, |c, a, _| {
            set_opt(&mut c.next_tries, a[0].parse().map_err(|_| format!("invalid value \"{}\"", a[0]))?, "proxy_next_upstream_tries")
        }),
        DirectiveSpec::new("proxy_ssl_verify", ANY, 1, 1, |c, a, cx| set_opt(&mut c.ssl_verify, cx.flag(a[0])?, "proxy_ssl_verify")),
        DirectiveSpec::new("proxy_ssl_trusted_certificate", ANY, 1, 1, |c, a, _| set_opt(&mut c.ssl_trusted, a[0].to_string(), "proxy_ssl_trusted_certificate")),
        DirectiveSpec::new("proxy_ssl_server_name", ANY, 1, 1, |c, a, cx| set_opt(&mut c.ssl_server_name, cx.flag(a[0])?, "proxy_ssl_server_name")),
        DirectiveSpec::new("proxy_ssl_name", ANY, 1, 1, |c, a, _| {
            if a[0].contains('$') {
                return Err("variables in \"proxy_ssl_name\" are not supported yet".into());
            }
            set_opt(&mut c.ssl_name, a[0].to_string(), "proxy_ssl_name")
        }),
        DirectiveSpec::new("proxy_ssl_protocols", ANY, 1, sys::ARGS_ANY, |c, a, _| set_opt(&mut c.ssl_protocols, a.join(" "), "proxy_ssl_protocols")),
        DirectiveSpec::new("proxy_ssl_ciphers", ANY, 1, 1, |c, a, _| set_opt(&mut c.ssl_ciphers, a[0].to_string(), "proxy_ssl_ciphers")),
        DirectiveSpec::new("proxy_ssl_session_reuse", ANY, 1, 1, |c, a, cx| set_opt(&mut c.ssl_reuse, cx.flag(a[0])?, "proxy_ssl_session_reuse")),
        DirectiveSpec::new("proxy_ssl_certificate", ANY, 1, 1, |c, a, _| set_opt(&mut c.ssl_cert, a[0].to_string(), "proxy_ssl_certificate")),
        DirectiveSpec::new("proxy_ssl_certificate_key", ANY, 1, 1, |c, a, _| set_opt(&mut c.ssl_key, a[0].to_string(), "proxy_ssl_certificate_key")),
        DirectiveSpec::new("proxy_next_upstream_timeout", ANY, 1, 1, |c, a, cx| set_opt(&mut c.next_timeout, cx.time_ms(a[0])?, "proxy_next_upstream_timeout")),
    ]
}

/// The plugin.
pub struct Proxy;

impl Plugin for Proxy {
    const NAME: &'static str = "proxy";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        let mut d = directives();
        let cgi = cgi::directives(&d);
        d.extend(cgi);
        d
    }

    fn create(_cx: &ConfCx<'_>, level: u32) -> Conf {
        if level == sys::CTX_MAIN {
            cache::ZONES.with(|z| z.borrow_mut().clear());
        }
        Conf::default()
    }

    fn init_worker(_main: &Conf) -> Result<(), String> {
        cache::start_manager();
        Ok(())
    }

    fn merge_in(cx: &ConfCx<'_>, level: u32, p: &Conf, c: &mut Conf) -> Result<(), String> {
        if level & (sys::CTX_IF | sys::CTX_LIMIT_EXCEPT) != 0 {
            // An `if` or `limit_except` block proxies as its location does
            // unless it has its own proxy_pass, which cannot replace a
            // location's prefix (it has none of its own), as in nginx.
            if c.pass.as_ref().is_some_and(|pass| pass.uri.is_some()) {
                return Err("\"proxy_pass\" cannot have URI part inside \"if\" statement, or inside \"limit_except\" block".into());
            }
            if c.pass.is_none() {
                c.pass.clone_from(&p.pass);
            }
        }
        Self::merge(p, c);
        // A FastCGI (SCGI, uWSGI) location runs on the fastcgi_* (scgi_*,
        // uwsgi_*) settings.
        if let Some(i) = c.pass.as_ref().and_then(|p| p.proto.side()) {
            let side = c.sides[i].take().unwrap_or_default();
            tuning!(take_fields, side, c);
            c.sides[i] = Some(side);
        }
        c.cache_conf = match &c.cache {
            Some(Some(name)) => {
                let zone = if name.contains('$') {
                    cache::ZoneRef::Var(Template::parse(name))
                } else {
                    cache::ZoneRef::Fixed(cache::ZONES.with(|z| z.borrow().get(name).cloned()).ok_or_else(|| format!("\"proxy_cache\" zone \"{name}\" is unknown"))?)
                };
                Some(Rc::new(cache::CacheConf {
                    zone,
                    key: c.cache_key.as_deref().cloned().unwrap_or_else(|| Template::parse("$scheme$proxy_host$request_uri")),
                    valid: c.cache_valid.clone().unwrap_or_default(),
                    methods: c.cache_methods.unwrap_or(1 | 2),
                    bypass: c.cache_bypass.clone().unwrap_or_default(),
                    no_cache: c.no_cache.clone().unwrap_or_default(),
                    use_stale: c.cache_use_stale.unwrap_or(0),
                    convert_head: c.cache_convert_head.unwrap_or(true),
                    ignore: c.ignore_cache.unwrap_or(0),
                    revalidate: c.cache_revalidate.unwrap_or(false),
                    lock: c.cache_lock.unwrap_or(false).then(|| (Duration::from_millis(c.cache_lock_timeout.unwrap_or(5000)), Duration::from_millis(c.cache_lock_age.unwrap_or(5000)))),
                }))
            }
            _ => None,
        };
        let Some(pass) = c.pass.clone().filter(|p| p.tls) else { return Ok(()) };
        let verify = c.ssl_verify.unwrap_or(false);
        if verify && c.ssl_trusted.is_none() {
            return Err("no proxy_ssl_trusted_certificate for proxy_ssl_verify".into());
        }
        let certificates = match (&c.ssl_cert, &c.ssl_key) {
            (Some(cert), Some(key)) => vec![(cert.clone(), key.clone())],
            (Some(cert), None) => return Err(format!("no \"proxy_ssl_certificate_key\" is defined for certificate \"{cert}\"")),
            _ => Vec::new(),
        };
        let opts = plugin_api::TlsOptions {
            verify,
            sni: c.ssl_server_name.unwrap_or(false),
            reuse: c.ssl_reuse.unwrap_or(true),
            certificates,
            trusted_certificate: c.ssl_trusted.clone().unwrap_or_default(),
            protocols: c.ssl_protocols.clone().unwrap_or_default(),
            ciphers: c.ssl_ciphers.clone().unwrap_or_default(),
            ..Default::default()
        };
        c.tls = Some(cx.tls(&opts)?);
        // The name checked and sent: proxy_ssl_name, else the host of
        // proxy_pass without its port.
        if c.ssl_name.is_none() {
            c.ssl_name = Some(tls_name(&pass.host).to_string());
        }
        Ok(())
    }

    fn merge(p: &Conf, c: &mut Conf) {
        // Groups declared in this block join the shared list, which every
        // block below then sees (merges run top-down after all blocks are
        // read, so upstreams declared after their users are found).
        if !Rc::ptr_eq(&p.groups, &c.groups) {
            let mine: Vec<_> = c.groups.borrow_mut().drain(..).collect();
            p.groups.borrow_mut().extend(mine);
            c.groups = p.groups.clone();
        }
        macro_rules! inherit {
            ($($f:ident),*) => { $( if c.$f.is_none() { c.$f = p.$f.clone(); } )* };
        }
        inherit!(headers, cookie_domain, cookie_path, cookie_flags, method, set_body, http11, redirect);
        tuning!(inherit_fields, p, c);
        for (ps, cs) in p.sides.iter().zip(c.sides.iter_mut()) {
            if let Some(ps) = ps {
                let cs = cs.get_or_insert_with(Default::default);
                tuning!(inherit_fields, ps, cs);
            }
        }
        for (pp, cp) in p.params.iter().zip(c.params.iter_mut()) {
            if cp.is_none() {
                cp.clone_from(pp);
            }
        }
        inherit!(ssl_verify, ssl_trusted, ssl_server_name, ssl_name, ssl_protocols, ssl_ciphers, ssl_reuse, ssl_cert, ssl_key);
        inherit!(uwsgi_modifiers, memcached_gzip_flag, fcgi_index, fcgi_split, fcgi_catch, fcgi_keep);
        inherit!(cache, cache_key, cache_valid, cache_methods, cache_bypass, no_cache, cache_use_stale, cache_convert_head, cache_revalidate, cache_lock, cache_lock_timeout, cache_lock_age);
        if let Some(pass) = &c.pass {
            let mut g = c.groups.borrow_mut();
            let found = g.iter().find(|u| u.name == pass.host).cloned();
            let group = found.or_else(|| {
                if pass.addrs.is_empty() {
                    return None;
                }
                let u = Rc::new(Upstream::implicit(&pass.host, &pass.addrs));
                g.push(u.clone());
                Some(u)
            });
            *pass.group.borrow_mut() = group;
        }
    }

    fn handle(_phase: plugin_api::Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let Some(pass) = conf.pass.as_ref() else { return Status::Declined };
        let st = req.ctx::<Holder>().0.clone();
        if st.try_borrow().is_ok_and(|s| s.snap.is_none()) {
            let snap = snap_of(req);
            let Ok(mut st) = st.try_borrow_mut() else { return Status::Error };
            // A location starts proxying: earlier locations' attempts (an
            // internal redirect) are kept as text before its own.
            if let Ok(mut v) = snap.try_borrow_mut() {
                v.freeze();
            }
            st.snap = Some(snap);
        }
        let mut st = match st.try_borrow_mut() {
            Ok(s) => s,
            Err(_) => return Status::Error,
        };
        if pass.url.is_some() {
            // A URL with variables: made once per request, kept in its state.
            let p = match st.dyn_pass.clone() {
                Some(p) => p,
                None => match dynamic_pass(req, conf, pass) {
                    Ok(p) => {
                        st.dyn_pass = Some(p.clone());
                        p
                    }
                    Err(status) => return status,
                },
            };
            return st.step(req, conf, &p);
        }
        st.step(req, conf, pass)
    }
}

export_plugin!(Proxy);

/// Per-request state, reachable from the request's ctx. States are
/// recycled within the worker (their buffers keep their capacity), as
/// nginx reuses its request pools' memory: a proxied request allocates
/// nothing here in steady state.
struct Holder(Rc<RefCell<State>>);

/// Recycled states; at most this many are kept.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Rc<RefCell<State>>>> = const { RefCell::new(Vec::new()) };
}

impl Default for Holder {
    fn default() -> Self {
        Holder(POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default())
    }
}

/// Hands `rc` back to `pool` (which keeps POOL_MAX at most), cleaned,
/// once nothing else holds it.
fn recycle<T: 'static>(pool: &'static std::thread::LocalKey<RefCell<Vec<Rc<RefCell<T>>>>>, rc: &Rc<RefCell<T>>, clean: fn(&mut T)) {
    if Rc::strong_count(rc) != 1 {
        return;
    }
    let Ok(mut v) = rc.try_borrow_mut() else { return };
    clean(&mut v);
    drop(v);
    pool.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(rc.clone());
        }
    });
}

impl Drop for Holder {
    fn drop(&mut self) {
        recycle(&POOL, &self.0, State::reset);
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Start,
    Connecting,
    Handshaking,
    Sending,
    ReadingHead,
    ReadingBody,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Why an attempt failed (maps to proxy_next_upstream and the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Error,
    Timeout,
    InvalidHeader,
}

#[derive(Default)]
struct State {
    phase: Phase,
    group: Option<Rc<Upstream>>,
    peer: usize,
    conn: Option<Conn>,
    /// The connection came from the keepalive pool.
    cached: bool,
    /// Requests the connection carried before this one.
    conn_requests: u32,
    /// When the upstream connection was made.
    conn_born: Option<Instant>,
    acquired: bool,
    tried: Vec<bool>,
    tries: u32,
    first_try: Option<Instant>,
    attempt_start: Option<Instant>,
    out: Vec<u8>,
    sent: usize,
    /// This request's Pass when the URL holds variables.
    dyn_pass: Option<Rc<Pass>>,
    /// Its variables, readable while the state is busy (made once per
    /// pooled state: None only before its first use).
    snap: Option<Rc<RefCell<Snap>>>,
    /// This attempt's connect and response-head times (ms), once known;
    /// and every attempt's ($upstream_connect_time, _header_time).
    conn_ms: Option<u64>,
    head_ms: Option<u64>,
    conn_times: Vec<Option<u64>>,
    head_times: Vec<Option<u64>>,
    /// This attempt's bytes read from and written to the upstream, and
    /// the response heads' share of those read; every attempt's
    /// (response length, received, sent).
    rx: u64,
    tx: u64,
    head_len: u64,
    bytes: Vec<(u64, u64, u64)>,
    /// The upstream is reached over TLS (`$proxy_port`'s default).
    https: bool,
    /// A request body in a temporary file (fd, pos, len): sent after
    /// `out`, a block at a time through `fchunk`.
    body_file: Option<(i32, u64, u64)>,
    fchunk: Vec<u8>,
    fchunk_off: usize,
    file_read: u64,
    buf: Vec<u8>,
    framing: Option<Framing>,
    chunked: Chunked,
    keep: bool,
    deadline: Option<Instant>,
    timer_at: Option<Instant>,
    /// The time when this step began: one clock read per resumption
    /// serves every deadline and record of the step, as nginx's cached
    /// time does (a read costs as much as a host call).
    now: Option<Instant>,
    temp: Option<(File, u64)>,
    /// The temp file could not be made: buffer in memory only.
    no_temp: bool,
    status: u16,
    /// The request's method is HEAD; it is idempotent (set by start()).
    head: bool,
    idempotent: bool,
    proxy_host: String,
    /// Attempts so far (`$upstream_addr`, `_status`, `_response_time`):
    /// peer indexes (NO_PEER: none was live, the group's name is shown),
    /// statuses, and times in milliseconds.
    addrs: Vec<usize>,
    statuses: Vec<u16>,
    times: Vec<u64>,
    /// Counts calls to connect(): tells reading_head that got_head moved on
    /// to another attempt.
    attempt: u32,
    /// Where the body pieces are in `buf` (kept between deliveries).
    ranges: Vec<std::ops::Range<usize>>,
    /// The location's cache, when this request may use it.
    cache: Option<Rc<cache::CacheConf>>,
    cache_key: Vec<u8>,
    cache_path: Option<std::path::PathBuf>,
    /// proxy_no_cache did not forbid keeping the response.
    cache_store_ok: bool,
    /// An expired entry (served if the upstream fails and
    /// proxy_cache_use_stale allows).
    stale_entry: Option<cache::Entry>,
    /// The response being written into the cache.
    store: Option<cache::Store>,
    /// The zone, the main entry's Vary record at lookup (None: no main
    /// entry), and where the expired entry lives.
    cache_zone: Option<Rc<cache::Zone>>,
    cache_main_vary: Option<Option<Option<cache::Vary>>>,
    stale_at: Option<cache::At>,
    /// The upstream request asks whether the expired entry is still good.
    revalidating: bool,
    /// proxy_cache_lock: the lock this request holds, and since when it
    /// waits for another's (giving up after the timeout: then it goes
    /// upstream without caching, as nginx).
    cache_lock: Option<std::path::PathBuf>,
    lock_wait: Option<Instant>,
    /// What the upstream speaks (this request's Pass's).
    proto: Proto,
    /// The upstream speaks FastCGI: what is read goes to `fcgi_raw` and
    /// comes out of its records into `buf`; END_REQUEST was seen; the
    /// empty STDIN record is still to be sent after a body in a file.
    fcgi: bool,
    fcgi_raw: Vec<u8>,
    fcgi_ended: bool,
    fcgi_stdin_due: bool,
}

/// `addrs` entry for "no live upstreams".
const NO_PEER: usize = usize::MAX;

/// Buffers larger than this are not kept for the next request.
const KEEP_BUF: usize = 64 * 1024;

impl Drop for State {
    fn drop(&mut self) {
        // The request ended (finished, or the client went away): a
        // connection still held is mid-exchange and cannot be reused.
        self.abandon();
    }
}

const DEFAULT_BUF: usize = 8 * 1024;

fn timeout(v: Option<u64>) -> u64 {
    v.unwrap_or(60_000)
}

impl State {
    /// Back to a fresh state for the next request, keeping the buffers'
    /// memory (unless a large response grew them).
    fn reset(&mut self) {
        self.abandon();
        if let Some(l) = self.cache_lock.take() {
            cache::unlock(l);
        }
        let mut out = std::mem::take(&mut self.out);
        let mut buf = std::mem::take(&mut self.buf);
        let mut tried = std::mem::take(&mut self.tried);
        let mut host = std::mem::take(&mut self.proxy_host);
        let mut ranges = std::mem::take(&mut self.ranges);
        let (mut a, mut st, mut t) = (std::mem::take(&mut self.addrs), std::mem::take(&mut self.statuses), std::mem::take(&mut self.times));
        // The variables belong to the request (Vars), not to the pooled
        // state: let go of them as they are.
        drop(self.snap.take());
        let (mut ct, mut ht) = (std::mem::take(&mut self.conn_times), std::mem::take(&mut self.head_times));
        let mut bytes = std::mem::take(&mut self.bytes);
        ct.clear();
        ht.clear();
        bytes.clear();
        *self = State::default();
        (self.conn_times, self.head_times, self.bytes) = (ct, ht, bytes);
        for v in [&mut out, &mut buf] {
            v.clear();
            if v.capacity() > KEEP_BUF {
                *v = Vec::new();
            }
        }
        tried.clear();
        host.clear();
        ranges.clear();
        self.ranges = ranges;
        a.clear();
        st.clear();
        t.clear();
        (self.out, self.buf, self.tried, self.proxy_host) = (out, buf, tried, host);
        (self.addrs, self.statuses, self.times) = (a, st, t);
    }

    /// Gives up what an unfinished exchange holds (nothing, and no clock
    /// read, after a finished one). Outside a step: the clock is read
    /// afresh, as the last step may have begun long ago (a client that
    /// went away mid-wait), and the peer's failure is dated now.
    fn abandon(&mut self) {
        if self.conn.is_some() || self.acquired {
            self.release(false, Instant::now(), false);
        }
    }

    /// Sets the deadline `ms` (a `proxy_*_timeout`, unset = 60 s) from
    /// this step's time.
    fn expire_in(&mut self, ms: Option<u64>) {
        self.deadline = Some(self.now() + Duration::from_millis(timeout(ms)));
    }

    /// The time this step began.
    fn now(&self) -> Instant {
        self.now.unwrap_or_else(Instant::now)
    }

    fn release(&mut self, keep: bool, now: Instant, ok: bool) {
        if let Some(conn) = self.conn.take() {
            if let Some(g) = &self.group {
                if self.acquired {
                    g.release(self.peer, ok, now);
                    self.acquired = false;
                }
                if keep {
                    g.put_idle(Idle { conn, peer: self.peer, since: now, requests: self.conn_requests + 1, born: self.conn_born.unwrap_or(now) }, now);
                    return;
                }
            }
            conn.close();
        } else if self.acquired {
            if let Some(g) = &self.group {
                g.release(self.peer, ok, now);
            }
            self.acquired = false;
        }
    }

    fn step(&mut self, req: &mut Request<'_>, conf: &Conf, pass: &Pass) -> Status {
        self.now = Some(Instant::now());
        loop {
            let r = match self.phase {
                Phase::Start => self.start(req, conf, pass),
                Phase::Connecting => self.connecting(req, conf),
                Phase::Handshaking => self.handshaking(req, conf),
                Phase::Sending => self.sending(req, conf),
                Phase::ReadingHead => self.reading_head(req, conf, pass),
                Phase::ReadingBody => self.reading_body(req, conf),
                Phase::Finished => return Status::Ok,
            };
            match r {
                Flow::Next => continue,
                Flow::Wait => return self.wait(req),
                Flow::Return(s) => return s,
                Flow::Failed(f) => match self.failed(req, conf, f) {
                    Some(s) => return s,
                    None => continue,
                },
            }
        }
    }

    /// Suspends with the timer armed for the current deadline.
    fn wait(&mut self, req: &mut Request<'_>) -> Status {
        if let Some(d) = self.deadline {
            let now = self.now();
            if self.timer_at.is_none_or(|t| t > d || t <= now) {
                let ms = d.saturating_duration_since(now).as_millis() as u64 + 1;
                if plugin_api::io::resume_timer(req, ms).is_ok() {
                    self.timer_at = Some(d);
                }
            }
        }
        Status::Again
    }

    fn timed_out(&mut self) -> bool {
        let now = self.now();
        if self.timer_at.is_some_and(|t| t <= now) {
            self.timer_at = None;
        }
        self.deadline.is_some_and(|d| d <= now)
    }

    fn start(&mut self, req: &mut Request<'_>, conf: &Conf, pass: &Pass) -> Flow {
        match req.read_body() {
            Ok(true) => {}
            Ok(false) => return Flow::Return(Status::Again),
            Err(rc) => return Flow::Return(Status::Http(if rc > 0 { rc as u16 } else { 500 })),
        }
        let Some(group) = pass.group.borrow().clone() else {
            plugin_api::log(sys::LOG_ERR, &format!("host not found in upstream \"{}\"", pass.host));
            return Flow::Return(Status::Http(502));
        };
        // A Unix-domain socket's $proxy_host is "localhost", as nginx's
        // (set again when a cache lock wait brings the request back here).
        self.proxy_host.clear();
        self.proxy_host.push_str(if pass.host.starts_with("unix:") { "localhost" } else { &pass.host });
        self.https = pass.tls;
        self.proto = pass.proto;
        self.fcgi = pass.proto == Proto::FastCgi;
        if let Some(cc) = conf.cache_conf.as_ref().filter(|_| pass.proto == Proto::Http) {
            let bit = match req.method() {
                "GET" => 1,
                "HEAD" => 2,
                "POST" => 4,
                _ => 0,
            };
            if let Some(st) = self.cache_lookup(req, cc, bit) {
                return Flow::Return(st);
            }
        }
        // The method is asked for once (each ask is a host call).
        let mut method = req.method();
        // A cached HEAD is fetched with GET, so that the whole response
        // can be kept (the client still gets the head only).
        if method == "HEAD" && self.cache.as_ref().is_some_and(|c| c.convert_head) {
            method = "GET";
        }
        // proxy_method: the upstream request's method (with variables).
        let own_method = conf.method.as_ref().map(|t| {
            let mut m = Vec::new();
            render_into(req, t, &self.proxy_host, &mut m);
            String::from_utf8_lossy(&m).into_owned()
        });
        if let Some(m) = own_method.as_deref().filter(|m| !m.is_empty()) {
            method = m;
        }
        self.tried.resize(group.peers.len(), false);
        self.group = Some(group);
        self.head = method == "HEAD";
        self.idempotent = matches!(method, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE");
        // A cached request asks for the whole response; an expired entry
        // may be revalidated with its own validators.
        let mut validators: [(&str, Option<&str>); 2] = [("If-Modified-Since", None), ("If-None-Match", None)];
        if let (Some(cc), Some(e)) = (&self.cache, &self.stale_entry) {
            // Only a 200 is revalidated, as nginx (1.7.9).
            if cc.revalidate && e.status == 200 {
                validators = [("If-Modified-Since", e.header("last-modified")), ("If-None-Match", e.header("etag"))];
                self.revalidating = validators.iter().any(|(_, v)| v.is_some());
            }
        }
        let caching = self.cache.is_some();
        self.body_file = match pass.proto {
            Proto::Http => build_request(req, method, conf, pass, &self.proxy_host, &mut self.out, caching, &validators),
            Proto::FastCgi => fastcgi::build(req, conf, &mut self.out),
            Proto::Scgi => cgi::build_scgi(req, conf, &mut self.out),
            Proto::Uwsgi => match cgi::build_uwsgi(req, conf, &mut self.out) {
                Ok(file) => file,
                Err(e) => {
                    plugin_api::log(sys::LOG_ERR, &e);
                    return Flow::Return(Status::Http(500));
                }
            },
            Proto::Memcached => match memcached::build(req, &mut self.out) {
                Ok(()) => None,
                Err(e) => {
                    plugin_api::log(sys::LOG_ERR, &e);
                    return Flow::Return(Status::Http(500));
                }
            },
        };
        self.first_try = Some(self.now());
        self.connect(req, conf)
    }

    /// Picks a peer and connects (or reuses an idle connection).
    fn connect(&mut self, req: &mut Request<'_>, conf: &Conf) -> Flow {
        let Some(group) = self.group.clone() else { return Flow::Return(Status::Http(502)) };
        let now = self.now();
        let key = match &group.balance {
            upstream::Balance::Hash { key, .. } => render(req, key, &self.proxy_host),
            _ => Vec::new(),
        };
        // Only ip_hash looks at the client's address (a variable lookup
        // is a host call).
        let client = match group.balance {
            upstream::Balance::IpHash => req.var("remote_addr").unwrap_or(""),
            _ => "",
        };
        self.attempt += 1;
        let Ok(i) = group.pick(&self.tried, client, &key, now) else {
            plugin_api::log(sys::LOG_ERR, &format!("no live upstreams while connecting to upstream, upstream: \"{}\"", group.name));
            // $upstream_addr names the group, $upstream_status says 502.
            self.addrs.push(NO_PEER);
            (self.attempt_start, self.conn_ms, self.head_ms) = (None, None, None);
            (self.rx, self.tx, self.head_len) = (0, 0, 0);
            self.record(502);
            return Flow::Return(Status::Http(502));
        };
        self.peer = i;
        self.tried[i] = true;
        self.tries += 1;
        self.sent = 0;
        (self.fchunk_off, self.file_read) = (0, 0);
        self.fchunk.clear();
        // Whatever the previous attempt left unread is not this one's.
        self.buf.clear();
        self.framing = None;
        self.chunked = Chunked::default();
        self.fcgi_raw.clear();
        self.fcgi_ended = false;
        self.fcgi_stdin_due = self.fcgi && self.body_file.is_some();
        self.attempt_start = Some(now);
        (self.rx, self.tx, self.head_len) = (0, 0, 0);
        self.addrs.push(i);
        group.acquire(i);
        self.acquired = true;
        if let Some(idle) = group.take_idle(i, now) {
            self.conn = Some(idle.conn);
            self.cached = true;
            self.conn_requests = idle.requests;
            self.conn_born = Some(idle.born);
            return self.start_sending(req, idle.conn, conf);
        }
        self.cached = false;
        self.conn_requests = 0;
        self.conn_born = Some(now);
        match Conn::connect_resuming(req, false, &group.peers[i].text, timeout(conf.connect_timeout)) {
            Ok(c) => self.conn = Some(c),
            Err(_) => return Flow::Failed(Fail::Error),
        }
        self.phase = Phase::Connecting;
        self.deadline = None;
        Flow::Wait
    }

    /// A connect or handshake that reported a failure.
    fn conn_failure(c: Conn) -> Option<Flow> {
        match c.error() {
            (sys::TIMEDOUT, _) => Some(Flow::Failed(Fail::Timeout)),
            (sys::OK, _) => None,
            _ => Some(Flow::Failed(Fail::Error)),
        }
    }

    /// The connection is ready for the request: watch it and send.
    fn start_sending(&mut self, req: &Request<'_>, c: Conn, conf: &Conf) -> Flow {
        // Connected (a kept-alive connection: at once).
        self.conn_ms = Some(self.attempt_start.map_or(0, |s| self.now().saturating_duration_since(s).as_millis() as u64));
        if c.watch_resuming(req, sys::EV_READ | sys::EV_WRITE).is_err() {
            return Flow::Failed(Fail::Error);
        }
        self.phase = Phase::Sending;
        self.expire_in(conf.send_timeout);
        Flow::Next
    }

    fn connecting(&mut self, req: &mut Request<'_>, conf: &Conf) -> Flow {
        let Some(c) = self.conn else { return Flow::Failed(Fail::Error) };
        if let Some(f) = Self::conn_failure(c) {
            return f;
        }
        // Connected once a write is possible: try it.
        match c.write(&[]) {
            Ok(Some(_)) => {}
            Ok(None) => return Flow::Wait,
            Err(_) => return Flow::Failed(Fail::Error),
        }
        if let Some(tls) = conf.tls {
            // proxy_connect_timeout covers the handshake too, as in nginx.
            let left = self.attempt_start.map_or(0, |t| timeout(conf.connect_timeout).saturating_sub(t.elapsed().as_millis() as u64));
            let name = conf.ssl_name.as_deref().unwrap_or("");
            if c.start_tls_resuming(req, tls, name, left.max(1)).is_err() {
                return Flow::Failed(Fail::Error);
            }
            self.phase = Phase::Handshaking;
            return Flow::Wait;
        }
        self.start_sending(req, c, conf)
    }

    fn handshaking(&mut self, req: &mut Request<'_>, conf: &Conf) -> Flow {
        let Some(c) = self.conn else { return Flow::Failed(Fail::Error) };
        if let Some(f) = Self::conn_failure(c) {
            return f;
        }
        if c.tls_info().is_none() {
            return Flow::Wait;
        }
        self.start_sending(req, c, conf)
    }

    fn sending(&mut self, req: &mut Request<'_>, conf: &Conf) -> Flow {
        let Some(c) = self.conn else { return Flow::Failed(Fail::Error) };
        loop {
            // The head (and a body in memory), then a body in a file, a
            // block at a time.
            let pending: &[u8] = if self.sent < self.out.len() {
                &self.out[self.sent..]
            } else if self.fchunk_off < self.fchunk.len() {
                &self.fchunk[self.fchunk_off..]
            } else {
                match self.body_file {
                    Some((fd, pos, len)) if self.file_read < len => {
                        let want = (len - self.file_read).min(if self.fcgi { fastcgi::RECORD_MAX as u64 } else { 64 * 1024 });
                        self.fchunk.clear();
                        self.fchunk_off = 0;
                        if self.fcgi {
                            fastcgi::header(&mut self.fchunk, fastcgi::STDIN, want as usize);
                        }
                        let piece = Piece::File { fd, pos: pos + self.file_read, len: want };
                        if let Err(e) = piece.read_into(&mut self.fchunk) {
                            plugin_api::log(sys::LOG_CRIT, &format!("reading the request body file failed ({e})"));
                            return Flow::Return(Status::Error);
                        }
                        self.file_read += want;
                        continue;
                    }
                    _ if self.fcgi_stdin_due => {
                        self.fcgi_stdin_due = false;
                        self.fchunk.clear();
                        self.fchunk_off = 0;
                        fastcgi::end_of_stdin(&mut self.fchunk);
                        continue;
                    }
                    _ => break,
                }
            };
            match c.write(pending) {
                Ok(Some(n)) if n > 0 => {
                    self.tx += n as u64;
                    if self.sent < self.out.len() {
                        self.sent += n;
                    } else {
                        self.fchunk_off += n;
                    }
                    self.expire_in(conf.send_timeout);
                }
                Ok(_) => {
                    if self.timed_out() {
                        return Flow::Failed(Fail::Timeout);
                    }
                    return Flow::Wait;
                }
                Err(_) => return Flow::Failed(Fail::Error),
            }
        }
        // Sent: from now on only the answer matters (a writable connection
        // would otherwise resume the request for nothing).
        if c.watch_resuming(req, sys::EV_READ).is_err() {
            return Flow::Failed(Fail::Error);
        }
        self.phase = Phase::ReadingHead;
        self.expire_in(conf.read_timeout);
        Flow::Next
    }

    /// Reads what the upstream has into `buf` (appending). Ok(false): EOF.
    /// `catch`: fastcgi_catch_stderr's strings while the head is read.
    fn fill(&mut self, c: Conn, max: usize, catch: &[String]) -> Result<Option<bool>, Fail> {
        let want = max.saturating_sub(self.buf.len()).max(1);
        if self.fcgi {
            return self.fill_fcgi(c, want, catch);
        }
        match c.read_append(&mut self.buf, want) {
            Ok(Some(0)) => Ok(Some(false)),
            Ok(Some(n)) => {
                self.rx += n as u64;
                Ok(Some(true))
            }
            Ok(None) => Ok(None),
            Err(_) => Err(Fail::Error),
        }
    }

    /// `fill` for FastCGI: the records' STDOUT content goes to `buf`;
    /// after END_REQUEST the response has ended (Ok(Some(false))).
    fn fill_fcgi(&mut self, c: Conn, want: usize, catch: &[String]) -> Result<Option<bool>, Fail> {
        if self.fcgi_ended {
            return Ok(Some(false));
        }
        match c.read_append(&mut self.fcgi_raw, want.max(4096)) {
            Ok(Some(0)) => return Ok(Some(false)),
            Ok(Some(n)) => self.rx += n as u64,
            Ok(None) => return Ok(None),
            Err(_) => return Err(Fail::Error),
        }
        let (group, peer) = (self.group.clone(), self.peer);
        let peer_text = || group.as_ref().map(|g| g.peers[peer].text.clone()).unwrap_or_default();
        match fastcgi::decode(&mut self.fcgi_raw, &mut self.buf, catch, &peer_text) {
            Ok(ended) => {
                self.fcgi_ended = ended;
                Ok(Some(true))
            }
            Err(e) => {
                plugin_api::log(sys::LOG_ERR, &format!("{e} while reading upstream, upstream: \"{}\"", peer_text()));
                Err(Fail::InvalidHeader)
            }
        }
    }

    fn reading_head(&mut self, req: &mut Request<'_>, conf: &Conf, pass: &Pass) -> Flow {
        // uWSGI applications answer with a status line, or as CGI.
        if self.proto == Proto::Http || (self.proto == Proto::Uwsgi && self.buf.starts_with(b"HTTP/")) {
            return self.reading_http_head(req, conf, pass);
        }
        if self.proto == Proto::Memcached {
            return self.reading_memcached_head(req, conf, pass);
        }
        self.reading_cgi_head(req, conf, pass)
    }

    fn reading_http_head(&mut self, req: &mut Request<'_>, conf: &Conf, pass: &Pass) -> Flow {
        let Some(c) = self.conn else { return Flow::Failed(Fail::Error) };
        let max = conf.buffer_size.unwrap_or(DEFAULT_BUF);
        loop {
            // Not initialised: httparse writes the headers it finds.
            let mut hs = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
            let mut resp = httparse::Response::new(&mut []);
            // The head is read in place: the buffer is lent out while
            // got_head() looks at it (no copy of names and values).
            let buf = std::mem::take(&mut self.buf);
            let parsed = match if buf.is_empty() { Ok(httparse::Status::Partial) } else { httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, &buf, &mut hs) } {
                Ok(httparse::Status::Complete(n)) => Some(n),
                Ok(httparse::Status::Partial) => None,
                Err(e) => {
                    self.buf = buf;
                    plugin_api::log(sys::LOG_ERR, &format!("upstream sent invalid header ({e}) while reading response header from upstream, upstream: \"{}\"", self.peer_text()));
                    return Flow::Failed(Fail::InvalidHeader);
                }
            };
            if let Some(n) = parsed {
                self.head_len += n as u64;
                // Kept raw (one copy; parsed only when a variable asks).
                self.keep_raw_head(&buf[..n]);
                let code = resp.code.unwrap_or(0);
                let attempt = self.attempt;
                // An interim response (100 Continue) is skipped.
                let interim = (100..200).contains(&code) && code != 101;
                let flow = (!interim).then(|| self.got_head(req, conf, pass, code, resp.version.unwrap_or(0), resp.headers));
                self.after_head(buf, n, attempt);
                match flow {
                    Some(f) => return f,
                    None => continue,
                }
            }
            self.buf = buf;
            if let Some(f) = self.more_head(c, conf, max) {
                return f;
            }
        }
    }

    /// Gives back the buffer a head of `n` bytes was parsed from: what
    /// follows the head is this attempt's body, unless got_head() went on
    /// to another peer (`attempt` moved).
    fn after_head(&mut self, mut buf: Vec<u8>, n: usize, attempt: u32) {
        if self.attempt == attempt {
            buf.drain(..n);
        } else {
            buf.clear();
        }
        self.buf = buf;
    }

    /// Reads more of a response head: None to parse again, else what to
    /// do (the head is too big, the upstream closed, nothing to read).
    fn more_head(&mut self, c: Conn, conf: &Conf, max: usize) -> Option<Flow> {
        if self.buf.len() >= max {
            plugin_api::log(sys::LOG_ERR, &format!("upstream sent too big header while reading response header from upstream, upstream: \"{}\"", self.peer_text()));
            return Some(Flow::Failed(Fail::InvalidHeader));
        }
        match self.fill(c, max, conf.fcgi_catch.as_deref().map_or(&[], |v| v.as_slice())) {
            Ok(Some(true)) => {
                self.expire_in(conf.read_timeout);
                None
            }
            Ok(Some(false)) => {
                plugin_api::log(sys::LOG_ERR, &format!("upstream prematurely closed connection while reading response header from upstream, upstream: \"{}\"", self.peer_text()));
                Some(Flow::Failed(if self.buf.is_empty() { Fail::Error } else { Fail::InvalidHeader }))
            }
            Ok(None) if self.timed_out() => Some(Flow::Failed(Fail::Timeout)),
            Ok(None) => Some(Flow::Wait),
            Err(f) => Some(Flow::Failed(f)),
        }
    }

    /// `reading_head` for memcached: the answer's first line. An item is
    /// a 200 of its length; no item, a 404 (answered by the server's
    /// error pages, as nginx's intercept_404, or the next server).
    fn reading_memcached_head(&mut self, req: &mut Request<'_>, conf: &Conf, pass: &Pass) -> Flow {
        let Some(c) = self.conn else { return Flow::Failed(Fail::Error) };
        let max = conf.buffer_size.unwrap_or(DEFAULT_BUF);
        loop {
            if let Some(eol) = self.buf.iter().position(|&b| b == b'\n') {
                let n = eol + 1;
                let line = self.buf[..eol].strip_suffix(b"\r").unwrap_or(&self.buf[..eol]);
                let key = self.out.strip_prefix(b"get ").and_then(|k| k.strip_suffix(b"\r\n")).unwrap_or(b"");
                let parsed = memcached::parse_line(line, key);
                let (code, len, gzip) = match parsed {
                    memcached::Line::Value { flags, len } => (200, len, conf.memcached_gzip_flag.is_some_and(|f| flags & f != 0)),
                    memcached::Line::End => {
                        plugin_api::log(sys::LOG_INFO, &format!("key: \"{}\" was not found by memcached", String::from_utf8_lossy(key)));
                        (404, 0, false)
                    }
                    memcached::Line::Invalid => {
                        plugin_api::log(sys::LOG_ERR, &format!("memcached sent invalid response: \"{}\" while reading response header from upstream, upstream: \"{}\"", String::from_utf8_lossy(line), self.peer_text()));
                        return Flow::Failed(Fail::InvalidHeader);
                    }
                };
                self.head_len += n as u64;
                self.buf.drain(..n);
                let ctype = req.mime_type().unwrap_or("application/octet-stream").to_string();
                let length = len.to_string();
                let mut head = vec![httparse::Header { name: "Content-Type", value: ctype.as_bytes() }, httparse::Header { name: "Content-Length", value: length.as_bytes() }];
                if gzip {
                    head.push(httparse::Header { name: "Content-Encoding", value: b"gzip" });
                }
                return self.got_head(req, conf, pass, code, 1, &head);
            }
            if let Some(f) = self.more_head(c, conf, max) {
                return f;
            }
        }
    }

    /// `reading_head` for the CGI families: a CGI head (header lines
    /// only; the status from `Status:`), passed on without that line.
    fn reading_cgi_head(&mut self, req: &mut Request<'_>, conf: &Conf, pass: &Pass) -> Flow {
        let Some(c) = self.conn else { return Flow::Failed(Fail::Error) };
        let max = conf.buffer_size.unwrap_or(DEFAULT_BUF);
        loop {
            if self.proto == Proto::Uwsgi && self.buf.starts_with(b"HTTP/") {
                return self.reading_http_head(req, conf, pass);
            }
            let buf = std::mem::take(&mut self.buf);
            let mut hs = [httparse::EMPTY_HEADER; 100];
            let parsed = match httparse::parse_headers(&buf, &mut hs) {
                Ok(httparse::Status::Complete((n, head))) => Some((n, head.iter().filter(|h| !h.name.eq_ignore_ascii_case("status")).copied().collect::<Vec<_>>(), cgi::status(head))),
                Ok(httparse::Status::Partial) => None,
                Err(e) => {
                    self.buf = buf;
                    plugin_api::log(sys::LOG_ERR, &format!("upstream sent invalid header ({e}) while reading response header from upstream, upstream: \"{}\"", self.peer_text()));
                    return Flow::Failed(Fail::InvalidHeader);
                }
            };
            if let Some((n, head, code)) = parsed {
                let code = match code {
                    Ok(code) => code,
                    Err(e) => {
                        self.buf = buf;
                        plugin_api::log(sys::LOG_ERR, &format!("{e} while reading response header from upstream, upstream: \"{}\"", self.peer_text()));
                        return Flow::Failed(Fail::InvalidHeader);
                    }
                };
                self.head_len += n as u64;
                self.keep_raw_head(&buf[..n]);
                let attempt = self.attempt;
                let flow = self.got_head(req, conf, pass, code, 1, &head);
                drop(head);
                self.after_head(buf, n, attempt);
                return flow;
            }
            self.buf = buf;
            if let Some(f) = self.more_head(c, conf, max) {
                return f;
            }
        }
    }

    fn peer_text(&self) -> String {
        self.group.as_ref().map(|g| g.peers[self.peer].text.clone()).unwrap_or_default()
    }

    fn record(&mut self, status: u16) {
        self.statuses.push(status);
        self.conn_times.push(self.conn_ms.take());
        self.head_times.push(self.head_ms.take());
        self.times.push(self.attempt_start.map_or(0, |s| self.now().saturating_duration_since(s).as_millis() as u64));
        self.bytes.push((self.rx.saturating_sub(self.head_len), self.rx, self.tx));
        self.snap();
    }

    /// The response's body has all arrived (or the attempt ended while
    /// reading it): `$upstream_response_time` runs until now, as nginx's.
    fn body_done(&mut self) {
        let t = self.attempt_start.map_or(0, |s| Instant::now().saturating_duration_since(s).as_millis() as u64);
        if let Some(last) = self.times.last_mut() {
            *last = t;
        }
        if let Some(last) = self.bytes.last_mut() {
            *last = (self.rx.saturating_sub(self.head_len), self.rx, self.tx);
        }
        self.snap();
    }

    fn got_head(&mut self, req: &mut Request<'_>, conf: &Conf, pass: &Pass, code: u16, minor: u8, head: &[httparse::Header<'_>]) -> Flow {
        self.status = code;
        self.head_ms = Some(self.attempt_start.map_or(0, |s| self.now().saturating_duration_since(s).as_millis() as u64));
        let mask = conf.next_up.unwrap_or(next::ERROR | next::TIMEOUT);
        let retry_on = match code {
            500 => next::HTTP_500,
            502 => next::HTTP_502,
            503 => next::HTTP_503,
            504 => next::HTTP_504,
            403 => next::HTTP_403,
            404 => next::HTTP_404,
            429 => next::HTTP_429,
            _ => 0,
        };
        if retry_on != 0 && mask & retry_on != 0 && self.may_retry(conf) {
            self.record(code);
            // 5xx count against the peer (max_fails); 403/404/429 do not.
            let ok = !matches!(code, 500 | 502 | 503 | 504);
            self.release(false, self.now(), ok);
            return self.connect(req, conf);
        }
        let value = |n: &str| head.iter().find(|h| h.name.eq_ignore_ascii_case(n)).map(|h| h.value);
        let conn_tokens = value("connection").unwrap_or(b"");
        // The framing must be unambiguous, as nginx requires: one valid
        // Content-Length or one "chunked", never both (else 502).
        let (mut cl, mut te): (Option<&[u8]>, Option<&[u8]>) = (None, None);
        for h in head {
            let slot = if h.name.eq_ignore_ascii_case("content-length") {
                &mut cl
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                &mut te
            } else {
                continue;
            };
            if slot.is_some() {
                let v = String::from_utf8_lossy(h.value);
                plugin_api::log(sys::LOG_ERR, &format!("upstream sent duplicate header line: \"{}: {v}\" while reading response header from upstream, upstream: \"{}\"", h.name, self.peer_text()));
                return Flow::Failed(Fail::InvalidHeader);
            }
            *slot = Some(h.value);
        }
        let length = match cl {
            Some(v) => match std::str::from_utf8(v.trim_ascii()).ok().filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).and_then(|s| s.parse::<u64>().ok()) {
                Some(n) => Some(n),
                None => {
                    plugin_api::log(sys::LOG_ERR, &format!("upstream sent invalid \"Content-Length\" header: \"Content-Length: {}\" while reading response header from upstream, upstream: \"{}\"", String::from_utf8_lossy(v), self.peer_text()));
                    return Flow::Failed(Fail::InvalidHeader);
                }
            },
            None => None,
        };
        let chunked = match te {
            Some(v) if v.trim_ascii().eq_ignore_ascii_case(b"chunked") => true,
            Some(v) => {
                plugin_api::log(sys::LOG_ERR, &format!("upstream sent unknown \"Transfer-Encoding\": \"{}\" while reading response header from upstream, upstream: \"{}\"", String::from_utf8_lossy(v), self.peer_text()));
                return Flow::Failed(Fail::InvalidHeader);
            }
            None => false,
        };
        if chunked && length.is_some() {
            plugin_api::log(sys::LOG_ERR, &format!("upstream sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time while reading response header from upstream, upstream: \"{}\"", self.peer_text()));
            return Flow::Failed(Fail::InvalidHeader);
        }
        let framing = if self.head || code == 204 || code == 304 || (100..200).contains(&code) {
            Framing::None
        } else if self.proto.is_cgi() {
            // Whatever the head says, a CGI family's body ends when the
            // application is done (END_REQUEST, or the connection's end).
            Framing::Close
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        self.framing = Some(framing);
        self.keep = if self.proto != Proto::Http {
            // FastCGI's kept once END_REQUEST has come (see reading_body).
            self.fcgi
            && conf.fcgi_keep.unwrap_or(false) && framing == Framing::Close && self.group.as_ref().is_some_and(|g| g.keepalive > 0)
        } else {
            conf.http11.unwrap_or(false)
            && framing != Framing::Close
            && !contains_ci(conn_tokens, b"close")
            && (minor == 1 || contains_ci(conn_tokens, b"keep-alive"))
            && self.group.as_ref().is_some_and(|g| g.keepalive > 0)
        };
        self.record(code);
        // The upstream may slow this response down (nginx's
        // X-Accel-Limit-Rate, bytes a second; it holds across X-Accel-Redirect too).
        if conf.ignore_cache.unwrap_or(0) & cache::ignore::LIMIT_RATE == 0 {
            if let Some(v) = value("x-accel-limit-rate") {
                let v = String::from_utf8_lossy(v);
                let _ = req.set_var("limit_rate", v.trim());
            }
        }
        if let (Some(to), false) = (value("x-accel-redirect"), conf.ignore_xa_redirect.unwrap_or(false)) {
            // nginx's X-Accel-Redirect: the upstream names where the answer
            // is (often an internal location); what it said about the
            // content goes along.
            let to = String::from_utf8_lossy(to).trim().to_string();
            for h in head {
                if ["content-type", "set-cookie", "content-disposition", "cache-control", "expires", "accept-ranges"].iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
                    req.add_header(h.name, &String::from_utf8_lossy(h.value));
                }
            }
            self.finish_upstream(false);
            self.phase = Phase::Finished;
            if to.is_empty() {
                return Flow::Return(Status::Http(404));
            }
            // The redirected request is a GET (a HEAD stays one), as
            // nginx's.
            if req.method() != "HEAD" {
                let _ = req.set_var("request_method", "GET");
            }
            if to.starts_with('@') {
                return Flow::Return(req.internal_redirect(&to, ""));
            }
            // Decoded and normalized as a request's URI ("/a%20b" is
            // "/a b"); one that climbs above the root is refused (404).
            let (path, args) = to.split_once('?').unwrap_or((to.as_str(), ""));
            let mut uri = Vec::new();
            if !path.starts_with('/') || unsafe_uri(path) || plugin_api::http::normalize(path, false, &mut uri).is_err() {
                plugin_api::log(sys::LOG_ERR, &format!("unsafe URI \"{to}\" was detected in X-Accel-Redirect"));
                return Flow::Return(Status::Http(404));
            }
            return Flow::Return(req.internal_redirect(&String::from_utf8_lossy(&uri), args));
        }
        // memcached's "not found" is the server's own 404 (nginx's
        // intercept_404).
        if self.proto == Proto::Memcached && code == 404 {
            self.finish_upstream(false);
            self.phase = Phase::Finished;
            return Flow::Return(Status::Http(404));
        }
        if code >= 300 && conf.intercept.unwrap_or(false) && code != 304 && req.has_error_page(code) {
            // The client learns how to authenticate, as nginx passes it on.
            if code == 401 {
                for h in head.iter().filter(|h| h.name.eq_ignore_ascii_case("www-authenticate")) {
                    req.add_header("WWW-Authenticate", &String::from_utf8_lossy(h.value));
                }
            }
            // error_page (or the built-in page) answers instead.
            self.finish_upstream(false);
            self.phase = Phase::Finished;
            return Flow::Return(Status::Http(code));
        }
        if code == 304 && self.revalidating {
            if let (Some(e), Some(cc), Some((at_key, path))) = (self.stale_entry.take(), self.cache.clone(), self.stale_at.clone()) {
                // Still good: fresh again, from the 304's own cache headers
                // or proxy_cache_valid for the entry's status.
                let values = |n: &str| head.iter().filter(|h| h.name.eq_ignore_ascii_case(n)).map(|h| String::from_utf8_lossy(h.value).into_owned()).collect::<Vec<_>>();
                if let Some(secs) = cache::ttl(e.status, &values, cc.ignore, &cc.valid) {
                    cache::refresh(&path, &at_key, &e, cache::now_secs() + secs);
                }
                self.finish_upstream(self.keep);
                self.set_cache_status("REVALIDATED");
                self.phase = Phase::Finished;
                return Flow::Return(self.serve_cached(req, &e));
            }
        }
        if self.stale_entry.is_some() && cache::stale_bit(code) != 0 {
            if let Some(st) = self.serve_stale(req, cache::stale_bit(code)) {
                self.finish_upstream(false);
                return Flow::Return(st);
            }
        }
        // Whether, and until when, the response is kept in the cache.
        let keep_for = match &self.cache {
            Some(cc) if self.cache_store_ok && !matches!(code, 101 | 206 | 304) => {
                let values = |n: &str| head.iter().filter(|h| h.name.eq_ignore_ascii_case(n)).map(|h| String::from_utf8_lossy(h.value).into_owned()).collect::<Vec<_>>();
                cache::ttl(code, &values, cc.ignore, &cc.valid)
            }
            _ => None,
        };
        let mut kept: Option<Vec<(String, String)>> = keep_for.map(|_| Vec::new());
        let upgrade = code == 101;
        if upgrade && (!conf.http11.unwrap_or(false) || req.header("upgrade").is_none()) {
            plugin_api::log(sys::LOG_ERR, &format!("upstream sent unexpected 101 while reading response header from upstream, upstream: \"{}\"", self.peer_text()));
            return Flow::Failed(Fail::InvalidHeader);
        }
        req.set_status(code);
        let is = |n: &str, names: &[&str]| names.iter().any(|m| n.eq_ignore_ascii_case(m));
        let listed = |n: &str, l: &Option<Vec<String>>| l.as_ref().is_some_and(|l| l.iter().any(|m| n.eq_ignore_ascii_case(m)));
        let hidden = |n: &str| {
            let hop = is(n, &["connection", "keep-alive", "transfer-encoding", "te", "trailer", "proxy-connection"])
                || (!upgrade && n.eq_ignore_ascii_case("upgrade"));
            // nginx's proxy hides Date, Server and X-Pad too; its
            // fastcgi, scgi and uwsgi modules only X-Accel-*.
            let default_hidden = !listed(n, &conf.pass_headers)
                && ((pass.proto == Proto::Http && is(n, &["date", "server", "x-pad"])) || n.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("x-accel-")));
            hop || default_hidden || listed(n, &conf.hide)
        };
        // proxy_pass_header Server (Date) passes the upstream's, or, when
        // it sent none, none at all: the host then writes no own either
        // (an empty one), as nginx.
        if pass.proto == Proto::Http {
            for name in ["Server", "Date"] {
                if listed(name, &conf.pass_headers) && !head.iter().any(|h| h.name.eq_ignore_ascii_case(name)) {
                    req.add_header(name, "");
                }
            }
        }
        let mut expires = false;
        for h in head {
            let k = h.name;
            if hidden(k) {
                continue;
            }
            // A second Expires is ignored, as nginx does.
            if k.eq_ignore_ascii_case("expires") {
                if expires {
                    continue;
                }
                expires = true;
            }
            if k.eq_ignore_ascii_case("content-length") && !matches!(framing, Framing::Length(_)) && !self.head {
                continue;
            }
            // Checked first: from_utf8_lossy's chunk scan costs more.
            let v = match std::str::from_utf8(h.value) {
                Ok(v) => std::borrow::Cow::Borrowed(v),
                Err(_) => String::from_utf8_lossy(h.value),
            };
            if k.eq_ignore_ascii_case("set-cookie") && [conf.cookie_domain.as_ref().map(|r| r.len()), conf.cookie_path.as_ref().map(|r| r.len()), conf.cookie_flags.as_ref().map(|r| r.len())].iter().any(|n| n.unwrap_or(0) > 0) {
                let vars = |name: &str, out: &mut Vec<u8>| out.extend_from_slice(req.var_bytes(name).unwrap_or(b""));
                let new = rewrite_cookie(conf, &v, &vars);
                let new = cookie_flags(conf, &new, &vars).unwrap_or(new);
                req.add_header(k, &new);
                if let Some(l) = kept.as_mut() {
                    l.push((k.to_string(), new));
                }
                continue;
            }
            if (k.eq_ignore_ascii_case("location") || k.eq_ignore_ascii_case("refresh")) && pass.proto == Proto::Http {
                let vars = |name: &str, out: &mut Vec<u8>| out.extend_from_slice(req.var_bytes(name).unwrap_or(b""));
                let new = if k.eq_ignore_ascii_case("refresh") {
                    // Only the URL after "url=" is rewritten (nginx).
                    match v.to_ascii_lowercase().find("url=") {
                        Some(i) => format!("{}{}", &v[..i + 4], rewrite_redirect(conf, pass, &v[i + 4..], &vars)),
                        None => v.to_string(),
                    }
                } else {
                    rewrite_redirect(conf, pass, &v, &vars)
                };
                req.add_header(k, &new);
                if let Some(l) = kept.as_mut() {
                    l.push((k.to_string(), new));
                }
                continue;
            }
            req.add_header(k, &v);
            if let Some(l) = kept.as_mut() {
                l.push((k.to_string(), v.into_owned()));
            }
        }
        if let (Some(secs), Some(headers)) = (keep_for, kept) {
            // A varying response records its header names and this
            // request's values for them (unless Vary is ignored).
            let ignore_vary = self.cache.as_ref().is_some_and(|c| c.ignore & cache::ignore::VARY != 0);
            let vary_values: Vec<String> = head.iter().filter(|h| h.name.eq_ignore_ascii_case("vary")).map(|h| String::from_utf8_lossy(h.value).into_owned()).collect();
            let vary = cache::vary_names(&vary_values).filter(|_| !ignore_vary).map(|names| {
                let v = cache::variant(&|n| req.header(n).map(str::to_string), &names);
                (names, v)
            });
            if let Some(((key, path), vary)) = self.store_at(vary) {
                self.store = cache::Store::begin(path, &key, cache::now_secs() + secs, code, &headers, vary.as_ref());
            }
        }
        // Nothing will be kept: requests waiting on the fill lock need not.
        if self.store.is_none() {
            self.unlock();
        }
        if upgrade {
            let Some(c) = self.conn.take() else { return Flow::Failed(Fail::Error) };
            // nginx's proxy_read_timeout holds for the upgraded connection.
            let _ = c.set_idle(timeout(conf.read_timeout));
            if req.send_header().is_err() || req.relay(c).is_err() {
                c.close();
                return Flow::Return(Status::Error);
            }
            self.release(false, self.now(), true);
            self.phase = Phase::Finished;
            return Flow::Return(Status::Done);
        }
        if req.send_header().is_err() {
            return Flow::Return(Status::Error);
        }
        self.phase = Phase::ReadingBody;
        Flow::Next
    }

    /// Whether another peer may be tried for this request.
    fn may_retry(&self, conf: &Conf) -> bool {
        let mask = conf.next_up.unwrap_or(next::ERROR | next::TIMEOUT);
        if mask & next::OFF != 0 {
            return false;
        }
        let tries = conf.next_tries.unwrap_or(0);
        if tries != 0 && self.tries >= tries {
            return false;
        }
        if let (Some(t), Some(first)) = (conf.next_timeout.filter(|&t| t > 0), self.first_try) {
            if first.elapsed() >= Duration::from_millis(t) {
                return false;
            }
        }
        if self.sent > 0 && !self.idempotent && mask & next::NON_IDEMPOTENT == 0 {
            return false;
        }
        // A peer marked `down` is no try left (nginx counts tries
        // without them).
        self.group.as_ref().is_some_and(|g| self.tried.iter().zip(&g.peers).any(|(t, p)| !t && !p.down))
    }

    /// An attempt failed before the response head was passed on.
    fn failed(&mut self, req: &mut Request<'_>, conf: &Conf, f: Fail) -> Option<Status> {
        let now = self.now();
        let peer = self.peer_text();
        let reason = self.conn.map(|c| c.error().1).filter(|s| !s.is_empty());
        let what = match self.phase {
            Phase::Connecting => "while connecting to upstream",
            Phase::Handshaking => "while SSL handshaking to upstream",
            Phase::Sending => "while sending request to upstream",
            _ => "while reading response header from upstream",
        };
        match (f, reason) {
            (Fail::Timeout, _) => plugin_api::log(sys::LOG_ERR, &format!("upstream timed out (110: Connection timed out) {what}, upstream: \"{peer}\"")),
            (Fail::Error, Some(r)) => {
                let up = if r.starts_with("SSL certificate") { "upstream " } else { "" };
                plugin_api::log(sys::LOG_ERR, &format!("{up}{r} {what}, upstream: \"{peer}\""))
            }
            _ => {}
        }
        let status = if f == Fail::Timeout { 504 } else { 502 };
        self.record(status);
        if self.phase == Phase::ReadingBody {
            // Too late for another peer: the response is cut short.
            self.release(false, now, false);
            self.phase = Phase::Finished;
            return Some(Status::Error);
        }
        // A keepalive connection the upstream had closed is not the peer's
        // fault: try again without counting it.
        if self.cached && f == Fail::Error {
            self.release(false, now, true);
            self.tries -= 1;
            self.tried[self.peer] = false;
            self.statuses.pop();
            self.times.pop();
            self.addrs.pop();
            return match self.connect(req, conf) {
                Flow::Return(s) => Some(s),
                _ => None,
            };
        }
        let mask = conf.next_up.unwrap_or(next::ERROR | next::TIMEOUT);
        let bit = match f {
            Fail::Error => next::ERROR,
            Fail::Timeout => next::TIMEOUT,
            Fail::InvalidHeader => next::INVALID_HEADER,
        };
        self.release(false, now, false);
        if mask & bit != 0 && self.may_retry(conf) {
            return match self.connect(req, conf) {
                Flow::Return(s) => Some(s),
                _ => None,
            };
        }
        let stale_bit = match f {
            Fail::Error => cache::stale::ERROR,
            Fail::Timeout => cache::stale::TIMEOUT,
            Fail::InvalidHeader => cache::stale::INVALID_HEADER,
        };
        if let Some(st) = self.serve_stale(req, stale_bit) {
            return Some(st);
        }
        self.phase = Phase::Finished;
        Some(Status::Http(status))
    }

    fn finish_upstream(&mut self, keep: bool) {
        self.release(keep, self.now(), true);
    }

    fn reading_body(&mut self, req: &mut Request<'_>, conf: &Conf) -> Flow {
        let Some(c) = self.conn else { return Flow::Failed(Fail::Error) };
        let chunk = conf.buffer_size.unwrap_or(DEFAULT_BUF).max(4096);
        let buffering = conf.buffering.unwrap_or(true);
        let (n, size) = conf.buffers.unwrap_or((8, DEFAULT_BUF));
        let mem_limit = if buffering { n * size } else { chunk };
        loop {
            // Pass on what is buffered.
            // (A zero length is complete at once: nothing more will come.)
            if !self.buf.is_empty() || matches!(self.framing, Some(Framing::None | Framing::Length(0))) {
                match self.deliver(req, conf, mem_limit) {
                    Ok(true) => {
                        self.phase = Phase::Finished;
                        let keep = self.keep && self.buf.is_empty();
                        self.finish_upstream(keep);
                        self.body_done();
                        return Flow::Return(Status::Ok);
                    }
                    Ok(false) => {}
                    Err(()) => {
                        plugin_api::log(sys::LOG_ERR, &format!("upstream sent invalid chunked response while reading upstream, upstream: \"{}\"", self.peer_text()));
                        self.release(false, self.now(), false);
                        self.phase = Phase::Finished;
                        return Flow::Return(Status::Error);
                    }
                }
            }
            // Flow control: without room in memory or a temp file, wait for
            // the client.
            let spill_room = buffering && self.temp_room(conf) > 0;
            if !spill_room && !req.resume_when_drained(mem_limit) {
                // The client is the bottleneck (send_timeout is its
                // clock): the upstream's read timeout starts again later.
                self.expire_in(conf.read_timeout);
                return Flow::Return(Status::Again);
            }
            match self.fill(c, chunk, &[]) {
                Ok(Some(true)) => self.expire_in(conf.read_timeout),
                Ok(Some(false)) => {
                    if self.framing == Some(Framing::Close) {
                        self.phase = Phase::Finished;
                        // A FastCGI connection whose request ended cleanly
                        // (END_REQUEST, nothing after it) may be kept.
                        let keep = self.fcgi && self.keep && self.fcgi_ended && self.fcgi_raw.is_empty();
                        self.finish_upstream(keep);
                        self.body_done();
                        if let Some(st) = self.store.take() {
                            st.commit();
                        }
                        self.unlock();
                        return Flow::Return(Status::Ok);
                    }
                    plugin_api::log(sys::LOG_ERR, &format!("upstream prematurely closed connection while reading upstream, upstream: \"{}\"", self.peer_text()));
                    return Flow::Failed(Fail::Error);
                }
                Ok(None) => {
                    if self.timed_out() {
                        plugin_api::log(sys::LOG_ERR, &format!("upstream timed out (110: Connection timed out) while reading upstream, upstream: \"{}\"", self.peer_text()));
                        return Flow::Failed(Fail::Timeout);
                    }
                    return Flow::Wait;
                }
                Err(f) => return Flow::Failed(f),
            }
        }
    }

    fn temp_room(&self, conf: &Conf) -> u64 {
        if self.no_temp {
            return 0;
        }
        let max = conf.max_temp.unwrap_or(1 << 30);
        max.saturating_sub(self.temp.as_ref().map_or(0, |t| t.1))
    }

    /// Decodes the buffered body and sends it on. Ok(true) at the end.
    fn deliver(&mut self, req: &mut Request<'_>, conf: &Conf, mem_limit: usize) -> Result<bool, ()> {
        let framing = self.framing.unwrap_or(Framing::Close);
        let mut data = std::mem::take(&mut self.ranges);
        data.clear();
        let r = self.deliver_ranges(req, conf, mem_limit, framing, &mut data);
        self.ranges = data;
        r
    }

    fn deliver_ranges(&mut self, req: &mut Request<'_>, conf: &Conf, mem_limit: usize, framing: Framing, data: &mut Vec<std::ops::Range<usize>>) -> Result<bool, ()> {
        let mut used = 0;
        let mut done = false;
        match framing {
            Framing::None => done = true,
            Framing::Close => {
                data.push(0..self.buf.len());
                used = self.buf.len();
            }
            Framing::Length(left) => {
                let n = (left as usize).min(self.buf.len());
                data.push(0..n);
                used = n;
                self.framing = Some(Framing::Length(left - n as u64));
                done = left == n as u64;
            }
            Framing::Chunked => {
                while used < self.buf.len() {
                    match self.chunked.step(&self.buf[used..]).map_err(|_| ())? {
                        Step::Progress { used: u, data: d } => {
                            if !d.is_empty() {
                                data.push(used + d.start..used + d.end);
                            }
                            used += u;
                            if u == 0 {
                                break;
                            }
                        }
                        Step::Done { used: u } => {
                            used += u;
                            done = true;
                            break;
                        }
                    }
                }
            }
        }
        if let Some(st) = self.store.as_mut() {
            for r in data.iter() {
                st.write(&self.buf[r.clone()]);
            }
            if done {
                if let Some(st) = self.store.take() {
                    st.commit();
                }
                self.unlock();
            }
        }
        let total: usize = data.iter().map(|r| r.len()).sum();
        let spill = conf.buffering.unwrap_or(true) && total > 0 && req.output_queued() + total > mem_limit && self.temp_room(conf) >= total as u64;
        if spill && self.spill(req, conf, data).is_ok() {
            if done {
                req.send_bufs(&[], true).map_err(|_| ())?;
            }
        } else if data.is_empty() {
            if done {
                req.send_bufs(&[], true).map_err(|_| ())?;
            }
        } else {
            // Up to 8 pieces per call, without a list on the heap.
            let mut parts: [&[u8]; 8] = [&[]; 8];
            for (i, group) in data.chunks(parts.len()).enumerate() {
                for (p, r) in parts.iter_mut().zip(group) {
                    *p = &self.buf[r.clone()];
                }
                let last = (i + 1) * parts.len() >= data.len();
                req.send_bufs(&parts[..group.len()], done && last).map_err(|_| ())?;
            }
        }
        self.buf.drain(..used);
        Ok(done)
    }

    /// Appends body data to the unlinked temporary file and queues that
    /// file region for the client.
    fn spill(&mut self, req: &mut Request<'_>, conf: &Conf, data: &[std::ops::Range<usize>]) -> Result<(), ()> {
        if self.temp.is_none() {
            let dir = conf.temp_path.clone().map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
            let path = dir.join(format!("ngxr-proxy-{}-{:p}", std::process::id(), self as *const State));
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| {
                plugin_api::log(sys::LOG_CRIT, &format!("open() \"{}\" failed ({e}), buffering in memory", path.display()));
                self.no_temp = true;
            })?;
            let _ = std::fs::remove_file(&path);
            plugin_api::log(sys::LOG_WARN, &format!("an upstream response is buffered to a temporary file {} while reading upstream", path.display()));
            self.temp = Some((f, 0));
        }
        let Some((f, len)) = self.temp.as_mut() else { return Err(()) };
        let start = *len;
        let mut ok = true;
        for r in data {
            ok = ok && f.write_all(&self.buf[r.clone()]).is_ok();
            *len += r.len() as u64;
        }
        let (fd, n) = (f.as_raw_fd(), *len - start);
        // Only a fully written region is queued; otherwise the caller
        // sends the bytes from memory and the file is not used again.
        if ok && req.send_file(fd, start, n, false).is_ok() {
            return Ok(());
        }
        plugin_api::log(sys::LOG_CRIT, "writing the proxy temporary file failed, buffering in memory");
        self.no_temp = true;
        Err(())
    }
}

/// Answers from a cache entry: its status and headers, and its body
/// with sendfile.
fn serve_entry(req: &mut Request<'_>, e: &cache::Entry) -> Status {
    use plugin_api::http::{parse_ranges, Ranges};
    // A 200 answers a Range (If-Range: the entry's ETag or date), as
    // nginx's range filter does for cached responses.
    let ranges = if e.status == 200 {
        let [range, if_range] = req.headers_named(["Range", "If-Range"]);
        match range {
            Some(spec) if if_range.is_none_or(|v| Some(v) == e.header("etag") || Some(v) == e.header("last-modified")) => parse_ranges(spec, e.body_len),
            _ => Ranges::Ignore,
        }
    } else {
        Ranges::Ignore
    };
    // A client that has this entry hears so (nginx's not-modified filter
    // on cached responses): If-None-Match naming its ETag, else
    // If-Modified-Since equal to its Last-Modified.
    if e.status == 200 {
        let [inm, ims] = req.headers_named(["If-None-Match", "If-Modified-Since"]);
        let etag = e.header("etag");
        let fresh = match (inm, ims) {
            (Some(list), _) => list.trim() == "*" || etag.is_some_and(|t| list.split(',').any(|c| c.trim().trim_start_matches("W/") == t.trim_start_matches("W/"))),
            (None, Some(since)) => e.header("last-modified") == Some(since.trim()),
            _ => false,
        };
        if fresh {
            req.set_status(304);
            for (k, v) in &e.headers {
                if ["etag", "last-modified", "cache-control", "expires", "vary"].iter().any(|n| k.eq_ignore_ascii_case(n)) {
                    req.add_header(k, v);
                }
            }
            return match req.send_header() {
                Ok(()) => Status::Ok,
                Err(_) => Status::Error,
            };
        }
    }
    if ranges == Ranges::Unsatisfiable {
        req.set_header("Content-Range", &format!("bytes */{}", e.body_len));
        return Status::Http(416);
    }
    req.set_status(e.status);
    for (k, v) in &e.headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        req.add_header(k, v);
    }
    let fd = e.file.as_raw_fd();
    let r = match ranges {
        Ranges::List(list) if list.len() == 1 => {
            let (a, b) = list[0];
            req.set_status(206);
            req.set_header("Content-Range", &format!("bytes {a}-{b}/{}", e.body_len));
            req.set_header("Content-Length", &(b - a + 1).to_string());
            match req.send_header() {
                Ok(()) => req.send_file(fd, e.body_off + a, b - a + 1, true),
                Err(rc) => Err(rc),
            }
        }
        Ranges::List(list) => {
            let ctype = e.header("content-type").unwrap_or("application/octet-stream").to_string();
            plugin_api::send_multipart(req, fd, e.body_off, &list, e.body_len, &ctype)
        }
        _ => {
            if e.status != 204 {
                req.set_header("Content-Length", &e.body_len.to_string());
            }
            if req.send_header().is_err() {
                return Status::Error;
            }
            if e.body_len == 0 {
                req.send_bufs(&[], true)
            } else {
                req.send_file(fd, e.body_off, e.body_len, true)
            }
        }
    };
    if r.is_ok() {
        Status::Ok
    } else {
        Status::Error
    }
}

enum Flow {
    Next,
    Wait,
    Return(Status),
    Failed(Fail),
}

/// Renders a template; `$proxy_host` and `$proxy_add_x_forwarded_for` are
/// computed here (the handler holds the state their getters read).
fn render(req: &Request<'_>, t: &Template, proxy_host: &str) -> Vec<u8> {
    let mut out = Vec::new();
    render_into(req, t, proxy_host, &mut out);
    out
}

/// Appends `t`'s value to `out`.
fn render_into(req: &Request<'_>, t: &Template, proxy_host: &str, out: &mut Vec<u8>) {
    t.render(out, |name, out| match name {
        "proxy_host" => out.extend_from_slice(proxy_host.as_bytes()),
        "proxy_add_x_forwarded_for" => out.extend_from_slice(forwarded_for(req).as_bytes()),
        _ => {
            if let Some(v) = req.var_bytes(name) {
                out.extend_from_slice(v);
            }
        }
    });
}

/// The request line's target for the upstream, with nginx's rules,
/// appended to `out`.
fn upstream_uri(req: &Request<'_>, pass: &Pass, out: &mut Vec<u8>) {
    let uri = req.uri();
    let args = req.args();
    match &pass.uri {
        None => {
            // The client's URI as sent, unless it was changed (rewritten or
            // redirected): then the normalized URI, escaped.
            let raw = req.request_uri();
            let path = raw.split('?').next().unwrap_or("");
            let mut norm = Vec::new();
            let same = [true, false].iter().any(|&merge| plugin_api::http::normalize(path, merge, &mut norm).is_ok() && norm == uri.as_bytes());
            if same {
                out.extend_from_slice(raw.as_bytes());
                return;
            }
            escape_uri(uri, out);
        }
        // From a URL with variables: the URI part is the whole target.
        Some(p) if pass.dynamic => {
            out.extend_from_slice(p.as_bytes());
            return;
        }
        // A `break` rewrite changed the URI in this location: nginx passes
        // it whole.
        Some(_) if req.uri_rewritten() => escape_uri(uri, out),
        Some(p) => {
            out.extend_from_slice(p.as_bytes());
            let rest = uri.strip_prefix(pass.loc_prefix.as_str()).unwrap_or(uri);
            escape_uri(rest, out);
        }
    }
    if !args.is_empty() {
        out.push(b'?');
        out.extend_from_slice(args.as_bytes());
    }
}

/// Headers the proxy sets unless `proxy_set_header` says otherwise: an
/// empty value removes the header. ("$proxy_host" is the only variable.)
const DEFAULT_SET: [(&str, &str); 7] =
    [("Host", "$proxy_host"), ("Connection", "close"), ("Keep-Alive", ""), ("Expect", ""), ("Upgrade", ""), ("TE", ""), ("Transfer-Encoding", "")];

/// Writes the request head and body for the upstream into `out`.
/// Returns the body's file region when the body is in a temporary file
/// (sent after `out`, which then holds only the head).
#[allow(clippy::too_many_arguments)]
fn build_request(req: &Request<'_>, method: &str, conf: &Conf, pass: &Pass, proxy_host: &str, out: &mut Vec<u8>, caching: bool, validators: &[(&str, Option<&str>)]) -> Option<(i32, u64, u64)> {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    upstream_uri(req, pass, out);
    out.extend_from_slice(if conf.http11.unwrap_or(false) { b" HTTP/1.1\r\n" } else { b" HTTP/1.0\r\n" });
    let user: &[(String, Template)] = conf.headers.as_deref().map_or(&[], |v| v.as_slice());
    let set_by_user = |name: &str| user.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    // A header is written only when its value is not empty (nginx).
    let header = |out: &mut Vec<u8>, name: &str, value: &dyn Fn(&mut Vec<u8>)| {
        let mark = out.len();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        let at = out.len();
        value(out);
        if out.len() == at {
            out.truncate(mark);
        } else {
            out.extend_from_slice(b"\r\n");
        }
    };
    for (name, t) in user {
        header(out, name, &|out| render_into(req, t, proxy_host, out));
    }
    for (name, v) in DEFAULT_SET {
        if !set_by_user(name) {
            let v = if v == "$proxy_host" { proxy_host } else { v };
            header(out, name, &|out| out.extend_from_slice(v.as_bytes()));
        }
    }
    // proxy_pass_request_body off: no body (and no length) goes upstream;
    // proxy_pass_request_headers off: none of the client's headers.
    let (pass_body, pass_headers) = (conf.pass_body.unwrap_or(true), conf.pass_req_headers.unwrap_or(true));
    // proxy_set_body: this text (with variables) is the body instead.
    let own_body = conf.set_body.as_ref().map(|t| {
        let mut b = Vec::new();
        render_into(req, t, proxy_host, &mut b);
        b
    });
    let (body, file): (&[u8], _) = match (&own_body, req.body_piece().filter(|_| pass_body)) {
        (Some(b), _) => (b.as_slice(), None),
        (None, Some(Piece::Mem(m))) => (m, None),
        (None, Some(Piece::File { fd, pos, len })) => (&[], Some((fd, pos, len))),
        (None, None) => (&[], None),
    };
    let body_len = file.map_or(body.len() as u64, |(_, _, len)| len);
    let mut has_body = own_body.is_some();
    for (k, v) in req.headers() {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        }
        if !pass_headers || k.eq_ignore_ascii_case("content-length") || set_by_user(k) || DEFAULT_SET.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
            continue;
        }
        if caching && cache::DROPPED_UPSTREAM.iter().any(|n| n.eq_ignore_ascii_case(k)) {
            continue;
        }
        header(out, k, &|out| out.extend_from_slice(v.as_bytes()));
    }
    for (k, v) in validators {
        if let Some(v) = v {
            header(out, k, &|out| out.extend_from_slice(v.as_bytes()));
        }
    }
    if has_body && (pass_body || own_body.is_some()) && !set_by_user("Content-Length") {
        let _ = write!(out, "Content-Length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    file
}

/// Applies proxy_redirect to a Location or Refresh value.
/// `vars` renders a variable of the request.
/// A `proxy_cookie_flags` rule: which cookies, and their flags.
type CookieFlags = (CookieName, Vec<Template>);

/// Which cookies a `proxy_cookie_flags` rule is for.
pub enum CookieName {
    /// Its name (with variables), any case.
    Name(Template),
    /// `~regex`, any case.
    Regex(regex::Regex),
}

const COOKIE_FLAGS: [&str; 9] = ["secure", "httponly", "samesite=strict", "samesite=lax", "samesite=none", "nosecure", "nohttponly", "nosamesite", ""];

/// `proxy_cookie_flags off | name flag…`.
fn cookie_flags_rule(c: &mut Conf, a: &[&str]) -> Result<(), String> {
    let list = c.cookie_flags.get_or_insert_with(|| Rc::new(Vec::new()));
    let list = Rc::get_mut(list).ok_or("the rule list is shared")?;
    if a == ["off"] {
        return if list.is_empty() { Ok(()) } else { Err("\"proxy_cookie_flags off\" cannot be mixed with other rules".into()) };
    }
    let (name, flags) = a.split_first().ok_or("invalid number of arguments")?;
    if flags.is_empty() {
        return Err("invalid number of arguments in \"proxy_cookie_flags\" directive".into());
    }
    for f in flags.iter().filter(|f| !f.contains('$')) {
        if !COOKIE_FLAGS[..8].iter().any(|k| k.eq_ignore_ascii_case(f)) {
            return Err(format!("invalid parameter \"{f}\""));
        }
    }
    let name = match name.strip_prefix('~') {
        Some(re) => CookieName::Regex(regex_of(re, true)?),
        None => CookieName::Name(Template::parse(name)),
    };
    list.push((name, flags.iter().map(|f| Template::parse(f)).collect()));
    Ok(())
}

/// Applies the first `proxy_cookie_flags` rule for the cookie's name:
/// each flag it names replaces what the cookie said of it (`secure`,
/// `httponly`, `samesite=…` added in nginx's spelling; `no…` removed).
fn cookie_flags(conf: &Conf, v: &str, vars: &dyn Fn(&str, &mut Vec<u8>)) -> Option<String> {
    let rules = conf.cookie_flags.as_deref().filter(|r| !r.is_empty())?;
    let name = v.split(';').next()?.split('=').next()?.trim();
    let text = |t: &Template| render_text(t, vars);
    let (_, flags) = rules.iter().find(|(m, _)| match m {
        CookieName::Name(t) => text(t).eq_ignore_ascii_case(name),
        CookieName::Regex(re) => re.is_match(name),
    })?;
    let flags: Vec<String> = flags.iter().map(|f| text(f).to_ascii_lowercase()).filter(|f| COOKIE_FLAGS.contains(&f.as_str()) && !f.is_empty()).collect();
    let kind = |f: &str| f.trim_start_matches("no").split('=').next().unwrap_or("").to_string();
    let touched: Vec<String> = flags.iter().map(|f| kind(f)).collect();
    let mut out = String::with_capacity(v.len() + 32);
    for (i, attr) in v.split(';').enumerate() {
        let an = attr.trim().split('=').next().unwrap_or("").to_ascii_lowercase();
        if i > 0 && touched.contains(&an) {
            continue;
        }
        if i > 0 {
            out.push(';');
        }
        out.push_str(attr);
    }
    for f in &flags {
        out.push_str(match f.as_str() {
            "secure" => "; Secure",
            "httponly" => "; HttpOnly",
            "samesite=strict" => "; SameSite=Strict",
            "samesite=lax" => "; SameSite=Lax",
            "samesite=none" => "; SameSite=None",
            _ => "",
        });
    }
    Some(out)
}

/// A regex of a rule (its error in nginx's words).
fn regex_of(src: &str, caseless: bool) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&plugin_api::http::pcre_compat(src)).case_insensitive(caseless).build().map_err(|e| format!("regex \"{src}\" is invalid: {}", e.to_string().lines().last().unwrap_or("")))
}

/// A `from to` rule of proxy_redirect or proxy_cookie_*: `from` is text
/// with variables, or `~regex` / `~*regex` (`caseless`: `~` ignores case
/// too); `to` may use variables and the regex's `$1`….
fn rewrite_rule(from: &str, to: &str, caseless: bool) -> Result<RedirectRule, String> {
    Ok(match from.strip_prefix('~') {
        Some(re) => {
            let (src, star) = re.strip_prefix('*').map_or((re, false), |r| (r, true));
            RedirectRule::Regex(regex_of(src, star || caseless)?, Template::parse(to))
        }
        None => RedirectRule::Prefix(Template::parse(from), Template::parse(to)),
    })
}

/// A template rendered with the request's variables.
fn render_text(t: &Template, vars: &dyn Fn(&str, &mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    t.render(&mut out, |name, o| vars(name, o));
    String::from_utf8_lossy(&out).into_owned()
}

/// A regex rule's replacement: `$1`… from `caps`, other names variables.
fn render_captures(to: &Template, caps: &regex::Captures<'_>, vars: &dyn Fn(&str, &mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    to.render(&mut out, |name, o| match name.parse::<usize>() {
        Ok(n) => o.extend_from_slice(caps.get(n).map_or("", |m| m.as_str()).as_bytes()),
        Err(_) => vars(name, o),
    });
    String::from_utf8_lossy(&out).into_owned()
}

/// `proxy_cookie_domain` / `proxy_cookie_path`: `off`, or a rule (text
/// with variables, or `~`/`~*` regex) and its replacement. Domains
/// (`domain`) are matched without regard to case, regexes too, and a
/// leading dot of either side does not count (nginx).
fn cookie_rule(slot: &mut Option<Rc<Vec<RedirectRule>>>, a: &[&str], domain: bool) -> Result<(), String> {
    let list = slot.get_or_insert_with(|| Rc::new(Vec::new()));
    let list = Rc::get_mut(list).ok_or("the rule list is shared")?;
    match a {
        ["off"] if list.is_empty() => Ok(()),
        [from, to] if domain && !from.starts_with('~') => {
            list.push(rewrite_rule(from.strip_prefix('.').unwrap_or(from), to.strip_prefix('.').unwrap_or(to), true)?);
            Ok(())
        }
        [from, to] => {
            list.push(rewrite_rule(from, to, domain)?);
            Ok(())
        }
        _ => Err("invalid parameter".into()),
    }
}

/// Rewrites a Set-Cookie's `domain=` (the whole name, any case; a
/// leading dot kept) and `path=` (a prefix) attributes, as nginx's
/// proxy_cookie_domain and proxy_cookie_path: the first rule that
/// matches.
fn rewrite_cookie(conf: &Conf, v: &str, vars: &dyn Fn(&str, &mut Vec<u8>)) -> String {
    let text = |t: &Template| render_text(t, vars);
    let apply = |rules: &[RedirectRule], value: &str, whole: bool| -> Option<String> {
        for rule in rules {
            match rule {
                RedirectRule::Regex(re, to) => {
                    let Some(c) = re.captures(value) else { continue };
                    return Some(render_captures(to, &c, vars));
                }
                RedirectRule::Prefix(from, to) => {
                    let from = text(from);
                    if whole && value.eq_ignore_ascii_case(from.strip_prefix('.').unwrap_or(&from)) {
                        let to = text(to);
                        return Some(to.strip_prefix('.').unwrap_or(&to).to_string());
                    }
                    if let (false, Some(rest)) = (whole, value.strip_prefix(from.as_str())) {
                        return Some(format!("{}{rest}", text(to)));
                    }
                }
                RedirectRule::Default => {}
            }
        }
        None
    };
    let mut out = String::with_capacity(v.len());
    for (i, attr) in v.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        let lead = &attr[..attr.len() - attr.trim_start().len()];
        let (name, value) = attr.trim_start().split_once('=').unwrap_or((attr.trim_start(), ""));
        let new = if i == 0 {
            None
        } else if name.eq_ignore_ascii_case("domain") {
            let dot = if value.starts_with('.') { "." } else { "" };
            conf.cookie_domain.as_deref().and_then(|r| apply(r, &value[dot.len()..], true)).map(|d| format!("{dot}{d}"))
        } else if name.eq_ignore_ascii_case("path") {
            conf.cookie_path.as_deref().and_then(|r| apply(r, value, false))
        } else {
            None
        };
        match new {
            Some(n) => {
                out.push_str(lead);
                out.push_str(name);
                out.push('=');
                out.push_str(&n);
            }
            None => out.push_str(attr),
        }
    }
    out
}

fn rewrite_redirect(conf: &Conf, pass: &Pass, v: &str, vars: &dyn Fn(&str, &mut Vec<u8>)) -> String {
    const DEFAULT: &[RedirectRule] = &[RedirectRule::Default];
    let rules: &[RedirectRule] = match &conf.redirect {
        Some(Redirect::Off) => return v.to_string(),
        Some(Redirect::Rules(r)) => r,
        None => DEFAULT,
    };
    let text = |t: &Template| render_text(t, vars);
    for rule in rules {
        let (from, to) = match rule {
            // nginx: no default rule for a URL with variables.
            RedirectRule::Default if pass.dynamic => continue,
            RedirectRule::Default => match &pass.uri {
                Some(u) => (format!("{}{u}", pass.base), pass.loc_prefix.clone()),
                None => (pass.base.clone(), String::new()),
            },
            RedirectRule::Prefix(from, to) => (text(from), text(to)),
            RedirectRule::Regex(re, to) => {
                let Some(c) = re.captures(v) else { continue };
                return render_captures(to, &c, vars);
            }
        };
        if let Some(rest) = v.strip_prefix(from.as_str()) {
            return format!("{to}{rest}");
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(base: &str, uri: Option<&str>, loc: &str) -> Pass {
        Pass {
            base: base.into(),
            host: base.trim_start_matches("http://").into(),
            uri: uri.map(String::from),
            loc_prefix: loc.into(),
            addrs: Vec::new(),
            group: RefCell::new(None),
            tls: base.starts_with("https://"),
            url: None,
            dynamic: false,
            proto: Proto::Http,
        }
    }

    #[test]
    fn tls_names_drop_the_port() {
        assert_eq!(tls_name("up.test:8443"), "up.test");
        assert_eq!(tls_name("up.test"), "up.test");
        assert_eq!(tls_name("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(tls_name("[::1]:443"), "::1");
    }

    #[test]
    fn redirect_default_maps_the_upstream_url_to_the_location() {
        let c = Conf::default();
        let p = pass("http://127.0.0.1:9000", Some("/two/"), "/one/");
        let none = |_: &str, _: &mut Vec<u8>| {};
        assert_eq!(rewrite_redirect(&c, &p, "http://127.0.0.1:9000/two/x?y", &none), "/one/x?y");
        let mut cookies = Conf::default();
        cookie_rule(&mut cookies.cookie_domain, &["localhost", "example.org"], true).unwrap();
        cookie_rule(&mut cookies.cookie_path, &["/two/", "/"], false).unwrap();
        cookie_rule(&mut cookies.cookie_path, &["~^/u/([^/]+)", "/users/$1"], false).unwrap();
        assert_eq!(rewrite_cookie(&cookies, "a=b; Domain=.LocalHost; Path=/two/x; HttpOnly", &none), "a=b; Domain=.example.org; Path=/x; HttpOnly");
        cookie_rule(&mut cookies.cookie_domain, &["~^(.+)\\.com$", "$1.org"], true).unwrap();
        assert_eq!(rewrite_cookie(&cookies, "a=b; Domain=www.example.COM", &none), "a=b; Domain=www.example.org", "domain regexes ignore case");
        assert_eq!(rewrite_cookie(&cookies, "a=b; path=/u/bob/p; domain=other", &none), "a=b; path=/users/bob; domain=other");
        assert_eq!(rewrite_cookie(&cookies, "path=/two/; a=b", &none), "path=/two/; a=b", "the cookie's own name=value is not an attribute");
        assert_eq!(rewrite_redirect(&c, &p, "http://elsewhere/two/x", &none), "http://elsewhere/two/x");
        let p = pass("http://backend", None, "/");
        assert_eq!(rewrite_redirect(&c, &p, "http://backend/a", &none), "/a");
        let off = Conf { redirect: Some(Redirect::Off), ..Default::default() };
        assert_eq!(rewrite_redirect(&off, &p, "http://backend/a", &none), "http://backend/a");
        let rule = RedirectRule::Prefix(Template::parse("http://x/"), Template::parse("/y/"));
        let rules = Conf { redirect: Some(Redirect::Rules(vec![rule])), ..Default::default() };
        assert_eq!(rewrite_redirect(&rules, &p, "http://x/z", &none), "/y/z");
        // Variables on either side, and regexes with captures.
        let var = |n: &str, o: &mut Vec<u8>| o.extend_from_slice(if n == "v" { b"vv" } else { b"" });
        let rules = Conf {
            redirect: Some(Redirect::Rules(vec![
                RedirectRule::Prefix(Template::parse("http://x/$v/"), Template::parse("/r/")),
                RedirectRule::Regex(regex::Regex::new("^(.+)/regex_w_([^/]+)").unwrap(), Template::parse("$1/$2/$v")),
            ])),
            ..Default::default()
        };
        assert_eq!(rewrite_redirect(&rules, &p, "http://x/vv/z", &var), "/r/z");
        assert_eq!(rewrite_redirect(&rules, &p, "http://h/regex_w_abc/t", &var), "http://h/abc/vv");
    }

    #[test]
    fn escaping() {
        let mut o = Vec::new();
        escape_uri("/a b/ü?#%", &mut o);
        assert_eq!(o, b"/a%20b/%C3%BC%3F%23%25");
    }
}
