//! One HTTP request: its state, the phase engine that runs plugin
//! handlers over it (with suspension and internal redirects), the
//! finalisation rules (error_page, built-in error pages), and the output
//! path: header filters → rendered head, body filters → framed body in
//! the connection's output queue (memory or file regions for sendfile).
//!
//! A request lives in a `RefCell` owned by its connection. Plugin code is
//! never called while the cell is borrowed, so a handler may call back
//! into the host freely; host functions borrow for the duration of their
//! own work only.

use super::conf::{Loc, Server};
use super::parse::Framing;
use crate::cycle::Cycle;
use crate::plugin::host_api;
use plugin_api::sys;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Instant, SystemTime};

/// A piece of output waiting for the socket.
pub enum Chunk {
    /// Bytes (head, framing, memory body).
    Mem(Vec<u8>),
    /// A file region: sent with sendfile(2) (or read and written).
    File {
        /// Our own descriptor (dup()ed from the plugin's).
        fd: OwnedFd,
        /// Next offset to send.
        pos: u64,
        /// End offset.
        end: u64,
    },
}

/// How the phase engine stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Handlers are to be run (or are running).
    Running,
    /// A handler returned AGAIN: it is called again on http_resume.
    Suspended,
    /// A handler returned DONE without finishing: http_finalize ends it.
    Waiting,
    /// The response is produced (or being flushed).
    Finalized,
}

/// State of the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyIn {
    /// Not asked for yet (will be discarded if never read).
    Idle,
    /// A plugin asked for it; being read into `body_in`.
    Reading,
    /// Being read and thrown away.
    Discarding,
    /// Completely read (or there was none).
    Done,
}

/// A pending internal redirect.
pub struct Redirect {
    /// New URI (or `@name`).
    pub uri: String,
    /// New args.
    pub args: String,
}

/// The state behind an `ngx_plugin_request_t`.
pub struct Req<'a> {
    /// The ABI handle of the current request (changes per request).
    pub handle: usize,
    /// The worker's index of the connection (for wakeups).
    pub conn: usize,
    /// The generation serving it.
    pub cycle: &'a Cycle,
    /// The virtual server.
    pub srv: &'a Server,
    /// Index of the current location in the server.
    pub loc: usize,
    /// Method.
    pub method: String,
    /// Target as received.
    pub request_uri: String,
    /// Decoded, normalised path.
    pub uri: String,
    /// Query string.
    pub args: String,
    /// 0 or 1 (HTTP/1.x).
    pub minor: u8,
    /// `$host`.
    pub host: String,
    /// Client address.
    pub peer: SocketAddr,
    /// `$remote_addr`.
    pub remote_addr: String,
    /// The connection's own address while a plugin (realip) set
    /// `$remote_addr` for this request (`$realip_remote_addr`).
    pub real_addr: Option<String>,
    /// The port a plugin (realip, from a PROXY protocol header) set as
    /// `$remote_port` for this request.
    pub real_port: Option<u16>,
    /// Our address.
    pub local: SocketAddr,
    /// Request headers in order.
    pub headers_in: Vec<(String, String)>,
    /// Request body framing.
    pub framing: Framing,
    /// `Expect: 100-continue` not yet answered.
    pub expect_continue: bool,
    /// The client allows keepalive.
    pub keepalive: bool,
    /// Request start.
    pub start: Instant,
    /// Request start, wall clock.
    pub start_wall: SystemTime,
    /// Bytes of the request head.
    pub head_len: usize,
    /// Requests served on this connection, this one included.
    pub conn_requests: u32,
    /// When the connection was accepted.
    pub conn_born: std::time::Instant,
    /// Read from bytes that came with the previous request (`$pipe`).
    pub pipelined: bool,
    /// Connection serial number (`$connection`).
    pub conn_serial: u64,
    /// Request body state.
    pub body_state: BodyIn,
    /// The body read so far (when a plugin asked for it).
    pub body_in: Vec<u8>,
    /// The body, once larger than client_body_buffer_size (or with
    /// client_body_in_file_only): in a temporary file instead.
    pub body_file: Option<BodyFile>,
    /// Body bytes received (read or discarded).
    pub body_received: u64,
    /// The body was read whole for a plugin (not discarded): a chunked
    /// one's length is known ($content_length, as nginx sets it).
    pub body_read: bool,
    /// Who to tell when the body is complete: (plugin, callback, data).
    pub body_done: Option<(usize, sys::DoneFn, *mut c_void)>,
    /// The buffer http_body hands out.
    pub body_buf: sys::Buf,
    /// Response status (0 = not set).
    pub status: u16,
    /// Response headers.
    pub headers_out: Vec<(String, String)>,
    /// Content-Length of the response, if known.
    pub content_length: Option<u64>,
    /// The head went through the header filters and into the output.
    pub header_sent: bool,
    /// Header filters are running (headers still writable).
    pub in_header_filter: bool,
    /// HEAD, 204, 304: no body is written.
    pub header_only: bool,
    /// The body is chunked on the wire.
    pub chunked: bool,
    /// The response body ended (LAST reached the writer).
    pub body_done_out: bool,
    /// Output waiting for the socket.
    pub out: VecDeque<Chunk>,
    /// Body bytes written into the output (`$body_bytes_sent`, framing excluded).
    pub body_bytes: u64,
    /// Head bytes.
    pub head_bytes: u64,
    /// Bytes of this response written to the socket (limit_rate's count).
    pub wrote: u64,
    /// `$limit_rate` set by a handler (`set $limit_rate`, an upstream's
    /// X-Accel-Limit-Rate): overrides the location's `limit_rate`.
    pub limit_rate_set: Option<u64>,
    /// `limit_rate_after` with variables, evaluated for this response.
    pub limit_rate_after_set: Option<u64>,
    /// Phase engine state.
    pub run: Run,
    /// Current phase.
    pub phase: u32,
    /// Next handler index within the phase.
    pub hidx: usize,
    /// The handler to call again on resume: (plugin, handler, conf).
    pub again: Option<(usize, sys::HttpHandlerFn, *mut c_void)>,
    /// http_resume was called.
    pub resume: bool,
    /// http_finalize was called with this code.
    pub finalize: Option<sys::Rc>,
    /// A pending internal redirect.
    pub redirect: Option<Redirect>,
    /// Internal redirects so far (nginx allows 10).
    pub redirects: u8,
    /// A plugin changed the URI in REWRITE and asked for the locations to
    /// be searched again when the phase ends (`http_set_uri`).
    pub uri_changed: bool,
    /// Location searches after URI changes so far (nginx allows 10).
    pub uri_changes: u8,
    /// `satisfy any`: the refusal an access handler gave, kept in case a
    /// later one grants.
    pub access_code: Option<u16>,
    /// `$request_id`, made when first read.
    pub request_id: std::cell::Cell<Option<u128>>,
    /// try_files found the URI under a regex location's alias: the path
    /// is the alias and the URI.
    pub add_uri_to_alias: bool,
    /// The URI changed in REWRITE without a new search (nginx's
    /// `!valid_location`).
    pub uri_rewritten: bool,
    /// This request reached its location through a redirect (`internal`).
    pub internal: bool,
    /// Serving an error_page: the status to answer with (and no recursion).
    pub error_page: Option<u16>,
    /// The connection must close after this response.
    pub must_close: bool,
    /// Position in the body filter chain while filters run.
    pub filter_pos: usize,
    /// The log phase ran.
    pub logged: bool,
    /// Per-plugin state: (plugin, pointer, destructor).
    pub ctx: Vec<(usize, *mut c_void, Option<sys::FreeFn>)>,
    /// Per-plugin state kept across internal redirects (http_set_data).
    pub data: Vec<(usize, *mut c_void, Option<sys::FreeFn>)>,
    /// Request-lifetime allocations (http_alloc, computed variables).
    pub arena: super::arena::Arena,
    /// Header strings of the last request, reused by the next one.
    spare: Vec<String>,
    /// The growable parts went to the worker's pool (idle keepalive).
    shed: bool,
    /// Variables set with http_var_set.
    pub vars: Vec<(String, String)>,
    /// The regex location's match: `$1`… as spans of `captured`.
    pub captures: Vec<Option<(usize, usize)>>,
    /// The URI the location's regex matched.
    pub captured: String,
    /// http_resume_when_drained: resume once at most this much is queued.
    pub drain_limit: Option<usize>,
    /// A relay asked for with `relay`: (plugin connection token, plugin,
    /// done callback, data).
    pub relay: Option<(usize, usize, Option<sys::DoneFn>, *mut c_void)>,
    /// The connection's TLS parameters (None: plain HTTP).
    pub tls: Option<crate::tls::Info>,
    /// The name the client sent in SNI (empty: none).
    pub ssl_server_name: String,
    /// A subrequest this request made (`http_subrequest`): boxed (its
    /// handle points at it), freed with this request's plugin state.
    pub sub: Option<Box<RefCell<Req<'a>>>>,
    /// This request waits for `sub` to finish.
    pub waiting_sub: bool,
    /// This is a subrequest: its response goes nowhere.
    pub is_sub: bool,
    /// What the connection's PROXY protocol header said, if it had one.
    pub proxy_protocol: Option<std::rc::Rc<super::proxy_protocol::Info>>,
    /// A plugin set the response's own `Server` (bit 1) or `Date` (bit 2)
    /// header (an upstream's, passed on): the host writes that one
    /// instead of its own.
    pub own_server_date: u8,
    /// `http_gzip_ok`'s answer, once asked (None: not yet).
    pub gzip_ok: Option<bool>,
    /// The response could be gzip: `Vary: Accept-Encoding` under
    /// `gzip_vary on` (nginx's `r->gzip_vary`).
    pub gzip_vary: bool,
}

