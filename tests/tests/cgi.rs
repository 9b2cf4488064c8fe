//! SCGI and uWSGI through the real binary to a real WSGI application
//! (tests/wsgi_app.py under uWSGI, and under flup's SCGI server): the CGI
//! environment, bodies in memory and in a file, statuses, redirects,
//! large responses; each family's twins of the upstream settings beside
//! the proxy's in one block.

use ngxr_tests::*;

#[test]
fn wsgi_through_scgi_and_uwsgi() {
    let p = Prefix::new();
    let uwsgi = SocketServer::uwsgi(&p.path().join("u.sock"));
    let scgi = SocketServer::scgi(&p.path().join("s.sock"));
    let root = repo_root();
    for f in ["scgi_params", "uwsgi_params"] {
        std::fs::copy(root.join("conf").join(f), p.path().join("conf").join(f)).unwrap();
    }
    let port = free_port();
    p.write_conf(&format!(
        "{}{}events {{}}\nhttp {{ client_body_buffer_size 16k;
           proxy_read_timeout 1s; uwsgi_read_timeout 30s; scgi_read_timeout 30s; proxy_temp_path p_temp; uwsgi_temp_path u_temp; scgi_temp_path s_temp;
           server {{ listen 127.0.0.1:{port};
             location /u/ {{ uwsgi_pass unix:{u}; include uwsgi_params; uwsgi_param SET_ONE \"u $request_method\"; }}
             location /s/ {{ scgi_pass unix:{s}; include scgi_params; scgi_param SET_ONE \"s $request_method\"; }}
         }} }}\n",
        conf_head(),
        load_plugins(&["proxy"]),
        u = uwsgi.socket.display(),
        s = scgi.socket.display(),
    ));
    let s = Server::start_in(p, port);
    let req = |head: &str, body: &[u8]| send_with_body(s.port, &format!("{head}\r\nUser-Agent: t/1\r\nCookie: a=1\r\nCookie: b=2"), "application/x-test", body);
    for (family, at) in [("u", "/u/"), ("s", "/s/")] {
        let r = req(&format!("GET {at}x?a=1 HTTP/1.1"), b"");
        assert_eq!((r.status, r.header("x-app"), r.header("content-type")), (200, Some("wsgi"), Some("text/plain")), "{family}");
        let f = key_values(&r.body);
        assert_eq!((f["REQUEST_METHOD"].as_str(), f["QUERY_STRING"].as_str(), f["REQUEST_URI"].clone()), ("GET", "a=1", format!("{at}x?a=1")), "{family}");
        assert_eq!((f["SERVER_PROTOCOL"].as_str(), f["REMOTE_ADDR"].as_str(), f["SERVER_PORT"].clone()), ("HTTP/1.1", "127.0.0.1", port.to_string()), "{family}");
        assert_eq!((f["HTTP_USER_AGENT"].as_str(), f["HTTP_COOKIE"].as_str(), f["SET_ONE"].clone()), ("t/1", "a=1; b=2", format!("{family} GET")), "{family}");
        // Bodies in memory and, past client_body_buffer_size, in a file.
        for size in [5usize, 200_000] {
            let body: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
            let r = req(&format!("POST {at}x HTTP/1.1"), &body);
            let f = key_values(&r.body);
            assert_eq!(f["BODY"], format!("{size}:{}", md5_hex(&body)), "{family} {size}");
            assert_eq!(f["CONTENT_TYPE"], "application/x-test", "{family}");
        }
        assert_eq!(req(&format!("GET {at}x?status=404 HTTP/1.1"), b"").status, 404, "{family}");
        let r = req(&format!("GET {at}x?loc=/there HTTP/1.1"), b"");
        assert_eq!((r.status, r.header("location")), (302, Some(format!("http://localhost:{port}/there").as_str())), "{family}");
        // A large body, past the buffers into a temporary file.
        let r = req(&format!("GET {at}x?n=60000 HTTP/1.1"), b"");
        assert!(r.body.ends_with(&b"0123456789abcdef".repeat(60_000)), "{family}: {} bytes", r.body.len());
    }
}
