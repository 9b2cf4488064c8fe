//! The access plugin (`allow`, `deny`) through the real binary.

use ngxr_tests::*;

#[test]
fn allow_and_deny_in_order_with_inheritance() {
    let port = free_port();
    let p = Prefix::new();
    p.write("html/x", "x");
    for d in ["open", "closed", "net", "first", "inherit", "inherit/own", "other"] {
        p.write(&format!("html/{d}/x"), "x");
    }
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ access_log off; root html; server {{ listen 127.0.0.1:{port};
            deny 10.0.0.0/8;
            location /open/ {{ }}
            location /closed/ {{ deny 127.0.0.1; }}
            location /net/ {{ deny 127.0.0.0/8; allow all; }}
            location /first/ {{ allow 127.0.0.1; deny all; }}
            location /inherit/ {{ deny all; location /inherit/own/ {{ allow all; }} }}
            location /other/ {{ allow 192.168.0.0/16; deny all; }}
            location /ret/ {{ deny all; return 200 early; }}
        }} }}\n",
        conf_head(),
        load_plugins(&["rewrite", "access", "static", "log"]),
    ));
    let s = Server::start_in(p, port);
    let status = |path: &str| get(s.port, path).unwrap().status;
    assert_eq!(status("/open/x"), 200, "the server's rules (10/8 denied) do not cover 127.0.0.1");
    assert_eq!(status("/closed/x"), 403);
    assert_eq!(status("/net/x"), 403, "first match decides");
    assert_eq!(status("/first/x"), 200);
    assert_eq!(status("/inherit/x"), 403);
    assert_eq!(status("/inherit/own/x"), 200, "a block's own rules replace the inherited list");
    assert_eq!(status("/other/x"), 403);
    assert!(s.prefix.error_log().contains("access forbidden by rule"));
    // As in nginx, `return` runs in the rewrite phase, before access.
    assert_eq!(status("/ret/x"), 200);
    Prefix::new().assert_refused(&format!("{}events {{}}\nhttp {{\nserver {{\ndeny 1.2.3.4/40;\n}}\n}}\n", load_plugins(&["access"])), "invalid parameter \"1.2.3.4/40\"", 5);
}