/// A request's growable memory, kept by the worker between requests
/// (see `Req::shed`).
#[derive(Default)]
struct Parts {
    method: String,
    request_uri: String,
    uri: String,
    args: String,
    host: String,
    headers_in: Vec<(String, String)>,
    headers_out: Vec<(String, String)>,
    spare: Vec<String>,
    body_in: Vec<u8>,
    out: VecDeque<Chunk>,
    ctx: Vec<(usize, *mut c_void, Option<sys::FreeFn>)>,
    arena: super::arena::Arena,
    vars: Vec<(String, String)>,
}

thread_local! {
    /// Pooled request memory (128 at most per worker).
    static PARTS: super::FreeList<Parts> = const { super::FreeList::new(128) };
}

impl<'a> Req<'a> {
    /// An empty request for a connection.
    pub fn new(conn: usize, cycle: &'a Cycle, srv: &'a Server, peer: SocketAddr, local: SocketAddr) -> Req<'a> {
        Req {
            handle: 0,
            conn,
            cycle,
            srv,
            loc: 0,
            method: String::new(),
            request_uri: String::new(),
            uri: String::new(),
            args: String::new(),
            minor: 1,
            host: String::new(),
            peer,
            remote_addr: String::new(),
            real_addr: None,
            real_port: None,
            local,
            headers_in: Vec::new(),
            framing: Framing::None,
            expect_continue: false,
            keepalive: false,
            start: crate::clock::now(),
            start_wall: crate::clock::wall(),
            head_len: 0,
            conn_requests: 0,
            conn_born: crate::clock::now(),
            pipelined: false,
            conn_serial: 0,
            body_state: BodyIn::Done,
            body_in: Vec::new(),
            body_file: None,
            body_received: 0,
            body_read: false,
            body_done: None,
            body_buf: sys::Buf { data: std::ptr::null(), len: 0, fd: -1, flags: 0, file_pos: 0, file_len: 0 },
            status: 0,
            headers_out: Vec::new(),
            content_length: None,
            header_sent: false,
            in_header_filter: false,
            header_only: false,
            chunked: false,
            body_done_out: false,
            out: VecDeque::new(),
            body_bytes: 0,
            head_bytes: 0,
            wrote: 0,
            limit_rate_set: None,
            limit_rate_after_set: None,
            run: Run::Finalized,
            phase: 0,
            hidx: 0,
            again: None,
            resume: false,
            finalize: None,
            redirect: None,
            redirects: 0,
            uri_changed: false,
            uri_changes: 0,
            access_code: None,
            request_id: std::cell::Cell::new(None),
            add_uri_to_alias: false,
            uri_rewritten: false,
            internal: false,
            error_page: None,
            must_close: false,
            filter_pos: 0,
            logged: true,
            ctx: Vec::new(),
            data: Vec::new(),
            arena: Default::default(),
            spare: Vec::new(),
            // The growable parts come from the worker's pool on reset().
            shed: true,
            vars: Vec::new(),
            captures: Vec::new(),
            captured: String::new(),
            drain_limit: None,
            relay: None,
            tls: None,
            ssl_server_name: String::new(),
            sub: None,
            waiting_sub: false,
            is_sub: false,
            proxy_protocol: None,
            own_server_date: 0,
            gzip_ok: None,
            gzip_vary: false,
        }
    }

    /// A subrequest of this request for `uri` (nginx's, as auth_request
    /// makes it): GET, the same headers and connection, no body, internal
    /// locations allowed, its response kept to the head (status, headers,
    /// variables) and not logged. It starts at SERVER_REWRITE.
    pub fn subrequest(&self, uri: &str, args: &str) -> Req<'a> {
        let mut s = Req::new(self.conn, self.cycle, self.srv, self.peer, self.local);
        s.reset();
        s.method.push_str("GET");
        s.request_uri.push_str(&self.request_uri);
        s.uri.push_str(uri);
        s.args.push_str(args);
        s.minor = self.minor;
        s.host.push_str(&self.host);
        s.remote_addr.clone_from(&self.remote_addr);
        s.real_addr.clone_from(&self.real_addr);
        s.real_port = self.real_port;
        s.headers_in.clone_from(&self.headers_in);
        s.conn_requests = self.conn_requests;
        s.conn_born = self.conn_born;
        s.conn_serial = self.conn_serial;
        s.tls.clone_from(&self.tls);
        s.ssl_server_name.clone_from(&self.ssl_server_name);
        s.header_only = true;
        s.internal = true;
        s.logged = true;
        s.is_sub = true;
        s.phase = sys::PHASE_SERVER_REWRITE;
        s
    }

    /// The connection went idle (keepalive): its request memory (strings,
    /// header lists, arena, queues) goes to the worker's pool for the next
    /// request on any connection, so an idle connection holds little and a
    /// busy worker allocates nothing per request (nginx frees a request's
    /// pool instead, and mallocs a new one).
    pub fn shed(&mut self) {
        if self.shed {
            return;
        }
        self.trim();
        let mut p = Parts::default();
        self.swap_parts(&mut p);
        PARTS.with(|pool| pool.give(p));
        self.shed = true;
    }

    /// Makes a request object kept by the worker serve connection `conn`
    /// (`begin` resets the rest for each request, as for a new one).
    pub fn rebind(&mut self, conn: usize, cycle: &'a Cycle, srv: &'a Server, peer: SocketAddr, local: SocketAddr) {
        self.conn = conn;
        self.cycle = cycle;
        self.srv = srv;
        self.peer = peer;
        self.local = local;
    }

    /// Puts the connection's own address back as `$remote_addr` (a
    /// realip address is one request's).
    pub fn restore_addr(&mut self) {
        if let Some(a) = self.real_addr.take() {
            self.remote_addr = a;
        }
        self.real_port = None;
    }

    /// Appends request-body bytes: in memory up to
    /// `client_body_buffer_size`, then (or always, with
    /// `client_body_in_file_only`) in a temporary file, as nginx.
    pub fn body_append(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(f) = &mut self.body_file {
            f.file.write_all(data)?;
            f.len += data.len() as u64;
            return Ok(());
        }
        let core = &self.location().core;
        if self.body_in.len() + data.len() <= core.client_body_buffer_size as usize && core.body_in_file_only == 0 {
            self.body_in.extend_from_slice(data);
            return Ok(());
        }
        let mut f = BodyFile::create(&core.client_body_temp_path, core.body_in_file_only == 2)?;
        f.file.write_all(&self.body_in)?;
        f.file.write_all(data)?;
        f.len = (self.body_in.len() + data.len()) as u64;
        self.body_in.clear();
        self.body_file = Some(f);
        Ok(())
    }

    /// The response's rate limit in bytes a second (0: none) and the
    /// bytes sent before it applies.
    pub fn limit_rate(&self) -> (u64, u64) {
        let core = &self.location().core;
        (self.limit_rate_set.unwrap_or(core.limit_rate), self.limit_rate_after_set.unwrap_or(core.limit_rate_after))
    }

    /// Lets go of unusually large buffers before the object is kept.
    pub fn trim(&mut self) {
        if self.body_in.capacity() > 64 * 1024 {
            self.body_in = Vec::new();
        }
    }

    /// Takes request memory from the worker's pool after `shed`.
    fn unshed(&mut self) {
        if std::mem::take(&mut self.shed) {
            if let Some(mut p) = PARTS.with(super::FreeList::take) {
                self.swap_parts(&mut p);
            }
        }
    }

    fn swap_parts(&mut self, p: &mut Parts) {
        use std::mem::swap;
        swap(&mut self.method, &mut p.method);
        swap(&mut self.request_uri, &mut p.request_uri);
        swap(&mut self.uri, &mut p.uri);
        swap(&mut self.args, &mut p.args);
        swap(&mut self.host, &mut p.host);
        swap(&mut self.headers_in, &mut p.headers_in);
        swap(&mut self.headers_out, &mut p.headers_out);
        swap(&mut self.spare, &mut p.spare);
        swap(&mut self.body_in, &mut p.body_in);
        swap(&mut self.out, &mut p.out);
        swap(&mut self.ctx, &mut p.ctx);
        swap(&mut self.arena, &mut p.arena);
        swap(&mut self.vars, &mut p.vars);
    }

    /// Clears per-request state, keeping buffers' capacity.
    pub fn reset(&mut self) {
        self.free_plugin_state();
        self.unshed();
        self.method.clear();
        self.request_uri.clear();
        self.uri.clear();
        self.args.clear();
        self.host.clear();
        self.recycle_headers();
        self.framing = Framing::None;
        self.expect_continue = false;
        self.keepalive = false;
        self.start = crate::clock::now();
        self.start_wall = crate::clock::wall();
        self.body_state = BodyIn::Done;
        self.body_in.clear();
        self.body_file = None;
        self.body_received = 0;
        self.body_read = false;
        self.body_done = None;
        self.status = 0;
        self.content_length = None;
        self.header_sent = false;
        self.in_header_filter = false;
        self.header_only = false;
        self.chunked = false;
        self.body_done_out = false;
        self.out.clear();
        self.body_bytes = 0;
        self.head_bytes = 0;
        self.wrote = 0;
        self.limit_rate_set = None;
        self.limit_rate_after_set = None;
        self.run = Run::Running;
        self.phase = 0;
        self.hidx = 0;
        self.again = None;
        self.resume = false;
        self.finalize = None;
        self.redirect = None;
        self.redirects = 0;
        self.uri_changed = false;
        self.uri_changes = 0;
        self.access_code = None;
        self.request_id.set(None);
        self.add_uri_to_alias = false;
        self.uri_rewritten = false;
        self.internal = false;
        self.error_page = None;
        self.must_close = false;
        self.filter_pos = 0;
        self.logged = false;
        self.vars.clear();
        self.restore_addr();
        self.captures.clear();
        self.loc = 0;
        self.drain_limit = None;
        self.relay = None;
        self.gzip_ok = None;
        self.gzip_vary = false;
        self.own_server_date = 0;
    }

    /// Bytes queued for the client and not yet written (`wpos` of the
    /// front chunk is the connection's; counted whole here).
    pub fn queued(&self) -> usize {
        self.out
            .iter()
            .map(|c| match c {
                Chunk::Mem(v) => v.len(),
                Chunk::File { pos, end, .. } => (end - pos) as usize,
            })
            .sum()
    }

    /// Ends the subrequest, if any: its plugin state freed, its handle
    /// retired.
    pub fn free_sub(&mut self) {
        if let Some(sub) = self.sub.take() {
            let mut s = sub.borrow_mut();
            s.free_plugin_state();
            host_api::unregister_request(s.handle);
            s.out.clear();
        }
        self.waiting_sub = false;
    }

    /// Runs plugin destructors and drops request-lifetime memory (the
    /// subrequest's too).
    pub fn free_plugin_state(&mut self) {
        self.free_sub();
        if self.handle != 0 {
            crate::plugin::io::drop_owner(self.handle);
        }
        for (idx, p, f) in self.ctx.drain(..).chain(self.data.drain(..)) {
            if let Some(f) = f {
                host_api::call_free(idx, f, p);
            }
        }
        self.arena.reset();
    }

    /// A String holding `s`, reusing one of the last request's header
    /// strings when there is one (no allocation in steady state).
    pub fn text(&mut self, s: &str) -> String {
        let mut t = self.spare.pop().unwrap_or_default();
        t.push_str(s);
        t
    }

    /// Keeps the header strings' memory for the next request.
    fn recycle_headers(&mut self) {
        const KEEP: usize = 64;
        let spare = &mut self.spare;
        for (mut a, mut b) in self.headers_in.drain(..).chain(self.headers_out.drain(..)) {
            for s in [&mut a, &mut b] {
                if spare.len() < KEEP && s.capacity() <= 1024 {
                    s.clear();
                    spare.push(std::mem::take(s));
                }
            }
        }
    }

    /// The generation.
    pub fn cycle(&self) -> &'a Cycle {
        self.cycle
    }

    /// The virtual server.
    pub fn server(&self) -> &'a Server {
        self.srv
    }

    /// The current location.
    pub fn location(&self) -> &'a Loc {
        &self.server().locs[self.loc]
    }

    /// `HTTP/1.0` or `HTTP/1.1`.
    pub fn protocol(&self) -> &'static str {
        if self.minor == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
    }

    /// The first request header `name`.
    pub fn header_in(&self, name: &str) -> Option<&str> {
        self.headers_in.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The first response header `name`.
    pub fn header_out(&self, name: &str) -> Option<&str> {
        self.headers_out.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// True when the request is over and its output flushed.
    pub fn complete(&self) -> bool {
        self.run == Run::Finalized && self.out.is_empty()
    }

    /// Appends the file path `uri` maps to (root or alias) to `out`.
    pub fn map_to_path(&self, uri: &str, out: &mut String) {
        let loc = self.location();
        self.document_root(out);
        match (loc.core.alias, loc.core.alias_len) {
            (false, _) => out.push_str(uri),
            // A regex location's alias is the whole path, unless try_files
            // found the file under it (nginx's add_uri_to_alias).
            (true, usize::MAX) if self.add_uri_to_alias => out.push_str(uri),
            (true, usize::MAX) => {}
            (true, n) => out.push_str(uri.get(n..).unwrap_or("")),
        }
    }
}

impl Req<'_> {
    /// `root`/`alias` with its variables (captures included) expanded,
    /// as nginx's `$document_root`.
    pub fn document_root(&self, out: &mut String) {
        let core = &self.location().core;
        let root = &core.root;
        if core.root_vars {
            plugin_api::template::walk(root, |seg| match seg {
                plugin_api::template::Seg::Lit(s) => out.push_str(s),
                plugin_api::template::Seg::Var(v) => {
                    if v != "document_root" && v != "realpath_root" && v != "request_filename" {
                        super::vars::get(self, v, out);
                    }
                }
            });
        } else {
            out.push_str(root);
        }
    }
}

