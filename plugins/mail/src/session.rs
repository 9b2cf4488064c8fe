//! One client session, from the greeting to the relay.
//!
//! A session is a boxed [`Session`] whose address is the `data` of every
//! callback it registers: the client connection, the authentication
//! server's connection, the backend's and one timer. Each callback runs
//! the session's handler and then, if it says so, drops the box; the drop
//! cancels the timer and closes the connections it still owns, so no
//! callback can reach a freed session. Once the backend has accepted the
//! login, both connections go to the host's relay and the session ends.

use crate::auth::{self, Answer};
use crate::{imap, pop3, smtp, Listen, Proto, Server};
use plugin_api::{io, log, sys};
use std::ffi::c_void;
use std::rc::Rc;

/// What a handler wants next.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Go,
    /// End the session (close everything it owns).
    Close,
}

/// The result of handling the client's input.
#[derive(Debug, PartialEq, Eq)]
pub enum Cmd {
    /// A command was answered (or skipped): look for the next one.
    Next,
    /// No complete command yet.
    Again,
    /// Credentials are in: ask the authentication server.
    Auth,
    /// STARTTLS was accepted: send the answer, then the handshake.
    StartTls,
    /// Send what is queued, then close.
    Quit,
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `smtp_greeting_delay`: nothing is sent yet.
    Delay,
    /// Reading and answering commands.
    Commands,
    /// Waiting for the authentication server.
    Auth,
    /// Waiting out `Auth-Wait` before answering a failed login.
    AuthWait,
    /// Logging in to the backend.
    Backend,
    /// Sending the backend's last answer to the client before the relay.
    Handover,
    /// Sending the answer to STARTTLS before the handshake.
    TlsPending,
    /// The TLS handshake with the client.
    Handshake,
}

/// The authentication method a client used (`Auth-Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// LOGIN, USER/PASS, AUTH PLAIN, AUTH LOGIN.
    Plain,
    /// POP3 APOP.
    Apop,
    /// AUTH CRAM-MD5.
    CramMd5,
    /// AUTH EXTERNAL.
    External,
    /// SMTP without authentication.
    None,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Plain => "plain",
            Method::Apop => "apop",
            Method::CramMd5 => "cram-md5",
            Method::External => "external",
            Method::None => "none",
        }
    }
}

/// A failed login the authentication server told us to delay.
struct Refusal {
    reply: Vec<u8>,
}

pub struct Session {
    pub srv: Rc<Server>,
    pub client: io::Conn,
    pub client_ip: String,
    /// Client bytes not yet used.
    pub inbuf: Vec<u8>,
    /// Bytes queued for the client.
    pub out: Vec<u8>,
    /// Close once `out` is sent.
    pub quit: bool,
    pub phase: Phase,
    timer: sys::Timer,
    /// Protocol sub-state (the protocol module's own numbering).
    pub state: u8,
    /// IMAP: the current command's tag with its trailing space.
    pub tag: Vec<u8>,
    /// IMAP: synchronizing literals of the current command already
    /// answered with "+ OK".
    pub literals_acked: usize,
    pub login: Vec<u8>,
    pub passwd: Vec<u8>,
    pub method: Method,
    /// APOP / CRAM-MD5 challenge, "<…@name>".
    pub salt: String,
    pub attempts: u32,
    pub errors: u32,
    /// SMTP: HELO/EHLO argument, whether it was EHLO, MAIL FROM and
    /// RCPT TO lines (as sent).
    pub smtp_helo: Vec<u8>,
    pub esmtp: bool,
    pub smtp_from: Vec<u8>,
    pub smtp_to: Vec<u8>,
    /// An SMTP error code from the authentication server.
    pub auth_code: Option<String>,
    auth_conn: Option<io::Conn>,
    auth_req: Vec<u8>,
    auth_sent: usize,
    auth_resp: Vec<u8>,
    refusal: Option<Refusal>,
    pub backend: Option<io::Conn>,
    /// The backend's answers while logging in.
    pub bbuf: Vec<u8>,
    /// Protocol login step with the backend.
    pub bstate: u8,
    /// Where the backend is ("127.0.0.1:143"), for the log.
    pub upstream: String,
    /// Both connections went to the host's relay.
    relayed: bool,
    /// The client's connection is TLS.
    pub tls: bool,
    /// `listen … ssl`: greet once the handshake is done.
    greet_after_tls: bool,
}

