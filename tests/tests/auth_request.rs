//! auth_request through the real binary: the subrequest goes to a real
//! backend (tests/backend.py) through the proxy, and its answer decides.

use ngxr_tests::*;
use std::time::Duration;

fn req(port: u16, path: &str, auth: &str) -> Response {
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Auth: {auth}\r\nConnection: close\r\n\r\n");
    let buf = raw(port, head.as_bytes()).unwrap();
    parse_response(&buf).map(|(r, _)| r).unwrap_or_else(|| panic!("bad response: {:?}", String::from_utf8_lossy(&buf)))
}

#[test]
fn a_subrequest_decides_access() {
    let b = Backend::start("AUTH");
    let dead = free_port();
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ root html;
               log_format main '$request_uri $status $user';
               access_log logs/access.log main;
               server {{ listen 127.0.0.1:{};
                 auth_request /auth;
                 location /private/ {{
                   auth_request_set $user $upstream_http_x_user;
                   add_header X-User $user;
                 }}
                 location /public/ {{ auth_request off; }}
                 location /down/ {{ auth_request /auth-down; }}
                 # Inherits auth_request: subrequests skip ACCESS, no loop.
                 location = /auth {{
                   internal;
                   rewrite ^ /counted/auth?status=$http_x_auth&set=X-User:alice&set=WWW-Authenticate:Bearer%20realm=x break;
                   proxy_pass http://127.0.0.1:{bp};
                   # oauth2-proxy's recommended lines.
                   proxy_pass_request_body off;
                   proxy_set_header Content-Length \"\";
                   proxy_set_header X-Original-URI $request_uri;
                 }}
                 location = /auth-down {{ internal; proxy_pass http://127.0.0.1:{dead}; }}
               }} }}\n",
            conf_head(),
            load_plugins(&["rewrite", "proxy", "static", "headers", "auth_request", "log"]),
            p[0],
            bp = b.port
        )
    });
    for (f, body) in [("html/private/f", "secret"), ("html/public/f", "open")] {
        s.prefix.write(f, body);
    }
    let r = req(s.port, "/private/f", "200");
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref(), r.header("x-user")), (200, "secret", Some("alice")));
    assert_eq!(req(s.port, "/private/f", "204").status, 200);
    let r = req(s.port, "/private/f", "401");
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Bearer realm=x")));
    assert_eq!(req(s.port, "/private/f", "403").status, 403);
    assert_eq!(req(s.port, "/private/f", "500").status, 500);
    assert_eq!(req(s.port, "/public/f", "403").status, 200, "auth_request off");
    // The auth location itself is internal.
    assert_eq!(req(s.port, "/auth", "200").status, 404);
    // The auth service unreachable: its 502 is an unexpected status.
    assert_eq!(req(s.port, "/down/f", "200").status, 500);
    // One subrequest per request: /counted/auth saw the five above, and
    // this query.
    let r = get(b.port, "/counted/auth?status=200").unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), "auth 6");
    // Subrequests are not logged; the request's line has $user.
    let log = s.prefix.path().join("logs/access.log");
    let text = poll_until("the access log", Duration::from_secs(5), || std::fs::read_to_string(&log).ok().filter(|t| t.lines().count() >= 8));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(lines[0], "/private/f 200 alice");
    assert!(s.prefix.error_log().contains("auth request unexpected status: 502"), "{}", s.prefix.error_log());
}

#[test]
fn keepalive_requests_each_get_their_subrequest() {
    let b = Backend::start("AUTH2");
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ root html;
               server {{ listen 127.0.0.1:{};
                 location / {{ auth_request /auth; }}
                 location = /auth {{ internal; proxy_pass http://127.0.0.1:{}/counted/k; }}
               }} }}\n",
            conf_head(),
            load_plugins(&["proxy", "static", "auth_request"]),
            p[0],
            b.port
        )
    });
    s.prefix.write("html/a", "A");
    let mut c = Client::new(s.port);
    for _ in 0..3 {
        c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.response().expect("a response on the same connection");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"A"[..]));
    }
    assert_eq!(String::from_utf8_lossy(&get(b.port, "/counted/k").unwrap().body), "k 4");
}
