//! The realip plugin through the real binary.

use ngxr_tests::*;

#[test]
fn trusted_proxies_report_the_client_address() {
    let (port, port2) = (free_port(), free_port());
    let p = Prefix::new();
    p.write("html/x", "x");
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ access_log off; root html;
            server {{ listen 127.0.0.1:{port};
                set_real_ip_from 127.0.0.0/8;
                set_real_ip_from 10.0.0.0/8;
                real_ip_header X-Forwarded-For;
                real_ip_recursive on;
                location / {{ return 200 \"$remote_addr $realip_remote_addr\"; }}
                location /blocked/ {{ deny 203.0.113.9; }}
            }}
            server {{ listen 127.0.0.1:{port2};
                location / {{ set_real_ip_from 192.0.2.1; real_ip_header X-Forwarded-For; return 200 \"$remote_addr\"; }}
                location /loc/ {{ set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For; deny 203.0.113.9; }}
            }} }}\n",
        conf_head(),
        load_plugins(&["realip", "rewrite", "access", "static", "log"]),
    ));
    let s = Server::start_in(p, port);
    let get_h = |path: &str, headers: &str| {
        let buf = raw(s.port, format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes()).unwrap();
        parse_response(&buf).unwrap().0
    };
    let body = |r: Response| String::from_utf8(r.body).unwrap();
    // Recursive: the last address that is not a trusted proxy.
    assert_eq!(body(get_h("/", "X-Forwarded-For: 203.0.113.9, 10.1.2.3\r\n")), "203.0.113.9 127.0.0.1");
    assert_eq!(body(get_h("/", "")), "127.0.0.1 127.0.0.1");
    assert_eq!(body(get_h("/", "X-Forwarded-For: nonsense\r\n")), "127.0.0.1 127.0.0.1");
    // Other plugins see the reported address.
    assert_eq!(get_h("/blocked/x", "X-Forwarded-For: 203.0.113.9\r\n").status, 403);
    assert_eq!(get_h("/blocked/x", "X-Forwarded-For: 203.0.113.10\r\n").status, 404);
    // A connection from an untrusted address is not believed.
    let other = |path: &str| {
        let buf = raw(port2, format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        parse_response(&buf).unwrap().0
    };
    assert_eq!(body(other("/")), "127.0.0.1");
    // A location's own settings apply before access checks (pre-access).
    assert_eq!(other("/loc/x").status, 403);
    // The address is one request's: the next on the connection is the
    // connection's own again.
    let mut c = Client::new(s.port);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (a, b) = (c.response().unwrap(), c.response().unwrap());
    assert_eq!((body(a), body(b)), ("198.51.100.7 127.0.0.1".to_string(), "127.0.0.1 127.0.0.1".to_string()));
}
