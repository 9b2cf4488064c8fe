//! The gzip plugin through the real binary: what a client that accepts
//! gzip gets, decompressed with flate2 (not ngxr's code).

use ngxr_tests::*;
use std::io::Read;

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap_or_else(|e| panic!("not gzip ({e}): {} bytes", b.len()));
    out
}

fn page(n: usize) -> String {
    (0..n).map(|i| format!("<p>line {i} of a page that compresses well</p>\n")).collect()
}

#[test]
fn compresses_as_nginx() {
    let port = free_port();
    let p = Prefix::new();
    let small = page(100);
    let big = page(20000); // ~1 MiB: sent as a file region (sendfile)
    p.write("html/small.html", &small);
    p.write("html/big.html", &big);
    p.write("html/data.json", "{\"a\": \"json that is long enough to be compressed here\"}");
    p.write("html/tiny.html", "<p>x</p>");
    p.write("html/img.png", &"not really a png but long enough ".repeat(10));
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ access_log off; types {{ text/html html; application/json json; image/png png; }}
            gzip on; gzip_vary on; gzip_types application/json; gzip_min_length 50;
            server {{ listen 127.0.0.1:{port}; root html; location /off/ {{ gzip off; alias html/; }} }} }}\n",
        conf_head(),
        load_plugins(&["static", "log", "gzip"]),
    ));
    let s = Server::start_in(p, port);
    let req = |head: &str| {
        let buf = raw(s.port, format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        parse_response_to(&buf, head.starts_with("HEAD ")).unwrap().0
    };
    let gz = "Accept-Encoding: gzip, deflate";
    // Memory and file bodies come out compressed, chunked, without length.
    for (path, want) in [("/small.html", &small), ("/big.html", &big)] {
        let r = req(&format!("GET {path} HTTP/1.1\r\n{gz}"));
        assert_eq!((r.status, r.header("content-encoding"), r.header("content-length")), (200, Some("gzip"), None), "{path}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert!(r.header("etag").unwrap().starts_with("W/\""), "a strong ETag becomes weak");
        assert!(r.header("accept-ranges").is_none());
        assert!(r.body.len() * 5 < want.len(), "{path}: {} → {}", want.len(), r.body.len());
        assert_eq!(gunzip(&r.body), want.as_bytes(), "{path}");
    }
    // gzip_types adds to text/html; other types pass as they are.
    assert_eq!(req(&format!("GET /data.json HTTP/1.1\r\n{gz}")).header("content-encoding"), Some("gzip"));
    let r = req(&format!("GET /img.png HTTP/1.1\r\n{gz}"));
    assert!(r.header("content-encoding").is_none() && r.header("vary").is_none());
    // Below gzip_min_length (by Content-Length): as it is.
    assert!(req(&format!("GET /tiny.html HTTP/1.1\r\n{gz}")).header("content-encoding").is_none());
    // A client that does not take gzip (or refuses it with q=0) gets the
    // file, with Vary.
    for head in ["GET /small.html HTTP/1.1", "GET /small.html HTTP/1.1\r\nAccept-Encoding: gzip;q=0, br"] {
        let r = req(head);
        assert_eq!((r.header("content-encoding"), r.header("vary")), (None, Some("Accept-Encoding")), "{head}");
        assert_eq!(r.body, small.as_bytes());
        assert_eq!(r.header("content-length"), Some(small.len().to_string().as_str()));
    }
    // HEAD says what GET would.
    let r = req(&format!("HEAD /small.html HTTP/1.1\r\n{gz}"));
    assert_eq!((r.header("content-encoding"), r.body.len()), (Some("gzip"), 0));
    // HTTP/1.0 (gzip_http_version 1.1), a Via (gzip_proxied off), and
    // gzip off: not compressed.
    for head in [format!("GET /small.html HTTP/1.0\r\n{gz}"), format!("GET /small.html HTTP/1.1\r\n{gz}\r\nVia: 1.1 cache"), format!("GET /off/small.html HTTP/1.1\r\n{gz}")] {
        assert!(req(&head).header("content-encoding").is_none(), "{head}");
    }
    // A 404 page is compressed too (200, 403 and 404 are).
    let r = req(&format!("GET /missing.html HTTP/1.1\r\n{gz}"));
    assert_eq!((r.status, r.header("content-encoding")), (404, Some("gzip")));
    assert!(String::from_utf8(gunzip(&r.body)).unwrap().contains("404 Not Found"));
    // A keepalive connection carries compressed responses back to back.
    let mut c = Client::new(s.port);
    c.send(format!("GET /small.html HTTP/1.1\r\nHost: x\r\n{gz}\r\n\r\nGET /big.html HTTP/1.1\r\nHost: x\r\n{gz}\r\n\r\n").as_bytes());
    let (a, b) = (c.response().unwrap(), c.response().unwrap());
    assert_eq!((gunzip(&a.body), gunzip(&b.body)), (small.into_bytes(), big.into_bytes()));
}
