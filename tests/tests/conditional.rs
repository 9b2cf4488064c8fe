//! Conditional configurations (ABI 1.7 blocks): `if` with other plugins'
//! directives inside, and `limit_except`, through the real binary with a
//! real backend.

use ngxr_tests::*;
use std::time::Duration;

fn req(port: u16, head: &str) -> Response {
    let buf = raw(port, format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    parse_response_to(&buf, head.starts_with("HEAD ")).map(|(r, _)| r).unwrap_or_else(|| panic!("bad response to {head}: {:?}", String::from_utf8_lossy(&buf)))
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn if_blocks_carry_other_plugins_settings() {
    let b = Backend::start("B");
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ root html;
               log_format c '$request_uri $status';
               access_log logs/access.log c;
               server {{ listen 127.0.0.1:{};
                 location /cors {{
                   if ($request_method = OPTIONS) {{
                     add_header Access-Control-Allow-Origin *;
                     add_header Access-Control-Max-Age 1728000;
                     return 204;
                   }}
                   add_header X-Outer yes;
                 }}
                 location /up/ {{ if ($arg_to = b) {{ proxy_pass http://127.0.0.1:{bp}; }} }}
                 location /px/ {{ proxy_pass http://127.0.0.1:{bp}; if ($arg_h) {{ add_header X-If $arg_h; }} }}
                 location /quiet/ {{ if ($arg_log = no) {{ access_log off; }} }}
                 location /alt/ {{ if ($http_x_alt) {{ root alt; }} }}
                 # The front-controller idiom (WordPress and the like).
                 location /app/ {{ if (!-e $request_filename) {{ rewrite ^/app/(.*)$ /app/index.html?q=$1 last; }} }}
                 location = /app/index.html {{ return 200 \"front $arg_q\"; }}
                 location /two/ {{
                   if ($arg_a) {{ set $x a; add_header X-A 1; }}
                   if ($arg_b) {{ add_header X-B 1; }}
                   add_header X-Outer 1;
                   return 200 \"x=$x\";
                 }}
               }} }}\n",
            conf_head(),
            load_plugins(&["rewrite", "proxy", "static", "headers", "log"]),
            p[0],
            bp = b.port
        )
    });
    for (f, body) in [("html/app/real.txt", "real"), ("html/cors", "cors"), ("html/up/x", "static x"), ("html/quiet/q", "q"), ("html/alt/f", "main"), ("alt/alt/f", "alternative")] {
        s.prefix.write(f, body);
    }
    // The CORS preflight idiom: the block's headers, not the location's.
    let r = req(s.port, "OPTIONS /cors HTTP/1.1");
    assert_eq!((r.status, r.header("access-control-allow-origin"), r.header("access-control-max-age"), r.header("x-outer")), (204, Some("*"), Some("1728000"), None));
    let r = req(s.port, "GET /cors HTTP/1.1");
    assert_eq!((r.status, text(&r).as_str(), r.header("x-outer"), r.header("access-control-allow-origin")), (200, "cors", Some("yes"), None));
    // proxy_pass inside `if`: the block's content handler.
    let r = req(s.port, "GET /up/x?to=b HTTP/1.1");
    assert_eq!((r.status, r.header("x-backend")), (200, Some("B")), "{}", text(&r));
    assert!(text(&r).contains("\"target\": \"/up/x?to=b\""), "{}", text(&r));
    let r = req(s.port, "GET /up/x HTTP/1.1");
    assert_eq!((r.status, text(&r).as_str(), r.header("x-backend")), (200, "static x", None));
    // The location's proxy_pass stays in force inside a block without one.
    let r = req(s.port, "GET /px/y?h=v HTTP/1.1");
    assert_eq!((r.status, r.header("x-backend"), r.header("x-if")), (200, Some("B"), Some("v")));
    assert_eq!(text(&req(s.port, "GET /app/real.txt HTTP/1.1")), "real");
    assert_eq!(text(&req(s.port, "GET /app/some/page HTTP/1.1")), "front some/page");
    // root inside `if`.
    assert_eq!(text(&req(s.port, "GET /alt/f HTTP/1.1")), "main");
    assert_eq!(text(&req(s.port, "GET /alt/f HTTP/1.1\r\nX-Alt: 1")), "alternative");
    // Several blocks: the directives of each that holds run; the settings
    // are the last one's (nginx).
    let r = req(s.port, "GET /two/?a=1 HTTP/1.1");
    assert_eq!((text(&r).as_str(), r.header("x-a"), r.header("x-b"), r.header("x-outer")), ("x=a", Some("1"), None, None));
    let r = req(s.port, "GET /two/?a=1&b=1 HTTP/1.1");
    assert_eq!((text(&r).as_str(), r.header("x-a"), r.header("x-b")), ("x=a", None, Some("1")));
    let r = req(s.port, "GET /two/ HTTP/1.1");
    assert_eq!((text(&r).as_str(), r.header("x-outer")), ("x=", Some("1")));
    // access_log off inside `if`.
    assert_eq!(req(s.port, "GET /quiet/q?log=no HTTP/1.1").status, 200);
    assert_eq!(req(s.port, "GET /quiet/q?log=yes HTTP/1.1").status, 200);
    let log = s.prefix.path().join("logs/access.log");
    let lines = poll_until("the access log", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("/quiet/q?log=yes").then_some(t)
    });
    assert!(!lines.contains("log=no"), "{lines}");
    assert!(lines.contains("/cors 204"), "{lines}");
}

#[test]
fn limit_except_restricts_other_methods() {
    let b = Backend::start("L");
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ root html; access_log off;
               server {{ listen 127.0.0.1:{};
                 location /ro/ {{ limit_except GET {{ deny all; }} }}
                 location /auth/ {{ limit_except GET POST {{ auth_basic \"write\"; auth_basic_user_file htpasswd; }} }}
                 location /px/ {{ proxy_pass http://127.0.0.1:{}; limit_except GET {{ allow 10.0.0.1; deny all; }} }}
               }} }}\n",
            conf_head(),
            load_plugins(&["proxy", "static", "access", "auth_basic", "log"]),
            p[0],
            b.port
        )
    });
    for (f, body) in [("html/ro/f", "read only"), ("html/auth/f", "auth f"), ("conf/htpasswd", "u:{PLAIN}p\n")] {
        s.prefix.write(f, body);
    }
    // GET allows HEAD too; any other method, known or not, is limited.
    assert_eq!(req(s.port, "GET /ro/f HTTP/1.1").status, 200);
    assert_eq!(req(s.port, "HEAD /ro/f HTTP/1.1").status, 200);
    assert_eq!(req(s.port, "POST /ro/f HTTP/1.1\r\nContent-Length: 0").status, 403);
    assert_eq!(req(s.port, "DELETE /ro/f HTTP/1.1").status, 403);
    assert_eq!(req(s.port, "FOO /ro/f HTTP/1.1").status, 403);
    assert_eq!(req(s.port, "GET /auth/f HTTP/1.1").status, 200);
    assert_eq!(req(s.port, "POST /auth/f HTTP/1.1\r\nContent-Length: 0").status, 405, "allowed, then static refuses POST");
    let r = req(s.port, "PUT /auth/f HTTP/1.1\r\nContent-Length: 0");
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Basic realm=\"write\"")));
    // u:p
    assert_eq!(req(s.port, "PUT /auth/f HTTP/1.1\r\nAuthorization: Basic dTpw\r\nContent-Length: 0").status, 405);
    // The location's content handler stays for the limited methods.
    let r = req(s.port, "GET /px/a HTTP/1.1");
    assert_eq!((r.status, r.header("x-backend")), (200, Some("L")));
    assert_eq!(req(s.port, "DELETE /px/a HTTP/1.1").status, 403);
}

#[test]
fn conditional_blocks_are_checked_as_nginx() {
    let p = Prefix::new();
    let head = format!("{}events {{}}\nhttp {{\nserver {{\nlocation /a/ {{\n", load_plugins(&["rewrite", "proxy", "headers", "access"]));
    for (line, want) in [
        ("if ($x) { location /b { } }", "\"location\" directive is not allowed here"),
        ("if ($x) { proxy_pass http://127.0.0.1:1/u; }", "\"proxy_pass\" cannot have URI part inside \"if\" statement"),
        ("limit_except GET { proxy_pass http://127.0.0.1:1/u; }", "\"proxy_pass\" cannot have URI part"),
        ("limit_except GET { add_header X 1; }", "\"add_header\" directive is not allowed here"),
        ("limit_except FETCH { deny all; }", "invalid method \"FETCH\""),
        ("limit_except GET { } limit_except POST { }", "\"limit_except\" directive is duplicate"),
    ] {
        p.assert_refused(&format!("{head}{line}\n}}\n}}\n}}\n"), want, head.lines().count() as u32 + 1);
    }
}
