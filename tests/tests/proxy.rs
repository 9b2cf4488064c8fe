//! The proxy plugin against real backends: tests/backend.py (Python's
//! standard library, not ngxr) and another ngxr.

use ngxr_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Starts ngxr (one worker) with proxy + log and the product plugins; the
/// `http` body may say PORT (ngxr's port).
fn front(http: &str) -> Server {
    let port = free_port();
    let p = Prefix::new();
    p.write("html/50x.html", "custom 50x page");
    p.write("html/404.html", "custom 404 page");
    p.write("html/local.txt", "served locally");
    let conf = format!(
        "{}worker_processes 1;\n{}events {{}}\nhttp {{ {} }}\n",
        conf_head(),
        load_plugins(&["proxy", "index", "static", "log", "headers"]),
        http.replace("PORT", &port.to_string())
    );
    p.write_conf(&conf);
    Server::start_in(p, port)
}

fn req(port: u16, text: &str) -> Response {
    let buf = raw(port, text.as_bytes()).unwrap();
    parse_response_to(&buf, text.starts_with("HEAD "))
        .map(|(r, _)| r)
        .unwrap_or_else(|| panic!("bad response ({} bytes): {:?}", buf.len(), String::from_utf8_lossy(&buf[..buf.len().min(400)])))
}

fn get_h(port: u16, path: &str, headers: &str) -> Response {
    req(port, &format!("GET {path} HTTP/1.1\r\nHost: front.test\r\n{headers}Connection: close\r\n\r\n"))
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The (lowercased) headers the echo backend received, as "name: value" lines.
fn echoed_header(r: &Response, name: &str) -> Vec<String> {
    let b = body(r);
    let mut out = Vec::new();
    let needle = format!("[\"{}\", \"", name.to_ascii_lowercase());
    let lower = b.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle) {
        let start = from + i + needle.len();
        let end = start + b[start..].find("\"]").unwrap();
        out.push(b[start..end].to_string());
        from = end;
    }
    out
}