/// `keepalive_disable`: old MSIE after a POST (msie6), Safari and
/// Safari-like user agents on Apple systems (safari), as nginx.
/// nginx's `ngx_http_gzip_ok`: may this response go out gzip-compressed?
/// Asked once per request (the answer is kept): the client's
/// Accept-Encoding, `gzip_disable msie6`, `gzip_http_version`, for a
/// proxied request (one with Via) `gzip_proxied` against the response
/// headers set so far, then the `gzip_disable` regexes.
pub fn gzip_ok(r: &mut Req) -> bool {
    if let Some(ok) = r.gzip_ok {
        return ok;
    }
    let ok = gzip_test(r);
    r.gzip_ok = Some(ok);
    ok
}

fn gzip_test(r: &Req) -> bool {
    use super::conf::proxied::*;
    if r.is_sub || !r.header_in("accept-encoding").is_some_and(plugin_api::http::accepts_gzip) {
        return false;
    }
    let g = &r.location().core.gzip;
    let ua = r.header_in("user-agent");
    if g.msie6 && ua.is_some_and(plugin_api::http::is_msie6) {
        return false;
    }
    if r.minor == 0 && !g.http10 {
        return false;
    }
    let p = g.proxied;
    if r.header_in("via").is_some() && p & ANY == 0 && !(p & AUTH != 0 && r.header_in("authorization").is_some()) {
        if p & OFF != 0 || p == 0 {
            return false;
        }
        let time = |v: &str| httpdate::parse_http_date(v.trim()).ok();
        if let Some(e) = r.header_out("expires") {
            // Compressed only if it has expired already.
            let date = r.header_out("date").map_or(Some(std::time::SystemTime::now()), time);
            if p & EXPIRED == 0 || !matches!((time(e), date), (Some(e), Some(d)) if e < d) {
                return false;
            }
        } else if let Some(cc) = r.header_out("cache-control") {
            let has = |flag: u32, word: &str| p & flag != 0 && cc.to_ascii_lowercase().contains(word);
            if !(has(NO_CACHE, "no-cache") || has(NO_STORE, "no-store") || has(PRIVATE, "private")) {
                return false;
            }
        } else if (p & NO_LM != 0 && r.header_out("last-modified").is_some()) || (p & NO_ETAG != 0 && r.header_out("etag").is_some()) {
            return false;
        }
    }
    !matches!((&g.disable, ua), (Some(list), Some(ua)) if list.iter().any(|re| re.is_match(ua)))
}

