//! The limit_req plugin through the real binary, two workers sharing the
//! zone.

use ngxr_tests::*;
use std::time::{Duration, Instant};

fn serve(http: &str) -> Server {
    let port = free_port();
    let p = Prefix::new();
    p.write("html/x", "x");
    for d in ["strict", "burst", "wait", "dry", "teapot", "free"] {
        p.write(&format!("html/{d}/x"), "x");
    }
    p.write_conf(&format!(
        "{}worker_processes 2;\n{}events {{}}\nhttp {{ access_log off; root html; {} }}\n",
        conf_head(),
        load_plugins(&["limit_req", "static", "log", "headers"]),
        http.replace("PORT", &port.to_string())
    ));
    Server::start_in(p, port)
}

#[test]
fn rates_bursts_delays_and_statuses() {
    let s = serve(
        "limit_req_zone $binary_remote_addr zone=strict:1m rate=1r/m;
         limit_req_zone $binary_remote_addr zone=burst:1m rate=1r/m;
         limit_req_zone $binary_remote_addr zone=wait:1m rate=4r/s;
         limit_req_zone $binary_remote_addr zone=dry:1m rate=1r/m;
         limit_req_zone $http_x_key zone=bykey:1m rate=1r/m;
         server { listen 127.0.0.1:PORT;
            add_header X-LR $limit_req_status always;
            location /strict/ { limit_req zone=strict; }
            location /burst/ { limit_req zone=burst burst=2 nodelay; }
            location /wait/ { limit_req zone=wait burst=5; }
            location /dry/ { limit_req zone=dry; limit_req_dry_run on; }
            location /teapot/ { limit_req zone=bykey; limit_req_status 429; }
            location /free/ { }
         }",
    );
    let get_h = |path: &str, headers: &str| {
        let buf = raw(s.port, format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes()).unwrap();
        parse_response(&buf).unwrap().0
    };
    let statuses = |path: &str, n: usize| (0..n).map(|_| get_h(path, "").status).collect::<Vec<_>>();
    // 1 r/m and no burst: one request passes, across both workers.
    assert_eq!(statuses("/strict/x", 8), [200, 503, 503, 503, 503, 503, 503, 503]);
    assert!(s.prefix.error_log().contains("limiting requests, excess: 1.000 by zone \"strict\""), "{}", s.prefix.error_log());
    // burst=2 nodelay: three at once, then refused.
    assert_eq!(statuses("/burst/x", 5), [200, 200, 200, 503, 503]);
    // A burst without nodelay waits instead: at 4 r/s the third request
    // in a row waits until the excess drains (about half a second).
    let t = Instant::now();
    let r: Vec<_> = (0..3).map(|_| get_h("/wait/x", "")).collect();
    assert!(r.iter().all(|r| r.status == 200));
    assert_eq!(r.iter().map(|r| r.header("x-lr")).collect::<Vec<_>>(), [Some("PASSED"), Some("DELAYED"), Some("DELAYED")], "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    // A dry run refuses nothing and says what it would have done.
    let r: Vec<_> = (0..2).map(|_| get_h("/dry/x", "")).collect();
    assert_eq!((r[0].status, r[1].status), (200, 200));
    assert_eq!((r[0].header("x-lr"), r[1].header("x-lr")), (Some("PASSED"), Some("REJECTED_DRY_RUN")));
    // Any key; its own status; an empty key is not limited.
    assert_eq!(get_h("/teapot/x", "X-Key: a\r\n").status, 200);
    let r = get_h("/teapot/x", "X-Key: a\r\n");
    assert_eq!((r.status, r.header("x-lr")), (429, Some("REJECTED")));
    assert_eq!(get_h("/teapot/x", "X-Key: b\r\n").status, 200);
    assert_eq!(statuses("/teapot/x", 3), [200, 200, 200]);
    // Locations without limit_req are not limited.
    assert_eq!(statuses("/free/x", 3), [200, 200, 200]);
}

#[test]
fn bad_directives_are_refused() {
    let p = Prefix::new();
    for (line, want) in [
        ("limit_req zone=nope;", "unknown limit_req_zone \"nope\""),
        ("limit_req_zone $a zone=z:1m rate=fast;", "invalid rate \"fast\""),
        ("limit_req_zone $a zone=z:1k;", "zone \"z\" is too small"),
        ("limit_req_zone $a zone=z:1m; limit_req zone=z burst=x;", "invalid burst value \"burst=x\""),
    ] {
        p.assert_refused(&format!("{}events {{}}\nhttp {{\n{line}\n}}\n", load_plugins(&["limit_req"])), want, 4);
    }
}