#[test]
fn uri_rules_headers_and_versions() {
    let b = Backend::start("A");
    let bp = b.port;
    let s = front(&format!(
        "access_log off;
         server {{ listen 127.0.0.1:PORT;
           location /one/ {{ proxy_pass http://127.0.0.1:{bp}/two/; }}
           location = /exact {{ proxy_pass http://127.0.0.1:{bp}/other; }}
           location ~ \\.php$ {{ proxy_pass http://127.0.0.1:{bp}; }}
           location /hdr/ {{
             proxy_pass http://127.0.0.1:{bp};
             proxy_set_header X-Real-IP $remote_addr;
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
             proxy_set_header Accept-Encoding \"\";
             proxy_set_header X-Via \"$proxy_host:$request_method\";
             proxy_hide_header X-Conn;
           }}
           location /v11/ {{ proxy_pass http://127.0.0.1:{bp}; proxy_http_version 1.1; }}
           location / {{ proxy_pass http://127.0.0.1:{bp}; }}
           location /local.txt {{ root html; }}
         }}"
    ));
    let p = s.port;
    // A URI part replaces the location prefix; the rest is re-escaped.
    let r = get_h(p, "/one/a%20b/c?x=1&y", "");
    assert_eq!(r.status, 200);
    assert!(body(&r).contains("\"target\": \"/two/a%20b/c?x=1&y\""), "{}", body(&r));
    let r = get_h(p, "/exact?q", "");
    assert!(body(&r).contains("\"target\": \"/other?q\""), "{}", body(&r));
    // Without a URI part the client's target passes exactly as sent.
    let r = get_h(p, "/raw/%7Efoo/./x?q=%20", "");
    assert!(body(&r).contains("\"target\": \"/raw/%7Efoo/./x?q=%20\""), "{}", body(&r));
    let r = get_h(p, "/dir/index.php?a=b", "");
    assert!(body(&r).contains("\"target\": \"/dir/index.php?a=b\""), "{}", body(&r));
    // Default headers: Host is $proxy_host, Connection close, HTTP/1.0;
    // the client's own headers follow.
    let r = get_h(p, "/plain", "X-Custom: yes\r\nKeep-Alive: 300\r\n");
    assert_eq!(echoed_header(&r, "host"), vec![format!("127.0.0.1:{bp}")]);
    assert_eq!(echoed_header(&r, "connection"), vec!["close"]);
    assert_eq!(echoed_header(&r, "x-custom"), vec!["yes"]);
    assert!(echoed_header(&r, "keep-alive").is_empty(), "hop-by-hop Keep-Alive is not forwarded");
    assert!(body(&r).contains("\"version\": \"HTTP/1.0\""));
    assert_eq!(r.header("x-backend"), Some("A"), "upstream headers pass");
    assert!(r.header("server").unwrap().starts_with("ngxr"), "Server is ours, the upstream's is hidden");
    assert_eq!(r.header("date").into_iter().count(), 1);
    // proxy_set_header: variables, $proxy_add_x_forwarded_for, removal.
    let r = get_h(p, "/hdr/x", "X-Forwarded-For: 10.1.1.1\r\nAccept-Encoding: gzip\r\n");
    assert_eq!(echoed_header(&r, "x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(echoed_header(&r, "x-forwarded-for"), vec!["10.1.1.1, 127.0.0.1"]);
    assert!(echoed_header(&r, "accept-encoding").is_empty(), "an empty proxy_set_header removes the header");
    assert_eq!(echoed_header(&r, "x-via"), vec![format!("127.0.0.1:{bp}:GET")]);
    assert_eq!(r.header("x-conn"), None, "proxy_hide_header");
    assert_eq!(r.header("x-backend"), Some("A"));
    let r = get_h(p, "/v11/x", "");
    assert!(body(&r).contains("\"version\": \"HTTP/1.1\""));
    // Locations without proxy_pass are served as before.
    let r = get_h(p, "/local.txt", "");
    assert_eq!(body(&r), "served locally");
}

#[test]
fn bad_proxy_configs_are_refused_with_file_and_line() {
    let p = Prefix::new();
    for (conf, want) in [
        ("location ~ \\.php$ { proxy_pass http://127.0.0.1:1/x; }", "cannot have URI part in location given by regular expression"),
        ("location ~*\\.PHP$ { proxy_pass http://127.0.0.1:1/x; }", "cannot have URI part in location given by regular expression"),
        ("location / { proxy_pass ftp://127.0.0.1:1; }", "invalid URL prefix"),
        ("location / { proxy_pass http://127.0.0.1:1; proxy_pass http://127.0.0.1:2; }", "is duplicate"),
        ("location / { proxy_http_version 2.0; }", "proxy_http_version"),
        ("location / { proxy_next_upstream sometimes; }", "invalid value \"sometimes\""),
    ] {
        p.write_conf(&format!(
            "{}{}events {{}}\nhttp {{\nserver {{\nlisten 127.0.0.1:1;\n{conf}\n}}\n}}\n",
            conf_head(),
            load_plugins(&["proxy"])
        ));
        let out = p.ngxr(&["-t"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{conf}");
        assert!(err.contains(want) && err.contains("ngxr.conf:9"), "{conf}: {err}");
    }
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{\nupstream u {{\nserver 127.0.0.1:1 bogus=1;\n}}\n}}\n",
        conf_head(),
        load_plugins(&["proxy"])
    ));
    let out = p.ngxr(&["-t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("invalid parameter \"bogus=1\"") && err.contains("ngxr.conf:7"), "{err}");
}

#[test]
fn bodies_and_framing_both_ways() {
    let b = Backend::start("B");
    let bp = b.port;
    let s = front(&format!(
        "access_log off; client_max_body_size 10m;
         server {{ listen 127.0.0.1:PORT;
           location / {{ proxy_pass http://127.0.0.1:{bp}; }}
           location /nobuf/ {{ proxy_pass http://127.0.0.1:{bp}/; proxy_buffering off; }}
           location /tmpbuf/ {{ proxy_pass http://127.0.0.1:{bp}/; proxy_buffers 2 4k; proxy_temp_path tmp; }}
         }}"
    ));
    std::fs::create_dir_all(s.prefix.path().join("tmp")).unwrap();
    // Workers (nobody when the tests run as root) write there.
    std::fs::set_permissions(s.prefix.path().join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let p = s.port;
    // A request body by length and chunked: the upstream gets it with a length.
    let r = req(p, "POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world");
    assert!(body(&r).contains("\"body\": \"hello world\""), "{}", body(&r));
    assert_eq!(echoed_header(&r, "content-length"), vec!["11"]);
    let r = req(p, "POST /post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert!(body(&r).contains("\"body\": \"hello world\""), "{}", body(&r));
    assert_eq!(echoed_header(&r, "content-length"), vec!["11"]);
    assert!(echoed_header(&r, "transfer-encoding").is_empty());
    // Responses: chunked upstream → decoded and re-framed; close-delimited; HEAD.
    let r = get_h(p, "/chunked", "");
    assert_eq!((r.status, body(&r).as_str()), (200, "one,two,three"));
    let r = get_h(p, "/close", "");
    assert_eq!(body(&r), "until-close body");
    let r = req(p, "HEAD /big?n=5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("content-length"), r.body.len()), (200, Some("5000"), 0));
    // Large bodies: buffered (memory), unbuffered, and spilled to a temp file.
    for path in ["/big?n=3000000", "/nobuf/big?n=3000000", "/tmpbuf/big?n=3000000", "/bigchunked?n=2000000", "/nobuf/bigchunked?n=2000000"] {
        let r = get_h(p, path, "");
        let n: usize = path.rsplit('=').next().unwrap().parse().unwrap();
        assert_eq!((r.status, r.body.len()), (200, n), "{path}");
        assert!(r.body.iter().all(|&c| c == r.body[0]), "{path}");
    }
    // A slow client: the temp-file path serves it while the upstream is
    // released; the whole body arrives.
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /tmpbuf/big?n=4000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut total = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
    let (r, _) = parse_response(&total).unwrap();
    assert_eq!(r.body.len(), 4_000_000);
    // An upstream that closes early: the client sees a short body and a
    // closed connection, never a complete-looking response.
    let got = raw(p, b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("Content-Length: 100"));
    assert!(text.ends_with("0123456789"), "{text}");
    assert!(s.prefix.error_log().contains("upstream prematurely closed connection while reading upstream"));
    let log = s.prefix.error_log();
    assert!(!log.contains("[crit]"), "{log}");
    assert!(log.contains("an upstream response is buffered to a temporary file"), "{log}");
    // Nothing is left in the temp directory (files are unlinked at once).
    assert_eq!(std::fs::read_dir(s.prefix.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn failures_statuses_retries_and_logged_upstream_variables() {
    let a = Backend::start("A");
    let b = Backend::start("B");
    let dead = free_port();
    let (ap, bp) = (a.port, b.port);
    let s = front(&format!(
        "log_format up '$request_uri $status [$upstream_addr] [$upstream_status]';
         access_log logs/up.log up;
         upstream pair {{ server 127.0.0.1:{dead}; server 127.0.0.1:{bp}; }}
         upstream pair2 {{ server 127.0.0.1:{dead}; server 127.0.0.1:{bp}; }}
         upstream both502 {{ server 127.0.0.1:{ap}; server 127.0.0.1:{bp}; }}
         server {{ listen 127.0.0.1:PORT;
           location /refused {{ proxy_pass http://127.0.0.1:{dead}; }}
           location /slow {{ proxy_pass http://127.0.0.1:{ap}/delay; proxy_read_timeout 300ms; }}
           location /garbage {{ proxy_pass http://127.0.0.1:{ap}; }}
           location /nohead {{ proxy_pass http://127.0.0.1:{ap}; }}
           location /pair/ {{ proxy_pass http://pair/; }}
           location /retry502/ {{ proxy_pass http://both502/; proxy_next_upstream error http_502; }}
           location /noretry/ {{ proxy_pass http://pair2/; proxy_next_upstream off; }}
           location /intercept/ {{ proxy_pass http://127.0.0.1:{ap}/; proxy_intercept_errors on; error_page 404 /404.html; }}
           location /passthru/ {{ proxy_pass http://127.0.0.1:{ap}/; }}
           location = /404.html {{ root html; }}
           location = /50x.html {{ root html; }}
           location /custom502 {{ proxy_pass http://127.0.0.1:{dead}; error_page 502 /50x.html; }}
         }}"
    ));
    let p = s.port;
    let r = get_h(p, "/refused", "");
    assert_eq!(r.status, 502);
    assert!(body(&r).contains("502 Bad Gateway"));
    let log = s.prefix.error_log();
    assert!(log.contains("connect() failed (111: Connection refused) while connecting to upstream") && log.contains(&format!("127.0.0.1:{dead}")), "{log}");
    let r = get_h(p, "/slow?ms=3000", "");
    assert_eq!(r.status, 504);
    assert!(s.prefix.error_log().contains("upstream timed out (110: Connection timed out) while reading response header from upstream"));
    assert_eq!(get_h(p, "/garbage", "").status, 502);
    assert!(s.prefix.error_log().contains("upstream sent invalid header"));
    assert_eq!(get_h(p, "/nohead", "").status, 502);
    assert!(s.prefix.error_log().contains("upstream prematurely closed connection while reading response header"));
    // error (refused) → the next server answers.
    let r = get_h(p, "/pair/x", "");
    assert_eq!((r.status, r.header("x-backend")), (200, Some("B")));
    // http_502 from A → B; both 502 → the last answer is passed on.
    let r = get_h(p, "/retry502/status/502", "");
    assert_eq!(r.status, 502);
    assert!(body(&r).starts_with("backend status 502 from"), "the upstream's own 502 is passed on: {}", s.prefix.error_log());
    // proxy_next_upstream off: the refused peer (picked first) fails the
    // request; it is then marked failed (max_fails 1) and B answers.
    let statuses: Vec<u16> = (0..4).map(|_| get_h(p, "/noretry/x", "").status).collect();
    assert_eq!(statuses, vec![502, 200, 200, 200]);
    // intercept_errors + error_page; without it the upstream's page passes.
    let r = get_h(p, "/intercept/status/404", "");
    assert_eq!((r.status, body(&r).as_str()), (404, "custom 404 page"));
    // Only statuses an error_page covers are intercepted, as nginx.
    let r = get_h(p, "/intercept/status/403", "");
    assert_eq!(r.status, 403);
    assert!(body(&r).starts_with("backend status 403 from A"), "{}", body(&r));
    let r = get_h(p, "/passthru/status/404", "");
    assert_eq!(r.status, 404);
    assert!(body(&r).starts_with("backend status 404 from A"));
    let r = get_h(p, "/custom502", "");
    assert_eq!((r.status, body(&r).as_str()), (502, "custom 50x page"));
    // The access log names every attempt.
    let up = poll_until("the access log", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(s.prefix.path().join("logs/up.log")).ok()?;
        t.contains("/retry502/").then_some(t)
    });
    assert!(up.contains(&format!("/pair/x 200 [127.0.0.1:{dead}, 127.0.0.1:{bp}] [502, 200]")), "{up}");
    assert!(up.contains(&format!("/retry502/status/502 502 [127.0.0.1:{ap}, 127.0.0.1:{bp}] [502, 502]")), "{up}");
    assert!(up.contains(&format!("/refused 502 [127.0.0.1:{dead}] [502]")), "{up}");
    assert!(up.contains("/slow?ms=3000 504"), "{up}");
}

fn spread(p: u16, path: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = get_h(p, path, "");
        assert_eq!(r.status, 200, "{path}");
        *m.entry(r.header("x-backend").unwrap_or("?").to_string()).or_default() += 1;
    }
    m
}

#[test]
fn balancing_weights_hashes_backup_and_passive_health() {
    let bs: Vec<Backend> = ["A", "B", "C"].iter().map(|n| Backend::start(n)).collect();
    let (a, b, c) = (bs[0].port, bs[1].port, bs[2].port);
    let dead = free_port();
    let s = front(&format!(
        "access_log off;
         upstream weighted {{ server 127.0.0.1:{a} weight=3; server 127.0.0.1:{b}; server 127.0.0.1:{c}; }}
         upstream iph {{ ip_hash; server 127.0.0.1:{a}; server 127.0.0.1:{b}; server 127.0.0.1:{c}; }}
         upstream hashed {{ hash $arg_k; server 127.0.0.1:{a}; server 127.0.0.1:{b}; server 127.0.0.1:{c}; }}
         upstream ring {{ hash $arg_k consistent; server 127.0.0.1:{a}; server 127.0.0.1:{b}; server 127.0.0.1:{c}; }}
         upstream lc {{ least_conn; server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
         upstream withbackup {{ server 127.0.0.1:{dead}; server 127.0.0.1:{c} backup; }}
         upstream health {{ server 127.0.0.1:{dead} max_fails=1 fail_timeout=30s; server 127.0.0.1:{a}; }}
         server {{ listen 127.0.0.1:PORT;
           location /w/ {{ proxy_pass http://weighted/; }}
           location /ip/ {{ proxy_pass http://iph/; }}
           location /h/ {{ proxy_pass http://hashed/; }}
           location /ring/ {{ proxy_pass http://ring/; }}
           location /lc/ {{ proxy_pass http://lc/; }}
           location /backup/ {{ proxy_pass http://withbackup/; }}
           location /health/ {{ proxy_pass http://health/; }}
         }}"
    ));
    let p = s.port;
    let m = spread(p, "/w/x", 100);
    assert_eq!((m["A"], m["B"], m["C"]), (60, 20, 20), "smooth weighted round-robin over 100 requests: {m:?}");
    let m = spread(p, "/ip/x", 30);
    assert_eq!(m.len(), 1, "one client address sticks to one server: {m:?}");
    for path in ["/h/", "/ring/"] {
        let mut owners = std::collections::BTreeSet::new();
        for k in 0..30 {
            let m = spread(p, &format!("{path}x?k=key{k}"), 3);
            assert_eq!(m.len(), 1, "{path}: key{k} sticks: {m:?}");
            owners.insert(m.keys().next().unwrap().clone());
        }
        assert!(owners.len() >= 2, "{path}: 30 keys spread over servers: {owners:?}");
    }
    let m = spread(p, "/lc/x", 10);
    assert_eq!((m["A"], m["B"]), (5, 5), "idle least_conn alternates: {m:?}");
    let m = spread(p, "/backup/x", 5);
    assert_eq!(m["C"], 5, "the backup serves while the primary is down");
    // max_fails=1: after one failure the dead server is skipped for
    // fail_timeout, so only one connect error is logged for 10 requests.
    let before = s.prefix.error_log().matches(&format!("127.0.0.1:{dead}\"")).count();
    let m = spread(p, "/health/x", 10);
    assert_eq!(m["A"], 10);
    let after = s.prefix.error_log().matches(&format!("127.0.0.1:{dead}\"")).count();
    assert!(after - before <= 2, "the failed server is not retried within fail_timeout ({} new errors)", after - before);
}

#[test]
fn an_empty_body_ends_at_once_and_keeps_the_upstream_connection() {
    let b = Backend::start("E");
    let bp = b.port;
    let s = front(&format!(
        "upstream pooled {{ server 127.0.0.1:{bp}; keepalive 4; }}
         server {{ listen 127.0.0.1:PORT;
           location / {{ proxy_pass http://pooled; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
         }}"
    ));
    let before = b.conns();
    // Content-Length: 0 is a whole response: nothing more is waited for
    // (the client's keepalive connection answers the next request at once).
    let mut c = Client::new(s.port);
    for _ in 0..3 {
        c.send(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.response_to(false).expect("a response");
        assert_eq!((r.status, r.body.len(), r.header("content-length")), (200, 0, Some("0")));
    }
    assert_eq!(b.conns() - before - 1, 1, "one pooled upstream connection");
    assert!(!s.prefix.error_log().contains("[error]"), "{}", s.prefix.error_log());
}

#[test]
fn keepalive_pool_reuses_upstream_connections() {
    let b = Backend::start("K");
    let n = Backend::start("N");
    let (bp, np) = (b.port, n.port);
    let s = front(&format!(
        "access_log off;
         upstream pooled {{ server 127.0.0.1:{bp}; keepalive 4; }}
         upstream unpooled {{ server 127.0.0.1:{np}; }}
         server {{ listen 127.0.0.1:PORT;
           location /ka/ {{ proxy_pass http://pooled/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
           location /noka/ {{ proxy_pass http://unpooled/; }}
         }}"
    ));
    let p = s.port;
    let before = b.conns();
    let mut serials = std::collections::BTreeSet::new();
    for i in 0..20 {
        let r = if i % 2 == 0 { get_h(p, "/ka/x", "") } else { req(p, "POST /ka/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc") };
        assert_eq!(r.status, 200);
        serials.insert(r.header("x-conn").unwrap().to_string());
    }
    let used = b.conns() - before - 1;
    assert_eq!(used, 1, "20 requests over one pooled upstream connection");
    assert_eq!(serials.len(), 1);
    // Chunked and close-delimited answers: the first keeps the
    // connection, the second ends it (the next request opens a new one).
    assert_eq!(body(&get_h(p, "/ka/chunked", "")), "one,two,three");
    assert_eq!(body(&get_h(p, "/ka/close", "")), "until-close body");
    assert_eq!(get_h(p, "/ka/x", "").status, 200);
    assert_eq!(b.conns() - before - 2, 2, "one new connection after the upstream closed its own");
    // An upstream that closes a connection it had left open: the pooled
    // connection is dropped (or, if reused first, retried on a fresh one
    // without counting as a failure); requests keep succeeding.
    for _ in 0..3 {
        assert_eq!(body(&get_h(p, "/ka/bye", "")), "bye");
        assert_eq!(get_h(p, "/ka/x", "").status, 200);
    }
    assert!(!s.prefix.error_log().contains("[error]"), "{}", s.prefix.error_log());
    // Without keepalive every request is a new connection.
    let before = n.conns();
    for _ in 0..5 {
        assert_eq!(get_h(p, "/noka/x", "").status, 200);
    }
    assert_eq!(n.conns() - before - 1, 5);
}

#[test]
fn upstream_keepalive_time_retires_old_connections() {
    let b = Backend::start("T");
    let s = front(&format!(
        "access_log off;
         upstream aged {{ server 127.0.0.1:{}; keepalive 4; keepalive_time 300ms; }}
         server {{ listen 127.0.0.1:PORT;
           location /t/ {{ proxy_pass http://aged/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
         }}",
        b.port
    ));
    let before = b.conns();
    let conn = |path: &str| get_h(s.port, path, "").header("x-conn").unwrap().to_string();
    let first = conn("/t/x");
    assert_eq!(conn("/t/x"), first, "reused while young");
    std::thread::sleep(Duration::from_millis(400)); // the connection's age, not a wait for readiness
    // Its next use is its last: it goes back to the backend closed.
    assert_eq!(conn("/t/x"), first);
    assert_ne!(conn("/t/x"), first, "a new connection once the old one aged out");
    assert_eq!(b.conns() - before - 1, 2);
}

#[test]
fn websocket_upgrade_is_relayed_both_ways() {
    let b = Backend::start("W");
    let bp = b.port;
    let s = front(&format!(
        "access_log off;
         server {{ listen 127.0.0.1:PORT;
           location /ws {{ proxy_pass http://127.0.0.1:{bp}; proxy_http_version 1.1;
             proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; }}
         }}"
    ));
    let (mut c, head) = ws_open(s.port);
    assert!(head.contains("Upgrade: websocket") && head.contains("Connection: upgrade"), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    for msg in ["hello", "second frame"] {
        ws_echo(&mut c, msg);
    }
    // Close: the backend answers and closes; ngxr closes the client side.
    c.write_all(&[0x88, 0x80, 0, 0, 0, 0]).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert_eq!(rest, vec![0x88, 0x00]);
}

#[test]
fn upstream_header_and_cookie_variables() {
    let b = Backend::start("V");
    let bp = b.port;
    let s = front(&format!(
        "log_format up '$uri [$upstream_http_x_one] [$upstream_http_x_multi] [$upstream_cookie_sid] [$upstream_http_x_none]';
         access_log logs/up.log up;
         server {{ listen 127.0.0.1:PORT;
           location / {{ proxy_pass http://127.0.0.1:{bp}; add_header X-Seen \"$upstream_http_x_backend/$upstream_cookie_Lang\"; }}
         }}"
    ));
    let r = req(s.port, "GET /counted/v?set=X-One:1&set=X-Multi:a&set=X-Multi:b&set=Set-Cookie:sid=abc;%20Path=/&set=Set-Cookie:lang=en HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("x-seen")), (200, Some("V/en")));
    let log = s.prefix.path().join("logs/up.log");
    let line = poll_until("the access log", Duration::from_secs(5), || std::fs::read_to_string(&log).ok().filter(|t| t.ends_with('\n')));
    assert_eq!(line, "/counted/v [1] [a, b] [abc] [-]\n");
}

#[test]
fn unix_domain_socket_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (_ba, _bb) = (Backend::start_unix("UA", &a), Backend::start_unix("UB", &b));
    // Workers may run as another user (nobody, when the tests run as root).
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [(dir.path(), 0o755), (a.as_path(), 0o777), (b.as_path(), 0o777)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let s = front(&format!(
        "log_format up '$uri $upstream_addr $upstream_status';
         access_log logs/up.log up;
         upstream socks {{ server unix:{b}; }}
         server {{ listen 127.0.0.1:PORT;
           location /direct/ {{ proxy_pass http://unix:{a}:/two/; }}
           location /group/ {{ proxy_pass http://socks; }}
           location /gone/ {{ proxy_pass http://unix:{a}.missing; }}
         }}",
        a = a.display(),
        b = b.display()
    ));
    let r = req(s.port, "GET /direct/x?q=1 HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("UA")), "{body}\n{}", s.prefix.error_log());
    // The URI part replaced the location's prefix; Host is "localhost", as
    // nginx's $proxy_host for a Unix-domain socket.
    assert!(body.contains("\"target\": \"/two/x?q=1\"") && body.contains("[\"Host\", \"localhost\"]"), "{body}");
    let r = req(s.port, "GET /group/y HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("x-backend")), (200, Some("UB")));
    assert_eq!(req(s.port, "GET /gone/ HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n").status, 502);
    let log = s.prefix.path().join("logs/up.log");
    let text = poll_until("the access log", Duration::from_secs(5), || std::fs::read_to_string(&log).ok().filter(|t| t.lines().count() == 3));
    assert_eq!(
        text,
        format!("/direct/x unix:{a} 200\n/group/y unix:{b} 200\n/gone/ unix:{a}.missing 502\n", a = a.display(), b = b.display())
    );
    assert!(s.prefix.error_log().contains("No such file or directory"), "{}", s.prefix.error_log());
}

#[test]
fn set_cookie_domain_path_and_flags_are_rewritten() {
    let b = Backend::start("K");
    let bp = b.port;
    let s = front(&format!(
        "access_log off;
         server {{ listen 127.0.0.1:PORT;
           location /app/ {{ proxy_pass http://127.0.0.1:{bp}/; proxy_cookie_domain backend.local $host; proxy_cookie_path / /app/; }}
           location /flags/ {{ proxy_pass http://127.0.0.1:{bp}/; proxy_cookie_flags ~ secure httponly samesite=strict; }}
         }}"
    ));
    // proxy_cookie_flags: every cookie (`~`), its own SameSite replaced.
    let r = req(s.port, "GET /flags/counted/f?set=Set-Cookie:sid=2;%20Path=/;samesite=lax HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.header("set-cookie"), Some("sid=2; Path=/; Secure; HttpOnly; SameSite=Strict"));
    let r = req(s.port, "GET /app/counted/k?set=Set-Cookie:sid=1;%20Domain=backend.local;%20Path=/;%20HttpOnly HTTP/1.1\r\nHost: front.test\r\nConnection: close\r\n\r\n");
    assert_eq!(r.header("set-cookie"), Some("sid=1; Domain=front.test; Path=/app/; HttpOnly"));
}

#[test]
fn request_body_headers_and_method_as_configured() {
    let b = Backend::start("P");
    let bp = b.port;
    let s = front(&format!(
        "access_log off;
         server {{ listen 127.0.0.1:PORT;
           location /nobody/ {{ proxy_pass http://127.0.0.1:{bp}; proxy_pass_request_body off; proxy_set_header Content-Length \"\"; }}
           location /noheaders/ {{ proxy_pass http://127.0.0.1:{bp}; proxy_pass_request_headers off; }}
           location /own/ {{ proxy_pass http://127.0.0.1:{bp}; proxy_method PUT; proxy_set_body \"user=$arg_u\"; }}
         }}"
    ));
    // proxy_method and proxy_set_body.
    let r = req(s.port, "GET /own/a?u=xy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let echo = String::from_utf8_lossy(&r.body).into_owned();
    assert!(echo.contains("\"method\": \"PUT\"") && echo.contains("\"body\": \"user=xy\"") && echo.contains("[\"Content-Length\", \"7\"]"), "{echo}");
    let post = |path: &str| {
        let r = req(s.port, &format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Mine: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"));
        assert_eq!(r.status, 200);
        String::from_utf8_lossy(&r.body).into_owned()
    };
    let echo = post("/nobody/a");
    assert!(echo.contains("\"body\": \"\"") && !echo.contains("Content-Length") && echo.contains("X-Mine"), "{echo}");
    let echo = post("/noheaders/a");
    assert!(echo.contains("\"body\": \"hello\"") && !echo.contains("X-Mine"), "{echo}");
}

#[test]
fn upstream_variables_survive_internal_redirects() {
    let b = Backend::start("E");
    let (bp, dead) = (b.port, free_port());
    let s = front(&format!(
        "log_format up '$uri $status $upstream_status|$upstream_addr';
         access_log logs/up.log up;
         server {{ listen 127.0.0.1:PORT;
           location /a/ {{ proxy_pass http://127.0.0.1:{dead}; error_page 502 = @fallback; }}
           location @fallback {{ proxy_pass http://127.0.0.1:{bp}; }}
           location /i/ {{ proxy_pass http://127.0.0.1:{bp}/status/; proxy_intercept_errors on; error_page 404 /local.txt; }}
         }}"
    ));
    let r = req(s.port, "GET /a/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("x-backend")), (200, Some("E")));
    let r = req(s.port, "GET /i/404 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (404, "served locally"));
    let log = s.prefix.path().join("logs/up.log");
    let text = poll_until("the access log", Duration::from_secs(5), || std::fs::read_to_string(&log).ok().filter(|t| t.lines().count() == 2));
    // Each location's attempts, joined with " : " as nginx's.
    assert_eq!(text, format!("/a/x 200 502 : 200|127.0.0.1:{dead} : 127.0.0.1:{bp}\n/local.txt 404 404|127.0.0.1:{bp}\n"));
}

/// Connects to `/ws` and upgrades (10 s read timeout); the 101's head.
fn ws_open(port: u16) -> (TcpStream, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (c, head)
}

/// Sends one masked text frame and reads the echo.
fn ws_echo(c: &mut TcpStream, msg: &str) {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | msg.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    c.write_all(&frame).unwrap();
    let mut h = [0u8; 2];
    c.read_exact(&mut h).unwrap();
    let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
    c.read_exact(&mut payload).unwrap();
    assert_eq!(String::from_utf8_lossy(&payload), format!("echo:{msg}"));
}

#[test]
fn an_upgraded_connection_ends_after_proxy_read_timeout_of_silence() {
    let b = Backend::start("W");
    let bp = b.port;
    let s = front(&format!(
        "access_log off;
         server {{ listen 127.0.0.1:PORT;
           location /ws {{ proxy_pass http://127.0.0.1:{bp}; proxy_http_version 1.1; proxy_read_timeout 1s;
             proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; }}
         }}"
    ));
    let (mut c, _) = ws_open(s.port);
    // Traffic every 400 ms keeps it open well past the 1 s limit…
    let start = std::time::Instant::now();
    for i in 0..4 {
        ws_echo(&mut c, &format!("m{i}"));
        std::thread::sleep(Duration::from_millis(400));
    }
    ws_echo(&mut c, "still here");
    assert!(start.elapsed() >= Duration::from_millis(1600));
    // …and a second of silence from the upstream ends it.
    let silent = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = c.read_to_end(&mut rest).expect("ngxr closes the connection (not the 10 s read timeout)");
    assert_eq!(n, 0, "nothing more was sent");
    assert!(silent.elapsed() >= Duration::from_millis(900), "{:?}", silent.elapsed());
    poll_until("the timeout in the error log", Duration::from_secs(5), || s.prefix.error_log().contains("upstream timed out").then_some(()));
}

#[test]
fn ngxr_to_ngxr_and_proxy_redirect() {
    let back = Server::start(&format!(
        "worker_processes 1;\n{}events {{}}\nhttp {{ server {{ listen 127.0.0.1:PORT; root html; }} }}\n",
        load_plugins(&["static"])
    ));
    back.prefix.write("html/two/file.txt", "from the back ngxr");
    let bk = Backend::start("R");
    let (bp, rp) = (back.port, bk.port);
    let s = front(&format!(
        "access_log off;
         server {{ listen 127.0.0.1:PORT;
           location /one/ {{ proxy_pass http://127.0.0.1:{bp}/two/; }}
           location /r/ {{ proxy_pass http://127.0.0.1:{rp}/; }}
           location /rr/ {{ proxy_pass http://127.0.0.1:{rp}/two/; }}
           location /off/ {{ proxy_pass http://127.0.0.1:{rp}/two/; proxy_redirect off; }}
         }}"
    ));
    let p = s.port;
    let r = get_h(p, "/one/file.txt", "");
    assert_eq!((r.status, body(&r).as_str()), (200, "from the back ngxr"));
    assert!(r.header("last-modified").is_some() && r.header("etag").is_some(), "the back's headers pass");
    let r = get_h(p, "/one/file.txt", &format!("If-None-Match: {}\r\n", r.header("etag").unwrap()));
    assert_eq!(r.status, 304);
    assert_eq!(get_h(p, "/one/missing", "").status, 404);
    // The back's own redirect for a directory (Location: http://127.0.0.1:bp/two/...)
    // becomes ours through proxy_redirect default.
    std::fs::create_dir_all(back.prefix.path().join("html/two/sub")).unwrap();
    let r = get_h(p, "/one/sub", "");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some(format!("http://front.test:{p}/one/sub/").as_str()));
    // The backend redirects to http://<Host it got>/two/x.
    let r = get_h(p, "/rr/redirect", "");
    assert_eq!(r.header("location"), Some(format!("http://front.test:{p}/rr/x").as_str()));
    let r = get_h(p, "/off/redirect", "");
    assert_eq!(r.header("location"), Some(format!("http://127.0.0.1:{rp}/two/x").as_str()));
}

/// A listener that never accepts, its queue filled: connects to it hang in
/// SYN_SENT (Linux drops SYNs to a full queue), which is how an unreachable
/// upstream looks, without leaving 127.0.0.1.
fn black_hole() -> (i32, u16, Vec<TcpStream>) {
    // SAFETY: plain socket calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(libc::bind(fd, &a as *const _ as *const libc::sockaddr, std::mem::size_of_val(&a) as u32), 0);
        assert_eq!(libc::listen(fd, 0), 0);
        let mut len = std::mem::size_of_val(&a) as u32;
        libc::getsockname(fd, &mut a as *mut _ as *mut libc::sockaddr, &mut len);
        let port = u16::from_be(a.sin_port);
        // Fill the accept queue (backlog 0 still takes one or two).
        let fill: Vec<TcpStream> = (0..3).filter_map(|_| TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()).collect();
        (fd, port, fill)
    }
}

#[test]
fn connect_timeout_and_tries() {
    let (fd, hole, _fill) = black_hole();
    let (d1, d2, d3) = (free_port(), free_port(), free_port());
    let s = front(&format!(
        "log_format up '$request_uri $status [$upstream_addr]';
         access_log logs/up.log up;
         upstream dead3 {{ server 127.0.0.1:{d1}; server 127.0.0.1:{d2}; server 127.0.0.1:{d3}; }}
         server {{ listen 127.0.0.1:PORT;
           location /hole {{ proxy_pass http://127.0.0.1:{hole}; proxy_connect_timeout 300ms; }}
           location /tries/ {{ proxy_pass http://dead3/; proxy_next_upstream_tries 2; }}
         }}"
    ));
    let t = std::time::Instant::now();
    let r = get_h(s.port, "/hole", "");
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(4), "the connect timeout applies");
    assert!(s.prefix.error_log().contains("upstream timed out (110: Connection timed out) while connecting to upstream"), "{}", s.prefix.error_log());
    assert_eq!(get_h(s.port, "/tries/x", "").status, 502);
    let up = poll_until("the access log", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(s.prefix.path().join("logs/up.log")).ok()?;
        t.contains("/tries/").then_some(t)
    });
    let line = up.lines().find(|l| l.starts_with("/tries/")).unwrap();
    assert_eq!(line.matches("127.0.0.1:").count(), 2, "proxy_next_upstream_tries 2: {line}");
    assert!(up.contains("/hole 504"), "{up}");
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
}

#[test]
fn ambiguous_upstream_framing_is_a_bad_gateway() {
    let b = Backend::start("A");
    let s = front(&format!("server {{ listen 127.0.0.1:PORT; location /framing/ {{ proxy_pass http://127.0.0.1:{}; }} }}", b.port));
    for case in ["cl-invalid", "cl-twice", "te-unknown", "te-twice", "cl-and-te"] {
        let r = get_h(s.port, &format!("/framing/{case}"), "");
        assert_eq!(r.status, 502, "{case}: {r:?}");
    }
    let log = s.prefix.error_log();
    for want in ["upstream sent invalid \"Content-Length\" header", "upstream sent duplicate header line: \"Content-Length: 0\"", "upstream sent unknown \"Transfer-Encoding\": \"foo\"", "upstream sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time"] {
        assert!(log.contains(want), "{want}: {log}");
    }
    // A second Expires is dropped, the first kept.
    let r = get_h(s.port, "/framing/expires-twice", "");
    assert_eq!(r.status, 200);
    let expires: Vec<_> = r.headers.iter().filter(|(k, _)| k == "expires").map(|(_, v)| v.as_str()).collect();
    assert_eq!(expires, ["foo"]);
}

#[test]
fn large_request_bodies_go_upstream_from_their_temporary_file() {
    let b = Backend::start("F");
    let dead = free_port();
    let s = front(&format!(
        "access_log off; client_max_body_size 5m;
         upstream pair {{ server 127.0.0.1:{dead}; server 127.0.0.1:{}; }}
         server {{ listen 127.0.0.1:PORT; location / {{ proxy_pass http://pair; }} }}",
        b.port
    ));
    let body: String = (0..400_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for round in 0..2 {
        // The first peer is refused (then marked failed): the body is sent
        // again, whole, to the second.
        let r = req(s.port, &format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
        assert_eq!(r.status, 200, "round {round}");
        let echoed = body_of_echo(&r);
        assert_eq!(echoed.len(), body.len(), "round {round}");
        assert!(echoed == body, "round {round}: the backend got another body");
    }
    // The temporary files are gone.
    let temp = s.prefix.path().join("client_body_temp");
    poll_until("no temporary files left", Duration::from_secs(5), || (std::fs::read_dir(&temp).map_or(0, |d| d.count()) == 0).then_some(()));
}

/// The "body" field of the echo backend's JSON.
fn body_of_echo(r: &Response) -> String {
    let b = body(r);
    let start = b.find("\"body\": \"").expect("an echo") + 9;
    let end = start + b[start..].find('"').unwrap();
    b[start..end].to_string()
}

#[test]
fn proxy_pass_with_variables() {
    let a = Backend::start("A");
    let b = Backend::start("B");
    let s = front(&format!(
        "access_log off;
         upstream named {{ server 127.0.0.1:{}; }}
         server {{ listen 127.0.0.1:PORT;
           location /whole/ {{ proxy_pass http://127.0.0.1:{}/echoed$is_args$args;
               add_header X-PH $proxy_host; add_header X-PP $proxy_port; add_header X-UA $upstream_addr;
               add_header X-Times \"$upstream_connect_time $upstream_header_time\"; }}
           location /bygroup/ {{ proxy_pass http://$arg_to; }}
           location /byaddr/ {{ proxy_pass http://$http_x_addr; }}
         }}",
        b.port, a.port
    ));
    // The URI part of a URL with variables is the whole target.
    let r = get_h(s.port, "/whole/x?k=v", "");
    assert_eq!((r.status, r.header("x-backend")), (200, Some("A")));
    // The proxy's variables, read by a header filter while the proxy is
    // sending the head.
    let hp = format!("127.0.0.1:{}", a.port);
    assert_eq!((r.header("x-ph"), r.header("x-pp"), r.header("x-ua")), (Some(hp.as_str()), Some(a.port.to_string().as_str()), Some(hp.as_str())));
    let times: Vec<f64> = r.header("x-times").unwrap().split(' ').map(|t| t.parse().unwrap()).collect();
    assert!(times.len() == 2 && times[0] <= times[1], "{times:?}");
    assert!(body(&r).contains("\"target\": \"/echoed?k=v\""), "{}", body(&r));
    // No URI part: the request's own; the host names a group…
    let r = get_h(s.port, "/bygroup/y?to=named", "");
    assert_eq!((r.status, r.header("x-backend")), (200, Some("B")));
    assert!(body(&r).contains("\"target\": \"/bygroup/y?to=named\""), "{}", body(&r));
    // …or an address.
    let r = get_h(s.port, "/byaddr/z", &format!("X-Addr: 127.0.0.1:{}\r\n", a.port));
    assert_eq!((r.status, r.header("x-backend")), (200, Some("A")));
    // A host name would need a resolver: 502, and the error log says so.
    assert_eq!(get_h(s.port, "/byaddr/z", "X-Addr: backend.example\r\n").status, 502);
    assert!(s.prefix.error_log().contains("no resolver defined to resolve backend.example"));
}

#[test]
fn x_accel_redirect_sends_the_request_elsewhere() {
    let b = Backend::start("X");
    let s = front(&format!(
        "access_log off;
         server {{ listen 127.0.0.1:PORT; root html;
           location /xa/ {{ proxy_pass http://127.0.0.1:{0}/; }}
           location /plain/ {{ proxy_pass http://127.0.0.1:{0}/; proxy_ignore_headers X-Accel-Redirect; }}
           location /internal/ {{ internal; alias html/; }}
         }}",
        b.port
    ));
    // The upstream names an internal location: its answer is served, with
    // what the upstream said about the content.
    let r = get_h(s.port, "/xa/xaccel?to=/internal/local.txt", "");
    assert_eq!((r.status, body(&r).as_str()), (200, "served locally"));
    assert_eq!(r.header("content-disposition"), Some("attachment"));
    assert!(r.header("x-accel-redirect").is_none());
    // The target is decoded as a request's URI; one above the root is
    // refused.
    assert_eq!(body(&get_h(s.port, "/xa/xaccel?to=/internal/loc%61l.txt", "")), "served locally");
    assert_eq!(get_h(s.port, "/xa/xaccel?to=/internal/../../etc/passwd", "").status, 404);
    // A client cannot reach the internal location itself.
    assert_eq!(get_h(s.port, "/internal/local.txt", "").status, 404);
    // proxy_ignore_headers X-Accel-Redirect: the upstream's own answer.
    let r = get_h(s.port, "/plain/xaccel?to=/internal/local.txt", "");
    assert_eq!(body(&r), "from the backend");
}

#[test]
fn x_accel_limit_rate_sets_the_rate_unless_ignored() {
    let b = Backend::start("R");
    let bp = b.port;
    let s = front(&format!(
        "server {{ listen 127.0.0.1:PORT;
           location / {{ proxy_pass http://127.0.0.1:{bp}; add_header X-Rate $limit_rate; }}
           location /ignored/ {{ proxy_pass http://127.0.0.1:{bp}/; proxy_ignore_headers X-Accel-Limit-Rate; add_header X-Rate $limit_rate; }}
         }}"
    ));
    let r = get_h(s.port, "/counted/r?set=X-Accel-Limit-Rate:1234", "");
    assert_eq!((r.status, r.header("x-rate"), r.header("x-accel-limit-rate")), (200, Some("1234"), None));
    assert_eq!(get_h(s.port, "/ignored/counted/r?set=X-Accel-Limit-Rate:1234", "").header("x-rate"), Some("0"));
}

#[test]
fn random_max_conns_zone_and_fallbacks() {
    let bs: Vec<Backend> = ["A", "B"].iter().map(|n| Backend::start(n)).collect();
    let (a, b) = (bs[0].port, bs[1].port);
    let s = front(&format!(
        "access_log off;
         upstream rnd {{ zone shared 64k; random; server 127.0.0.1:{a}; server 127.0.0.1:{b} weight=3; server 127.0.0.1:1 down; }}
         upstream two {{ zone shared; random two least_conn; server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
         upstream one {{ server 127.0.0.1:{a} max_conns=1; }}
         upstream hashed {{ hash $arg_k; server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
         upstream downed {{ server 127.0.0.1:{a}; server 127.0.0.1:{b} down; }}
         server {{ listen 127.0.0.1:PORT;
           add_header X-Addr $upstream_addr always;
           location /rnd/ {{ proxy_pass http://rnd/; }}
           location /two/ {{ proxy_pass http://two/; }}
           location /one/ {{ proxy_pass http://one/; }}
           location /h/ {{ proxy_pass http://hashed/; }}
           location /downed/ {{ proxy_pass http://downed/; proxy_next_upstream error http_404; }}
         }}"
    ));
    let p = s.port;
    // random by weight: both serve, B about three times as often; never
    // the server marked down.
    let m = spread(p, "/rnd/x", 200);
    assert_eq!(m.keys().cloned().collect::<Vec<_>>(), ["A", "B"], "{m:?}");
    assert!(m["B"] > m["A"] * 3 / 2, "weight 3 against 1: {m:?}");
    let m = spread(p, "/two/x", 20);
    assert_eq!(m.len(), 2, "{m:?}");
    // max_conns=1: while one request is in progress, another finds no
    // live upstream (502, the group named in $upstream_addr).
    let before = bs[0].conns();
    let slow = std::thread::spawn(move || get_h(p, "/one/delay?ms=1500", "").status);
    // Upstream once A has accepted a connection besides these queries.
    let mut last = before;
    poll_until("the slow request to be upstream", Duration::from_secs(5), || {
        let now = bs[0].conns();
        let arrived = now > last + 1;
        last = now;
        arrived.then_some(())
    });
    let r = get_h(p, "/one/x", "");
    assert_eq!((r.status, r.header("x-addr")), (502, Some("one")));
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(get_h(p, "/one/x", "").status, 200, "the slot is free again");
    // hash with an empty key: round-robin over both.
    let m = spread(p, "/h/x?k=", 10);
    assert_eq!((m["A"], m["B"]), (5, 5), "{m:?}");
    // A 404 tried on every live server is the answer; a server marked
    // down is not a try left ("no live upstreams" would be a 502).
    assert_eq!(get_h(p, "/downed/status/404", "").status, 404);
}

#[test]
fn proxy_pass_header_server_and_date() {
    let b = Backend::start("S");
    let s = front(&format!(
        "access_log off; server {{ listen 127.0.0.1:PORT;
           location /own/ {{ proxy_pass http://127.0.0.1:{p}/; }}
           location /pass/ {{ proxy_pass http://127.0.0.1:{p}/; proxy_pass_header Server; proxy_pass_header Date; }}
         }}",
        p = b.port
    ));
    // By default the upstream's Server and Date are hidden: ngxr's own.
    let r = get_h(s.port, "/own/x", "");
    assert!(r.header("server").is_some_and(|v| v.starts_with("ngxr")), "{:?}", r.header("server"));
    // Passed on, they replace ngxr's (one of each).
    let r = get_h(s.port, "/pass/x", "");
    assert!(r.header("server").is_some_and(|v| v.starts_with("pybackend")), "{:?}", r.header("server"));
    assert_eq!(r.headers.iter().filter(|(k, _)| k == "server" || k == "date").count(), 2, "{:?}", r.headers);
}
