//! POP3 before login: nginx's commands (CAPA, USER, PASS, APOP, AUTH,
//! NOOP, QUIT), then the backend login with USER and PASS.

use crate::method;
use crate::sasl;
use crate::session::{self, Backend, Cmd, Method, Session};

// Session::state between commands (SASL exchanges use sasl's).
const START: u8 = 0;
const USER: u8 = 1;

/// The greeting; with APOP or CRAM-MD5 enabled it carries the challenge.
pub fn greet(s: &mut Session) {
    if s.srv.methods & (method::APOP | method::CRAM_MD5) != 0 {
        s.make_salt();
        let g = format!("+OK POP3 ready {}\r\n", s.salt);
        s.send(g.as_bytes());
    } else {
        s.send(b"+OK POP3 ready\r\n");
    }
}

/// Handles the next command line in the session's buffer.
pub fn command(s: &mut Session) -> Cmd {
    let Some(line) = s.next_line() else { return Cmd::Again };
    if sasl::waiting(s) {
        return sasl::answer(s, b"+ ", &line).unwrap_or_else(|| s.bad());
    }
    let (name, args) = session::words(&line);
    match (s.state, name.as_str()) {
        (_, "QUIT") => {
            s.send(b"+OK\r\n");
            return Cmd::Quit;
        }
        (_, "NOOP") => s.send(b"+OK\r\n"),
        (_, "CAPA") => {
            let c = s.capability();
            s.send(&c);
        }
        (START, "STLS") if s.can_starttls() => {
            s.send(b"+OK\r\n");
            return Cmd::StartTls;
        }
        (START, "USER" | "APOP" | "AUTH") if s.tls_required() => return s.bad(),
        (START, "USER") => {
            if args.len() != 1 {
                return s.bad();
            }
            s.login = args[0].clone();
            s.state = USER;
            s.send(b"+OK\r\n");
        }
        (USER, "PASS") => {
            if args.len() != 1 {
                return s.bad();
            }
            s.passwd = args[0].clone();
            s.method = Method::Plain;
            return Cmd::Auth;
        }
        (START, "APOP") => {
            if args.len() != 2 || s.srv.methods & method::APOP == 0 {
                return s.bad();
            }
            s.login = args[0].clone();
            s.passwd = args[1].clone();
            s.method = Method::Apop;
            return Cmd::Auth;
        }
        (START, "AUTH") => return auth(s, args),
        _ => return s.bad(),
    }
    Cmd::Next
}

fn auth(s: &mut Session, args: Vec<Vec<u8>>) -> Cmd {
    let Some(mech) = args.first() else {
        let a = s.srv.caps.auth.clone();
        s.send(&a);
        return Cmd::Next;
    };
    if args.len() > 2 {
        return s.bad();
    }
    sasl::start(s, b"+ ", mech, args.get(1).map(Vec::as_slice), method::CRAM_MD5 | method::EXTERNAL).unwrap_or_else(|| s.bad())
}

/// One step of the backend login: greeting, USER, PASS.
pub fn backend(s: &mut Session) -> Backend {
    if !s.bbuf.starts_with(b"+OK") {
        return Backend::Refused;
    }
    let line = match s.bstate {
        0 => [b"USER ", &s.login[..], b"\r\n"].concat(),
        1 => [b"PASS ", &s.passwd[..], b"\r\n"].concat(),
        _ => return Backend::LoggedIn,
    };
    s.bstate += 1;
    if s.send_backend(&line) {
        Backend::Sent
    } else {
        Backend::Error
    }
}
