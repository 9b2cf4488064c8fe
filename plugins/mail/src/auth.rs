//! The `auth_http` exchange: nginx's request headers out, its `Auth-*`
//! answer headers in.

use crate::session::{Method, Session};
use crate::Proto;

/// What the authentication server said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Log in at `server` ("ip:port"), with these credentials if given.
    Ok { server: String, user: Option<Vec<u8>>, pass: Option<Vec<u8>> },
    /// Refused, with the message for the client, the seconds to wait
    /// before answering (then the client may try again; without it the
    /// session closes) and an SMTP code.
    Fail { msg: String, wait: Option<u64>, code: Option<String> },
    /// Not an answer we can use (the log says why).
    Bad(String),
}

/// nginx's escaping of Auth-User / Auth-Pass / SMTP envelope values:
/// space, `%` and control bytes become `%XX`.
pub fn escape(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len());
    for &b in v {
        if b <= b' ' || b == b'%' || b == 0x7f || b >= 0x80 {
            s.push_str(&format!("%{b:02X}"));
        } else {
            s.push(b as char);
        }
    }
    s
}

/// The request for this login attempt.
pub fn request(s: &Session) -> Vec<u8> {
    let srv = &s.srv;
    let mut r = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nAuth-Method: {}\r\nAuth-User: {}\r\nAuth-Pass: {}\r\n",
        srv.auth.uri,
        srv.auth.host,
        s.method.name(),
        escape(&s.login),
        escape(&s.passwd)
    );
    if !s.salt.is_empty() && matches!(s.method, Method::Apop | Method::CramMd5) {
        r.push_str(&format!("Auth-Salt: {}\r\n", s.salt));
    }
    r.push_str(&format!("Auth-Protocol: {}\r\nAuth-Login-Attempt: {}\r\nClient-IP: {}\r\n", srv.proto.name(), s.attempts, s.client_ip));
    if srv.proto == Proto::Smtp {
        // Without a resolver nginx sends this placeholder.
        r.push_str("Client-Host: [UNAVAILABLE]\r\n");
        if s.method == Method::None {
            r.push_str(&format!(
                "Auth-SMTP-Helo: {}\r\nAuth-SMTP-From: {}\r\nAuth-SMTP-To: {}\r\n",
                escape(&s.smtp_helo),
                escape(&s.smtp_from),
                escape(&s.smtp_to)
            ));
        }
    }
    for (k, v) in &srv.auth_headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Reads the answer once its head is complete (or the server closed):
/// None while more is needed.
pub fn parse(buf: &[u8], eof: bool) -> Option<Answer> {
    let end = find(buf, b"\r\n\r\n").map(|i| i + 4).or_else(|| find(buf, b"\n\n").map(|i| i + 2));
    let head = match end {
        Some(e) => &buf[..e],
        None if eof => buf,
        None => return None,
    };
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.") || !status.split(' ').nth(1).is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit())) {
        return Some(Answer::Bad(format!("sent invalid response: \"{status}\"")));
    }
    if end.is_none() {
        return Some(Answer::Bad("closed the connection before the end of its header".into()));
    }
    let (mut st, mut server, mut port, mut user, mut pass, mut wait, mut code) = (None, None, None, None, None, None, None);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "auth-status" => st = Some(v),
            "auth-server" => server = Some(v),
            "auth-port" => port = Some(v),
            "auth-user" => user = Some(v.into_bytes()),
            "auth-pass" => pass = Some(v.into_bytes()),
            "auth-wait" => wait = v.parse::<u64>().ok(),
            "auth-error-code" => code = Some(v),
            _ => {}
        }
    }
    let Some(st) = st else { return Some(Answer::Bad("sent no \"Auth-Status\" header".into())) };
    if st != "OK" {
        return Some(Answer::Fail { msg: st, wait, code });
    }
    let Some(server) = server else { return Some(Answer::Bad("sent no \"Auth-Server\" header".into())) };
    let Some(port) = port else { return Some(Answer::Bad("sent no \"Auth-Port\" header".into())) };
    let Ok(port) = port.parse::<u16>() else { return Some(Answer::Bad(format!("sent invalid port \"{port}\" in \"Auth-Port\" header"))) };
    let Ok(ip) = server.parse::<std::net::IpAddr>() else {
        return Some(Answer::Bad(format!("sent invalid server address \"{server}\" in \"Auth-Server\" header")));
    };
    let server = std::net::SocketAddr::new(ip, port).to_string();
    Some(Answer::Ok { server, user, pass })
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_nginx() {
        assert_eq!(escape(b"te\\\"st@example.com"), "te\\\"st@example.com");
        assert_eq!(escape(b"a b%c\r"), "a%20b%25c%0D");
    }

    #[test]
    fn answers() {
        let ok = b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 8144\r\n\r\n";
        assert_eq!(parse(ok, false), Some(Answer::Ok { server: "127.0.0.1:8144".into(), user: None, pass: None }));
        assert_eq!(parse(&ok[..20], false), None);
        let v6 = b"HTTP/1.1 204 No Content\r\nauth-status: OK\r\nAuth-Server: ::1\r\nAuth-Port: 143\r\nAuth-Pass: secret\r\n\r\n";
        assert_eq!(parse(v6, false), Some(Answer::Ok { server: "[::1]:143".into(), user: None, pass: Some(b"secret".to_vec()) }));
        let no = b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\nAuth-Error-Code: 535 5.7.8\r\n\r\n";
        assert_eq!(parse(no, false), Some(Answer::Fail { msg: "Invalid login or password".into(), wait: Some(3), code: Some("535 5.7.8".into()) }));
        assert!(matches!(parse(b"HTTP/1.0 200 OK\r\n\r\n", false), Some(Answer::Bad(_))));
        assert!(matches!(parse(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: mail.example.com\r\nAuth-Port: 1\r\n\r\n", false), Some(Answer::Bad(_))));
        assert!(matches!(parse(b"garbage\r\n\r\n", false), Some(Answer::Bad(_))));
        assert!(matches!(parse(b"HTTP/1.0 200 OK\r\nAuth-Sta", true), Some(Answer::Bad(_))));
    }
}
