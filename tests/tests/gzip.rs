//! The gzip plugin through the real binary: what a client that accepts
//! gzip gets, decompressed with flate2 (not ngxr's code).

use ngxr_tests::*;
use std::io::Read;

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap_or_else(|e| panic!("not gzip ({e}): {} bytes", b.len()));
    out
}

/// One request (`head`: its request line and headers of its own) on a
/// connection of its own.
fn request(port: u16, head: &str) -> Response {
    let buf = raw(port, format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    parse_response_to(&buf, head.starts_with("HEAD ")).unwrap().0
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
    let req = |head: &str| request(s.port, head);
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

#[test]
fn gzip_static_sends_the_gz_file() {
    let port = free_port();
    let p = Prefix::new();
    let page = page(50);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, page.as_bytes()).unwrap();
    let packed = enc.finish().unwrap();
    p.write("html/s/a.html", &page);
    std::fs::write(p.path().join("html/s/a.html.gz"), &packed).unwrap();
    p.write("html/s/b.html", &page);
    p.write("html/always/a.html", "plain");
    std::fs::write(p.path().join("html/always/a.html.gz"), &packed).unwrap();
    p.write("html/disabled/a.html", &page);
    // Two gzip members: gunzip reads them all, as nginx's.
    std::fs::create_dir_all(p.path().join("html/gunzip")).unwrap();
    std::fs::write(p.path().join("html/gunzip/a.html.gz"), [packed.clone(), packed.clone()].concat()).unwrap();
    std::fs::write(p.path().join("html/disabled/a.html.gz"), &packed).unwrap();
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ access_log off; types {{ text/html html; }}
            gzip_vary on;
            server {{ listen 127.0.0.1:{port}; root html;
              location /s/ {{ gzip_static on; gzip on; }}
              location /always/ {{ gzip_static always; gzip_vary off; }}
              location /disabled/ {{ gzip_static on; gzip_disable \"^curl\"; gzip_proxied any; }}
              location /gunzip/ {{ gzip_static always; gunzip on; }}
            }} }}\n",
        conf_head(),
        load_plugins(&["static", "log", "gzip"]),
    ));
    let s = Server::start_in(p, port);
    let req = |head: &str| request(s.port, head);
    let gz = "Accept-Encoding: gzip";
    // The .gz file as it is on disk: its length, its ETag, the page's type.
    let r = req(&format!("GET /s/a.html HTTP/1.1\r\n{gz}"));
    assert_eq!((r.status, r.header("content-encoding"), r.header("content-type")), (200, Some("gzip"), Some("text/html")));
    assert_eq!(r.body, packed, "sent as is, not compressed again");
    assert_eq!(r.header("content-length"), Some(packed.len().to_string().as_str()));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(gunzip(&r.body), page.as_bytes());
    let etag = r.header("etag").unwrap().to_string();
    // Ranges of it, and a 304 that does not say gzip.
    let r = req(&format!("GET /s/a.html HTTP/1.1\r\n{gz}\r\nRange: bytes=0-9"));
    assert_eq!((r.status, r.header("content-encoding"), r.body.as_slice()), (206, Some("gzip"), &packed[..10]));
    let r = req(&format!("GET /s/a.html HTTP/1.1\r\n{gz}\r\nIf-None-Match: {etag}"));
    assert_eq!((r.status, r.header("content-encoding")), (304, None));
    // Clients that may not have it get the page, still with Vary (a .gz
    // exists: the response could have been compressed).
    for head in ["GET /s/a.html HTTP/1.1".to_string(), format!("GET /s/a.html HTTP/1.1\r\nAccept-Encoding: gzip;q=0"), format!("GET /s/a.html HTTP/1.0\r\n{gz}"), format!("GET /s/a.html HTTP/1.1\r\n{gz}\r\nVia: 1.1 cache")] {
        let r = req(&head);
        assert_eq!((r.status, r.header("content-encoding"), r.header("vary")), (200, None, Some("Accept-Encoding")), "{head}");
        assert_eq!(r.body, page.as_bytes(), "{head}");
    }
    // No .gz: the gzip filter compresses on the fly instead.
    let r = req(&format!("GET /s/b.html HTTP/1.1\r\n{gz}"));
    assert_eq!((r.header("content-encoding"), r.header("content-length")), (Some("gzip"), None));
    assert_eq!(gunzip(&r.body), page.as_bytes());
    // always: whatever the client says, and no Vary.
    let r = req("GET /always/a.html HTTP/1.1");
    assert_eq!((r.header("content-encoding"), r.header("vary"), r.body.clone()), (Some("gzip"), None, packed.clone()));
    // gzip_disable and gzip_proxied are the host's, as nginx's core ones.
    let r = req(&format!("GET /disabled/a.html HTTP/1.1\r\n{gz}\r\nUser-Agent: curl/8"));
    assert_eq!((r.header("content-encoding"), r.body.as_slice()), (None, page.as_bytes()));
    let r = req(&format!("GET /disabled/a.html HTTP/1.1\r\n{gz}\r\nUser-Agent: Firefox\r\nVia: 1.1 cache"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    // gzip_static always + gunzip: stored compressed only, decompressed
    // for the clients that cannot take gzip, passed as is to the others.
    let twice = [page.as_bytes(), page.as_bytes()].concat();
    let r = req("GET /gunzip/a.html HTTP/1.1");
    assert_eq!((r.status, r.header("content-encoding"), r.header("content-length"), r.header("vary")), (200, None, None, Some("Accept-Encoding")));
    assert_eq!(r.body, twice);
    let r = req(&format!("GET /gunzip/a.html HTTP/1.1\r\n{gz}"));
    assert_eq!((r.header("content-encoding"), r.header("vary")), (Some("gzip"), Some("Accept-Encoding")));
    assert_eq!(gunzip_all(&r.body), twice);
}

fn gunzip_all(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}
