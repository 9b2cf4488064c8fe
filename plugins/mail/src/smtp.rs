//! SMTP before the relay: nginx's commands (HELO, EHLO, AUTH, MAIL, RCPT,
//! RSET, NOOP, QUIT), then the backend login: EHLO, XCLIENT (`xclient
//! on`, the default), the client's own HELO/EHLO, and then AUTH PLAIN
//! (`proxy_smtp_auth on`) or, for `smtp_auth none`, the client's MAIL
//! FROM and RCPT TO.

use crate::method;
use crate::sasl;
use crate::session::{self, Backend, Cmd, Method, Session};


/// The greeting.
pub fn greet(s: &mut Session) {
    let g = format!("220 {} ESMTP ready\r\n", s.srv.name);
    s.send(g.as_bytes());
}

/// After a refused login (with Auth-Wait) the envelope starts over.
pub fn reset_after_refusal(s: &mut Session) {
    s.smtp_from.clear();
    s.smtp_to.clear();
}

/// The EHLO answer: the server name, then each capability.
fn ehlo_reply(s: &Session) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = vec![s.srv.name.as_bytes()];
    let caps = s.capability();
    lines.extend(caps.split(|&b| b == b'\n').filter(|l| !l.is_empty()));
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        out.extend_from_slice(if i + 1 == lines.len() { b"250 " } else { b"250-" });
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Handles the next command line in the session's buffer.
pub fn command(s: &mut Session) -> Cmd {
    let Some(line) = s.next_line() else { return Cmd::Again };
    if sasl::waiting(s) {
        return sasl::answer(s, b"334 ", &line).unwrap_or_else(|| s.bad());
    }
    let (verb, args) = session::words(&line);
    match verb.as_str() {
        "HELO" | "EHLO" => {
            if args.len() != 1 {
                s.send(b"501 5.5.4 Invalid argument\r\n");
                return Cmd::Next;
            }
            s.smtp_helo = args[0].clone();
            s.esmtp = verb == "EHLO";
            s.smtp_from.clear();
            s.smtp_to.clear();
            if s.esmtp {
                let r = ehlo_reply(s);
                s.send(&r);
            } else {
                let r = format!("250 {}\r\n", s.srv.name);
                s.send(r.as_bytes());
            }
        }
        "STARTTLS" if s.can_starttls() => {
            s.send(b"220 2.0.0 Start TLS\r\n");
            return Cmd::StartTls;
        }
        "AUTH" if s.tls_required() => return s.bad(),
        "AUTH" => return auth(s, args),
        "MAIL" if s.tls_required() => s.send(b"530 5.7.0 Must issue a STARTTLS command first\r\n"),
        "MAIL" => {
            if s.srv.methods & method::NONE == 0 {
                s.send(b"530 5.7.0 Authentication required\r\n");
                return Cmd::Next;
            }
            if args.is_empty() {
                s.send(b"501 5.5.4 Invalid argument\r\n");
                return Cmd::Next;
            }
            s.smtp_from = line;
            s.send(b"250 2.1.0 OK\r\n");
        }
        "RCPT" => {
            if s.smtp_from.is_empty() {
                s.send(b"503 5.5.1 Bad sequence of commands\r\n");
                return Cmd::Next;
            }
            if args.is_empty() {
                s.send(b"501 5.5.4 Invalid argument\r\n");
                return Cmd::Next;
            }
            s.smtp_to = line;
            s.login.clear();
            s.passwd.clear();
            s.method = Method::None;
            return Cmd::Auth;
        }
        "RSET" => {
            s.smtp_from.clear();
            s.smtp_to.clear();
            s.send(b"250 2.0.0 OK\r\n");
        }
        "NOOP" => s.send(b"250 2.0.0 OK\r\n"),
        "QUIT" => {
            s.send(b"221 2.0.0 Bye\r\n");
            return Cmd::Quit;
        }
        _ => return s.bad(),
    }
    Cmd::Next
}

fn auth(s: &mut Session, args: Vec<Vec<u8>>) -> Cmd {
    if s.srv.methods & !method::NONE == 0 {
        return s.bad();
    }
    let Some(mech) = args.first() else {
        s.send(b"501 5.5.4 Invalid argument\r\n");
        return Cmd::Next;
    };
    if args.len() > 2 {
        return s.bad();
    }
    // Every mechanism must be listed in smtp_auth.
    let all = method::PLAIN | method::LOGIN | method::CRAM_MD5 | method::EXTERNAL;
    sasl::start(s, b"334 ", mech, args.get(1).map(Vec::as_slice), all).unwrap_or_else(|| s.bad())
}

