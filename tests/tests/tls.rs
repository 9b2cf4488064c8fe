//! TLS listeners against real clients: curl and `openssl s_client` (both
//! OpenSSL, not rustls) and Python's ssl module. Certificates are made at
//! test time by the openssl command line.

use ngxr_tests::*;
use std::time::Duration;

/// A prefix with the product plugins and `html/a`, `html/b` roots.
fn prefix() -> Prefix {
    let p = Prefix::new();
    p.write("html/a/index.html", "site A\n");
    p.write("html/b/index.html", "site B\n");
    p
}

fn start(p: Prefix, port: u16, http: &str, workers: usize) -> Server {
    let conf = format!(
        "{}worker_processes {workers};\n{}events {{}}\nhttp {{ {} }}\n",
        conf_head(),
        load_plugins(&["index", "static", "log"]),
        http.replace("PORT", &port.to_string())
    );
    p.write_conf(&conf);
    Server::start_in(p, port)
}

fn conf_dir(p: &Prefix) -> std::path::PathBuf {
    p.path().join("conf")
}

#[test]
fn sni_picks_the_server_and_its_certificate() {
    let p = prefix();
    let dir = conf_dir(&p);
    certs::self_signed(&dir, "a", "/CN=a.test", "DNS:a.test", false);
    certs::self_signed(&dir, "a_ec", "/CN=a.test/O=ecdsa", "DNS:a.test", true);
    certs::self_signed(&dir, "b", "/CN=b.test", "DNS:b.test", true);
    let big: String = (0..(1 << 20) / 16).map(|i| format!("{i:015}\n")).collect();
    p.write("html/a/big.txt", &big);
    let port = free_port();
    let s = start(
        p,
        port,
        "sendfile on;
         log_format tls '$https|$scheme|$ssl_protocol|$ssl_cipher|$ssl_server_name|$ssl_session_reused|$host|$status';
         access_log logs/tls.log tls;
         server { listen 127.0.0.1:PORT ssl; server_name a.test; root html/a;
                  ssl_certificate a.crt; ssl_certificate_key a.key;
                  ssl_certificate a_ec.crt; ssl_certificate_key a_ec.key; }
         server { listen 127.0.0.1:PORT; server_name b.test; root html/b;
                  ssl_certificate b.crt; ssl_certificate_key b.key;
                  error_page 497 https://$host:$server_port$request_uri; }",
        1,
    );
    let url = |host: &str, path: &str| format!("https://{host}:{port}{path}");
    let resolve = |host: &str| format!("{host}:{port}:127.0.0.1");
    let ca = |stem: &str| dir.join(format!("{stem}.crt")).to_string_lossy().into_owned();

    // Each name gets its own server and a certificate the client verifies.
    let (ok, body, err) = curl(&["-v", "--cacert", &ca("a"), "--resolve", &resolve("a.test"), &url("a.test", "/")]);
    assert!(ok, "{err}");
    assert_eq!(body, "site A\n");
    assert!(err.contains("ALPN: server accepted http/1.1"), "{err}");
    let (ok, body, err) = curl(&["--cacert", &ca("b"), "--resolve", &resolve("b.test"), &url("b.test", "/")]);
    assert!(ok, "{err}");
    assert_eq!(body, "site B\n");
    // b.test's certificate is not a.test's: verification against a fails.
    let (ok, _, _) = curl(&["--cacert", &ca("a"), "--resolve", &resolve("b.test"), &url("b.test", "/")]);
    assert!(!ok, "b.test was served a.test's certificate");
    // No SNI: the default server.
    let (ok, body, _) = curl(&["-k", &format!("https://127.0.0.1:{port}/")]);
    assert!(ok);
    assert_eq!(body, "site A\n");

    // RSA and ECDSA certificates on one server: the client's signature
    // algorithms choose.
    let ec = s_client(port, &["-servername", "a.test", "-sigalgs", "ECDSA+SHA256"]);
    assert!(ec.contains("O = ecdsa"), "{ec}");
    let rsa = s_client(port, &["-servername", "a.test", "-sigalgs", "rsa_pss_rsae_sha256"]);
    assert!(rsa.contains("CN = a.test") && !rsa.contains("O = ecdsa"), "{rsa}");

    // Keepalive over TLS, and a 1 MiB file (sendfile on is bypassed under TLS).
    let (ok, body, err) = curl(&["-v", "-k", "--resolve", &resolve("a.test"), &url("a.test", "/big.txt"), &url("a.test", "/")]);
    assert!(ok, "{err}");
    assert!(err.contains("Re-using existing connection") || err.contains("Reusing existing"), "{err}");
    assert_eq!(body.len(), big.len() + "site A\n".len());
    assert!(body.starts_with(&big) && body.ends_with("site A\n"));

    // Plain HTTP to the TLS port: nginx's 400 page, or error_page 497.
    let r = req_plain(port, "a.test");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("The plain HTTP request was sent to HTTPS port"));
    assert_eq!(r.header("connection"), Some("close"));
    let r = req_plain(port, "b.test");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(format!("https://b.test:{port}/x?y=1").as_str()));
    assert!(s.prefix.error_log().contains("client sent plain HTTP request to HTTPS port"));

    // A client that hangs up in the handshake does not disturb anything.
    let bad = s_client(port, &["-servername", "a.test", "-tls1_2", "-cipher", "AES128-SHA"]);
    assert!(negotiated(&bad).is_none(), "{bad}");
    let (ok, body, _) = curl(&["-k", &format!("https://127.0.0.1:{port}/")]);
    assert!(ok && body == "site A\n");

    // Variables.
    let log = poll_until("the access log", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(s.prefix.path().join("logs/tls.log")).ok()?;
        (t.lines().count() >= 8).then_some(t)
    });
    let lines: Vec<&str> = log.lines().collect();
    let f: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(f[..3], ["on", "https", "TLSv1.3"], "{log}");
    assert!(f[3].starts_with("TLS_"), "{log}");
    assert_eq!(f[4..], ["a.test", ".", "a.test", "200"], "{log}");
    assert!(lines.iter().any(|l| l.starts_with("on|https|TLSv1.3|") && l.contains("|b.test|.|b.test|200")), "{log}");
    assert!(lines.iter().any(|l| l.starts_with("|http|-|-|-|-|a.test|400")), "{log}");
    assert!(lines.iter().any(|l| l.contains("|-|.|127.0.0.1|200")), "{log}");
}