pub fn random() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}

impl Session {
    fn new(srv: Rc<Server>, client: io::Conn) -> Session {
        let peer = client.peer();
        let client_ip = match peer.rfind(':') {
            Some(i) => peer[..i].trim_start_matches('[').trim_end_matches(']').to_string(),
            None => peer,
        };
        let cap = srv.client_buffer;
        Session {
            srv,
            client,
            client_ip,
            inbuf: Vec::with_capacity(cap),
            out: Vec::new(),
            quit: false,
            phase: Phase::Commands,
            timer: 0,
            state: 0,
            tag: Vec::new(),
            literals_acked: 0,
            login: Vec::new(),
            passwd: Vec::new(),
            method: Method::Plain,
            salt: String::new(),
            attempts: 0,
            errors: 0,
            smtp_helo: Vec::new(),
            esmtp: false,
            smtp_from: Vec::new(),
            smtp_to: Vec::new(),
            auth_code: None,
            auth_conn: None,
            auth_req: Vec::new(),
            auth_sent: 0,
            auth_resp: Vec::new(),
            refusal: None,
            backend: None,
            bbuf: Vec::new(),
            bstate: 0,
            upstream: String::new(),
            relayed: false,
            tls: false,
            greet_after_tls: false,
        }
    }

    /// The capability answer for where the session is (before or after
    /// STARTTLS).
    pub fn capability(&self) -> Vec<u8> {
        let c = &self.srv.caps;
        match (self.tls, self.srv.starttls) {
            (false, crate::Starttls::On) => c.starttls.clone(),
            (false, crate::Starttls::Only) => c.only.clone(),
            _ => c.plain.clone(),
        }
    }

    /// `starttls only` and no TLS yet: logins are refused.
    pub fn tls_required(&self) -> bool {
        !self.tls && self.srv.starttls == crate::Starttls::Only
    }

    /// STARTTLS may be used now.
    pub fn can_starttls(&self) -> bool {
        !self.tls && self.srv.tls.is_some() && self.srv.starttls != crate::Starttls::Off
    }

    /// The greeting.
    fn greet(&mut self) -> Flow {
        match self.srv.proto {
            Proto::Imap => self.send(b"* OK IMAP4 ready\r\n"),
            Proto::Pop3 => pop3::greet(self),
            Proto::Smtp if self.srv.greeting_delay > 0 && !self.tls => {
                self.phase = Phase::Delay;
                self.arm(self.srv.greeting_delay);
                return self.watch_client();
            }
            Proto::Smtp => smtp::greet(self),
        }
        self.after_output()
    }

    /// Starts the TLS handshake with the client.
    fn begin_tls(&mut self) -> Flow {
        let Some(ctx) = self.srv.tls else { return Flow::Close };
        self.phase = Phase::Handshake;
        let _ = self.client.unwatch();
        let me = self.me();
        // SAFETY: the session outlives the handshake: Drop closes the conn.
        match unsafe { self.client.start_tls_raw(ctx, "", self.srv.timeout, Some(on_tls), me) } {
            Ok(()) => Flow::Go,
            Err(rc) => {
                log(sys::LOG_ERR, &format!("cannot start TLS (rc {rc}), client: {}", self.client_ip));
                Flow::Close
            }
        }
    }

