//! IMAP before login: nginx's commands (CAPABILITY, NOOP, LOGOUT, ID,
//! LOGIN, AUTHENTICATE) with tags, quoted strings and literals, then the
//! backend login (`tag LOGIN {n}` with literals, as nginx sends it).

use crate::method;
use crate::sasl;
use crate::session::{take_line, Backend, Cmd, Method, Session};

/// Session::state between commands (SASL exchanges use sasl's).
const START: u8 = 0;

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Incomplete; `sync_literals` synchronizing literals announced so
    /// far (each wants a "+ OK" before its data comes).
    Again { sync_literals: usize },
    /// A whole command: tag (with its space), name (upper case),
    /// arguments, bytes used.
    Command { tag: Vec<u8>, name: String, args: Vec<Vec<u8>>, used: usize },
    /// Not IMAP: skip `used` bytes and answer BAD (with the tag if one
    /// was read).
    Invalid { tag: Vec<u8>, used: usize },
}

fn is_atom(b: u8) -> bool {
    b > b' ' && b < 0x7f && !b"(){%*\"\\]".contains(&b)
}

/// Parses one command from the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let skip = |tag: Vec<u8>| match buf.iter().position(|&b| b == b'\n') {
        Some(i) => Parsed::Invalid { tag, used: i + 1 },
        None => Parsed::Again { sync_literals: 0 },
    };
    let mut i = 0;
    while i < buf.len() && (is_atom(buf[i]) || buf[i] == b'*') && buf[i] != b'+' {
        i += 1;
    }
    if i == buf.len() {
        return Parsed::Again { sync_literals: 0 };
    }
    if i == 0 || buf[i] != b' ' {
        return skip(Vec::new());
    }
    let tag = buf[..=i].to_vec();
    i += 1;
    let start = i;
    while i < buf.len() && buf[i].is_ascii_alphanumeric() {
        i += 1;
    }
    if i == buf.len() {
        return Parsed::Again { sync_literals: 0 };
    }
    let name = String::from_utf8_lossy(&buf[start..i]).to_ascii_uppercase();
    if name.is_empty() {
        return skip(tag);
    }
    let mut args = Vec::new();
    let mut sync = 0;
    loop {
        match buf.get(i) {
            None => return Parsed::Again { sync_literals: sync },
            Some(b'\r') if buf.get(i + 1) == Some(&b'\n') => return Parsed::Command { tag, name, args, used: i + 2 },
            Some(b'\r') if i + 1 == buf.len() => return Parsed::Again { sync_literals: sync },
            Some(b'\n') => return Parsed::Command { tag, name, args, used: i + 1 },
            Some(b' ') => i += 1,
            Some(_) => return skip(tag),
        }
        match buf.get(i) {
            None => return Parsed::Again { sync_literals: sync },
            Some(b'"') => {
                let mut v = Vec::new();
                i += 1;
                loop {
                    match buf.get(i) {
                        None => return Parsed::Again { sync_literals: sync },
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match buf.get(i + 1) {
                            None => return Parsed::Again { sync_literals: sync },
                            Some(&c @ (b'\\' | b'"')) => {
                                v.push(c);
                                i += 2;
                            }
                            Some(_) => return skip(tag),
                        },
                        Some(b'\r' | b'\n') => return skip(tag),
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                args.push(v);
            }
            Some(b'{') => {
                let digits = i + 1;
                let mut j = digits;
                while j < buf.len() && buf[j].is_ascii_digit() {
                    j += 1;
                }
                let Ok(n) = std::str::from_utf8(&buf[digits..j]).unwrap_or("").parse::<usize>() else {
                    return if j == buf.len() { Parsed::Again { sync_literals: sync } } else { skip(tag) };
                };
                let plus = buf.get(j) == Some(&b'+');
                if plus {
                    j += 1;
                }
                match (buf.get(j), buf.get(j + 1), buf.get(j + 2)) {
                    (Some(b'}'), Some(b'\r'), Some(b'\n')) => j += 3,
                    (Some(b'}'), Some(b'\n'), _) => j += 2,
                    (None, ..) | (Some(b'}'), None, _) | (Some(b'}'), Some(b'\r'), None) => return Parsed::Again { sync_literals: sync },
                    _ => return skip(tag),
                }
                if !plus {
                    sync += 1;
                }
                if buf.len() < j + n {
                    return Parsed::Again { sync_literals: sync };
                }
                args.push(buf[j..j + n].to_vec());
                i = j + n;
            }
            Some(_) => {
                let s = i;
                while i < buf.len() && buf[i] != b' ' && buf[i] != b'\r' && buf[i] != b'\n' {
                    i += 1;
                }
                args.push(buf[s..i].to_vec());
            }
        }
    }
}

/// Handles the next command (or SASL answer) in the session's buffer.
pub fn command(s: &mut Session) -> Cmd {
    if sasl::waiting(s) {
        let Some(line) = s.next_line() else { return Cmd::Again };
        return sasl::answer(s, b"+ ", &line).unwrap_or_else(|| s.bad());
    }
    match parse(&s.inbuf) {
        Parsed::Again { sync_literals } => {
            if sync_literals > s.literals_acked {
                s.literals_acked = sync_literals;
                s.send(b"+ OK\r\n");
            }
            Cmd::Again
        }
        Parsed::Invalid { tag, used } => {
            s.inbuf.drain(..used);
            s.literals_acked = 0;
            s.tag = tag;
            s.invalid();
            s.tag.clear();
            Cmd::Next
        }
        Parsed::Command { tag, name, args, used } => {
            s.inbuf.drain(..used);
            s.literals_acked = 0;
            s.tag = tag;
            let r = run(s, &name, args);
            if r == Cmd::Next && s.state == START {
                s.tag.clear();
            }
            r
        }
    }
}

fn ok(s: &mut Session) {
    let line = [&s.tag[..], b"OK completed\r\n"].concat();
    s.send(&line);
}

fn run(s: &mut Session, name: &str, mut args: Vec<Vec<u8>>) -> Cmd {
    match name {
        "CAPABILITY" => {
            let caps = s.capability();
            s.send(&caps);
            ok(s);
        }
        "NOOP" => ok(s),
        "LOGOUT" => {
            s.send(b"* BYE\r\n");
            ok(s);
            return Cmd::Quit;
        }
        "ID" => {
            s.send(b"* ID NIL\r\n");
            ok(s);
        }
        "STARTTLS" if s.can_starttls() => {
            ok(s);
            return Cmd::StartTls;
        }
        "LOGIN" | "AUTHENTICATE" if s.tls_required() => return s.bad(),
        "LOGIN" => {
            if args.len() != 2 || args[0].is_empty() {
                return s.bad();
            }
            s.passwd = args.pop().unwrap_or_default();
            s.login = args.pop().unwrap_or_default();
            s.method = Method::Plain;
            return Cmd::Auth;
        }
        "AUTHENTICATE" => return authenticate(s, args),
        _ => return s.bad(),
    }
    Cmd::Next
}

fn authenticate(s: &mut Session, args: Vec<Vec<u8>>) -> Cmd {
    if args.is_empty() || args.len() > 2 {
        return s.bad();
    }
    // nginx checks CRAM-MD5 and EXTERNAL against imap_auth; LOGIN and
    // PLAIN are always taken.
    sasl::start(s, b"+ ", &args[0], args.get(1).map(Vec::as_slice), method::CRAM_MD5 | method::EXTERNAL).unwrap_or_else(|| s.bad())
}

// Backend login steps (Session::bstate).
const B_GREETING: u8 = 0;
const B_LOGIN: u8 = 1;
const B_USER: u8 = 2;
const B_PASS: u8 = 3;

/// One step of the backend login, on a complete answer in `bbuf`.
pub fn backend(s: &mut Session) -> Backend {
    let b = &s.bbuf;
    match s.bstate {
        B_GREETING => {
            if !b.starts_with(b"* OK") {
                return Backend::Refused;
            }
            let line = [&s.tag[..], format!("LOGIN {{{}}}\r\n", s.login.len()).as_bytes()].concat();
            s.bstate = B_LOGIN;
            send(s, &line)
        }
        B_LOGIN => {
            if !b.starts_with(b"+") {
                return Backend::Refused;
            }
            let line = [&s.login[..], format!(" {{{}}}\r\n", s.passwd.len()).as_bytes()].concat();
            s.bstate = B_USER;
            send(s, &line)
        }
        B_USER => {
            if !b.starts_with(b"+") {
                return Backend::Refused;
            }
            let line = [&s.passwd[..], b"\r\n"].concat();
            s.bstate = B_PASS;
            send(s, &line)
        }
        _ => {
            // Untagged lines (a CAPABILITY update) may come first; the
            // tagged one decides.
            let mut rest = &b[..];
            while let Some((line, used)) = take_line(rest) {
                if line.starts_with(&s.tag) {
                    return if line[s.tag.len()..].starts_with(b"OK") { Backend::LoggedIn } else { Backend::Refused };
                }
                if !line.starts_with(b"* ") {
                    return Backend::Refused;
                }
                rest = &rest[used..];
            }
            Backend::Again
        }
    }
}

fn send(s: &mut Session, line: &[u8]) -> Backend {
    if s.send_backend(line) {
        Backend::Sent
    } else {
        Backend::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(tag: &str, name: &str, args: &[&[u8]], used: usize) -> Parsed {
        Parsed::Command { tag: tag.as_bytes().to_vec(), name: name.into(), args: args.iter().map(|a| a.to_vec()).collect(), used }
    }

    #[test]
    fn commands() {
        assert_eq!(parse(b"a01 LOGIN user pass\r\n"), cmd("a01 ", "LOGIN", &[b"user", b"pass"], 21));
        assert_eq!(parse(b"a01 noop\r\nx"), cmd("a01 ", "NOOP", &[], 10));
        assert_eq!(parse(b"a01 LOGIN \"te\\\\\\\"st\" \"se\\\"cret\"\r\n"), cmd("a01 ", "LOGIN", &[b"te\\\"st", b"se\"cret"], 33));
        assert_eq!(parse(b"a01 LOG"), Parsed::Again { sync_literals: 0 });
        assert_eq!(parse(b"a01 LOGIN {4}\r\n"), Parsed::Again { sync_literals: 1 });
        assert_eq!(parse(b"a01 LOGIN {4}\r\nuser {4}\r\n"), Parsed::Again { sync_literals: 2 });
        assert_eq!(parse(b"a01 LOGIN {4}\r\nuser {4}\r\npass\r\n"), cmd("a01 ", "LOGIN", &[b"user", b"pass"], 31));
        assert_eq!(parse(b"a01 LOGIN {4+}\r\nuser {4+}\r\npass\r\n"), cmd("a01 ", "LOGIN", &[b"user", b"pass"], 33));
        assert_eq!(parse(b"a01 LOGIN {4+}\r\nus"), Parsed::Again { sync_literals: 0 });
        assert_eq!(parse(b"a03 FOOBAR {10+}\r\ntest test \r\na04 NOOP\r\n"), cmd("a03 ", "FOOBAR", &[b"test test "], 30));
        assert_eq!(parse(b"\r\n"), Parsed::Invalid { tag: vec![], used: 2 });
        assert_eq!(parse(b"a01 LOGIN \"x\ny\"\r\n"), Parsed::Invalid { tag: b"a01 ".to_vec(), used: 13 });
        assert_eq!(parse(b"a01 LOGIN {x}\r\n"), Parsed::Invalid { tag: b"a01 ".to_vec(), used: 15 });
    }
}
