//! `listen … proxy_protocol` through the real binary: PROXY protocol v1
//! and v2 headers (written here byte by byte, and by curl's
//! --haproxy-protocol over TLS), the $proxy_protocol_* variables, realip
//! from them, and a connection without a header refused.

use ngxr_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;

fn exchange(port: u16, head: &[u8], request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut wire = head.to_vec();
    wire.extend_from_slice(request.as_bytes());
    s.write_all(&wire).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn proxy_protocol_listeners() {
    let p = Prefix::new();
    let dir = p.path().join("conf");
    certs::self_signed(&dir, "pp", "/CN=pp.test", "DNS:pp.test", false);
    let ports = [free_port(), free_port(), free_port()];
    // realip at the server level acts before the rewrite phase's return.
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{
           set_real_ip_from 127.0.0.1;
           server {{ listen 127.0.0.1:{} proxy_protocol;
             location /vars {{ return 200 \"$proxy_protocol_addr|$proxy_protocol_port|$proxy_protocol_server_addr|$proxy_protocol_server_port|$proxy_protocol_tlv_authority|$remote_addr\"; }}
           }}
           server {{ listen 127.0.0.1:{} proxy_protocol; listen 127.0.0.1:{} ssl proxy_protocol;
             ssl_certificate pp.crt; ssl_certificate_key pp.key;
             real_ip_header proxy_protocol;
             location /real {{ return 200 \"$remote_addr:$remote_port $realip_remote_addr\"; }}
             location /only {{ allow 192.0.2.0/24; deny all; }}
           }} }}\n",
        conf_head(),
        load_plugins(&["rewrite", "realip", "access", "static"]),
        ports[0],
        ports[1],
        ports[2]
    ));
    p.write("html/only", "in");
    let s = Server::start_in(p, ports[0]);
    let port = s.port;
    let get = |path: &str| format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.9 40000 443\r\n";
    let r = exchange(port, v1, &get("/vars"));
    assert!(r.ends_with("192.0.2.7|40000|198.51.100.9|443||127.0.0.1"), "{r}");
    // realip takes the address and the port; the connection's stays
    // $realip_remote_addr. access sees the real address.
    let real = ports[1];
    let r = exchange(real, v1, &get("/real"));
    assert!(r.ends_with("192.0.2.7:40000 127.0.0.1"), "{r}");
    assert!(exchange(real, v1, &get("/only")).starts_with("HTTP/1.1 200 "));
    assert!(exchange(real, b"PROXY TCP4 203.0.113.1 198.51.100.9 1 443\r\n", &get("/only")).starts_with("HTTP/1.1 403 "));
    // v1 over IPv6, and UNKNOWN (the connection's own address stands).
    assert!(exchange(port, b"PROXY TCP6 2001:db8::1 2001:db8::2 7 8\r\n", &get("/vars")).ends_with("2001:db8::1|7|2001:db8::2|8||127.0.0.1"));
    assert!(exchange(port, b"PROXY UNKNOWN\r\n", &get("/vars")).ends_with("|||||127.0.0.1"));
    // v2, with an AUTHORITY TLV.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    let tlv = [&[0x02u8, 0, 7][..], b"example"].concat();
    v2.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
    v2.extend_from_slice(&[192, 0, 2, 8, 198, 51, 100, 9, 0x9c, 0x41, 0x01, 0xbb]);
    v2.extend_from_slice(&tlv);
    assert!(exchange(port, &v2, &get("/vars")).ends_with("192.0.2.8|40001|198.51.100.9|443|example|127.0.0.1"));
    // Without a header (or with a broken one) the connection is closed,
    // with the reason in the error log.
    assert_eq!(exchange(port, b"", &get("/vars")), "");
    assert!(s.prefix.error_log().contains("broken header: \"GET /vars"), "{}", s.prefix.error_log());
    // TLS after the header: curl writes one (with its own addresses).
    let (ok, body, err) = curl(&["-k", "--haproxy-protocol", &format!("https://127.0.0.1:{}/real", ports[2])]);
    assert!(ok, "{err}");
    assert!(body.starts_with("127.0.0.1:") && body.ends_with(" 127.0.0.1"), "{body}");
}
