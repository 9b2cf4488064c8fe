//! HTTP/1.x connections as the worker sees them.
//!
//! This is the first layer of the HTTP core: incremental request-head
//! parsing (httparse), keepalive and pipelining, timeouts, and nginx-style
//! error responses. Each complete request runs through the plugins' phase
//! handlers ([`phases`]); with no content handler the answer is 404.
//! Request bodies, locations and streaming responses arrive with the HTTP
//! core issue; for now a request with a body is answered and the
//! connection closed.

pub mod phases;

use crate::cycle::Cycle;
use crate::plugin::host_api::Req;
use mio::net::TcpStream;
use std::net::SocketAddr;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// nginx's default `client_header_timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's default `keepalive_timeout`.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// nginx's default `send_timeout`.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's default `large_client_header_buffers 4 8k`: 8k per line.
const MAX_LINE: usize = 8 * 1024;
/// …and 32k for the whole head.
const MAX_HEAD: usize = 32 * 1024;
/// nginx's default `keepalive_requests`.
const KEEPALIVE_REQUESTS: u32 = 1000;

/// What the worker should do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep it; fire its timeout at this instant.
    Wait(Instant),
    /// Close it now.
    Close,
}

enum State {
    Reading,
    Writing { close: bool },
}

/// One client connection.
pub struct Conn {
    /// The socket (registered with the worker's poll).
    pub sock: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    state: State,
    requests: u32,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Conn {
    /// Wraps a freshly accepted socket.
    pub fn new(sock: TcpStream, local: SocketAddr, peer: SocketAddr) -> Conn {
        Conn { sock, rbuf: Vec::new(), wbuf: Vec::new(), wpos: 0, state: State::Reading, requests: 0, local, peer }
    }

    /// True for a keepalive connection waiting for its next request with
    /// nothing buffered: a draining worker may close it at once. A fresh
    /// connection whose first request has not arrived yet is not idle.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Reading) && self.rbuf.is_empty() && self.requests > 0
    }

    /// Does all the I/O the socket allows now.
    pub fn on_ready(&mut self, now: Instant, quitting: bool, cycle: &Cycle) -> Next {
        loop {
            match self.state {
                State::Writing { close } => {
                    while self.wpos < self.wbuf.len() {
                        match self.sock.write(&self.wbuf[self.wpos..]) {
                            Ok(0) => return Next::Close,
                            Ok(n) => self.wpos += n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                return Next::Wait(now + SEND_TIMEOUT)
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => return Next::Close,
                        }
                    }
                    self.wbuf.clear();
                    self.wpos = 0;
                    if close || quitting {
                        return Next::Close;
                    }
                    self.state = State::Reading;
                }
                State::Reading => {
                    if self.try_parse(cycle) {
                        continue;
                    }
                    if quitting && self.is_idle() {
                        return Next::Close;
                    }
                    let mut chunk = [0u8; 4096];
                    match self.sock.read(&mut chunk) {
                        Ok(0) => return Next::Close,
                        Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            let t = if self.rbuf.is_empty() && self.requests > 0 {
                                KEEPALIVE_TIMEOUT
                            } else {
                                HEADER_TIMEOUT
                            };
                            return Next::Wait(now + t);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return Next::Close,
                    }
                }
            }
        }
    }

