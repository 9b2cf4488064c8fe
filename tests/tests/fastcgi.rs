//! FastCGI through the real binary to a real PHP (`php-cgi -b`): the
//! CGI environment, request bodies in memory and in a file, statuses and
//! redirects, stderr, large responses, intercepted errors, a dead peer.

use ngxr_tests::*;

const SCRIPT: &str = r#"<?php
header("X-Php: yes");
if (isset($_GET['status'])) { http_response_code((int)$_GET['status']); }
if (isset($_GET['loc'])) { header("Location: " . $_GET['loc']); }
if (isset($_GET['warn'])) { error_log("note from php"); }
if (isset($_GET['sleep'])) { sleep((int)$_GET['sleep']); }
$in = file_get_contents('php://input');
foreach (['REQUEST_METHOD', 'SCRIPT_NAME', 'SCRIPT_FILENAME', 'PATH_INFO', 'QUERY_STRING', 'REQUEST_URI', 'DOCUMENT_ROOT', 'SERVER_PROTOCOL', 'GATEWAY_INTERFACE', 'REMOTE_ADDR', 'SERVER_PORT', 'HTTP_USER_AGENT', 'HTTP_COOKIE', 'HTTP_X_ONE', 'CONTENT_TYPE', 'EMPTY_ONE', 'SET_ONE'] as $k) {
    echo $k, "=", $_SERVER[$k] ?? '-', "\n";
}
echo "BODY=", strlen($in), ":", md5($in), "\n";
echo str_repeat("0123456789abcdef", (int)($_GET['n'] ?? 0));
"#;

