//! SASL as nginx's mail modules speak it, for IMAP's AUTHENTICATE and
//! POP3's and SMTP's AUTH: PLAIN, LOGIN, CRAM-MD5 and EXTERNAL, with or
//! without an initial response. The protocols differ only in how a
//! challenge line starts ("+ " or "334 ") and in which mechanisms they
//! check against `*_auth`.

use crate::method;
use crate::session::{b64, b64e, Cmd, Method, Session};

/// Sub-states while a mechanism waits for the client's next line
/// (`Session::state`; the protocols number their own states below 10).
pub const LOGIN_USER: u8 = 10;
pub const LOGIN_PASS: u8 = 11;
pub const PLAIN: u8 = 12;
pub const CRAM: u8 = 13;
pub const EXTERNAL: u8 = 14;

/// True while a mechanism waits for an answer line.
pub fn waiting(s: &Session) -> bool {
    (LOGIN_USER..=EXTERNAL).contains(&s.state)
}

fn prompt(s: &mut Session, prefix: &[u8], text: &[u8], state: u8) -> Option<Cmd> {
    let line = [prefix, text, b"\r\n"].concat();
    s.send(&line);
    s.state = state;
    Some(Cmd::Next)
}

/// "authzid NUL login NUL password".
fn plain(s: &mut Session, line: &[u8]) -> Option<Cmd> {
    let d = b64(line)?;
    let mut parts = d.split(|&b| b == 0);
    let (Some(_authz), Some(user), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { return None };
    if user.is_empty() {
        return None;
    }
    s.login = user.to_vec();
    s.passwd = pass.to_vec();
    s.method = Method::Plain;
    Some(Cmd::Auth)
}

/// "login SP hex-digest" against the challenge (Auth-Salt).
fn cram(s: &mut Session, line: &[u8]) -> Option<Cmd> {
    let d = b64(line)?;
    let sp = d.iter().rposition(|&b| b == b' ')?;
    if sp == 0 || d.len() - sp - 1 != 32 {
        return None;
    }
    s.login = d[..sp].to_vec();
    s.passwd = d[sp + 1..].to_vec();
    s.method = Method::CramMd5;
    Some(Cmd::Auth)
}

fn user(line: &[u8]) -> Option<Vec<u8>> {
    b64(line).filter(|u| !u.is_empty())
}

fn external(s: &mut Session, line: &[u8]) -> Option<Cmd> {
    s.login = user(line)?;
    s.passwd.clear();
    s.method = Method::External;
    Some(Cmd::Auth)
}

/// Starts mechanism `mech` (with its initial response, if any): a
/// challenge goes out (Next) or the credentials are in (Auth). None: not
/// a mechanism this server takes (the protocol answers "invalid").
/// `checked` holds the methods that must be enabled in `*_auth` to be
/// used (CRAM-MD5 and EXTERNAL everywhere; PLAIN and LOGIN for SMTP).
pub fn start(s: &mut Session, prefix: &[u8], mech: &[u8], initial: Option<&[u8]>, checked: u32) -> Option<Cmd> {
    let mech = String::from_utf8_lossy(mech).to_ascii_uppercase();
    let (bit, m) = match mech.as_str() {
        "PLAIN" => (method::PLAIN, PLAIN),
        "LOGIN" => (method::LOGIN, LOGIN_USER),
        "CRAM-MD5" => (method::CRAM_MD5, CRAM),
        "EXTERNAL" => (method::EXTERNAL, EXTERNAL),
        _ => return None,
    };
    if checked & bit != 0 && s.srv.methods & bit == 0 {
        return None;
    }
    match (m, initial) {
        (PLAIN, None) => prompt(s, prefix, b"", PLAIN),
        (PLAIN, Some(i)) => plain(s, i),
        (LOGIN_USER, None) => prompt(s, prefix, b"VXNlcm5hbWU6", LOGIN_USER),
        (LOGIN_USER, Some(u)) => {
            s.login = user(u)?;
            prompt(s, prefix, b"UGFzc3dvcmQ6", LOGIN_PASS)
        }
        (CRAM, None) => {
            s.make_salt();
            let challenge = b64e(s.salt.as_bytes()).into_bytes();
            prompt(s, prefix, &challenge, CRAM)
        }
        (EXTERNAL, None) => prompt(s, prefix, b"VXNlcm5hbWU6", EXTERNAL),
        (EXTERNAL, Some(u)) => external(s, u),
        _ => None,
    }
}

/// The client's answer `line` to a challenge. None: not a valid answer
/// (the protocol answers "invalid"; the exchange is over either way).
pub fn answer(s: &mut Session, prefix: &[u8], line: &[u8]) -> Option<Cmd> {
    let state = std::mem::replace(&mut s.state, 0);
    match state {
        LOGIN_USER => {
            s.login = user(line)?;
            prompt(s, prefix, b"UGFzc3dvcmQ6", LOGIN_PASS)
        }
        LOGIN_PASS => {
            s.passwd = b64(line)?;
            s.method = Method::Plain;
            Some(Cmd::Auth)
        }
        PLAIN => plain(s, line),
        CRAM => cram(s, line),
        EXTERNAL => external(s, line),
        _ => None,
    }
}
