//! The charset plugin through the real binary: static files, a proxied
//! response that names its own charset, and a refused recoding.

use ngxr_tests::*;

#[test]
fn charset_is_added_to_listed_types() {
    let b = Backend::start("C");
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ root html; types {{ text/html html; text/plain txt; image/png png; application/json json; }}
               charset utf-8;
               server {{ listen 127.0.0.1:{};
                 location /off/ {{ charset off; }}
                 location /json/ {{ charset_types application/json; }}
                 location /up/ {{ proxy_pass http://127.0.0.1:{bp}/; }}
                 location /over/ {{ proxy_pass http://127.0.0.1:{bp}/; override_charset on; }}
               }} }}\n",
            conf_head(),
            load_plugins(&["proxy", "static", "charset"]),
            p[0],
            bp = b.port
        )
    });
    for f in ["html/a.html", "html/a.txt", "html/a.png", "html/off/a.html", "html/json/a.json", "html/json/a.html"] {
        s.prefix.write(f, "x");
    }
    let ct = |path: &str| get(s.port, path).unwrap().header("content-type").map(str::to_string);
    assert_eq!(ct("/a.html").as_deref(), Some("text/html; charset=utf-8"));
    assert_eq!(ct("/a.txt").as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(ct("/a.png").as_deref(), Some("image/png"));
    assert_eq!(ct("/off/a.html").as_deref(), Some("text/html"));
    // charset_types replaces the list.
    assert_eq!(ct("/json/a.json").as_deref(), Some("application/json; charset=utf-8"));
    assert_eq!(ct("/json/a.html").as_deref(), Some("text/html"));
    // Error pages are text/html too.
    assert_eq!(ct("/missing").as_deref(), Some("text/html; charset=utf-8"));
    // A charset the upstream named stays, unless override_charset.
    let named = "counted/c?set=Content-Type:text/plain;%20charset=koi8-r";
    assert_eq!(ct(&format!("/up/{named}")).as_deref(), Some("text/plain; charset=koi8-r"));
    assert_eq!(ct(&format!("/over/{named}")).as_deref(), Some("text/plain; charset=utf-8"));
}

#[test]
fn recoding_is_refused_by_name() {
    let p = Prefix::new();
    let conf = format!("{}events {{}}\nhttp {{\ncharset utf-8;\nsource_charset koi8-r;\nserver {{ }}\n}}\n", load_plugins(&["charset"]));
    let line = conf.lines().position(|l| l.starts_with("source_charset")).unwrap() as u32 + 1;
    p.assert_refused(&conf, "recoding from \"koi8-r\" to \"utf-8\" is not supported", line);
}
