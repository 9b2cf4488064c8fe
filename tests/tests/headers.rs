//! The headers plugin (`add_header`, `add_header_inherit`, `expires`),
//! driven through the real binary over raw sockets.

use ngxr_tests::*;
use std::time::{SystemTime, UNIX_EPOCH};

fn serve(http: &str) -> Server {
    let port = free_port();
    let p = Prefix::new();
    for f in ["t", "own", "merge", "off", "access", "neg", "max", "mod", "var", "tags", "empty"] {
        p.write(&format!("html/{f}"), "x");
    }
    let conf = format!(
        "{}{}events {{}}\nhttp {{ access_log off; root html; {} }}\n",
        conf_head(),
        load_plugins(&["static", "log", "headers"]),
        http.replace("PORT", &port.to_string())
    );
    p.write_conf(&conf);
    Server::start_in(p, port)
}

fn get(port: u16, path: &str) -> Response {
    let buf = raw(port, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    parse_response(&buf).map(|(r, _)| r).unwrap_or_else(|| panic!("bad response: {:?}", String::from_utf8_lossy(&buf)))
}

fn all<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
    r.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

fn secs(date: &str) -> i64 {
    httpdate::parse_http_date(date).unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn max_age(r: &Response) -> i64 {
    let cc = r.header("cache-control").unwrap_or_else(|| panic!("no Cache-Control: {r:?}"));
    cc.strip_prefix("max-age=").unwrap_or_else(|| panic!("{cc}")).parse().unwrap()
}

#[test]
fn add_header_and_expires_as_nginx() {
    let s = serve(
        "server { listen 127.0.0.1:PORT;
            add_header X-URI $uri;
            add_header X-Always $uri always;
            add_header X-Empty $arg_none;
            expires epoch;
            location /t { }
            location /nx { }
            location /own { add_header X-Own 1; add_header X-Own 2; }
            location /merge { add_header_inherit merge; add_header X-Own 1; }
            location /off { add_header_inherit off; expires off; location /off/in { } }
            location /access { expires 1h; }
            location /neg { expires -10; }
            location /max { expires max; }
            location /mod { expires modified 1h; }
            location /var { expires $arg_e; }
            location /tags { add_header ETag '\"mine\"'; add_header Last-Modified ''; }
            location /empty { add_header Cache-Control no-store; add_header Cache-Control private; }
        }",
    );
    // Inherited from the server, for a safe status.
    let r = get(s.port, "/t");
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "x-uri"), ["/t"]);
    assert_eq!(all(&r, "x-always"), ["/t"]);
    assert!(r.header("x-empty").is_none(), "an empty value adds nothing: {r:?}");
    assert_eq!(r.header("expires"), Some("Thu, 01 Jan 1970 00:00:01 GMT"));
    assert_eq!(all(&r, "cache-control"), ["no-cache"]);
    // An error: only `always`, no expires.
    let r = get(s.port, "/nx");
    assert_eq!(r.status, 404);
    assert_eq!(all(&r, "x-always"), ["/nx"]);
    assert!(r.header("x-uri").is_none() && r.header("expires").is_none() && r.header("cache-control").is_none(), "{r:?}");
    // A block with its own lines replaces the server's; both lines stay.
    let r = get(s.port, "/own");
    assert_eq!(all(&r, "x-own"), ["1", "2"]);
    assert!(r.header("x-uri").is_none() && r.header("x-always").is_none(), "{r:?}");
    // merge: its own, then the server's.
    let r = get(s.port, "/merge");
    assert_eq!((all(&r, "x-own"), all(&r, "x-uri")), (vec!["1"], vec!["/merge"]));
    // off: none of the server's, and nested blocks inherit the off.
    for path in ["/off", "/off/in"] {
        let r = get(s.port, path);
        assert!(r.header("x-uri").is_none() && r.header("expires").is_none(), "{path}: {r:?}");
    }
    // expires 1h: Expires is Date + 1h.
    let r = get(s.port, "/access");
    assert_eq!(max_age(&r), 3600);
    assert_eq!(secs(r.header("expires").unwrap()) - secs(r.header("date").unwrap()), 3600);
    // A negative time: in the past, no-cache.
    let r = get(s.port, "/neg");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(secs(r.header("expires").unwrap()) < secs(r.header("date").unwrap()));
    let r = get(s.port, "/max");
    assert_eq!((r.header("expires"), r.header("cache-control")), (Some("Thu, 31 Dec 2037 23:55:55 GMT"), Some("max-age=315360000")));
    // modified: an hour after the file's Last-Modified.
    let r = get(s.port, "/mod");
    assert_eq!(secs(r.header("expires").unwrap()), secs(r.header("last-modified").unwrap()) + 3600);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((3590..=3600).contains(&max_age(&r)), "{r:?} at {now}");
    // A value with variables, per request; an invalid one sets nothing.
    assert_eq!(max_age(&get(s.port, "/var?e=30m")), 1800);
    assert_eq!(get(s.port, "/var?e=epoch").header("cache-control"), Some("no-cache"));
    let r = get(s.port, "/var?e=soon");
    assert!(r.header("expires").is_none() && r.header("cache-control").is_none(), "{r:?}");
    // ETag and Last-Modified replace the response's own; empty removes.
    let r = get(s.port, "/tags");
    assert_eq!(all(&r, "etag"), ["\"mine\""]);
    assert!(r.header("last-modified").is_none(), "{r:?}");
    // Cache-Control lines add up, after the inherited expires' own.
    assert_eq!(all(&get(s.port, "/empty"), "cache-control"), ["no-cache", "no-store", "private"]);
}

#[test]
fn bad_directives_are_refused_with_file_and_line() {
    let p = Prefix::new();
    let cases = [
        ("add_header X-A 1 sometimes;", "invalid parameter \"sometimes\""),
        ("add_header \"X A\" 1;", "invalid header name \"X A\""),
        ("expires @25h;", "\"expires\" directive daily time value must be less than 24 hours"),
        ("expires modified @1h;", "\"expires\" directive daily time cannot be used with \"modified\" parameter"),
        ("expires soon;", "\"expires\" directive invalid value"),
        ("expires 1h; expires 2h;", "\"expires\" directive is duplicate"),
        ("add_header_inherit maybe;", "invalid value \"maybe\" in \"add_header_inherit\" directive"),
    ];
    for (line, want) in cases {
        p.assert_refused(&format!("{}events {{}}\nhttp {{\n{line}\n}}\n", load_plugins(&["headers"])), want, 4);
    }
}

#[test]
fn values_are_rendered_per_request_on_a_keepalive_connection() {
    // Two requests on one connection: the filter's per-request rendering
    // does not leak from one response into the next.
    let s = serve("server { listen 127.0.0.1:PORT; add_header X-Args \"[$args]\"; location / { } }");
    let mut c = Client::new(s.port);
    c.send(b"GET /t?a=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /t HTTP/1.1\r\nHost: x\r\n\r\n");
    let (a, b) = (c.response().unwrap(), c.response().unwrap());
    assert_eq!((a.header("x-args"), b.header("x-args")), (Some("[a=1]"), Some("[]")));
}
