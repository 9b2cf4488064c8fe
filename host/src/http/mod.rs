//! HTTP/1.x connections as the worker sees them.
//!
//! This is the first layer of the HTTP core: incremental request-head
//! parsing (httparse), keepalive and pipelining, timeouts, and nginx-style
//! error responses. No phase engine or content handler exists yet, so every
//! well-formed request is answered 404 exactly as nginx answers a location
//! with nothing to serve; the phase engine and plugins replace that answer.

use mio::net::TcpStream;
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
}

impl Conn {
    /// Wraps a freshly accepted socket.
    pub fn new(sock: TcpStream) -> Conn {
        Conn { sock, rbuf: Vec::new(), wbuf: Vec::new(), wpos: 0, state: State::Reading, requests: 0 }
    }

    /// True for a keepalive connection waiting for its next request with
    /// nothing buffered: a draining worker may close it at once. A fresh
    /// connection whose first request has not arrived yet is not idle.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Reading) && self.rbuf.is_empty() && self.requests > 0
    }

    /// Does all the I/O the socket allows now.
    pub fn on_ready(&mut self, now: Instant, quitting: bool) -> Next {
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
                    if self.try_parse() {
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
    fn try_parse(&mut self) -> bool {
        if self.rbuf.is_empty() {
            return false;
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.rbuf) {
            Ok(httparse::Status::Complete(n)) => {
                let head = request_head(&req);
                self.rbuf.drain(..n);
                self.requests += 1;
                let close = !head.keepalive || head.has_body || self.requests >= KEEPALIVE_REQUESTS;
                self.respond(404, head.is_head, close);
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
        400 => "Bad Request",
        404 => "Not Found",
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
