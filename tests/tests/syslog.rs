//! `syslog:` log targets through the real binary: error_log and
//! access_log messages received on a UDP socket of the test's.

use ngxr_tests::*;
use std::net::UdpSocket;
use std::time::Duration;

/// The next message on `s` that contains `what` (5 s at most).
fn message(s: &UdpSocket, what: &str) -> String {
    let mut b = [0u8; 4096];
    poll_until(&format!("a syslog message with {what:?}"), Duration::from_secs(5), || {
        let n = s.recv(&mut b).ok()?;
        let m = String::from_utf8_lossy(&b[..n]).into_owned();
        m.contains(what).then_some(m)
    })
}

#[test]
fn error_and_access_logs_to_syslog() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let at = sink.local_addr().unwrap();
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ log_format short \"$request_method $uri $status\";
               server {{ listen 127.0.0.1:{};
                 location /e {{ error_log syslog:server={at},facility=user,tag=errs info; }}
                 location /a {{ access_log syslog:server={at},severity=notice,nohostname short; return 204; }}
               }} }}\n",
            conf_head(),
            load_plugins(&["rewrite", "static", "log"]),
            p[0]
        )
    });
    // error_log: facility user (1), the line's level (error: 3), the tag,
    // and nginx's error line as the text.
    assert_eq!(get(s.port, "/e/missing").unwrap().status, 404);
    let m = message(&sink, "errs:");
    assert!(m.starts_with("<11>"), "{m}");
    assert!(m.contains("[error]") && m.contains("open() \"") && m.contains("/e/missing\" failed"), "{m}");
    // access_log: local7 (23) at severity notice (5), no host name, the
    // format's line without its line end.
    assert_eq!(get(s.port, "/a").unwrap().status, 204);
    let m = message(&sink, "GET /a");
    assert!(m.starts_with("<189>"), "{m}");
    // "<PRI>Mmm dd hh:mm:ss" and, with nohostname, the tag at once.
    assert_eq!(&m["<189>".len() + "Nov 23 22:44:51".len()..], " nginx: GET /a 204", "{m}");
}
