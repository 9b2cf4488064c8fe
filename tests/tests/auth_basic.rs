//! The auth_basic plugin through the real binary.

use ngxr_tests::*;

#[test]
fn basic_authentication_as_nginx() {
    let port = free_port();
    let p = Prefix::new();
    p.write("html/private/x", "secret page");
    p.write("html/public/x", "public page");
    for d in ["any-ip", "any-auth", "all"] {
        p.write(&format!("html/{d}/x"), "x");
    }
    // Made with `openssl passwd -apr1 -salt abcdefgh secret` and `-6`.
    p.write("conf/htpasswd", "# users\nalice:$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/\nbob:{PLAIN}hunter2:a comment\ncarol:$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.\n");
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ access_log off; root html; server {{ listen 127.0.0.1:{port};
            auth_basic \"Staff only\";
            auth_basic_user_file htpasswd;
            location /public/ {{ auth_basic off; }}
            location /any-ip/ {{ satisfy any; allow 127.0.0.1; deny all; }}
            location /any-auth/ {{ satisfy any; deny all; }}
            location /all/ {{ allow 127.0.0.1; deny all; }}
        }} }}\n",
        conf_head(),
        load_plugins(&["access", "auth_basic", "static", "log"]),
    ));
    let s = Server::start_in(p, port);
    let get_auth = |path: &str, auth: Option<&str>| {
        let h = auth.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
        let buf = raw(s.port, format!("GET {path} HTTP/1.1\r\nHost: x\r\n{h}Connection: close\r\n\r\n").as_bytes()).unwrap();
        parse_response(&buf).unwrap().0
    };
    // base64 of "alice:secret", "bob:hunter2", "carol:secret", "alice:wrong", "eve:secret".
    let (alice, bob, carol, wrong, eve) = ("YWxpY2U6c2VjcmV0", "Ym9iOmh1bnRlcjI=", "Y2Fyb2w6c2VjcmV0", "YWxpY2U6d3Jvbmc=", "ZXZlOnNlY3JldA==");
    let r = get_auth("/private/x", None);
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Basic realm=\"Staff only\"")));
    for who in [alice, bob, carol] {
        let r = get_auth("/private/x", Some(who));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"secret page"[..]), "{who}");
    }
    for who in [wrong, eve, "not base64"] {
        assert_eq!(get_auth("/private/x", Some(who)).status, 401, "{who}");
    }
    assert_eq!(get_auth("/public/x", None).status, 200, "auth_basic off");
    // satisfy any: the address or the password will do; a refusal stands
    // only when neither grants (401 before 403).
    assert_eq!(get_auth("/any-ip/x", None).status, 200);
    assert_eq!(get_auth("/any-auth/x", Some(alice)).status, 200);
    let r = get_auth("/any-auth/x", None);
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Basic realm=\"Staff only\"")));
    // satisfy all (the default): both.
    assert_eq!(get_auth("/all/x", None).status, 401);
    assert_eq!(get_auth("/all/x", Some(alice)).status, 200);
    let log = s.prefix.error_log();
    assert!(log.contains("user \"alice\": password mismatch") && log.contains("user \"eve\" was not found"), "{log}");
    // The file is read for each request: a new user works at once.
    std::fs::write(s.prefix.path().join("conf/htpasswd"), "eve:{PLAIN}secret\n").unwrap();
    assert_eq!(get_auth("/private/x", Some(eve)).status, 200);
    assert_eq!(get_auth("/private/x", Some(alice)).status, 401);
}
