//! The limit_conn plugin through the real binary, two workers sharing the
//! zone (a request held in progress by testkit's /sleep).

use ngxr_tests::*;
use std::time::Duration;

#[test]
fn requests_in_progress_per_key() {
    let port = free_port();
    let p = Prefix::new();
    p.write_conf(&format!(
        "{}worker_processes 2;\nload_module {};\n{}events {{}}\nhttp {{ access_log off;
            limit_conn_zone $binary_remote_addr zone=perip:1m;
            server {{ listen 127.0.0.1:{port};
                add_header X-LC $limit_conn_status always;
                location = /sleep {{ limit_conn perip 1; limit_conn_status 429; testkit_reply x; }}
                location /probe {{ limit_conn perip 1; limit_conn_dry_run on; testkit_reply x; }}
                location /free {{ testkit_reply x; }}
            }} }}\n",
        conf_head(),
        testkit_so().display(),
        load_plugins(&["limit_conn", "log", "headers"]),
    ));
    let s = Server::start_in(p, port);
    let get = move |path: &str| {
        let buf = raw(port, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        parse_response(&buf).unwrap().0
    };
    assert_eq!(get("/probe").header("x-lc"), Some("PASSED"));
    // A long request holds the client's one slot: a dry-run location (which
    // takes no slot itself) sees it taken…
    let long = std::thread::spawn(move || get("/sleep?ms=2500"));
    poll_until("the long request to hold its slot", Duration::from_secs(2), || (get("/probe").header("x-lc") == Some("REJECTED_DRY_RUN")).then_some(()));
    // …and a real one from the same address is refused, with
    // limit_conn_status, by either worker.
    for _ in 0..4 {
        let r = get("/sleep?ms=0");
        assert_eq!((r.status, r.header("x-lc")), (429, Some("REJECTED")));
    }
    // Locations without limit_conn are not limited.
    assert_eq!(get("/free").status, 200);
    let done = long.join().unwrap();
    assert_eq!((done.status, done.header("x-lc")), (200, Some("PASSED")));
    // Once it is over its slot is free again (given back when it ended).
    assert_eq!(get("/probe").header("x-lc"), Some("PASSED"));
    assert_eq!(get("/sleep?ms=0").status, 200);
    // A client that goes away while its request waits ends the request
    // there (as nginx: 499), and its slot is given back at once, long
    // before the wait would have ended.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut c, b"GET /sleep?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    poll_until("the abandoned request to hold its slot", Duration::from_secs(2), || (get("/probe").header("x-lc") == Some("REJECTED_DRY_RUN")).then_some(()));
    drop(c);
    poll_until("the slot back after the client left", Duration::from_secs(2), || (get("/probe").header("x-lc") == Some("PASSED")).then_some(()));
    let log = s.prefix.error_log();
    assert!(log.contains("client prematurely closed connection"), "{log}");
    assert!(log.contains("limiting connections by zone \"perip\"") && log.contains("limiting connections, dry run, by zone \"perip\""), "{log}");
}