#[test]
fn php_through_fastcgi_pass() {
    let p = Prefix::new();
    let sock = p.path().join("php.sock");
    let php = SocketServer::php_cgi(&sock);
    let kept_sock = p.path().join("kept.sock");
    let kept = SocketServer::php_cgi(&kept_sock);
    let dead = free_port();
    p.write("html/app/i.php", SCRIPT);
    p.write("html/50x.html", "our own error page\n");
    let root = repo_root();
    for f in ["fastcgi.conf", "fastcgi_params"] {
        std::fs::copy(root.join("conf").join(f), p.path().join("conf").join(f)).unwrap();
    }
    let port = free_port();
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ client_body_buffer_size 16k;
           upstream kept {{ server unix:{kept}; keepalive 2; }}
           proxy_read_timeout 60s; fastcgi_read_timeout 1s; proxy_temp_path proxy_temp; fastcgi_temp_path fastcgi_temp;
           server {{ listen 127.0.0.1:{port}; root html;
           location ~ [^/]\\.php(/|$) {{
             fastcgi_split_path_info ^(.+?\\.php)(/.*)$;
             fastcgi_pass unix:{sock};
             include fastcgi.conf;
             fastcgi_param PATH_INFO $fastcgi_path_info;
             fastcgi_param EMPTY_ONE $http_x_absent if_not_empty;
             fastcgi_param SET_ONE \"set $request_method\";
             fastcgi_param HTTP_X_ONE overridden;
           }}
           location ^~ /intercept/ {{
             rewrite ^/intercept/(.*)$ /app/$1 break;
             fastcgi_pass unix:{sock};
             include fastcgi.conf;
             fastcgi_intercept_errors on;
             error_page 404 /50x.html;
           }}
           location ^~ /kept/ {{
             rewrite ^/kept/(.*)$ /app/$1 break;
             fastcgi_pass kept;
             fastcgi_keep_conn on;
             include fastcgi.conf;
           }}
           location ^~ /dead/ {{ fastcgi_pass 127.0.0.1:{dead}; include fastcgi_params; }}
           location = /50x.html {{ }}
         }} }}\n",
        conf_head(),
        load_plugins(&["rewrite", "static", "proxy"]),
        sock = php.socket.display(),
        kept = kept.socket.display(),
    ));
    let s = Server::start_in(p, port);
    let req = |head: &str, body: &[u8]| send_with_body(s.port, head, "application/octet-stream", body);
    // The CGI environment: fastcgi.conf, the split path, the client's
    // headers as HTTP_* (repeated Cookies joined with "; "), and the
    // location's own params (an explicit HTTP_X_ONE wins over the header).
    let r = req("GET /app/i.php/extra/path?a=1&b=2 HTTP/1.1\r\nUser-Agent: t/1\r\nCookie: a=1\r\nCookie: b=2\r\nX-One: from-client", b"");
    assert_eq!((r.status, r.header("x-php")), (200, Some("yes")));
    let f = key_values(&r.body);
    let docroot = s.prefix.path().join("html").display().to_string();
    assert_eq!(f["REQUEST_METHOD"], "GET");
    assert_eq!(f["SCRIPT_NAME"], "/app/i.php");
    assert_eq!(f["SCRIPT_FILENAME"], format!("{docroot}/app/i.php"));
    assert_eq!(f["PATH_INFO"], "/extra/path");
    assert_eq!(f["QUERY_STRING"], "a=1&b=2");
    assert_eq!(f["REQUEST_URI"], "/app/i.php/extra/path?a=1&b=2");
    assert_eq!((f["SERVER_PROTOCOL"].as_str(), f["GATEWAY_INTERFACE"].as_str(), f["REMOTE_ADDR"].as_str()), ("HTTP/1.1", "CGI/1.1", "127.0.0.1"));
    assert_eq!(f["SERVER_PORT"], port.to_string());
    assert_eq!((f["HTTP_USER_AGENT"].as_str(), f["HTTP_COOKIE"].as_str(), f["HTTP_X_ONE"].as_str()), ("t/1", "a=1; b=2", "overridden"));
    assert_eq!((f["EMPTY_ONE"].as_str(), f["SET_ONE"].as_str()), ("-", "set GET"));
    // Bodies: in memory, and past client_body_buffer_size from a file
    // (sent as STDIN records a block at a time).
    for size in [11usize, 300_000] {
        let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let r = req("POST /app/i.php HTTP/1.1", &body);
        let f = key_values(&r.body);
        assert_eq!(f["BODY"], format!("{size}:{}", md5_hex(&body)), "{size}");
        assert_eq!(f["CONTENT_TYPE"], "application/octet-stream");
    }
    // Status: and Location: from the script.
    assert_eq!(req("GET /app/i.php?status=404 HTTP/1.1", b"").status, 404);
    let r = req("GET /app/i.php?loc=/there HTTP/1.1", b"");
    assert_eq!((r.status, r.header("location")), (302, Some(format!("http://localhost:{port}/there").as_str())));
    // stderr goes to the error log.
    assert_eq!(req("GET /app/i.php?warn=1 HTTP/1.1", b"").status, 200);
    poll_until("the stderr line", std::time::Duration::from_secs(5), || s.prefix.error_log().contains("FastCGI sent in stderr: \"note from php\"").then_some(()));
    // A large response (buffered past memory into a temporary file).
    let r = req("GET /app/i.php?n=100000 HTTP/1.1", b"");
    assert!(r.body.ends_with(&b"0123456789abcdef".repeat(100_000)), "{} bytes", r.body.len());
    // fastcgi_intercept_errors: the server's error_page answers.
    let r = req("GET /intercept/i.php?status=404 HTTP/1.1", b"");
    assert_eq!((r.status, r.body.as_slice()), (404, &b"our own error page\n"[..]));
    // fastcgi_keep_conn on: one connection carries every request. (This
    // php-cgi serves one connection at a time: a second one would wait
    // behind the kept one until fastcgi_read_timeout, 504.)
    for i in 0..5 {
        let r = req(&format!("GET /kept/i.php?i={i} HTTP/1.1"), b"");
        assert_eq!((r.status, key_values(&r.body)["QUERY_STRING"].clone()), (200, format!("i={i}")));
        assert_eq!(connected(&kept.socket), 1, "after request {i}");
    }
    // Without it, the application closes each one.
    assert_eq!(req("GET /app/i.php HTTP/1.1", b"").status, 200);
    poll_until("php to close", std::time::Duration::from_secs(5), || (connected(&php.socket) == 0).then_some(()));
    // fastcgi_read_timeout, not proxy_read_timeout: the twins are apart.
    // (Last of the PHP requests: that php-cgi stays busy with it.)
    let t = std::time::Instant::now();
    assert_eq!(req("GET /app/i.php?sleep=3 HTTP/1.1", b"").status, 504);
    assert!(t.elapsed() < std::time::Duration::from_millis(2500), "{:?}", t.elapsed());
    // No application there: 502.
    assert_eq!(req("GET /dead/x.php HTTP/1.1", b"").status, 502);
}

/// Connected stream sockets bound to `path` (the application's side of
/// each connection it accepted), from /proc/net/unix.
fn connected(path: &std::path::Path) -> usize {
    let path = path.display().to_string();
    std::fs::read_to_string("/proc/net/unix").unwrap().lines().filter(|l| l.ends_with(&path) && l.split_whitespace().nth(5) == Some("03")).count()
}