    fn tls_event(&mut self, ev: u32) -> Flow {
        if ev & sys::EV_ERROR != 0 {
            let (_, why) = self.client.error();
            log(sys::LOG_INFO, &format!("TLS handshake failed: {why}, client: {}", self.client_ip));
            return Flow::Close;
        }
        self.tls = true;
        self.phase = Phase::Commands;
        self.arm(self.srv.timeout);
        if self.greet_after_tls {
            self.greet_after_tls = false;
            return self.greet();
        }
        // After STARTTLS an SMTP client says EHLO again (RFC 3207).
        self.smtp_helo.clear();
        self.esmtp = false;
        self.smtp_from.clear();
        self.smtp_to.clear();
        self.after_output()
    }

    /// Makes the APOP / CRAM-MD5 challenge (nginx's form).
    pub fn make_salt(&mut self) {
        if self.salt.is_empty() {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            self.salt = format!("<{}.{}@{}>", random() >> 1, secs, self.srv.name);
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn me(&mut self) -> *mut c_void {
        (self as *mut Session).cast()
    }

    fn arm(&mut self, ms: u64) {
        io::cancel_timer(self.timer);
        self.timer = 0;
        // SAFETY: the session outlives its timer: Drop cancels it.
        if let Ok(t) = unsafe { io::timer_raw(ms, on_timer, self.me()) } {
            self.timer = t;
        }
    }

    /// Sets the client's interest: read while commands are expected,
    /// write while output is queued.
    fn watch_client(&mut self) -> Flow {
        let mut interest = 0;
        if matches!(self.phase, Phase::Commands | Phase::Delay) && !self.quit {
            interest |= sys::EV_READ;
        }
        if !self.out.is_empty() {
            interest |= sys::EV_WRITE;
        }
        let me = self.me();
        // SAFETY: the session outlives the callback: Drop closes the conn.
        match unsafe { self.client.watch_raw(interest, Some(on_client), me) } {
            Ok(()) => Flow::Go,
            Err(_) => Flow::Close,
        }
    }

    /// Sends what is queued; Close on a write error, or when quitting and
    /// everything is out.
    fn flush(&mut self) -> Flow {
        while !self.out.is_empty() {
            match self.client.write(&self.out) {
                Ok(Some(n)) => {
                    self.out.drain(..n);
                }
                Ok(None) => break,
                Err(_) => return Flow::Close,
            }
        }
        if self.out.is_empty() && self.quit {
            return Flow::Close;
        }
        Flow::Go
    }

    /// Sends the protocol's "internal server error" and closes.
    pub fn internal_error(&mut self) -> Flow {
        self.drop_upstreams();
        let msg: &[u8] = match self.srv.proto {
            Proto::Imap => b"* BAD internal server error\r\n",
            Proto::Pop3 => b"-ERR internal server error\r\n",
            Proto::Smtp => b"451 4.3.2 Internal server error\r\n",
        };
        self.send(msg);
        self.quit = true;
        self.phase = Phase::Commands;
        self.after_output()
    }

    fn drop_upstreams(&mut self) {
        if let Some(c) = self.auth_conn.take() {
            c.close();
        }
        if let Some(c) = self.backend.take() {
            c.close();
        }
    }

    /// Flushes, then watches for what is still needed.
    fn after_output(&mut self) -> Flow {
        if self.flush() == Flow::Close {
            return Flow::Close;
        }
        self.watch_client()
    }

    /// Reads what the client sent and answers complete commands.
    fn client_event(&mut self, ev: u32) -> Flow {
        if ev & sys::EV_ERROR != 0 {
            return Flow::Close;
        }
        if self.flush() == Flow::Close {
            return Flow::Close;
        }
        if self.phase == Phase::Delay {
            // nginx refuses a client that talks before the greeting.
            let mut probe = Vec::new();
            return match self.client.read_append(&mut probe, 512) {
                Ok(Some(0)) | Err(_) => Flow::Close,
                Ok(Some(_)) => {
                    log(sys::LOG_INFO, &format!("client was rejected before greeting, client: {}", self.client_ip));
                    self.send(b"554 5.7.0 Invalid SMTP pipelining\r\n");
                    self.quit = true;
                    self.phase = Phase::Commands;
                    self.after_output()
                }
                Ok(None) => self.watch_client(),
            };
        }
        if self.phase == Phase::Handover {
            return if self.out.is_empty() { self.start_relay() } else { self.watch_client() };
        }
        if self.phase == Phase::TlsPending {
            return if self.out.is_empty() { self.begin_tls() } else { self.watch_client() };
        }
        if self.phase != Phase::Commands || self.quit {
            return self.watch_client();
        }
        if ev & sys::EV_READ != 0 {
            let room = self.srv.client_buffer.saturating_sub(self.inbuf.len());
            if room > 0 {
                match self.client.read_append(&mut self.inbuf, room) {
                    Ok(Some(0)) | Err(_) => return Flow::Close,
                    Ok(Some(_)) => self.arm(self.srv.timeout),
                    Ok(None) => {}
                }
            }
        }
        self.commands()
    }

    /// Answers the commands in `inbuf` until one is incomplete or starts
    /// a login.
    fn commands(&mut self) -> Flow {
        loop {
            if self.inbuf.is_empty() {
                break;
            }
            let r = match self.srv.proto {
                Proto::Imap => imap::command(self),
                Proto::Pop3 => pop3::command(self),
                Proto::Smtp => smtp::command(self),
            };
            match r {
                Cmd::Next if self.quit => break,
                Cmd::Next => continue,
                Cmd::Again => {
                    if self.inbuf.len() >= self.srv.client_buffer {
                        log(sys::LOG_INFO, &format!("client sent too long command, client: {}", self.client_ip));
                        self.inbuf.clear();
                        self.invalid();
                        self.quit = true;
                    }
                    break;
                }
                Cmd::Quit => {
                    self.quit = true;
                    break;
                }
                Cmd::Auth => return self.start_auth(),
                Cmd::StartTls => {
                    // Nothing pipelined before the handshake counts.
                    self.inbuf.clear();
                    self.phase = Phase::TlsPending;
                    if self.flush() == Flow::Close {
                        return Flow::Close;
                    }
                    return if self.out.is_empty() { self.begin_tls() } else { self.watch_client() };
                }
            }
        }
        self.after_output()
    }

    /// An invalid command (or SASL answer): answered, counted, and the
    /// session back between commands.
    pub fn bad(&mut self) -> Cmd {
        self.state = 0;
        self.invalid();
        self.tag.clear();
        if self.quit {
            Cmd::Quit
        } else {
            Cmd::Next
        }
    }

    /// Answers an invalid command in the protocol's words, counting it
    /// against `max_errors`.
    pub fn invalid(&mut self) {
        match self.srv.proto {
            Proto::Imap => {
                let tag = if self.tag.is_empty() { b"* ".to_vec() } else { self.tag.clone() };
                self.send(&tag);
                self.send(b"BAD invalid command\r\n");
            }
            Proto::Pop3 => self.send(b"-ERR invalid command\r\n"),
            Proto::Smtp => self.send(b"500 5.5.1 Invalid command\r\n"),
        }
        self.errors += 1;
        if self.errors >= self.srv.max_errors {
            log(sys::LOG_INFO, &format!("client sent too many invalid commands, client: {}", self.client_ip));
            self.quit = true;
        }
    }

    // ---- the authentication server ----------------------------------

    fn start_auth(&mut self) -> Flow {
        self.attempts += 1;
        self.phase = Phase::Auth;
        self.auth_req = auth::request(self);
        self.auth_sent = 0;
        self.auth_resp.clear();
        let me = self.me();
        let addr = self.srv.auth.addr.to_string();
        // SAFETY: the session outlives the connection (Drop closes it).
        match unsafe { io::Conn::connect_raw(&addr, self.srv.auth_timeout, on_auth, me) } {
            Ok(c) => self.auth_conn = Some(c),
            Err(rc) => {
                log(sys::LOG_ERR, &format!("auth http server {addr} could not be connected (rc {rc}), client: {}", self.client_ip));
                return self.internal_error();
            }
        }
        self.arm(self.srv.auth_timeout);
        if self.flush() == Flow::Close {
            return Flow::Close;
        }
        self.watch_client()
    }

    fn auth_event(&mut self, ev: u32) -> Flow {
        let Some(c) = self.auth_conn else { return Flow::Go };
        if ev & sys::EV_ERROR != 0 {
            let (_, why) = c.error();
            log(sys::LOG_ERR, &format!("{why} while in http auth state, client: {}, auth server: {}", self.client_ip, self.srv.auth.addr));
            return self.internal_error();
        }
        while self.auth_sent < self.auth_req.len() {
            match c.write(&self.auth_req[self.auth_sent..]) {
                Ok(Some(n)) => self.auth_sent += n,
                Ok(None) => break,
                Err(_) => return self.internal_error(),
            }
        }
        let mut eof = false;
        loop {
            match c.read_append(&mut self.auth_resp, 4096) {
                Ok(Some(0)) => {
                    eof = true;
                    break;
                }
                Ok(Some(_)) if self.auth_resp.len() > 64 * 1024 => break,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return self.internal_error(),
            }
        }
        let Some(answer) = auth::parse(&self.auth_resp, eof || self.auth_resp.len() > 64 * 1024) else {
            let me = self.me();
            let want = if self.auth_sent < self.auth_req.len() { sys::EV_WRITE | sys::EV_READ } else { sys::EV_READ };
            // SAFETY: as in start_auth.
            return match unsafe { c.watch_raw(want, Some(on_auth), me) } {
                Ok(()) => Flow::Go,
                Err(_) => self.internal_error(),
            };
        };
        c.close();
        self.auth_conn = None;
        match answer {
            Answer::Bad(why) => {
                log(sys::LOG_ERR, &format!("auth http server {} {why} while in http auth state, client: {}", self.srv.auth.addr, self.client_ip));
                self.internal_error()
            }
            Answer::Fail { msg, wait, code } => {
                log(sys::LOG_INFO, &format!("client login failed: \"{msg}\" while in http auth state, client: {}, login: \"{}\"", self.client_ip, String::from_utf8_lossy(&self.login)));
                self.auth_code = code;
                let reply = self.refusal_reply(&msg);
                match wait {
                    Some(secs) => {
                        self.refusal = Some(Refusal { reply });
                        self.phase = Phase::AuthWait;
                        self.arm(secs.saturating_mul(1000));
                        Flow::Go
                    }
                    None => {
                        self.send(&reply);
                        self.quit = true;
                        self.phase = Phase::Commands;
                        self.after_output()
                    }
                }
            }
            Answer::Ok { server, user, pass } => {
                if let Some(u) = user {
                    self.login = u;
                }
                let smtp_needs_pass = self.srv.proto == Proto::Smtp && self.srv.smtp_proxy_auth && self.method != Method::None;
                if pass.is_none() && smtp_needs_pass && self.passwd.is_empty() {
                    log(sys::LOG_ERR, &format!("no password available for proxy_smtp_auth, client: {}, login: \"{}\"", self.client_ip, String::from_utf8_lossy(&self.login)));
                    return self.internal_error();
                }
                match pass {
                    Some(p) => self.passwd = p,
                    // SMTP logs in with XCLIENT, not the password.
                    None if self.srv.proto != Proto::Smtp && matches!(self.method, Method::Apop | Method::CramMd5 | Method::External) => {
                        log(sys::LOG_ERR, &format!("auth http server {} did not send password while in http auth state, client: {}", self.srv.auth.addr, self.client_ip));
                        return self.internal_error();
                    }
                    None => {}
                }
                self.connect_backend(server)
            }
        }
    }

    /// The answer to a refused login.
    fn refusal_reply(&self, msg: &str) -> Vec<u8> {
        match self.srv.proto {
            Proto::Imap => {
                let tag = if self.tag.is_empty() { b"* ".to_vec() } else { self.tag.clone() };
                [&tag[..], b"NO ", msg.as_bytes(), b"\r\n"].concat()
            }
            Proto::Pop3 => format!("-ERR {msg}\r\n").into_bytes(),
            Proto::Smtp => format!("{} {msg}\r\n", self.auth_code.as_deref().unwrap_or("535 5.7.0")).into_bytes(),
        }
    }

    /// After `Auth-Wait`: the refusal goes out and commands resume.
    fn wait_over(&mut self) -> Flow {
        if let Some(r) = self.refusal.take() {
            self.send(&r.reply);
        }
        self.phase = Phase::Commands;
        self.state = 0;
        self.tag.clear();
        self.literals_acked = 0;
        self.login.clear();
        self.passwd.clear();
        if self.srv.proto == Proto::Smtp {
            smtp::reset_after_refusal(self);
        }
        self.arm(self.srv.timeout);
        if self.flush() == Flow::Close {
            return Flow::Close;
        }
        self.commands()
    }

    // ---- the backend -------------------------------------------------

    fn connect_backend(&mut self, addr: String) -> Flow {
        self.upstream = addr;
        self.phase = Phase::Backend;
        self.bstate = 0;
        self.bbuf.clear();
        let me = self.me();
        // SAFETY: the session outlives the connection (Drop closes it).
        match unsafe { io::Conn::connect_raw(&self.upstream, self.srv.timeout, on_backend, me) } {
            Ok(c) => self.backend = Some(c),
            Err(rc) => {
                log(sys::LOG_ERR, &format!("cannot connect to upstream {} (rc {rc}), client: {}", self.upstream, self.client_ip));
                return self.internal_error();
            }
        }
        self.arm(self.srv.timeout);
        Flow::Go
    }

    /// Sends a line to the backend during the login (it is short and the
    /// connection fresh: a partial write is an error, as in nginx).
    pub fn send_backend(&mut self, line: &[u8]) -> bool {
        let Some(b) = self.backend else { return false };
        self.bbuf.clear();
        matches!(b.write(line), Ok(Some(n)) if n == line.len())
    }

    fn backend_event(&mut self, ev: u32) -> Flow {
        let Some(b) = self.backend else { return Flow::Go };
        if ev & sys::EV_ERROR != 0 {
            let (_, why) = b.error();
            log(sys::LOG_ERR, &format!("{why} while connecting to upstream, client: {}, upstream: {}", self.client_ip, self.upstream));
            return self.internal_error();
        }
        loop {
            let room = self.srv.proxy_buffer.saturating_sub(self.bbuf.len());
            if room == 0 {
                log(sys::LOG_ERR, &format!("upstream sent too long response line, client: {}, upstream: {}", self.client_ip, self.upstream));
                return self.internal_error();
            }
            match b.read_append(&mut self.bbuf, room) {
                Ok(Some(0)) | Err(_) => {
                    log(sys::LOG_ERR, &format!("upstream closed the connection while logging in, client: {}, upstream: {}", self.client_ip, self.upstream));
                    return self.internal_error();
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        // A complete answer ends a read with CRLF (nginx's test).
        if self.bbuf.len() < 4 || !self.bbuf.ends_with(b"\r\n") {
            return self.watch_backend();
        }
        let step = match self.srv.proto {
            Proto::Imap => imap::backend(self),
            Proto::Pop3 => pop3::backend(self),
            Proto::Smtp => smtp::backend(self),
        };
        match step {
            Backend::Sent => {
                self.arm(self.srv.timeout);
                self.watch_backend()
            }
            Backend::Again => self.watch_backend(),
            Backend::LoggedIn => self.handover(),
            Backend::Refused => {
                let line = String::from_utf8_lossy(self.bbuf.strip_suffix(b"\r\n").unwrap_or(&self.bbuf)).into_owned();
                if self.srv.pass_error_message {
                    log(sys::LOG_INFO, &format!("upstream sent invalid response: \"{line}\", client: {}, upstream: {}", self.client_ip, self.upstream));
                    let bytes = std::mem::take(&mut self.bbuf);
                    self.drop_upstreams();
                    self.send(&bytes);
                    self.quit = true;
                    self.phase = Phase::Commands;
                    self.after_output()
                } else {
                    log(sys::LOG_ERR, &format!("upstream sent invalid response: \"{line}\", client: {}, upstream: {}", self.client_ip, self.upstream));
                    self.internal_error()
                }
            }
            Backend::Error => self.internal_error(),
        }
    }

    fn watch_backend(&mut self) -> Flow {
        let Some(b) = self.backend else { return Flow::Close };
        let me = self.me();
        // SAFETY: as in connect_backend.
        match unsafe { b.watch_raw(sys::EV_READ, Some(on_backend), me) } {
            Ok(()) => Flow::Go,
            Err(_) => self.internal_error(),
        }
    }

    /// Logged in: what the backend said last goes to the client (SMTP
    /// may have replaced it), then both connections go to the relay.
    fn handover(&mut self) -> Flow {
        log(sys::LOG_INFO, &format!("client logged in, client: {}, login: \"{}\", upstream: {}", self.client_ip, String::from_utf8_lossy(&self.login), self.upstream));
        let last = std::mem::take(&mut self.bbuf);
        self.send(&last);
        self.phase = Phase::Handover;
        io::cancel_timer(self.timer);
        self.timer = 0;
        if let Some(b) = self.backend {
            let _ = b.unwatch();
        }
        if self.flush() == Flow::Close {
            return Flow::Close;
        }
        if self.out.is_empty() {
            self.start_relay()
        } else {
            self.arm(self.srv.timeout);
            self.watch_client()
        }
    }

    fn start_relay(&mut self) -> Flow {
        let Some(b) = self.backend else { return Flow::Close };
        // Commands the client pipelined after its login go first.
        if !self.inbuf.is_empty() {
            let pending = std::mem::take(&mut self.inbuf);
            if !matches!(b.write(&pending), Ok(Some(n)) if n == pending.len()) {
                return Flow::Close;
            }
        }
        // nginx's proxy_timeout: the client silent that long ends it.
        let _ = self.client.set_idle(self.srv.proxy_timeout);
        // SAFETY: two live connections this session owns; from here the
        // host owns them, and relay_done needs no session.
        if unsafe { self.client.relay_raw(b, Some(relay_done), std::ptr::null_mut()) }.is_err() {
            return Flow::Close;
        }
        self.relayed = true;
        self.backend = None;
        Flow::Close
    }

    fn timer_event(&mut self) -> Flow {
        self.timer = 0;
        match self.phase {
            Phase::Delay => {
                self.phase = Phase::Commands;
                smtp::greet(self);
                self.after_output()
            }
            Phase::Commands | Phase::Handover | Phase::TlsPending | Phase::Handshake => {
                log(sys::LOG_INFO, &format!("client timed out, client: {}", self.client_ip));
                Flow::Close
            }
            Phase::Auth => {
                log(sys::LOG_ERR, &format!("auth http server {} timed out while in http auth state, client: {}", self.srv.auth.addr, self.client_ip));
                self.internal_error()
            }
            Phase::AuthWait => self.wait_over(),
            Phase::Backend => {
                log(sys::LOG_INFO, &format!("upstream timed out while logging in, client: {}, upstream: {}", self.client_ip, self.upstream));
                self.internal_error()
            }
        }
    }
}

/// A backend login step's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Backend {
    /// The next line went out.
    Sent,
    /// The answer is not complete yet.
    Again,
    /// Logged in: hand over.
    LoggedIn,
    /// The backend refused (its answer is in `bbuf`).
    Refused,
    /// Could not send.
    Error,
}

impl Drop for Session {
    fn drop(&mut self) {
        io::cancel_timer(self.timer);
        self.drop_upstreams();
        if !self.relayed {
            self.client.close();
        }
    }
}

/// Runs a handler on the session behind `data`; frees it when the
/// handler is done with it, or panicked.
fn run(data: *mut c_void, f: impl FnOnce(&mut Session) -> Flow) {
    let p = data as *mut Session;
    // SAFETY: data is a live boxed Session: every registration is undone
    // by its Drop, so no callback outlives it.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(unsafe { &mut *p })));
    match r {
        Ok(Flow::Go) => {}
        Ok(Flow::Close) => {
            // SAFETY: made by Box::into_raw in on_accept; freed once, here.
            drop(unsafe { Box::from_raw(p) });
        }
        Err(_) => {
            log(sys::LOG_ALERT, "mail: a session handler panicked; the session is closed");
            // SAFETY: as above.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

unsafe extern "C" fn on_client(_c: *mut sys::Conn, ev: u32, data: *mut c_void) {
    run(data, |s| s.client_event(ev));
}

unsafe extern "C" fn on_auth(_c: *mut sys::Conn, ev: u32, data: *mut c_void) {
    run(data, |s| s.auth_event(ev));
}

unsafe extern "C" fn on_backend(_c: *mut sys::Conn, ev: u32, data: *mut c_void) {
    run(data, |s| s.backend_event(ev));
}

unsafe extern "C" fn on_tls(_c: *mut sys::Conn, ev: u32, data: *mut c_void) {
    run(data, |s| s.tls_event(ev));
}

unsafe extern "C" fn on_timer(data: *mut c_void) {
    run(data, |s| s.timer_event());
}

unsafe extern "C" fn relay_done(_r: *mut sys::Request, _rc: sys::Rc, _data: *mut c_void) {}

/// A listener's accept callback: `data` is its [`Listen`].
pub unsafe extern "C" fn on_accept(c: *mut sys::Conn, data: *mut c_void) {
    let conn = io::Conn::from_raw(c);
    // SAFETY: data is a Listen owned by the server's configuration object,
    // alive for the generation (see crate::listen).
    let l = unsafe { (data as *const Listen).as_ref() };
    let srv = l.and_then(|l| unsafe { l.conf.as_ref() }).and_then(|c| c.server.clone());
    let (Some(l), Some(srv)) = (l, srv) else {
        conn.close();
        return;
    };
    let ssl = l.ssl;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let s = Box::into_raw(Box::new(Session::new(srv, conn)));
        run(s.cast(), |s| {
            s.arm(s.srv.timeout);
            if ssl {
                s.greet_after_tls = true;
                return s.begin_tls();
            }
            s.greet()
        });
    }));
    if r.is_err() {
        log(sys::LOG_ALERT, "mail: accepting a session panicked");
    }
}

/// A command line's verb (upper case) and its space-separated words.
pub fn words(line: &[u8]) -> (String, Vec<Vec<u8>>) {
    let mut w = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let verb = String::from_utf8_lossy(w.next().unwrap_or_default()).to_ascii_uppercase();
    (verb, w.map(<[u8]>::to_vec).collect())
}

impl Session {
    /// Takes the next complete line from the client's input.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let (line, used) = take_line(&self.inbuf)?;
        let line = line.to_vec();
        self.inbuf.drain(..used);
        Some(line)
    }
}

/// Splits the first line (LF-terminated, CR dropped) off `buf`:
/// `(line, bytes used)`.
pub fn take_line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..nl];
    Some((line.strip_suffix(b"\r").unwrap_or(line), nl + 1))
}

/// Base64-decodes a SASL answer line.
pub fn b64(line: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(line).ok()
}

/// Base64-encodes.
pub fn b64e(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
