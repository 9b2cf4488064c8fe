//! POP3 before login: nginx's commands (CAPA, USER, PASS, APOP, AUTH,
//! NOOP, QUIT), then the backend login with USER and PASS.

use crate::method;
use crate::session::{self, cram_challenge, sasl_cram, sasl_plain, sasl_user, take_line, Backend, Cmd, Method, Session};

// Sub-states (Session::state).
const START: u8 = 0;
const USER: u8 = 1;
const AUTH_LOGIN_USER: u8 = 2;
const AUTH_LOGIN_PASS: u8 = 3;
const AUTH_PLAIN: u8 = 4;
const AUTH_CRAM: u8 = 5;
const AUTH_EXTERNAL: u8 = 6;

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

fn bad(s: &mut Session) -> Cmd {
    s.state = START;
    s.invalid();
    if s.quit {
        Cmd::Quit
    } else {
        Cmd::Next
    }
}

/// Handles the next command line in the session's buffer.
pub fn command(s: &mut Session) -> Cmd {
    let Some((line, used)) = take_line(&s.inbuf) else { return Cmd::Again };
    let line = line.to_vec();
    s.inbuf.drain(..used);
    match s.state {
        START | USER => {}
        _ => return sasl_answer(s, &line),
    }
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let name = String::from_utf8_lossy(words.next().unwrap_or_default()).to_ascii_uppercase();
    let args: Vec<Vec<u8>> = words.map(<[u8]>::to_vec).collect();
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
        (START, "USER" | "APOP" | "AUTH") if s.tls_required() => return bad(s),
        (START, "USER") => {
            if args.len() != 1 {
                return bad(s);
            }
            s.login = args[0].clone();
            s.state = USER;
            s.send(b"+OK\r\n");
        }
        (USER, "PASS") => {
            if args.len() != 1 {
                return bad(s);
            }
            s.passwd = args[0].clone();
            s.method = Method::Plain;
            return Cmd::Auth;
        }
        (START, "APOP") => {
            if args.len() != 2 || s.srv.methods & method::APOP == 0 {
                return bad(s);
            }
            s.login = args[0].clone();
            s.passwd = args[1].clone();
            s.method = Method::Apop;
            return Cmd::Auth;
        }
        (START, "AUTH") => return auth(s, args),
        _ => return bad(s),
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
        return bad(s);
    }
    let mech = String::from_utf8_lossy(mech).to_ascii_uppercase();
    match (mech.as_str(), args.get(1)) {
        ("PLAIN", None) => {
            s.state = AUTH_PLAIN;
            s.send(b"+ \r\n");
        }
        ("PLAIN", Some(i)) => {
            let i = i.clone();
            return if sasl_plain(s, &i) { Cmd::Auth } else { bad(s) };
        }
        ("LOGIN", None) => {
            s.state = AUTH_LOGIN_USER;
            s.send(b"+ VXNlcm5hbWU6\r\n");
        }
        ("LOGIN", Some(u)) => {
            let Some(u) = sasl_user(u) else { return bad(s) };
            s.login = u;
            s.state = AUTH_LOGIN_PASS;
            s.send(b"+ UGFzc3dvcmQ6\r\n");
        }
        ("CRAM-MD5", None) if s.srv.methods & method::CRAM_MD5 != 0 => {
            let c = cram_challenge(s);
            s.send(&c);
            s.state = AUTH_CRAM;
        }
        ("EXTERNAL", None) if s.srv.methods & method::EXTERNAL != 0 => {
            s.state = AUTH_EXTERNAL;
            s.send(b"+ VXNlcm5hbWU6\r\n");
        }
        ("EXTERNAL", Some(u)) if s.srv.methods & method::EXTERNAL != 0 => {
            let Some(u) = sasl_user(u) else { return bad(s) };
            s.login = u;
            s.passwd.clear();
            s.method = Method::External;
            return Cmd::Auth;
        }
        _ => return bad(s),
    }
    Cmd::Next
}

fn sasl_answer(s: &mut Session, line: &[u8]) -> Cmd {
    let state = s.state;
    s.state = START;
    match state {
        AUTH_LOGIN_USER => {
            let Some(u) = sasl_user(line) else { return bad(s) };
            s.login = u;
            s.state = AUTH_LOGIN_PASS;
            s.send(b"+ UGFzc3dvcmQ6\r\n");
            Cmd::Next
        }
        AUTH_LOGIN_PASS => match session::b64(line) {
            Some(p) => {
                s.passwd = p;
                s.method = Method::Plain;
                Cmd::Auth
            }
            None => bad(s),
        },
        AUTH_PLAIN if sasl_plain(s, line) => Cmd::Auth,
        AUTH_CRAM if sasl_cram(s, line) => Cmd::Auth,
        AUTH_EXTERNAL => match sasl_user(line) {
            Some(u) => {
                s.login = u;
                s.passwd.clear();
                s.method = Method::External;
                Cmd::Auth
            }
            None => bad(s),
        },
        _ => bad(s),
    }
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
