//! The sub plugin (sub_filter) through the real binary: static files and
//! a proxied response arriving in pieces, before gzip.

use ngxr_tests::*;

fn get(port: u16, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let buf = raw(port, req.as_bytes()).unwrap();
    parse_response(&buf).map(|(r, _)| r).expect("a response")
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn sub_filter_rewrites_bodies_as_nginx() {
    let big = format!("{}NEEDLE{}", "x".repeat(65530), "y".repeat(40000));
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ types {{ text/html html; text/plain txt; }}
               server {{ listen 127.0.0.1:{}; root html;
                 location /once/ {{ sub_filter Hello Bye; sub_filter World $remote_addr; }}
                 location /all/ {{ sub_filter hello bye; sub_filter_once off; }}
                 location /txt/ {{ sub_filter hello bye; }}
                 location /txt2/ {{ alias html/txt/; sub_filter hello bye; sub_filter_types text/plain; }}
                 location /keep/ {{ alias html/once/; sub_filter Hello Bye; sub_filter_last_modified on; }}
                 location /big/ {{ sub_filter needle FOUND; }}
               }} }}\n",
            conf_head(),
            load_plugins(&["static", "sub"]),
            p[0]
        )
    });
    for (path, body) in [("html/once/a.html", "Hello World, hello world."), ("html/all/a.html", "Hello hello HELLO"), ("html/txt/a.txt", "hello"), ("html/big/a.html", big.as_str())] {
        s.prefix.write(path, body);
    }
    let r = get(s.port, "/once/a.html");
    assert_eq!(text(&r), "Bye 127.0.0.1, hello world.");
    // The body changed: no Content-Length (chunked), no validators.
    assert_eq!((r.header("content-length"), r.header("last-modified"), r.header("etag")), (None, None, None));
    assert_eq!(text(&get(s.port, "/all/a.html")), "bye bye bye");
    assert_eq!(text(&get(s.port, "/txt/a.txt")), "hello");
    assert_eq!(text(&get(s.port, "/txt2/a.txt")), "bye");
    let r = get(s.port, "/keep/a.html");
    assert!(r.header("last-modified").is_some() && r.header("etag").is_some_and(|e| e.starts_with("W/")), "{:?}", r.header("etag"));
    // A file region (the static plugin sends it by sendfile) goes
    // through the filter too.
    let r = get(s.port, "/big/a.html");
    assert_eq!(r.body.len(), big.len() - 1);
    assert!(text(&r).contains("xxFOUNDyy"));
}

#[test]
fn sub_filter_works_on_proxied_pieces_before_gzip() {
    let b = Backend::start("S");
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ gzip on; gzip_types text/plain; gzip_min_length 1;
               server {{ listen 127.0.0.1:{};
                 location / {{ proxy_pass http://127.0.0.1:{}; sub_filter ,t +T; sub_filter_once off; sub_filter_types text/plain; }}
               }} }}\n",
            conf_head(),
            // sub loaded after gzip: it sees the body first.
            load_plugins(&["proxy", "gzip", "sub"]),
            p[0],
            b.port
        )
    });
    // /chunked arrives as "one," "two," "three", 20 ms apart: the string
    // straddles each boundary.
    let r = get(s.port, "/chunked");
    assert_eq!((r.status, text(&r)), (200, "one+Two+Three".to_string()));
    let req = b"GET /chunked HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n";
    let (r, _) = parse_response(&raw(s.port, req).unwrap()).expect("a response");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut plain).expect("gzip");
    assert_eq!(plain, "one+Two+Three");
}