fn keepalive_disabled_for(r: &Req, which: u8) -> bool {
    // The default (msie6) looks at POSTs only: most requests pay nothing.
    if which == 1 && r.method != "POST" {
        return false;
    }
    let Some(ua) = r.header_in("user-agent") else { return false };
    if which & 1 != 0 && r.method == "POST" && plugin_api::http::is_msie6(ua) {
        return true;
    }
    which & 2 != 0 && ua.contains("Safari/") && ua.contains("Mac OS X") && !ua.contains("Chrome")
}

thread_local! {
    /// The worker is shutting down gracefully: responses say
    /// `Connection: close` (nginx's), so clients go elsewhere.
    pub static QUITTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A request body in a temporary file. Removed when dropped (the
/// request is over), unless `client_body_in_file_only on` keeps it.
#[derive(Debug)]
pub struct BodyFile {
    /// The open file (written, then read by plugins through its fd).
    pub file: std::fs::File,
    /// Its path (`$request_body_file`).
    pub path: String,
    /// Bytes in it.
    pub len: u64,
    keep: bool,
}

impl BodyFile {
    /// Makes a new file in `dir` (0600), named as nginx names them: ten
    /// digits, unique in the directory.
    fn create(dir: &str, keep: bool) -> std::io::Result<BodyFile> {
        use std::os::unix::fs::OpenOptionsExt;
        thread_local!(static NEXT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let pid = std::process::id();
        for _ in 0..100 {
            let n = NEXT.with(|c| {
                let n = c.get().wrapping_add(1);
                c.set(n);
                n
            });
            let seq = (u64::from(pid) * 1_000_003 + u64::from(n)) % 10_000_000_000;
            let path = format!("{dir}/{seq:010}");
            match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
                Ok(file) => return Ok(BodyFile { file, path, len: 0, keep }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("open() \"{path}\" failed ({})", crate::config::parser::os_err(&e)))),
            }
        }
        Err(std::io::Error::other(format!("no free temporary file name in \"{dir}\"")))
    }
}

impl Drop for BodyFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Appends bytes to the output, merging with a trailing memory chunk.
pub fn push_mem(out: &mut VecDeque<Chunk>, b: &[u8]) {
    if b.is_empty() {
        return;
    }
    if let Some(Chunk::Mem(v)) = out.back_mut() {
        v.extend_from_slice(b);
        return;
    }
    let mut v = mem_buf();
    v.extend_from_slice(b);
    out.push_back(Chunk::Mem(v));
}

thread_local! {
    static MEM_BUFS: super::FreeList<Vec<u8>> = const { super::FreeList::new(64) };
}

/// An empty buffer for output (heads, small bodies), from the worker's
/// pool when one was given back.
pub fn mem_buf() -> Vec<u8> {
    MEM_BUFS.with(super::FreeList::take).unwrap_or_default()
}

/// Gives an output buffer back once sent (small ones only, 64 at most).
pub fn give_mem(mut v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > 16 * 1024 {
        return;
    }
    v.clear();
    MEM_BUFS.with(|p| p.give(v));
}

/// The reason phrase nginx sends for `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Time-out",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        415 => "Unsupported Media Type",
        416 => "Requested Range Not Satisfiable",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        494 => "Request Header Or Cookie Too Large",
        497 => "Bad Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// The status actually sent for an internal code (494 is sent as 400).
pub fn wire_status(status: u16) -> u16 {
    match status {
        494 | 497 => 400,
        s => s,
    }
}

fn server_string(tokens: bool) -> &'static str {
    if tokens {
        concat!("ngxr/", env!("CARGO_PKG_VERSION"))
    } else {
        "ngxr"
    }
}

/// The built-in page for `status`, in nginx's shape.
pub fn error_body(status: u16, tokens: bool, out: &mut Vec<u8>) {
    let r = reason(status);
    let code = wire_status(status);
    // nginx's page for a plain request on a TLS port says why.
    let (title, extra) = match status {
        497 => ("The plain HTTP request was sent to HTTPS port", "<center>The plain HTTP request was sent to HTTPS port</center>\r\n"),
        _ => (r, ""),
    };
    let _ = write!(
        VecW(out),
        "<html>\r\n<head><title>{code} {title}</title></head>\r\n<body>\r\n<center><h1>{code} {r}</h1></center>\r\n\
         {extra}<hr><center>{}</center>\r\n</body>\r\n</html>\r\n",
        server_string(tokens)
    );
}