    /// Parses a buffered head; on success queues the response and returns true.
    fn try_parse(&mut self, cycle: &Cycle) -> bool {
        if self.rbuf.is_empty() {
            return false;
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.rbuf) {
            Ok(httparse::Status::Complete(n)) => {
                let head = request_head(&req);
                let mut r = self.plugin_request(&req);
                self.rbuf.drain(..n);
                self.requests += 1;
                let close = !head.keepalive || head.has_body || self.requests >= KEEPALIVE_REQUESTS;
                let plugins = &cycle.plugins;
                let server = plugins.server_for(self.local);
                match phases::run(plugins, server, &mut r) {
                    phases::Outcome::Response => self.respond_with(&r, head.is_head, close),
                    phases::Outcome::Status(st) => self.respond(st, head.is_head, close),
                }
                phases::log(plugins, server, &mut r);
                true
            }
            Ok(httparse::Status::Partial) => {
                let line_end = self.rbuf.iter().position(|&b| b == b'\n');
                if line_end.map_or(self.rbuf.len(), |i| i) > MAX_LINE {
                    self.respond(414, false, true);
                    return true;
                }
                if self.rbuf.len() > MAX_HEAD {
                    self.respond(400, false, true);
                    return true;
                }
                false
            }
            Err(httparse::Error::Version) => {
                self.respond(505, false, true);
                true
            }
            Err(_) => {
                self.respond(400, false, true);
                true
            }
        }
    }

    fn plugin_request(&self, req: &httparse::Request<'_, '_>) -> Req {
        let target = req.path.unwrap_or("/");
        let (path, args) = target.split_once('?').unwrap_or((target, ""));
        let headers_in: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let host = headers_in
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.split(':').next().unwrap_or("").to_ascii_lowercase())
            .unwrap_or_default();
        let mut r = Req::default();
        r.method = req.method.unwrap_or("").to_string();
        r.uri = path.to_string();
        r.args = args.to_string();
        r.request_uri = target.to_string();
        r.protocol = format!("HTTP/1.{}", req.version.unwrap_or(1));
        r.host = host;
        r.remote_addr = self.peer.ip().to_string();
        r.headers_in = headers_in;
        r
    }

    fn respond_with(&mut self, r: &Req, head_only: bool, close: bool) {
        use std::fmt::Write as _;
        let status = if r.status == 0 { 200 } else { r.status };
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let mut head = format!("HTTP/1.1 {status} {}\r\nServer: ngxr/{}\r\nDate: {date}\r\n", reason(status), crate::VERSION);
        for (k, v) in &r.headers_out {
            if !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("connection") {
                let _ = write!(head, "{k}: {v}\r\n");
            }
        }
        let conn = if close { "close" } else { "keep-alive" };
        let _ = write!(head, "Content-Length: {}\r\nConnection: {conn}\r\n\r\n", r.body.len());
        self.wbuf = head.into_bytes();
        if !head_only {
            self.wbuf.extend_from_slice(&r.body);
        }
        self.wpos = 0;
        self.state = State::Writing { close };
    }

    fn respond(&mut self, status: u16, head_only: bool, close: bool) {
        let body = error_page(status);
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let conn = if close { "close" } else { "keep-alive" };
        self.wbuf = format!(
            "HTTP/1.1 {status} {}\r\nServer: ngxr/{}\r\nDate: {date}\r\nContent-Type: text/html\r\n\
             Content-Length: {}\r\nConnection: {conn}\r\n\r\n",
            reason(status),
            crate::VERSION,
            body.len()
        )
        .into_bytes();
        if !head_only {
            self.wbuf.extend_from_slice(body.as_bytes());
        }
        self.wpos = 0;
        if close {
            self.rbuf.clear();
        }
        self.state = State::Writing { close };
    }
}

struct Head {
    keepalive: bool,
    has_body: bool,
    is_head: bool,
}

fn request_head(req: &httparse::Request<'_, '_>) -> Head {
    let mut keepalive = req.version == Some(1);
    let mut has_body = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                keepalive = false;
            } else if v.contains("keep-alive") {
                keepalive = true;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
        {
            has_body = true;
        }
    }
    Head { keepalive, has_body, is_head: req.method == Some("HEAD") }
}

/// The reason phrase nginx sends for `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Not Allowed",
        413 => "Request Entity Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        414 => "Request-URI Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The built-in error page for `status`, in nginx's shape.
pub fn error_page(status: u16) -> String {
    let title = format!("{status} {}", reason(status));
    format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n\
         <hr><center>ngxr</center>\r\n</body>\r\n</html>\r\n"
    )
}
