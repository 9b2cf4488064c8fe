//! memcached_pass through the real binary to real memcached servers:
//! items as responses (type, gzip flag, escaped keys), misses as 404s
//! that error_page can answer, the next server on a miss, HEAD, errors.

use ngxr_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A memcached on an ephemeral port; killed on drop.
struct Memcached(Child, u16);

impl Memcached {
    fn start() -> Memcached {
        let port = free_port();
        let mut cmd = Command::new("memcached");
        cmd.args(["-l", "127.0.0.1", "-U", "0", "-p", &port.to_string()]);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("memcached runs (.ci/run installs it)");
        poll_until("memcached to listen", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).ok());
        Memcached(child, port)
    }

    /// Stores `value` under `key` with `flags`.
    fn set(&self, key: &str, flags: u32, value: &[u8]) {
        let mut s = TcpStream::connect(("127.0.0.1", self.1)).unwrap();
        let mut cmd = format!("set {key} {flags} 0 {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        s.write_all(&cmd).unwrap();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"STORED\r\n");
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn items_misses_and_the_next_server() {
    let (a, b) = (Memcached::start(), Memcached::start());
    a.set("/page.html", 0, b"<p>cached</p>");
    a.set("/packed.txt", 2, b"\x1f\x8bnot really");
    a.set("/a%20b", 0, b"spaced");
    b.set("/only-b", 0, b"from b");
    let dead = free_port();
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ types {{ text/html html; }} default_type text/plain;
               upstream both {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
               server {{ listen 127.0.0.1:{};
                 location / {{ set $memcached_key $uri; memcached_pass 127.0.0.1:{a}; memcached_gzip_flag 2; }}
                 location /fb/ {{ set $memcached_key $uri; memcached_pass 127.0.0.1:{a}; error_page 404 = @miss; }}
                 location @miss {{ return 200 \"made fresh\"; }}
                 location /only-b {{ set $memcached_key $uri; memcached_pass both; memcached_next_upstream error timeout not_found; }}
                 location /nokey {{ memcached_pass 127.0.0.1:{a}; }}
                 location /dead {{ set $memcached_key $uri; memcached_pass 127.0.0.1:{dead}; }}
               }} }}\n",
            conf_head(),
            load_plugins(&["rewrite", "proxy"]),
            p[0],
            a = a.1,
            b = b.1
        )
    });
    let r = get(s.port, "/page.html").unwrap();
    assert_eq!((r.status, r.header("content-type"), r.header("content-length"), r.body.as_slice()), (200, Some("text/html"), Some("13"), &b"<p>cached</p>"[..]));
    let r = get(s.port, "/packed.txt").unwrap();
    assert_eq!((r.header("content-encoding"), r.header("content-type")), (Some("gzip"), Some("text/plain")));
    assert_eq!(get(s.port, "/a%20b").unwrap().body, b"spaced");
    // HEAD: the head only.
    let head = raw(s.port, b"HEAD /page.html HTTP/1.0\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\n"), "{text}");
    // A miss is the server's 404, or error_page's answer.
    let r = get(s.port, "/missing").unwrap();
    assert!(r.status == 404 && String::from_utf8_lossy(&r.body).contains("404 Not Found"));
    assert_eq!(get(s.port, "/fb/missing").unwrap().body, b"made fresh");
    // not_found: the next server has it (whichever the round robin asks
    // first).
    for _ in 0..2 {
        let r = get(s.port, "/only-b").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"from b"[..]));
    }
    // No key: 500; nobody there: 502.
    assert_eq!(get(s.port, "/nokey").unwrap().status, 500);
    assert!(s.prefix.error_log().contains("the \"$memcached_key\" variable is not set"));
    assert_eq!(get(s.port, "/dead").unwrap().status, 502);
}
