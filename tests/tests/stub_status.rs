//! stub_status through the real binary: nginx's page and numbers, summed
//! over two workers, kept across a reload, and corrected when workers
//! crash with connections open.

use ngxr_tests::*;
use std::time::Duration;

/// (active, accepts, handled, requests, reading, writing, waiting)
fn status(port: u16) -> [u64; 7] {
    let r = get(port, "/status").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let body = String::from_utf8(r.body.clone()).unwrap();
    let lines: Vec<&str> = body.split('\n').collect();
    assert_eq!(lines.len(), 5, "{body:?}");
    assert!(lines[0].starts_with("Active connections: ") && lines[0].ends_with(' '), "{body:?}");
    assert_eq!(lines[1], "server accepts handled requests");
    assert!(lines[2].starts_with(' ') && lines[2].ends_with(' '), "{body:?}");
    assert!(lines[3].starts_with("Reading: ") && lines[3].contains(" Writing: ") && lines[3].contains(" Waiting: "), "{body:?}");
    let n: Vec<u64> = body.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    assert_eq!(n.len(), 7, "{body:?}");
    [n[0], n[1], n[2], n[3], n[4], n[5], n[6]]
}

/// Polls the page until `want` holds for it.
fn status_until(port: u16, what: &str, want: impl Fn(&[u64; 7]) -> bool) -> [u64; 7] {
    poll_until(what, Duration::from_secs(10), || Some(status(port)).filter(|s| want(s)))
}

#[test]
fn counts_connections_and_requests_across_workers() {
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}worker_processes 2;\nevents {{}}\nhttp {{ server {{ listen 127.0.0.1:{};
               location = /status {{ stub_status; }}
               location = /vars {{ return 200 \"$connections_active $connections_reading $connections_writing $connections_waiting\"; }}
               location / {{ return 200 ok; }}
             }} }}\n",
            conf_head(),
            load_plugins(&["rewrite", "stub_status"]),
            p[0]
        )
    });
    let port = s.port;
    // Only this request's connection is left once the readiness probes'
    // connections are closed: it is active and writing.
    let base = status_until(port, "only the status request's connection", |t| t[0] == 1);
    assert_eq!((base[4], base[5], base[6]), (0, 1, 0));
    assert_eq!(base[1], base[2], "every accepted connection was handled");

    // Three requests on one keepalive connection, then it idles.
    let mut idle = Client::new(port);
    for _ in 0..3 {
        idle.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(idle.response().unwrap().status, 200);
    }
    // A head cut short: reading.
    let mut partial = Client::new(port);
    partial.send(b"GET / HTTP/1.1\r\nHo");
    // A connection that sent nothing yet: waiting.
    let silent = Client::new(port);
    let t = status_until(port, "one reading, two waiting", |t| t[4] == 1 && t[6] == 2);
    assert_eq!(t[0], 4, "{t:?}");
    assert_eq!(t[5], 1, "the status request itself is writing: {t:?}");
    // Connections: keepalive, partial, silent, this one. Requests: three
    // on the keepalive, the partial head, this one (and no more, unless
    // polling took several tries: each try is one connection and request).
    let tries = t[1] - base[1] - 3;
    assert!(tries >= 1, "{base:?} {t:?}");
    assert_eq!(t[3] - base[3], 3 + 1 + tries, "{base:?} {t:?}");
    assert_eq!(t[1], t[2]);

    // The variables read the same numbers.
    poll_until("the variables", Duration::from_secs(10), || {
        (get(port, "/vars").unwrap().body == b"4 1 1 2").then_some(())
    });

    // Only GET and HEAD.
    let r = raw(port, b"POST /status HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(r.starts_with(b"HTTP/1.1 405 "), "{}", String::from_utf8_lossy(&r));

    // The partial head completes: the gauges move back.
    partial.send(b"st: x\r\n\r\n");
    assert_eq!(partial.response().unwrap().status, 200);
    status_until(port, "no connection reading", |t| t[4] == 0 && t[6] == 3);

    // A reload keeps the counters; the old workers' idle connections are
    // closed as they retire (a connection that never sent a byte would
    // wait for client_header_timeout, as nginx's).
    drop(silent);
    let before = status(port);
    let old = s.workers();
    s.signal(libc::SIGHUP);
    s.wait_workers(2, &old);
    let after = status_until(port, "the old workers' connections closed", |t| t[0] == 1);
    assert!(after[1] > before[1] && after[3] > before[3], "{before:?} {after:?}");
    drop((idle, partial));

    // Workers killed with connections open: their connections stop
    // counting once they are gone (nginx's would count forever).
    let held: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = Client::new(port);
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(c.response().unwrap().status, 200);
            c
        })
        .collect();
    status_until(port, "four idle connections", |t| t[0] == 5 && t[6] == 4);
    let old = s.workers();
    for w in &old {
        kill(*w, libc::SIGKILL);
    }
    s.wait_workers(2, &old);
    let t = status_until(port, "the dead workers' connections uncounted", |t| t[0] == 1);
    assert_eq!((t[4], t[5], t[6]), (0, 1, 0));
    assert!(t[1] >= after[1] + 5, "accepts are kept: {after:?} {t:?}");
    drop(held);
}