fn req_plain(port: u16, host: &str) -> Response {
    let buf = raw(port, format!("GET /x?y=1 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).unwrap();
    parse_response(&buf).map(|(r, _)| r).unwrap_or_else(|| panic!("bad response {:?}", String::from_utf8_lossy(&buf)))
}

/// Python's ssl module: connects `n` times, offering the session from the
/// first connection; prints one line per connection: reused? protocol.
const RESUME_PY: &str = r#"
import socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
sess = None
for i in range(n):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="a.test", session=sess)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    print(s.session_reused, s.version(), data.split(b"\r\n")[0].decode())
    if sess is None:
        sess = s.session
    s.close()
"#;

fn resume(port: u16, n: usize) -> Vec<String> {
    let out = std::process::Command::new("python3").args(["-c", RESUME_PY, &port.to_string(), &n.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn protocols_ciphers_and_sessions() {
    let p = prefix();
    let dir = conf_dir(&p);
    certs::self_signed(&dir, "a", "/CN=a.test", "DNS:a.test", false);
    let (port, p12, pnt) = (free_port(), free_port(), free_port());
    let s = start(
        p,
        port,
        &format!(
            "ssl_certificate a.crt; ssl_certificate_key a.key; root html/a;
             server {{ listen 127.0.0.1:PORT ssl; ssl_protocols TLSv1.3; }}
             server {{ listen 127.0.0.1:{p12} ssl; ssl_protocols TLSv1 TLSv1.2;
                      ssl_ciphers 'ECDHE-RSA-AES128-GCM-SHA256:!aNULL'; }}
             server {{ listen 127.0.0.1:{pnt} ssl; ssl_session_tickets off; }}"
        ),
        2,
    );
    // TLSv1.3 only.
    assert!(negotiated(&s_client(port, &["-tls1_2"])).is_none());
    assert!(negotiated(&s_client(port, &["-tls1_3"])).is_some());
    // TLSv1.2 only, one suite.
    assert!(negotiated(&s_client(p12, &["-tls1_3"])).is_none());
    let out = s_client(p12, &["-tls1_2"]);
    assert_eq!(negotiated(&out).as_deref(), Some("ECDHE-RSA-AES128-GCM-SHA256"), "{out}");
    assert!(negotiated(&s_client(p12, &["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"])).is_none());

    // Session tickets: the key is made before the workers fork, so every
    // worker resumes every session (2 workers, 6 connections).
    let lines = resume(port, 6);
    assert_eq!(lines.len(), 6);
    assert!(lines[0].starts_with("False TLSv1.3 HTTP/1.1 200"), "{lines:?}");
    assert!(lines[1..].iter().all(|l| l.starts_with("True TLSv1.3 HTTP/1.1 200")), "{lines:?}");
    // Tickets off and no cache (nginx's default `none`): never resumed.
    let lines = resume(pnt, 3);
    assert!(lines.iter().all(|l| l.starts_with("False ")), "{lines:?}");
    drop(s);
}

#[test]
fn bad_tls_configs_are_refused_with_file_and_line() {
    let p = Prefix::new();
    let dir = conf_dir(&p);
    certs::self_signed(&dir, "a", "/CN=a.test", "DNS:a.test", false);
    certs::self_signed(&dir, "b", "/CN=b.test", "DNS:b.test", true);
    let cases = [
        ("server {\n listen 127.0.0.1:1 ssl;\n}", "no \"ssl_certificate\" is defined for the \"listen ... ssl\" directive", 7),
        (
            "server {\n listen 127.0.0.1:1 ssl;\n ssl_certificate nope.crt; ssl_certificate_key a.key;\n}",
            "cannot load certificate \"CONF/nope.crt\": 2: No such file or directory",
            8,
        ),
        (
            "server {\n listen 127.0.0.1:1 ssl;\n ssl_certificate a.crt; ssl_certificate_key b.key;\n}",
            "certificate key \"CONF/b.key\" does not match certificate \"CONF/a.crt\" (key values mismatch)",
            8,
        ),
        ("server {\n listen 127.0.0.1:1 ssl;\n ssl_certificate a.crt;\n}", "no \"ssl_certificate_key\" is defined for certificate \"CONF/a.crt\"", 8),
        ("ssl_ciphers 'HIGH:NOPE';", "unknown cipher \"NOPE\" in \"ssl_ciphers\"", 6),
        ("ssl_protocols TLSv1.1;", "no protocol left: ngxr speaks TLSv1.2 and TLSv1.3 in \"ssl_protocols\"", 6),
        ("ssl_protocols TLSv4;", "invalid value \"TLSv4\" in \"ssl_protocols\"", 6),
        ("ssl_session_cache shared:SSL;", "invalid session cache \"shared:SSL\"", 6),
        (
            "server {\n listen 127.0.0.1:1 ssl;\n ssl_certificate b.key; ssl_certificate_key b.key;\n}",
            "cannot load certificate \"CONF/b.key\": no PEM certificate in it",
            8,
        ),
    ];
    let conf = p.path().join("conf/ngxr.conf");
    for (http, want, line) in cases {
        p.write_conf(&format!("{}events {{}}\nhttp {{\n{http}\n}}\n", conf_head()));
        let out = p.ngxr(&["-t"]);
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!("{} in {}:{line}", want.replace("CONF", &dir.to_string_lossy()), conf.display());
        assert!(!out.status.success() && err.contains(&want), "{http}\nwant: {want}\ngot: {err}");
    }
}

#[test]
fn reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
    let p = prefix();
    let dir = conf_dir(&p);
    certs::self_signed(&dir, "site", "/CN=one.test", "DNS:one.test", false);
    let port = free_port();
    let s = start(p, port, "server { listen 127.0.0.1:PORT ssl; ssl_certificate site.crt; ssl_certificate_key site.key; root html/a; }", 1);
    let subject = || s_client(port, &["-servername", "x"]).lines().find(|l| l.starts_with("subject=")).map(str::to_string);
    assert_eq!(subject().as_deref(), Some("subject=CN = one.test"));
    certs::self_signed(&dir, "site", "/CN=two.test", "DNS:two.test", true);
    let out = s.prefix.ngxr(&["-s", "reload"]);
    assert!(out.status.success());
    poll_until("the new certificate", Duration::from_secs(10), || (subject().as_deref() == Some("subject=CN = two.test")).then_some(()));
    // A broken certificate: the reload is refused, the old one serves on.
    std::fs::write(dir.join("site.crt"), "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    s.prefix.ngxr(&["-s", "reload"]);
    poll_until("the refusal in the log", Duration::from_secs(10), || s.prefix.error_log().contains("cannot load certificate").then_some(()));
    assert_eq!(subject().as_deref(), Some("subject=CN = two.test"));
    let (ok, body, _) = curl(&["-k", &format!("https://127.0.0.1:{port}/")]);
    assert!(ok && body == "site A\n");
}

#[test]
fn proxy_to_tls_upstreams() {
    // The upstream: another ngxr with a certificate from a test CA.
    let up = prefix();
    let dir = conf_dir(&up);
    certs::ca(&dir, "ca");
    certs::ca(&dir, "other");
    certs::signed(&dir, "up", "/CN=up.test", "DNS:up.test,IP:127.0.0.1", "ca");
    let up_port = free_port();
    let upstream = start(
        up,
        up_port,
        "log_format t '$ssl_server_name|$connection|$ssl_protocol|$request_uri';
         access_log logs/t.log t;
         server { listen 127.0.0.1:PORT ssl; ssl_certificate up.crt; ssl_certificate_key up.key; root html/a; }",
        1,
    );
    let front = Prefix::new();
    for f in ["ca.crt", "other.crt"] {
        std::fs::copy(dir.join(f), front.path().join("conf").join(f)).unwrap();
    }
    let port = free_port();
    let u = format!("https://127.0.0.1:{up_port}/");
    front.write_conf(&format!(
        "{}worker_processes 1;\n{}events {{}}\nhttp {{
         upstream pool {{ server 127.0.0.1:{up_port}; keepalive 2; }}
         server {{ listen 127.0.0.1:{port};
           location /sni/ {{ proxy_pass {u}; proxy_ssl_verify on; proxy_ssl_trusted_certificate ca.crt;
                            proxy_ssl_name up.test; proxy_ssl_server_name on; }}
           location /ip/ {{ proxy_pass {u}; proxy_ssl_verify on; proxy_ssl_trusted_certificate ca.crt; }}
           location /wrongca/ {{ proxy_pass {u}; proxy_ssl_verify on; proxy_ssl_trusted_certificate other.crt; }}
           location /wrongname/ {{ proxy_pass {u}; proxy_ssl_verify on; proxy_ssl_trusted_certificate ca.crt;
                                  proxy_ssl_name nope.test; }}
           location /noverify/ {{ proxy_pass {u}; proxy_ssl_protocols TLSv1.2; }}
           location /pool/ {{ proxy_pass https://pool/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
         }} }}\n",
        conf_head(),
        load_plugins(&["proxy", "log"]),
    ));
    let front = Server::start_in(front, port);
    let get = |path: &str| get(port, path).unwrap();
    for path in ["/sni/", "/ip/", "/noverify/"] {
        let r = get(path);
        assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (200, "site A\n"), "{path}");
    }
    for path in ["/wrongca/", "/wrongname/"] {
        assert_eq!(get(path).status, 502, "{path}");
    }
    for _ in 0..5 {
        assert_eq!(get("/pool/").status, 200);
    }
    let log = front.prefix.error_log();
    assert!(log.contains("upstream SSL certificate verify error: (invalid peer certificate: UnknownIssuer) while SSL handshaking to upstream"), "{log}");
    assert!(log.contains("certificate not valid for name \"nope.test\""), "{log}");
    let lines = poll_until("the upstream's log", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(upstream.prefix.path().join("logs/t.log")).ok()?;
        (t.lines().count() >= 8).then_some(t)
    });
    let lines: Vec<Vec<&str>> = lines.lines().map(|l| l.split('|').collect()).collect();
    // SNI only with proxy_ssl_server_name on; TLSv1.2 when asked for.
    assert_eq!(lines[0][0], "up.test");
    assert_eq!(lines[1][0], "-");
    assert_eq!((lines[2][0], lines[2][2]), ("-", "TLSv1.2"));
    // The pooled requests share one TLS connection.
    let pooled: Vec<&Vec<&str>> = lines.iter().filter(|l| l[3] == "/").skip(3).collect();
    assert_eq!(pooled.len(), 5, "{lines:?}");
    assert!(pooled.iter().all(|l| l[1] == pooled[0][1]), "{lines:?}");

    // proxy_ssl_verify without a trusted certificate is refused.
    let p = Prefix::new();
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{\nserver {{\nlocation / {{\nproxy_pass https://127.0.0.1:1/; proxy_ssl_verify on;\n}}\n}}\n}}\n",
        conf_head(),
        load_plugins(&["proxy"])
    ));
    let out = p.ngxr(&["-t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no proxy_ssl_trusted_certificate for proxy_ssl_verify in "), "{err}");
}

#[test]
fn a_version_1_certificate_is_served() {
    // rustls' key check cannot read X.509 v1: only a proven mismatch is
    // refused, so such a certificate is served, as nginx serves it.
    let p = prefix();
    certs::v1(&conf_dir(&p), "old", "/CN=old.test");
    let port = free_port();
    let s = start(p, port, "server { listen 127.0.0.1:PORT ssl; ssl_certificate old.crt; ssl_certificate_key old.key; root html/a; }", 1);
    let (ok, body, err) = curl(&["-k", &format!("https://127.0.0.1:{}/", s.port)]);
    assert!(ok && body == "site A\n", "{body} {err}");
}

#[test]
fn a_common_tls_config_with_http2_and_stapling_loads_and_serves_http_1_1() {
    // Mozilla's recommended server block, as nginx users have it: HTTP/2,
    // OCSP stapling and a resolver are accepted with a warning each, and
    // clients get HTTP/1.1 (ALPN offers nothing else).
    let p = prefix();
    certs::self_signed(&conf_dir(&p), "a", "/CN=a.test", "DNS:a.test", true);
    let port = free_port();
    let s = start(
        p,
        port,
        "server { listen 127.0.0.1:PORT ssl http2;
           http2 on;
           ssl_certificate a.crt; ssl_certificate_key a.key;
           ssl_session_timeout 1d; ssl_session_cache shared:MozSSL:10m; ssl_session_tickets off;
           ssl_protocols TLSv1.2 TLSv1.3; ssl_prefer_server_ciphers off;
           ssl_stapling on; ssl_stapling_verify on; ssl_trusted_certificate a.crt;
           resolver 127.0.0.1 valid=300s; resolver_timeout 5s;
           http2_max_concurrent_streams 128;
           root html/a; }",
        1,
    );
    let (ok, out, err) = curl(&["-k", "--http2", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", &format!("https://127.0.0.1:{}/", s.port)]);
    assert!(ok && out == "1.1 200", "{out} {err}");
    let log = s.prefix.error_log();
    for want in ["\"http2\": HTTP/2 is not implemented", "\"ssl_stapling\": OCSP stapling is not implemented", "\"resolver\": no resolver is implemented"] {
        assert!(log.contains(want), "{want} not in {log}");
    }
    // The listen line's warning is not repeated.
    assert_eq!(log.matches("\"http2\": HTTP/2 is not implemented").count(), 2, "{log}");
    // A trusted certificate file must exist, as nginx requires.
    let q = prefix();
    certs::self_signed(&conf_dir(&q), "a", "/CN=a.test", "DNS:a.test", true);
    let head = format!("{}{}events {{}}\n", conf_head(), load_plugins(&["static"]));
    q.assert_refused(
        &format!("{head}http {{\n  server {{ listen 127.0.0.1:1 ssl; ssl_certificate a.crt; ssl_certificate_key a.key;\n    ssl_trusted_certificate missing.pem; }}\n}}\n"),
        "cannot load certificate",
        head.lines().count() as u32 + 3,
    );
}
