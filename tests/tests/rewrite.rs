//! The rewrite plugin (`return`, `rewrite`, `set`, `break`, `if`) and the
//! host's part of it (`http_set_uri`, types in the core), driven through
//! the real binary over raw sockets.

use ngxr_tests::*;
use std::io::Read;
use std::time::Duration;

fn serve(http: &str) -> Server {
    let port = free_port();
    let p = Prefix::new();
    for (f, body) in [("html/file.txt", "file"), ("html/b/page.html", "b page"), ("html/final/x", "final x"), ("html/kept/z", "kept z")] {
        p.write(f, body);
    }
    let conf = format!(
        "{}{}events {{}}\nhttp {{ access_log off; root html; {} }}\n",
        conf_head(),
        load_plugins(&["rewrite", "index", "static", "log"]),
        http.replace("PORT", &port.to_string())
    );
    p.write_conf(&conf);
    Server::start_in(p, port)
}

fn req(port: u16, head: &str) -> Response {
    let buf = raw(port, format!("{head}\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    parse_response(&buf).map(|(r, _)| r).unwrap_or_else(|| panic!("bad response to {head}: {:?}", String::from_utf8_lossy(&buf)))
}

fn get(port: u16, path: &str) -> Response {
    req(port, &format!("GET {path} HTTP/1.1"))
}

fn body(r: &Response) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}

#[test]
fn return_answers_as_nginx() {
    let s = serve(
        "types { application/json json; } default_type application/octet-stream;
         server { listen 127.0.0.1:PORT;
            location /text { return 200 \"uri=$uri args=$args\"; }
            location /j.json { return 200 '{\"ok\":1}'; }
            location /plain { default_type text/plain; return 201 created; }
            location /empty { return 204; }
            location /gone { return 410; }
            location /teapot { return 418 \"short and stout\"; }
            location /moved { return 301 /file.txt; }
            location /away { return https://example.com/x; }
            location /see { return 303 $scheme://$host/other?$args; }
            location /drop { return 444; }
            error_page 410 /file.txt;
        }",
    );
    let r = get(s.port, "/text?a=1");
    assert_eq!((r.status, body(&r)), (200, "uri=/text args=a=1"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"), "default_type, as nginx");
    assert_eq!(r.header("content-length"), Some("18"));
    let r = get(s.port, "/j.json");
    assert_eq!((r.header("content-type"), body(&r)), (Some("application/json"), "{\"ok\":1}"), "the type of $uri's extension");
    let r = get(s.port, "/plain");
    assert_eq!((r.status, r.header("content-type"), body(&r)), (201, Some("text/plain"), "created"));
    let r = get(s.port, "/empty");
    assert_eq!((r.status, r.body.len()), (204, 0));
    // 400 and above without text: the error page (and error_page applies).
    let r = get(s.port, "/gone");
    assert_eq!((r.status, body(&r)), (410, "file"));
    let r = get(s.port, "/teapot");
    assert_eq!((r.status, body(&r)), (418, "short and stout"));
    let r = get(s.port, "/moved");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some(format!("http://localhost:{}/file.txt", s.port).as_str()), "made absolute as nginx");
    let r = get(s.port, "/away");
    assert_eq!((r.status, r.header("location")), (302, Some("https://example.com/x")));
    let r = get(s.port, "/see?q=2");
    assert_eq!((r.status, r.header("location")), (303, Some("http://localhost/other?q=2")));
    // 444: the connection closes with nothing sent.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    std::io::Write::write_all(&mut c, b"GET /drop HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    assert!(c.read_to_end(&mut got).is_ok(), "closed, not timed out");
    assert!(got.is_empty(), "444 sends nothing: {:?}", String::from_utf8_lossy(&got));
    // A returned response keeps the connection alive.
    let mut k = Client::new(s.port);
    k.send(b"GET /text HTTP/1.1\r\nHost: x\r\n\r\nGET /j.json HTTP/1.1\r\nHost: x\r\n\r\n");
    let (a, b) = (k.response().unwrap(), k.response().unwrap());
    assert_eq!((body(&a), body(&b)), ("uri=/text args=", "{\"ok\":1}"));
}

#[test]
fn rewrite_flags_args_and_locations() {
    let s = serve(
        "server { listen 127.0.0.1:PORT;
            location /a/ { rewrite ^/a/(.*)$ /b/$1 last; return 500; }
            location /b/ { }
            location /brk/ { rewrite ^/brk/(.*)$ /kept/$1 break; return 500; }
            location /kept/ { return 500; }
            location /chain/ { rewrite ^/chain/(.*)$ /step/$1; rewrite ^/step/(.*)$ /final/$1; }
            location /final/ { }
            location /stop/ { rewrite ^ /kept/z; break; }
            location /args { rewrite ^ /show?new=1 last; }
            location /noargs { rewrite ^ /show? last; }
            location /show { return 200 \"$uri?$args\"; }
            location /r302 { rewrite ^/r302(.*)$ /dest$1 redirect; }
            location /r301 { rewrite ^ /dest permanent; }
            location /abs { rewrite ^/abs/(.*)$ http://other.example/$1; }
            location /loop { rewrite ^ /loop last; }
            location /named { rewrite ^/named/(?<tail>.*)$ /show?tail=$tail last; }
        }",
    );
    // last: the locations are searched for the new URI.
    assert_eq!(body(&get(s.port, "/a/page.html")), "b page");
    // break: the request stays in its location (no return 500), served
    // from the new URI.
    let r = get(s.port, "/brk/z");
    assert_eq!((r.status, body(&r)), (200, "kept z"));
    // Without a flag the next rewrite sees the new URI, then the search.
    assert_eq!(body(&get(s.port, "/chain/x")), "final x");
    // A bare break after a rewrite keeps the location (/kept/ would 500).
    let r = get(s.port, "/stop/q");
    assert_eq!((r.status, body(&r)), (200, "kept z"));
    // New args come first, then the request's; a trailing '?' drops them.
    assert_eq!(body(&get(s.port, "/args?old=2")), "/show?new=1&old=2");
    assert_eq!(body(&get(s.port, "/noargs?old=2")), "/show?");
    let r = get(s.port, "/r302/x?k=v");
    assert_eq!((r.status, r.header("location")), (302, Some(format!("http://localhost:{}/dest/x?k=v", s.port).as_str())));
    assert_eq!(get(s.port, "/r301").status, 301);
    let r = get(s.port, "/abs/p");
    assert_eq!((r.status, r.header("location")), (302, Some("http://other.example/p")));
    // A cycle ends with 500 after 10 searches.
    assert_eq!(get(s.port, "/loop").status, 500);
    assert!(s.prefix.error_log().contains("rewrite or internal redirection cycle"), "{}", s.prefix.error_log());
    // Named captures become variables.
    assert_eq!(body(&get(s.port, "/named/t1")), "/show?tail=t1");
}

#[test]
fn set_if_and_server_level_directives() {
    let s = serve(
        "server { listen 127.0.0.1:PORT;
            set $trail \"${trail}s\";
            if ($http_x_block) { return 403; }
            rewrite ^/old/(.*)$ /new/$1;
            location /new/ { return 200 \"new $1 $trail\"; }
            location /set { set $a \"[$arg_v]\"; set $b \"$a$a\"; return 200 $b; }
            location /if {
                if ($request_method = POST) { return 405; }
                if ($arg_x ~* ^(ab)c$) { return 200 \"cap $1\"; }
                if ($arg_y !~ ^\\d+$) { set $y bad; }
                if (-f $document_root/file.txt) { set $f yes; }
                if (!-d $document_root/file.txt) { set $nd yes; }
                if ($arg_zero) { return 200 \"truthy\"; }
                return 200 \"y=$y f=$f nd=$nd\";
            }
            location /both { if ($arg_q = \"\") { rewrite ^ /final/x last; } return 200 q; }
            location /final/ { }
        }",
    );
    // The server's directives run once (not again in the location), and
    // its captures are the location's $1.
    let r = get(s.port, "/old/z");
    assert_eq!((r.status, body(&r)), (200, "new z s"));
    assert_eq!(req(s.port, "GET /set HTTP/1.1\r\nX-Block: 1").status, 403);
    assert_eq!(req(s.port, "GET /set HTTP/1.1\r\nX-Block: 0").status, 200, "\"0\" is false");
    assert_eq!(body(&get(s.port, "/set?v=1")), "[1][1]");
    assert_eq!(req(s.port, "POST /if HTTP/1.1\r\nContent-Length: 0").status, 405);
    assert_eq!(body(&get(s.port, "/if?x=ABC")), "cap AB");
    assert_eq!(body(&get(s.port, "/if?y=12")), "y= f=yes nd=yes");
    assert_eq!(body(&get(s.port, "/if?y=1a")), "y=bad f=yes nd=yes");
    assert_eq!(body(&get(s.port, "/if?zero=0&y=1")), "y= f=yes nd=yes");
    assert_eq!(body(&get(s.port, "/if?zero=1&y=1")), "truthy");
    assert_eq!(body(&get(s.port, "/both")), "final x");
    assert_eq!(body(&get(s.port, "/both?q=1")), "q");
}

#[test]
fn bad_directives_are_refused_with_file_and_line() {
    let p = Prefix::new();
    let cases = [
        ("return /x;", "invalid return code \"/x\""),
        ("rewrite ^ /x sometimes;", "invalid parameter \"sometimes\""),
        ("rewrite ( /x;", "regex \"(\" is invalid"),
        ("set x 1;", "invalid variable name \"x\""),
        ("if ($a < b) { }", "unexpected \"<\" in condition"),
        ("if (-q x) { }", "invalid condition \"(-q x)\""),
        // A server-level `if` takes only the rewrite module's directives;
        // `if` does not nest.
        ("if ($a) { root /x; }", "\"root\" directive is not allowed here"),
        ("if ($a) { if ($b) { } }", "\"if\" directive is not allowed here"),
        ("return 200 a b;", "invalid number of arguments in \"return\" directive"),
    ];
    for (line, want) in cases {
        p.assert_refused(&format!("{}events {{}}\nhttp {{\nserver {{\n{line}\n}}\n}}\n", load_plugins(&["rewrite"])), want, 5);
    }
}

#[test]
fn core_captures_joined_headers_and_redirects() {
    let port = free_port();
    let p = Prefix::new();
    for (f, b) in [("html/img/a.txt", "image a"), ("html/dir sp/index.html", "spaced"), ("data/d1/f", "d1 f")] {
        p.write(f, b);
    }
    let conf = format!(
        "{}{}events {{}}\nhttp {{ access_log off; root html; server {{ listen 127.0.0.1:{port};
            location ~ ^/cap/(?<first>[a-z]+)/(.*)$ {{ return 200 \"$1|$first|$2\"; }}
            location ~ ^/pics/(.*)$ {{ alias html/img/$1; }}
            location /var/ {{ root data/$arg_d; rewrite ^/var/(.*)$ /$1 break; }}
            location /hdr {{ return 200 \"$http_x_m|$http_cookie\"; }}
            location /auto/ {{ proxy_pass http://127.0.0.1:9/; }}
            location = / {{ return 200 \"u=$uri a=$args\"; }}
            location /u/ {{ return 200 \"u=$uri a=$args\"; }}
            location = /rid {{ return 200 \"$request_id $request_id $remote_user\"; }}
            location = /pipe {{ return 200 $pipe; }}
        }} }}\n",
        conf_head(),
        load_plugins(&["rewrite", "index", "static", "log", "headers", "proxy"]),
    );
    p.write_conf(&conf);
    let s = Server::start_in(p, port);
    // A regex location's captures and named groups are variables.
    assert_eq!(body(&get(s.port, "/cap/abc/d/e")), "abc|abc|d/e");
    // …and alias (and root) expand them.
    let r = get(s.port, "/pics/a.txt");
    assert_eq!((r.status, body(&r)), (200, "image a"));
    assert_eq!(body(&get(s.port, "/var/f?d=d1")), "d1 f");
    // Several lines of one header read joined, as nginx (1.23).
    let r = req(s.port, "GET /hdr HTTP/1.1\r\nX-M: a\r\nX-M: b\r\nCookie: c=1\r\nCookie: d=2");
    assert_eq!(body(&r), "a, b|c=1; d=2");
    // Names with '_' (or other characters than letters, digits and '-')
    // are ignored, as nginx's ignore_invalid_headers.
    let r = req(s.port, "GET /hdr HTTP/1.1\r\nX_M: u\r\nX.M: d\r\nX-M: a");
    assert_eq!(body(&r), "a|");
    // A directory's redirect escapes its path.
    let r = get(s.port, "/dir%20sp?x=1");
    assert_eq!((r.status, r.header("location")), (301, Some(format!("http://localhost:{port}/dir%20sp/?x=1").as_str())));
    // A fragment is no part of the request; an absolute target without a
    // path has "/".
    assert_eq!(body(&req(s.port, "GET /u/a/..#frag HTTP/1.1")), "u=/u/ a=");
    assert_eq!(body(&req(s.port, "GET http://localhost?x=1#frag HTTP/1.1")), "u=/ a=x=1");
    // $request_id: 32 hex digits, one per request; $remote_user: the
    // name of Basic credentials.
    let a = body(&req(s.port, "GET /rid HTTP/1.1\r\nAuthorization: Basic YWxpY2U6eA==")).to_string();
    let b = body(&get(s.port, "/rid")).to_string();
    let (x, y, user) = (&a[..32], &a[33..65], &a[66..]);
    assert!(x == y && x.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_eq!(user, "alice");
    assert_ne!(&b[..32], x, "a new id per request");
    // $pipe: "p" for a request that came with the one before it.
    let mut c = Client::new(s.port);
    c.send(b"GET /pipe HTTP/1.1\r\nHost: x\r\n\r\nGET /pipe HTTP/1.1\r\nHost: x\r\n\r\n");
    let (first, second) = (c.response().unwrap(), c.response().unwrap());
    assert_eq!((body(&first), body(&second)), (".", "p"));
    // auto_redirect: the name of a proxied location without its '/'.
    let r = get(s.port, "/auto?a=b");
    assert_eq!((r.status, r.header("location")), (301, Some(format!("http://localhost:{port}/auto/?a=b").as_str())));
}