struct VecW<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecW<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The response heads' common first lines, per second: the status line,
/// Server and Date, rendered once per status and `server_tokens` value.
#[derive(Default)]
struct HeadStart {
    secs: u64,
    date: String,
    /// (status, server_tokens, the lines up to and including Date's).
    lines: Vec<(u16, bool, Vec<u8>)>,
}

thread_local! {
    static HEAD_START: RefCell<HeadStart> = RefCell::new(HeadStart::default());
}

/// Appends "HTTP/1.1 <status> <reason>\r\nServer: …\r\nDate: …\r\n".
fn push_head_start(out: &mut Vec<u8>, status: u16, tokens: bool) {
    HEAD_START.with(|h| {
        let mut h = h.borrow_mut();
        let now = crate::clock::wall();
        let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if h.secs != secs || h.date.is_empty() {
            h.secs = secs;
            h.date = httpdate::fmt_http_date(now);
            h.lines.clear();
        }
        if let Some((.., l)) = h.lines.iter().find(|(s, t, _)| (*s, *t) == (status, tokens)) {
            out.extend_from_slice(l);
            return;
        }
        let mut l = Vec::with_capacity(96);
        l.extend_from_slice(b"HTTP/1.1 ");
        push_u64(&mut l, u64::from(wire_status(status)));
        l.push(b' ');
        l.extend_from_slice(reason(status).as_bytes());
        l.extend_from_slice(b"\r\nServer: ");
        l.extend_from_slice(server_string(tokens).as_bytes());
        l.extend_from_slice(b"\r\nDate: ");
        l.extend_from_slice(h.date.as_bytes());
        l.extend_from_slice(b"\r\n");
        out.extend_from_slice(&l);
        // A handful of statuses per second in practice; bounded anyway.
        if h.lines.len() < 16 {
            h.lines.push((status, tokens, l));
        }
    });
}

