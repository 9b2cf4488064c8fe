//! The referer plugin through the real binary: nginx's hotlink
//! protection idiom in front of static files.

use ngxr_tests::*;

#[test]
fn hotlink_protection() {
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ server {{ listen 127.0.0.1:{};
               root html;
               valid_referers none blocked server_names *.example.com example.org/gallery/ ~\\.search\\.;
               location /img/ {{ if ($invalid_referer) {{ return 403; }} }}
               location /strict/ {{ valid_referers example.net; if ($invalid_referer) {{ return 403; }} }}
               location = /v {{ return 200 \"[$invalid_referer]\"; }}
               server_name localhost ~^static\\d+\\.cdn\\.test$;
             }} }}\n",
            conf_head(),
            load_plugins(&["rewrite", "static", "referer"]),
            p[0]
        )
    });
    s.prefix.write("html/img/a.png", "png");
    s.prefix.write("html/strict/a.png", "png");
    let status = |path: &str, referer: Option<&str>| {
        let h = referer.map_or(String::new(), |r| format!("Referer: {r}\r\n"));
        let buf = raw(s.port, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{h}Connection: close\r\n\r\n").as_bytes()).unwrap();
        parse_response(&buf).unwrap().0.status
    };
    for (referer, want) in [
        (None, 200),                                               // none
        (Some("android-app://x"), 200),                            // blocked: no http(s) scheme
        (Some("http://localhost/page"), 200),                      // server_names
        (Some("https://LocalHost:8443/"), 200),                    // caseless, with a port
        (Some("http://static7.cdn.test/x"), 200),                  // a regex server_name
        (Some("http://www.example.com/x"), 200),                   // *.example.com
        (Some("http://a.b.example.com/"), 200),                    // any depth
        (Some("http://example.com/"), 403),                        // not the bare name
        (Some("http://example.org/gallery/1"), 200),               // a URI prefix
        (Some("http://example.org/other"), 403),
        (Some("http://example.org/Gallery/1"), 403),               // the prefix is case-sensitive
        (Some("https://www.search.engine/?q=x"), 200),             // ~regex on the rest
        (Some("http://evil.test/"), 403),
    ] {
        assert_eq!(status("/img/a.png", referer), want, "{referer:?}");
    }
    // A location's own list replaces the server's.
    assert_eq!(status("/strict/a.png", Some("http://example.net/")), 200);
    assert_eq!(status("/strict/a.png", Some("http://localhost/")), 403);
    assert_eq!(status("/strict/a.png", None), 403);
    let body = |referer: &str| {
        let buf = raw(s.port, format!("GET /v HTTP/1.0\r\nReferer: {referer}\r\n\r\n").as_bytes()).unwrap();
        String::from_utf8_lossy(&parse_response(&buf).unwrap().0.body).into_owned()
    };
    assert_eq!(body("http://evil.test/"), "[1]");
    assert_eq!(body("http://localhost/"), "[]");
}
