//! The geo plugin (geo, split_clients) through the real binary.

use ngxr_tests::*;

fn get_h(port: u16, path: &str, headers: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    let buf = raw(port, req.as_bytes()).unwrap();
    parse_response(&buf).map(|(r, _)| r).expect("a response")
}

fn start(inc: &std::path::Path) -> Server {
    Server::start_with_ports(1, |ports| {
        format!(
            "{}{}events {{}}\nhttp {{
               geo $where {{ default elsewhere; 127.0.0.0/8 loopback; 127.0.0.1 me; }}
               geo $arg_ip $net {{
                 default none; 10.0.0.0/8 ten; 10.1.0.0/16 ten-one; 2001:db8::/32 doc6;
                 include {}; delete 10.2.0.0/16; 10.2.0.0/16 gone; delete 10.2.0.0/16;
               }}
               geo $arg_ip $range {{ ranges; default -; 192.0.2.0-192.0.2.127 low; 192.0.2.128-192.0.2.255 high; delete 192.0.2.100-192.0.2.150; }}
               geo $client {{ proxy 127.0.0.0/8; proxy_recursive; default other; 203.0.113.0/24 test-net-3; }}
               split_clients \"${{arg_u}}salt\" $bucket {{ 50% a; 25% b; * c; }}
               server {{ listen 127.0.0.1:{};
                 location / {{ add_header X-Where $where; add_header X-Net $net; add_header X-Range $range;
                   add_header X-Client $client; add_header X-Bucket $bucket; return 204; }} }} }}\n",
            conf_head(),
            load_plugins(&["geo", "headers", "rewrite"]),
            inc.display(),
            ports[0]
        )
    })
    .0
}

/// MurmurHash2 of `s` computed by Python (an independent implementation of
/// the published algorithm), and the bucket nginx's thresholds give it.
fn python_bucket(s: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys
d=sys.argv[1].encode(); m=0x5bd1e995; h=len(d)&0xffffffff; i=0; n=len(d)
while n>=4:
    k=int.from_bytes(d[i:i+4],'little'); k=(k*m)&0xffffffff; k^=k>>24; k=(k*m)&0xffffffff
    h=((h*m)&0xffffffff)^k; i+=4; n-=4
if n>=3: h^=d[i+2]<<16
if n>=2: h^=d[i+1]<<8
if n>=1: h^=d[i]; h=(h*m)&0xffffffff
h^=h>>13; h=(h*m)&0xffffffff; h^=h>>15
a=5000*0xffffffff//10000; b=a+2500*0xffffffff//10000
print('a' if h<a else 'b' if h<b else 'c')",
        )
        .arg(s)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn geo_and_split_clients_as_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("nets.conf");
    std::fs::write(&inc, "198.51.100.0/24 included;\n").unwrap();
    let s = start(&inc);
    let r = get_h(s.port, "/", "");
    assert_eq!((r.header("x-where"), r.header("x-net"), r.header("x-range")), (Some("me"), Some("none"), Some("-")));
    for (ip, net) in [("10.9.9.9", "ten"), ("10.1.2.3", "ten-one"), ("10.2.0.1", "ten"), ("198.51.100.7", "included"), ("2001:db8::1", "doc6"), ("::ffff:10.1.0.1", "ten-one"), ("junk", "none")] {
        assert_eq!(get_h(s.port, &format!("/?ip={ip}"), "").header("x-net"), Some(net), "{ip}");
    }
    for (ip, range) in [("192.0.2.5", "low"), ("192.0.2.99", "low"), ("192.0.2.100", "-"), ("192.0.2.150", "-"), ("192.0.2.151", "high")] {
        assert_eq!(get_h(s.port, &format!("/?ip={ip}"), "").header("x-range"), Some(range), "{ip}");
    }
    // The client is a trusted proxy: the address comes from
    // X-Forwarded-For, skipping proxies (proxy_recursive).
    assert_eq!(get_h(s.port, "/", "X-Forwarded-For: 203.0.113.9, 127.0.0.5\r\n").header("x-client"), Some("test-net-3"));
    assert_eq!(get_h(s.port, "/", "X-Forwarded-For: 192.0.2.1\r\n").header("x-client"), Some("other"));
    // split_clients: the same text always lands in the same bucket, the
    // one nginx's MurmurHash2 and thresholds give; all buckets are used.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let u = format!("user{i}");
        let b = get_h(s.port, &format!("/?u={u}"), "").header("x-bucket").unwrap().to_string();
        assert_eq!(b, python_bucket(&format!("{u}salt")), "{u}");
        seen.insert(b);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn bad_geo_blocks_are_refused() {
    let p = Prefix::new();
    let head = format!("{}{}events {{}}\n", conf_head(), load_plugins(&["geo"]));
    let n = head.lines().count() as u32;
    p.assert_refused(&format!("{head}http {{\n  geo $g {{ 300.1.1.0/8 x; }}\n}}\n"), "invalid network \"300.1.1.0/8\"", n + 2);
    p.assert_refused(&format!("{head}http {{\n  geo $g {{ ranges; 10.0.0.9-10.0.0.1 x; }}\n}}\n"), "invalid range \"10.0.0.9-10.0.0.1\"", n + 2);
    p.assert_refused(&format!("{head}http {{\n  split_clients $remote_addr $s {{ 70% a; 40% b; }}\n}}\n"), "percent total is greater than 100%", n + 2);
    p.assert_refused(&format!("{head}http {{\n  geo g {{ default x; }}\n}}\n"), "invalid variable name \"g\"", n + 2);
}