/// A response head's start with the host's Server and Date lines but
/// those the response has of its own (`own`: bit 1 Server, bit 2 Date).
fn head_start_own(out: &mut Vec<u8>, status: u16, tokens: bool, own: u8) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(wire_status(status)));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if own & 1 == 0 {
        out.extend_from_slice(b"Server: ");
        out.extend_from_slice(server_string(tokens).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if own & 2 == 0 {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(httpdate::fmt_http_date(crate::clock::wall()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether `name` is a Server or Date header the response has of its
/// own (`own` as in head_start_own).
fn own_header(name: &str, own: u8) -> bool {
    (own & 1 != 0 && name.eq_ignore_ascii_case("server")) || (own & 2 != 0 && name.eq_ignore_ascii_case("date"))
}

/// Headers the host renders itself; plugin copies are not sent twice.
fn host_header(name: &str) -> bool {
    let is = |h: &str| name.eq_ignore_ascii_case(h);
    match name.len() {
        4 => is("date"),
        6 => is("server"),
        10 => is("connection") || is("keep-alive"),
        14 => is("content-length"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut d = [0u8; 20];
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[i..]);
}

/// Runs the header filters and renders the head into the output.
/// Returns false if a filter aborted the response.
pub fn send_header(cell: &RefCell<Req>) -> bool {
    {
        let mut r = cell.borrow_mut();
        if r.header_sent || r.in_header_filter {
            return true;
        }
        if r.status == 0 {
            r.status = 200;
        }
        // content_length follows Content-Length as plugins add and set it.
        // Filters may still change status and headers.
        r.in_header_filter = true;
    }
    let (plugins, handle) = {
        let r = cell.borrow();
        (&r.cycle.plugins, r.handle)
    };
    for &(i, f) in &plugins.header_filters {
        let conf = cell.borrow().location().confs.get(i).copied().unwrap_or(std::ptr::null_mut());
        let rc = host_api::call_header_filter(plugins, i, f, handle, conf);
        if rc != sys::OK {
            crate::log!(Error, "header filter of plugin \"{}\" failed (rc {rc})", plugins.list[i].name);
            let mut r = cell.borrow_mut();
            r.in_header_filter = false;
            r.header_sent = true;
            return false;
        }
    }
    let mut r = cell.borrow_mut();
    r.in_header_filter = false;
    r.header_sent = true;
    render_head(&mut r);
    true
}

fn render_head(r: &mut Req) {
    // error_page 404 =200 /x; or error_page 404 /x.html: a target served
    // successfully answers with the configured status.
    if let Some(code) = r.error_page.filter(|&c| c != 0 && r.status < 300) {
        r.status = code;
    }
    let status = r.status;
    let core_tokens = r.location().core.server_tokens;
    if matches!(status, 204 | 304) || (100..200).contains(&status) {
        r.header_only = true;
        r.content_length = None;
    }
    if r.method == "HEAD" {
        r.header_only = true;
    }
    let known = r.content_length.is_some();
    if !known && !r.header_only {
        if r.minor == 1 && r.location().core.chunked {
            r.chunked = true;
        } else {
            r.must_close = true;
        }
    }
    let core = &r.location().core;
    let keep = !r.must_close
        && !QUITTING.with(std::cell::Cell::get)
        && (core.keepalive_disable == 0 || !keepalive_disabled_for(r, core.keepalive_disable))
        && r.keepalive
        && r.conn_requests < core.keepalive_requests
        && !core.keepalive_timeout.is_zero()
        && r.conn_born.checked_add(core.keepalive_time).is_none_or(|end| crate::clock::now() < end);
    if !keep {
        r.must_close = true;
    }
    let mut h = mem_buf();
    h.reserve(256);
    let own = r.own_server_date;
    if own == 0 {
        push_head_start(&mut h, status, core_tokens);
    } else {
        // (Not the cached start: the response has its own Server or Date.)
        head_start_own(&mut h, status, core_tokens, own);
    }
    for (k, v) in &r.headers_out {
        // (An own Server or Date that is empty means none at all.)
        if host_header(k) && !(own != 0 && own_header(k, own) && !v.is_empty()) {
            continue;
        }
        h.extend_from_slice(k.as_bytes());
        h.extend_from_slice(b": ");
        // Only a relative Location needs the prefix (built only then).
        if k.eq_ignore_ascii_case("location") && v.starts_with('/') {
            if let Some(prefix) = absolute_prefix(r) {
                h.extend_from_slice(prefix.as_bytes());
            }
        }
        h.extend_from_slice(v.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if let Some(n) = r.content_length {
        if status != 304 {
            h.extend_from_slice(b"Content-Length: ");
            push_u64(&mut h, n);
            h.extend_from_slice(b"\r\n");
        }
    }
    if r.chunked {
        h.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if r.gzip_vary && r.location().core.gzip.vary {
        h.extend_from_slice(b"Vary: Accept-Encoding\r\n");
    }
    if status == 101 {
        // Switching protocols: the connection becomes a relay (and is
        // closed when it ends).
        r.must_close = true;
        h.extend_from_slice(b"Connection: upgrade\r\n");
    } else {
        h.extend_from_slice(if keep { b"Connection: keep-alive\r\n" } else { b"Connection: close\r\n" });
        if let (true, Some(t)) = (keep, r.location().core.keepalive_header) {
            h.extend_from_slice(b"Keep-Alive: timeout=");
            push_u64(&mut h, t);
            h.extend_from_slice(b"\r\n");
        }
    }
    h.extend_from_slice(b"\r\n");
    r.head_bytes = h.len() as u64;
    match r.out.back_mut() {
        Some(Chunk::Mem(v)) => {
            v.extend_from_slice(&h);
            give_mem(h);
        }
        _ => r.out.push_back(Chunk::Mem(h)),
    }
}

/// `scheme://host[:port]` for relative Location headers (absolute_redirect).
fn absolute_prefix(r: &Req<'_>) -> Option<String> {
    let core = &r.location().core;
    if !core.absolute_redirect {
        return None;
    }
    let host = if core.server_name_in_redirect || r.host.is_empty() {
        let n = &r.server().primary_name;
        if n.is_empty() {
            r.local.ip().to_string()
        } else {
            n.clone()
        }
    } else {
        r.host.clone()
    };
    let port = r.local.port();
    let (scheme, default_port) = if r.tls.is_some() { ("https", 443) } else { ("http", 80) };
    Some(if core.port_in_redirect && port != default_port {
        format!("{scheme}://{host}:{port}")
    } else {
        format!("{scheme}://{host}")
    })
}

/// The last stage of the body filter chain: frames and queues buffers.
pub fn write_body(r: &mut Req, bufs: &[sys::Buf]) -> sys::Rc {
    if r.body_done_out {
        return sys::OK;
    }
    for b in bufs {
        let last = b.flags & sys::BUF_LAST != 0;
        if !r.header_only {
            if b.flags & sys::BUF_FILE != 0 {
                if b.fd < 0 || b.file_pos < 0 || b.file_len < 0 {
                    return sys::INVALID;
                }
                if b.file_len > 0 {
                    let Ok(fd) = crate::sys::dup_fd(b.fd) else { return sys::ERROR };
                    let len = b.file_len as u64;
                    if r.chunked {
                        let mut line = Vec::with_capacity(12);
                        let _ = write!(VecW(&mut line), "{len:x}\r\n");
                        push_mem(&mut r.out, &line);
                    }
                    r.out.push_back(Chunk::File { fd, pos: b.file_pos as u64, end: b.file_pos as u64 + len });
                    if r.chunked {
                        push_mem(&mut r.out, b"\r\n");
                    }
                    r.body_bytes += len;
                }
            } else if b.len > 0 {
                if b.data.is_null() {
                    return sys::INVALID;
                }
                let data = host_api::buf_bytes(b);
                if r.chunked {
                    let mut line = Vec::with_capacity(12);
                    let _ = write!(VecW(&mut line), "{:x}\r\n", data.len());
                    push_mem(&mut r.out, &line);
                }
                push_mem(&mut r.out, data);
                if r.chunked {
                    push_mem(&mut r.out, b"\r\n");
                }
                r.body_bytes += data.len() as u64;
            }
        }
        if last {
            if r.chunked && !r.header_only {
                push_mem(&mut r.out, b"0\r\n\r\n");
            }
            r.body_done_out = true;
            if let Some(cl) = r.content_length {
                if cl != r.body_bytes && !r.header_only {
                    crate::log!(Error, "response body of \"{}\" is {} bytes, Content-Length said {cl}", r.uri, r.body_bytes);
                    r.must_close = true;
                }
            }
            break;
        }
    }
    sys::OK
}

/// Sends body buffers through the body filter chain from position `pos`.
pub fn body_chain(cell: &RefCell<Req>, pos: usize, bufs: &[sys::Buf]) -> sys::Rc {
    let (plugins, handle) = {
        let r = cell.borrow();
        (&r.cycle.plugins, r.handle)
    };
    if let Some(&(i, f)) = plugins.body_filters.get(pos) {
        let conf = {
            let mut r = cell.borrow_mut();
            r.filter_pos = pos + 1;
            r.location().confs.get(i).copied().unwrap_or(std::ptr::null_mut())
        };
        let prev = pos;
        let rc = host_api::call_body_filter(plugins, i, f, handle, conf, bufs);
        cell.borrow_mut().filter_pos = prev;
        return rc;
    }
    write_body(&mut cell.borrow_mut(), bufs)
}

/// Sends a complete in-memory response (used for built-in pages).
fn send_simple(cell: &RefCell<Req>, body: &[u8]) {
    {
        let mut r = cell.borrow_mut();
        r.content_length = Some(body.len() as u64);
        r.headers_out.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
    }
    if !send_header(cell) {
        cell.borrow_mut().must_close = true;
        return;
    }
    let b = sys::Buf { data: body.as_ptr(), len: body.len(), fd: -1, flags: sys::BUF_LAST, file_pos: 0, file_len: 0 };
    body_chain(cell, 0, std::slice::from_ref(&b));
}

/// Finalizes the request with `status`: error_page, or the built-in page.
pub fn finalize_status(cell: &RefCell<Req>, status: u16) {
    if status == 444 {
        // nginx's NGX_HTTP_CLOSE: no response at all; the connection
        // closes (and 444 is logged).
        let mut r = cell.borrow_mut();
        r.status = 444;
        r.must_close = true;
        r.header_sent = true;
        r.body_done_out = true;
        r.run = Run::Finalized;
        return;
    }
    let header_sent = cell.borrow().header_sent;
    if header_sent {
        // Too late for an error page: end the response and the connection.
        let mut r = cell.borrow_mut();
        r.must_close = true;
        r.body_done_out = true;
        r.run = Run::Finalized;
        return;
    }
    if try_error_page(cell, status) {
        return;
    }
    let body = {
        let mut r = cell.borrow_mut();
        r.status = status;
        if matches!(status, 400 | 408 | 413 | 414 | 494 | 495 | 496 | 497 | 500 | 501 | 505) {
            r.must_close = true;
        }
        r.headers_out.retain(|(k, _)| {
            !["content-type", "content-length", "content-encoding", "last-modified", "etag", "accept-ranges"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h))
        });
        let tokens = r.location().core.server_tokens;
        let mut body = Vec::new();
        if status >= 300 && status != 304 {
            error_body(status, tokens, &mut body);
            r.headers_out.push(("Content-Type".into(), "text/html".into()));
        }
        r.run = Run::Finalized;
        body
    };
    send_simple(cell, &body);
}

/// Applies an `error_page` for `status`, if one is configured and allowed.
fn try_error_page(cell: &RefCell<Req>, status: u16) -> bool {
    let mut r = cell.borrow_mut();
    if r.error_page.is_some() && !r.location().core.recursive_error_pages {
        return false;
    }
    let Some(page) = r.location().core.error_pages.iter().find(|p| p.codes.contains(&status)) else {
        return false;
    };
    let answer = match page.set {
        None => status,
        Some(Some(code)) => code,
        Some(None) => 0,
    };
    let target = super::vars::expand(&r, &page.target);
    if target.starts_with("http://") || target.starts_with("https://") {
        let code = if matches!(answer, 301 | 302 | 303 | 307 | 308) { answer } else { 302 };
        r.headers_out.retain(|(k, _)| !k.eq_ignore_ascii_case("location"));
        r.headers_out.push(("Location".into(), target));
        r.error_page = Some(code);
        drop(r);
        finalize_status(cell, code);
        return true;
    }
    r.error_page = Some(answer);
    r.status = answer;
    if r.method != "HEAD" {
        r.method.clear();
        r.method.push_str("GET");
    }
    let (uri, args) = match target.split_once('?') {
        Some((u, a)) => (u.to_string(), a.to_string()),
        None => (target, String::new()),
    };
    r.redirect = Some(Redirect { uri, args });
    r.run = Run::Running;
    true
}

/// Applies a pending internal redirect; false if the limit was hit.
fn apply_redirect(r: &mut Req) -> Result<(), u16> {
    let Some(Redirect { uri, args }) = r.redirect.take() else { return Ok(()) };
    r.redirects += 1;
    if r.redirects > 10 {
        crate::log!(Error, "rewrite or internal redirection cycle while internally redirecting to \"{uri}\"");
        return Err(500);
    }
    // Plugins start afresh in the new location, as nginx clears module ctx.
    for (idx, p, f) in r.ctx.drain(..) {
        if let Some(f) = f {
            host_api::call_free(idx, f, p);
        }
    }
    r.internal = true;
    r.again = None;
    r.hidx = 0;
    r.uri_changed = false;
    r.uri_rewritten = false;
    if uri.starts_with('@') {
        match r.server().named(&uri) {
            Some(i) => {
                r.loc = r.server().limit_except(i, &r.method);
                r.phase = sys::PHASE_REWRITE;
                Ok(())
            }
            None => {
                crate::log!(Error, "could not find named location \"{uri}\"");
                Err(500)
            }
        }
    } else {
        r.uri = uri;
        r.args = args;
        r.phase = sys::PHASE_SERVER_REWRITE;
        r.loc = 0;
        Ok(())
    }
}

/// A regex location's captures become `$1`… and its named groups
/// variables, as in nginx (a location without a regex keeps what the
/// server name's regex captured).
fn set_captures(r: &mut Req) {
    let Some(re) = r.location().regex.as_ref() else { return };
    let re = re.clone();
    let uri = std::mem::take(&mut r.uri);
    regex_captures(r, &re, &uri);
    r.uri = uri;
}

/// `re`'s match on `text` as the request's captures: `$1`… and its named
/// groups (server names and regex locations).
pub fn regex_captures(r: &mut Req, re: &regex::Regex, text: &str) {
    r.captures.clear();
    let Some(c) = re.captures(text) else { return };
    let spans: Vec<_> = c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect();
    for (i, name) in re.capture_names().enumerate() {
        if let (Some(n), Some(Some((a, b)))) = (name, spans.get(i)) {
            let v = text[*a..*b].to_string();
            match r.vars.iter_mut().find(|(k, _)| k == n) {
                Some(slot) => slot.1 = v,
                None => r.vars.push((n.to_string(), v)),
            }
        }
    }
    r.captured.clear();
    r.captured.push_str(text);
    r.captures = spans;
}

/// After location lookup: `internal`, `client_max_body_size`.
fn check_location(r: &mut Req) -> Result<(), u16> {
    let loc = r.location();
    if loc.core.internal && !r.internal {
        return Err(404);
    }
    let max = loc.core.client_max_body_size;
    if let Framing::Length(n) = r.framing {
        if max > 0 && n > max {
            crate::log!(Error, "client intended to send too large body: {n} bytes");
            r.must_close = true;
            return Err(413);
        }
    }
    Ok(())
}

/// The handlers of `phase` for the current location: (plugin, handler).
fn handler_at(r: &Req, phase: u32, idx: usize) -> Option<(usize, sys::HttpHandlerFn)> {
    let plugins = &r.cycle().plugins;
    if phase == sys::PHASE_CONTENT {
        if let Some(h) = r.location().content {
            return (idx == 0).then_some(h);
        }
    }
    plugins.phase_handlers[phase as usize].get(idx).copied()
}

/// Runs the phase engine until the request suspends or is finalized.
/// What it logs goes to its location's `error_log`, if any.
pub fn run(cell: &RefCell<Req>) {
    engine(cell);
    crate::log::set_scope(None);
    crate::log::set_not_found(true);
}

fn engine(cell: &RefCell<Req>) {
    let mut logs_for = usize::MAX;
    loop {
        {
            let mut r = cell.borrow_mut();
            if r.loc != logs_for {
                logs_for = r.loc;
                crate::log::set_scope(r.location().core.error_log.as_ref());
                crate::log::set_not_found(r.location().core.log_not_found);
            }
            if r.redirect.is_some() {
                if let Err(st) = apply_redirect(&mut r) {
                    r.error_page = Some(st);
                    drop(r);
                    finalize_status(cell, st);
                    continue;
                }
            }
            if let Some(rc) = r.finalize.take() {
                r.run = Run::Running;
                r.again = None;
                drop(r);
                finish_with(cell, rc, true);
                continue;
            }
            match r.run {
                Run::Finalized => return,
                Run::Waiting => return,
                // Waiting for its subrequest: that runs first, and only
                // its end resumes the request.
                Run::Suspended if r.waiting_sub => {
                    drop(r);
                    let done = run_sub(cell);
                    // The subrequest logged as its own location says.
                    logs_for = usize::MAX;
                    if !done {
                        return;
                    }
                    continue;
                }
                Run::Suspended if !r.resume => return,
                Run::Suspended => {
                    r.resume = false;
                    r.run = Run::Running;
                }
                Run::Running => {}
            }
        }
        step(cell);
    }
}

/// Runs the request's subrequest while it waits for it; the subrequest's
/// end resumes the request (nginx's post-subrequest handler): true then.
fn run_sub(cell: &RefCell<Req>) -> bool {
    // Taken out while it runs (its handle points into the box, which
    // does not move), then put back: read until the request finishes.
    let sub = cell.borrow_mut().sub.take();
    let Some(sub) = sub else { return false };
    run(&sub);
    let done = {
        let mut s = sub.borrow_mut();
        // Its response goes nowhere.
        s.out.clear();
        s.run == Run::Finalized
    };
    let mut r = cell.borrow_mut();
    r.sub = Some(sub);
    if done {
        r.waiting_sub = false;
        r.resume = true;
    }
    done
}

/// Handles a handler's (or http_finalize's) return code.
fn finish_with(cell: &RefCell<Req>, rc: sys::Rc, content: bool) {
    match rc {
        sys::OK | sys::DONE if content => {
            let done = cell.borrow().body_done_out;
            if !done {
                let last = sys::Buf { data: std::ptr::null(), len: 0, fd: -1, flags: sys::BUF_LAST, file_pos: 0, file_len: 0 };
                if cell.borrow().header_sent {
                    body_chain(cell, 0, std::slice::from_ref(&last));
                } else if cell.borrow().status >= 300 {
                    let st = cell.borrow().status;
                    finalize_status(cell, st);
                    return;
                } else {
                    cell.borrow_mut().content_length.get_or_insert(0);
                    if send_header(cell) {
                        body_chain(cell, 0, std::slice::from_ref(&last));
                    }
                }
            }
            cell.borrow_mut().run = Run::Finalized;
        }
        100..=599 => finalize_status(cell, rc as u16),
        _ => finalize_status(cell, 500),
    }
}

/// Runs one handler (or a host step) of the current phase.
fn step(cell: &RefCell<Req>) {
    let (phase, (i, h, conf)) = {
        let mut r = cell.borrow_mut();
        if r.phase > sys::PHASE_CONTENT {
            drop(r);
            no_content(cell);
            return;
        }
        // Subrequests skip the ACCESS phase, as nginx's (the request that
        // made one was checked already).
        if r.phase == sys::PHASE_ACCESS && r.is_sub && r.again.is_none() {
            drop(r);
            next_phase(cell);
            return;
        }
        let phase = r.phase;
        if let Some(again) = r.again.take() {
            (phase, again)
        } else {
            match handler_at(&r, phase, r.hidx) {
                Some((i, h)) => {
                    r.hidx += 1;
                    let conf = r.location().confs.get(i).copied().unwrap_or(std::ptr::null_mut());
                    (phase, (i, h, conf))
                }
                None => {
                    drop(r);
                    next_phase(cell);
                    return;
                }
            }
        }
    };
    let (handle, plugins) = {
        let r = cell.borrow();
        (r.handle, &r.cycle.plugins)
    };
    let rc = host_api::call_phase_handler(plugins, i, h, handle, conf);
    let mut r = cell.borrow_mut();
    if r.run == Run::Finalized {
        return;
    }
    if r.redirect.is_some() {
        r.run = Run::Running;
        return;
    }
    match rc {
        sys::DECLINED => {}
        sys::AGAIN => {
            r.again = Some((i, h, conf));
            if !r.resume {
                r.run = Run::Suspended;
            } else {
                r.resume = false;
            }
        }
        // ACCESS, as nginx's: OK grants access. With `satisfy all` every
        // handler still has its say; with `satisfy any` the first grant
        // ends the phase, and a refusal (401 before 403) waits in case a
        // later handler grants.
        sys::OK if phase == sys::PHASE_ACCESS && !r.location().core.satisfy_any => {}
        sys::OK if phase == sys::PHASE_ACCESS => {
            r.access_code = None;
            drop(r);
            next_phase(cell);
        }
        401 | 403 if phase == sys::PHASE_ACCESS && r.location().core.satisfy_any => {
            if r.access_code != Some(401) {
                r.access_code = Some(rc as u16);
            }
        }
        sys::OK if phase != sys::PHASE_CONTENT => {
            drop(r);
            next_phase(cell);
        }
        sys::DONE if !r.body_done_out => {
            if r.finalize.is_none() {
                r.run = Run::Waiting;
            }
        }
        // The handler sent the whole response itself, in any phase.
        sys::DONE => r.run = Run::Finalized,
        rc => {
            if rc == sys::ERROR || !(rc == sys::OK || rc == sys::DONE || (100..600).contains(&rc)) {
                crate::log!(Error, "plugin \"{}\" failed the request \"{} {}\" (rc {rc})", plugins.list[i].name, r.method, r.request_uri);
            }
            drop(r);
            finish_with(cell, rc, phase == sys::PHASE_CONTENT);
        }
    }
}

/// Moves to the next phase, running the host's own steps between phases.
fn next_phase(cell: &RefCell<Req>) {
    let mut r = cell.borrow_mut();
    r.hidx = 0;
    let mut from = r.phase;
    r.phase += 1;
    if from == sys::PHASE_ACCESS {
        // `satisfy any` and no handler granted: the refusal stands.
        if let Some(code) = r.access_code.take() {
            drop(r);
            finalize_status(cell, code);
            return;
        }
    }
    if from == sys::PHASE_REWRITE && r.uri_changed {
        // nginx's post-rewrite phase: the URI changed, find its location
        // and run that location's REWRITE phase.
        r.uri_changed = false;
        r.uri_changes += 1;
        if r.uri_changes > 10 {
            crate::log!(Error, "rewrite or internal redirection cycle while processing \"{}\"", r.uri);
            drop(r);
            finalize_status(cell, 500);
            return;
        }
        r.internal = true;
        r.phase = sys::PHASE_REWRITE;
        from = sys::PHASE_SERVER_REWRITE;
    }
    if from == sys::PHASE_SERVER_REWRITE {
        // FIND_CONFIG.
        r.uri_rewritten = false;
        r.add_uri_to_alias = false;
        let uri = std::mem::take(&mut r.uri);
        r.loc = r.server().find_location(&uri);
        let auto = r.server().auto_redirect(&uri, r.loc);
        r.uri = uri;
        set_captures(&mut r);
        if auto {
            let mut loc = Vec::new();
            plugin_api::http::escape_uri(&r.uri, &mut loc);
            loc.push(b'/');
            if !r.args.is_empty() {
                loc.push(b'?');
                loc.extend_from_slice(r.args.as_bytes());
            }
            r.headers_out.retain(|(k, _)| !k.eq_ignore_ascii_case("location"));
            r.headers_out.push(("Location".into(), String::from_utf8_lossy(&loc).into_owned()));
            drop(r);
            finalize_status(cell, 301);
            return;
        }
        if let Err(st) = check_location(&mut r) {
            drop(r);
            finalize_status(cell, st);
            return;
        }
        if r.location().limit_except.is_some() {
            r.loc = r.server().limit_except(r.loc, &r.method);
        }
    }
    if r.phase == sys::PHASE_PRECONTENT {
        drop(r);
        try_files(cell);
    }
}

/// The content phase found no handler: 403 for a directory, else 404.
fn no_content(cell: &RefCell<Req>) {
    let st = {
        let r = cell.borrow();
        if r.uri.ends_with('/') {
            crate::log!(Error, "directory index of \"{}{}\" is forbidden", r.location().core.root, r.uri);
            403
        } else {
            404
        }
    };
    finalize_status(cell, st);
}

/// The host's try_files step at the start of PRECONTENT.
fn try_files(cell: &RefCell<Req>) {
    let mut r = cell.borrow_mut();
    let list = &r.location().core.try_files;
    if list.is_empty() {
        return;
    }
    let mut path = String::new();
    let regex_alias = r.location().core.alias && r.location().core.alias_len == usize::MAX;
    for arg in &list[..list.len() - 1] {
        // A trailing '/' asks for a directory, and is not part of the URI
        // tried (nginx's test_dir): `$uri/` for "/d" tries "/d", which the
        // static handler then redirects to "/d/".
        let dir = arg.ends_with('/');
        let name = if dir && arg.len() > 1 { &arg[..arg.len() - 1] } else { arg.as_str() };
        let uri = super::vars::expand(&r, name);
        path.clear();
        r.map_to_path(&uri, &mut path);
        if regex_alias {
            path.push_str(&uri);
        }
        // A trailing '/' asks for a directory; a file path with one fails.
        let ok = std::fs::metadata(&path).is_ok_and(|m| m.is_dir() == dir);
        if ok {
            // The tried URI becomes $uri; root or alias maps it again later.
            r.add_uri_to_alias = regex_alias && !dir;
            r.uri = uri;
            return;
        }
    }
    let last = super::vars::expand(&r, &list[list.len() - 1]);
    if let Some(code) = last.strip_prefix('=') {
        let st = code.parse::<u16>().ok().filter(|c| (100..600).contains(c)).unwrap_or(500);
        drop(r);
        finalize_status(cell, st);
        return;
    }
    let (uri, args) = match last.split_once('?') {
        Some((u, a)) => (u.to_string(), a.to_string()),
        None => (last, r.args.clone()),
    };
    r.redirect = Some(Redirect { uri, args });
}

/// Handles a plugin's http_read_body call.
pub fn start_body(r: &mut Req, done: Option<(usize, sys::DoneFn, *mut c_void)>) -> sys::Rc {
    match r.body_state {
        BodyIn::Done => sys::OK,
        BodyIn::Reading => sys::INVALID,
        BodyIn::Idle | BodyIn::Discarding => {
            if r.body_state == BodyIn::Discarding && r.body_received > 0 {
                return sys::INVALID;
            }
            r.body_state = BodyIn::Reading;
            r.body_done = done;
            super::wake(r.conn);
            sys::AGAIN
        }
    }
}

/// The access-log moment: runs LOG-phase handlers once.
pub fn log_phase(cell: &RefCell<Req>) {
    let (handle, plugins) = {
        let mut r = cell.borrow_mut();
        if r.logged {
            r.logged = true;
            return;
        }
        r.logged = true;
        (r.handle, &r.cycle.plugins)
    };
    for &(i, h) in &plugins.phase_handlers[sys::PHASE_LOG as usize] {
        let conf = cell.borrow().location().confs.get(i).copied().unwrap_or(std::ptr::null_mut());
        host_api::call_phase_handler(plugins, i, h, handle, conf);
    }
}