/// The reply code of a complete (possibly multi-line) answer, or None
/// while its last line has not come.
fn reply_code(b: &[u8]) -> Option<&[u8]> {
    let body = b.strip_suffix(b"\r\n")?;
    let last = body.rsplit(|&c| c == b'\n').next()?;
    if last.len() >= 4 && last[3] == b'-' {
        return None;
    }
    Some(&last[..last.len().min(3)])
}

/// The lines the backend login sends after the greeting, each with the
/// reply codes that let it go on (empty: any), as nginx's SMTP proxy.
fn plan(s: &Session) -> Vec<(Vec<u8>, &'static [&'static [u8]])> {
    const OK250: &[&[u8]] = &[b"250"];
    const OK2X0: &[&[u8]] = &[b"220", b"250"];
    let srv = &s.srv;
    let mut steps = Vec::new();
    let verb: &[u8] = if s.esmtp || srv.xclient { b"EHLO " } else { b"HELO " };
    steps.push(([verb, srv.name.as_bytes(), b"\r\n"].concat(), OK250));
    if srv.xclient {
        let addr = if s.client_ip.contains(':') { format!("IPV6:{}", s.client_ip) } else { s.client_ip.clone() };
        let mut line = format!("XCLIENT ADDR={addr}").into_bytes();
        if !s.login.is_empty() && !srv.smtp_proxy_auth {
            line.extend_from_slice(b" LOGIN=");
            line.extend_from_slice(xtext(&s.login).as_bytes());
        }
        line.extend_from_slice(b" NAME=[UNAVAILABLE]\r\n");
        steps.push((line, OK2X0));
        if !s.smtp_helo.is_empty() {
            let verb: &[u8] = if s.esmtp { b"EHLO " } else { b"HELO " };
            steps.push(([verb, &s.smtp_helo[..], b"\r\n"].concat(), OK2X0));
        }
    }
    if s.method == Method::None {
        steps.push(([&s.smtp_from[..], b"\r\n"].concat(), OK250));
        steps.push(([&s.smtp_to[..], b"\r\n"].concat(), &[]));
    } else if srv.smtp_proxy_auth {
        let creds = [b"\0", &s.login[..], b"\0", &s.passwd[..]].concat();
        steps.push((format!("AUTH PLAIN {}\r\n", session::b64e(&creds)).into_bytes(), &[b"235"]));
    }
    steps
}

/// One step of the backend login, on a complete answer in `bbuf`
/// (`bstate` lines of the plan have been sent).
pub fn backend(s: &mut Session) -> Backend {
    let Some(code) = reply_code(&s.bbuf) else { return Backend::Again };
    let steps = plan(s);
    let at = s.bstate as usize;
    let want: &[&[u8]] = if at == 0 { &[b"220"] } else { steps[at - 1].1 };
    if !want.is_empty() && !want.contains(&code) {
        return Backend::Refused;
    }
    let Some((line, _)) = steps.get(at) else { return logged_in(s) };
    s.bstate += 1;
    if s.send_backend(line) {
        Backend::Sent
    } else {
        Backend::Error
    }
}

/// Logged in: an authenticated client hears "235"; a `smtp_auth none`
/// one hears the backend's answer to its RCPT TO.
fn logged_in(s: &mut Session) -> Backend {
    if s.method != Method::None {
        s.bbuf = b"235 2.0.0 OK\r\n".to_vec();
    }
    Backend::LoggedIn
}

/// RFC 1891 xtext ("+XX" for '+', '=' and bytes outside '!'..'~').
fn xtext(v: &[u8]) -> String {
    let mut s = String::new();
    for &b in v {
        if !(b'!'..=b'~').contains(&b) || b == b'+' || b == b'=' {
            s.push_str(&format!("+{b:02X}"));
        } else {
            s.push(b as char);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes() {
        assert_eq!(reply_code(b"250 ok\r\n"), Some(&b"250"[..]));
        assert_eq!(reply_code(b"250-a\r\n250-b\r\n"), None);
        assert_eq!(reply_code(b"250-a\r\n250 b\r\n"), Some(&b"250"[..]));
        assert_eq!(reply_code(b"250-a\r\n"), None);
    }

    #[test]
    fn xtext_escapes() {
        assert_eq!(xtext(b"a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
