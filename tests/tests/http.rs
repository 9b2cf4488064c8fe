//! The HTTP core and the static, index, autoindex and log plugins, driven
//! through the real binary with raw sockets and curl.

use ngxr_tests::*;
use std::time::Duration;

const ALL: &[&str] = &["index", "autoindex", "static", "log"];

/// Starts a server over a prefix holding `files`; the config `body` may
/// say PORT. Loads testkit first (its content handler answers only where
/// `testkit_reply` is set), then the product plugins.
fn serve(body: &str, files: &[(&str, &str)]) -> Server {
    let port = free_port();
    let p = Prefix::new();
    for (path, text) in files {
        p.write(path, text);
    }
    let conf = format!(
        "{}load_module {};\n{}events {{}}\n{}",
        conf_head(),
        testkit_so().display(),
        load_plugins(ALL),
        body.replace("PORT", &port.to_string())
    );
    p.write_conf(&conf);
    Server::start_in(p, port)
}

fn req(port: u16, text: &str) -> Response {
    let buf = raw(port, text.as_bytes()).unwrap();
    let head_only = text.starts_with("HEAD ");
    parse_response_to(&buf, head_only).map(|(r, _)| r).unwrap_or_else(|| panic!("bad response: {:?}", String::from_utf8_lossy(&buf)))
}

fn get_h(port: u16, path: &str, headers: &str) -> Response {
    req(port, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"))
}

const SITE: &[(&str, &str)] = &[
    ("html/index.html", "<h1>home</h1>\n"),
    ("html/a.txt", "0123456789"),
    ("html/page.html", "<p>page</p>"),
    ("html/blob.unknownext", "blob"),
    ("html/dir/index.html", "dir index"),
    ("html/list/one.txt", "1"),
    ("html/list/sub/two.txt", "22"),
    ("html/list/.hidden", "h"),
    ("html/404.html", "custom not found"),
    ("html/50x.html", "custom error"),
];

fn site_conf(extra_server: &str) -> String {
    format!(
        "http {{ types {{ text/html html; text/plain txt; }} default_type application/octet-stream;
           access_log off;
           server {{ listen 127.0.0.1:PORT; root html; {extra_server} }} }}\n"
    )
}

#[test]
fn static_files_index_and_errors() {
    let s = serve(&site_conf("location /list/ { autoindex on; }"), SITE);
    let r = get(s.port, "/a.txt").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789"[..]));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("etag").is_some_and(|e| e.starts_with('"') && e.ends_with("-a\"")), "{:?}", r.header("etag"));
    assert!(r.header("last-modified").is_some_and(|v| v.ends_with(" GMT")));
    assert!(r.header("date").is_some_and(|v| v.ends_with(" GMT")));
    assert_eq!(r.header("server"), Some(concat!("ngxr/", env!("CARGO_PKG_VERSION"))));
    assert_eq!(get(s.port, "/blob.unknownext").unwrap().header("content-type"), Some("application/octet-stream"));
    // HEAD: the same head, no body.
    let h = req(s.port, "HEAD /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((h.status, h.header("content-length")), (200, Some("10")));
    let raw_head = raw(s.port, b"HEAD /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    assert!(raw_head.ends_with(b"\r\n\r\n"), "HEAD sent a body");
    // index via internal redirect; directory without slash → 301.
    let r = get(s.port, "/").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<h1>home</h1>\n"[..]));
    assert_eq!(get(s.port, "/dir/").unwrap().body, b"dir index");
    let r = get(s.port, "/dir?x=1").unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location").map(str::to_string), Some(format!("http://localhost:{}/dir/?x=1", s.port)));
    assert!(String::from_utf8_lossy(&r.body).contains("301 Moved Permanently"));
    // 404, 405, and 403 for a directory with no index and no autoindex.
    let r = get(s.port, "/missing").unwrap();
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("<center><h1>404 Not Found</h1></center>"));
    assert!(s.prefix.error_log().contains("/html/missing\" failed (2: No such file or directory)"));
    let r = req(s.port, "POST /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405);
    let r = req(s.port, "DELETE /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405);
    std::fs::create_dir_all(s.prefix.path().join("html/empty")).unwrap();
    assert_eq!(get(s.port, "/empty/").unwrap().status, 403);
    // A file the worker (nobody) cannot read → 403.
    if is_root() {
        use std::os::unix::fs::PermissionsExt;
        let secret = s.prefix.path().join("html/secret.txt");
        std::fs::write(&secret, "s").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(get(s.port, "/secret.txt").unwrap().status, 403);
    }
    // Normalised URIs reach the same file; escaping above the root cannot.
    assert_eq!(get(s.port, "/dir/../a.txt").unwrap().body, b"0123456789");
    assert_eq!(get(s.port, "//%61.txt").unwrap().body, b"0123456789");
    assert_eq!(get(s.port, "/../a.txt").unwrap().status, 400);
}

#[test]
fn conditional_and_range_requests() {
    let s = serve(&site_conf(""), SITE);
    let full = get(s.port, "/a.txt").unwrap();
    let etag = full.header("etag").unwrap().to_string();
    let lm = full.header("last-modified").unwrap().to_string();
    let r = get_h(s.port, "/a.txt", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((r.status, r.body.len()), (304, 0));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(get_h(s.port, "/a.txt", &format!("If-Modified-Since: {lm}\r\n")).status, 304);
    assert_eq!(get_h(s.port, "/a.txt", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n").status, 200);
    assert_eq!(get_h(s.port, "/a.txt", "If-None-Match: \"other\"\r\n").status, 200);
    assert_eq!(get_h(s.port, "/a.txt", "If-Match: \"other\"\r\n").status, 412);
    assert_eq!(get_h(s.port, "/a.txt", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n").status, 412);
    // Ranges.
    let r = get_h(s.port, "/a.txt", "Range: bytes=2-4\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, &b"234"[..]));
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = get_h(s.port, "/a.txt", "Range: bytes=-3\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, &b"789"[..]));
    let r = get_h(s.port, "/a.txt", "Range: bytes=8-\r\n");
    assert_eq!(r.body, b"89");
    let r = get_h(s.port, "/a.txt", "Range: bytes=0-1,5-6\r\n");
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap().to_string();
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").expect(&ct).to_string();
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert_eq!(
        body,
        format!(
            "\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
             \r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-6/10\r\n\r\n56\
             \r\n--{boundary}--\r\n"
        )
    );
    assert_eq!(r.header("content-length").unwrap().parse::<usize>().unwrap(), r.body.len());
    let r = get_h(s.port, "/a.txt", "Range: bytes=20-30\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    assert_eq!(get_h(s.port, "/a.txt", "Range: bytes=5-2\r\n").status, 200, "bad syntax ignores the range");
    let r = get_h(s.port, "/a.txt", "Range: bytes=0-0\r\nIf-Range: \"stale\"\r\n");
    assert_eq!((r.status, r.body.len()), (200, 10), "If-Range mismatch sends everything");
    let r = get_h(s.port, "/a.txt", &format!("Range: bytes=0-0\r\nIf-Range: {etag}\r\n"));
    assert_eq!((r.status, r.body.as_slice()), (206, &b"0"[..]));
    // curl agrees on a range request end to end.
    let out = std::process::Command::new("curl")
        .args(["-s", "-r", "3-5", &format!("http://127.0.0.1:{}/a.txt", s.port)])
        .output()
        .expect("curl");
    assert_eq!(out.stdout, b"345");
}

/// The open-file cache (on by default) never serves a stale file: every
/// hit is revalidated by device, inode, size, mtime and ctime, and
/// contents are only kept for files that were not just written.
#[test]
fn open_file_cache_sees_every_change() {
    use std::io::{Seek, Write};
    use std::time::SystemTime;
    let s = serve(&format!("worker_processes 1;\n{}", site_conf("")), &[("html/f.txt", "first version\n")]);
    let f = s.prefix.path().join("html/f.txt");
    let body = |want_status: u16| {
        let r = get(s.port, "/f.txt").unwrap();
        assert_eq!(r.status, want_status, "{}", String::from_utf8_lossy(&r.body));
        if want_status == 200 {
            assert_eq!(r.header("content-length").unwrap(), r.body.len().to_string());
        }
        String::from_utf8(r.body).unwrap()
    };
    // An old file: its contents are kept in memory after the first use.
    let old = SystemTime::now() - Duration::from_secs(3600);
    let set_old = |p: &std::path::Path| std::fs::File::options().write(true).open(p).unwrap().set_modified(old).unwrap();
    set_old(&f);
    // Contents are kept once the file's ctime (which cannot be set) is two
    // seconds old: wait for that, so that the memory path is the one
    // tested below.
    poll_until("f.txt to settle", Duration::from_secs(5), || {
        use std::os::unix::fs::MetadataExt;
        let ctime = std::fs::metadata(&f).unwrap().ctime();
        let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        (now - ctime >= 3).then_some(())
    });
    assert_eq!(body(200), "first version\n");
    assert_eq!(body(200), "first version\n");
    // Rewritten in place, same size, mtime put back: only ctime tells.
    let mut w = std::fs::File::options().write(true).open(&f).unwrap();
    w.write_all(b"FIRST VERSION\n").unwrap();
    w.set_modified(old).unwrap();
    assert_eq!(body(200), "FIRST VERSION\n");
    // Grown in place.
    w.rewind().unwrap();
    w.write_all(b"second, longer version\n").unwrap();
    w.set_modified(old).unwrap();
    drop(w);
    assert_eq!(body(200), "second, longer version\n");
    // Replaced by a rename: same size and mtime, another inode.
    let tmp = s.prefix.path().join("html/f.tmp");
    std::fs::write(&tmp, "third, a new inode now\n").unwrap();
    set_old(&tmp);
    std::fs::rename(&tmp, &f).unwrap();
    assert_eq!(body(200), "third, a new inode now\n");
    // Being written right now (same size each time, within a second).
    for i in 0..3 {
        std::fs::write(&f, format!("now {i}\n")).unwrap();
        assert_eq!(body(200), format!("now {i}\n"));
    }
    // Unreadable, gone, back.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
    body(403);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(body(200), "now 2\n");
    std::fs::remove_file(&f).unwrap();
    body(404);
    std::fs::write(&f, "back\n").unwrap();
    assert_eq!(body(200), "back\n");
    // A directory where the file was: the redirect.
    std::fs::remove_file(&f).unwrap();
    std::fs::create_dir(&f).unwrap();
    body(301);
    // Changes the cache learns of from the directories above a file (or,
    // without inotify, from the stat() of every hit).
    let html = s.prefix.path().join("html");
    let get_ok = |p: &str| {
        let r = get(s.port, p).unwrap();
        assert_eq!(r.status, 200, "{p}");
        String::from_utf8(r.body).unwrap()
    };
    // Written in place through a hard link in another directory.
    std::fs::write(html.join("g.txt"), "linked one\n").unwrap();
    std::fs::hard_link(html.join("g.txt"), s.prefix.path().join("g-link")).unwrap();
    assert_eq!(get_ok("/g.txt"), "linked one\n");
    assert_eq!(get_ok("/g.txt"), "linked one\n");
    std::fs::File::options().write(true).open(s.prefix.path().join("g-link")).unwrap().write_all(b"LINKED").unwrap();
    assert_eq!(get_ok("/g.txt"), "LINKED one\n");
    // A directory on the path renamed away and made again.
    std::fs::create_dir(html.join("d")).unwrap();
    std::fs::write(html.join("d/x.txt"), "in the old d\n").unwrap();
    assert_eq!(get_ok("/d/x.txt"), "in the old d\n");
    std::fs::rename(html.join("d"), html.join("d.old")).unwrap();
    std::fs::create_dir(html.join("d")).unwrap();
    std::fs::write(html.join("d/x.txt"), "in the new d\n").unwrap();
    assert_eq!(get_ok("/d/x.txt"), "in the new d\n");
    // A symlink on the path re-pointed as deploys do (new link renamed
    // over the old one), to a release with the same file names.
    for (rel, text) in [("r1", "release one\n"), ("r2", "release two\n")] {
        std::fs::create_dir(html.join(rel)).unwrap();
        std::fs::write(html.join(rel).join("app.txt"), text).unwrap();
    }
    std::os::unix::fs::symlink("r1", html.join("current")).unwrap();
    assert_eq!(get_ok("/current/app.txt"), "release one\n");
    assert_eq!(get_ok("/current/app.txt"), "release one\n");
    std::os::unix::fs::symlink("r2", html.join("current.new")).unwrap();
    std::fs::rename(html.join("current.new"), html.join("current")).unwrap();
    assert_eq!(get_ok("/current/app.txt"), "release two\n");
    // The release the link pointed at changed behind it.
    std::fs::rename(html.join("r2"), html.join("r2.old")).unwrap();
    assert_eq!(get(s.port, "/current/app.txt").unwrap().status, 404);
    drop(s);
    // `open_file_cache off` serves the same way; nginx's other
    // open_file_cache_* directives are accepted; bad parameters refused.
    let s = serve(
        &format!("worker_processes 1;\n{}", site_conf("open_file_cache off; open_file_cache_valid 30s; open_file_cache_min_uses 2; open_file_cache_errors on;")),
        &[("html/f.txt", "uncached\n")],
    );
    assert_eq!(body_of(s.port, "/f.txt"), "uncached\n");
    std::fs::write(s.prefix.path().join("html/f.txt"), "changed\n").unwrap();
    assert_eq!(body_of(s.port, "/f.txt"), "changed\n");
    for (bad, why) in [
        ("open_file_cache max=0;", "invalid \"open_file_cache\" parameter \"max=0\""),
        ("open_file_cache inactive=10s;", "\"open_file_cache\" must have the \"max\" parameter"),
        ("open_file_cache off max=10;", "invalid \"open_file_cache\" parameter \"max=10\""),
    ] {
        s.prefix.write_conf(&std::fs::read_to_string(s.prefix.path().join("conf/ngxr.conf")).unwrap().replace("open_file_cache off;", bad));
        let out = s.prefix.ngxr(&["-t"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why) && err.contains("ngxr.conf:"), "{bad}: {err}");
        s.prefix.write_conf(&std::fs::read_to_string(s.prefix.path().join("conf/ngxr.conf")).unwrap().replace(bad, "open_file_cache off;"));
    }
}

/// A client that sends its request and closes its side at once: the
/// response comes, then the server closes instead of keeping an idle
/// keepalive connection until keepalive_timeout. (Whether the FIN shares
/// an epoll edge with the request bytes is up to timing; the worker
/// handles both — see `Conn::readable`.)
#[test]
fn half_closed_client_gets_its_answer_and_the_close() {
    use std::io::{Read, Write};
    let s = serve(&site_conf("keepalive_timeout 60s;"), SITE);
    for path in ["/a.txt", "/nope"] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = Vec::new();
        // A timeout here (Err) means the server sat on the connection.
        c.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 "), "{text}");
    }
}

/// A connection's last response is written so that the close sends its
/// tail with the FIN (MSG_MORE, or the tcp_nopush cork left on): it must
/// still arrive whole, from memory, by sendfile, or as an error page; and
/// where the client sent more than the closing request (lingering close),
/// the response must not be held back.
#[test]
fn closing_responses_arrive_whole() {
    let big: String = (0..40_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect::<String>().repeat(8);
    let conf = site_conf(
        "sendfile on; tcp_nopush on; location /plain/ { sendfile off; tcp_nopush off; alias html/; }
         location /sleep { testkit_reply x; }",
    );
    let s = serve(&conf, &[("html/a.txt", "0123456789"), ("html/big.txt", &big)]);
    for (path, status, body) in [
        ("/a.txt", 200, "0123456789"),
        ("/big.txt", 200, big.as_str()),
        ("/plain/big.txt", 200, big.as_str()),
    ] {
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            let r = req(s.port, &format!("GET {path} {version}\r\nHost: x\r\nConnection: close\r\n\r\n"));
            assert_eq!((r.status, r.header("connection")), (status, Some("close")), "{path} {version}");
            assert!(r.body == body.as_bytes(), "{path} {version}: {} bytes of {}", r.body.len(), body.len());
        }
    }
    let r = req(s.port, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("404 Not Found"));
    // After a keepalive response with the cork: the next one still comes.
    let mut c = Client::new(s.port);
    c.send(b"GET /big.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().body.len(), big.len());
    c.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(c.response().unwrap().body, b"0123456789");
    assert!(c.closed());
    // More bytes behind the closing request: answered, then a lingering close.
    for path in ["/a.txt", "/big.txt"] {
        let mut c = Client::new(s.port);
        c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let r = c.response().unwrap();
        assert_eq!((r.status, r.body.len()), (200, if path == "/a.txt" { 10 } else { big.len() }));
        assert!(c.closed(), "{path}: not closed");
    }
    // Bytes that come while the request waits, not read by the worker:
    // the close must not reset the connection under the response.
    let mut c = Client::new(s.port);
    c.send(b"GET /sleep?ms=300 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // Time for the worker to read the request alone (not a readiness
    // wait: if the bytes below come with it, the pipelined path runs
    // instead, and must pass as well).
    std::thread::sleep(Duration::from_millis(100));
    c.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().body, b"slept");
    assert!(c.closed());
}

fn body_of(port: u16, path: &str) -> String {
    let r = get(port, path).unwrap();
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

#[test]
fn autoindex_html_and_json() {
    let s = serve(
        &site_conf(
            "location /list/ { autoindex on; autoindex_exact_size on; }
             location /json/ { alias html/list/; autoindex on; autoindex_format json; }",
        ),
        SITE,
    );
    let r = get(s.port, "/list/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html"));
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.starts_with("<html>\r\n<head><title>Index of /list/</title></head>"), "{body}");
    let sub = body.find("<a href=\"sub/\">sub/</a>").expect(&body);
    let one = body.find("<a href=\"one.txt\">one.txt</a>").expect(&body);
    assert!(sub < one, "directories first");
    assert!(!body.contains(".hidden"));
    assert!(body.lines().any(|l| l.starts_with("<a href=\"one.txt\">") && l.trim_end().ends_with(" 1")), "{body}");
    let r = get(s.port, "/json/").unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("{ \"name\":\"sub\", \"type\":\"directory\", \"mtime\":\""), "{body}");
    assert!(body.contains("\"name\":\"one.txt\", \"type\":\"file\""), "{body}");
    assert!(body.contains("\"size\":1 }"), "{body}");
    // The listing via alias serves the files under it too.
    assert_eq!(get(s.port, "/json/sub/two.txt").unwrap().body, b"22");
}

#[test]
fn locations_match_as_nginx() {
    let s = serve(
        "http { access_log off; server { listen 127.0.0.1:PORT;
            location = / { testkit_reply exact-root; }
            location / { testkit_reply prefix-root; }
            location /documents/ { testkit_reply documents; location ~ \\.txt$ { testkit_reply nested-txt; } }
            location ^~ /images/ { testkit_reply images; }
            location ~* \\.(gif|jpg)$ { testkit_reply regex-img; }
            location ~ ^/case/[A-Z]+$ { testkit_reply case-sensitive; }
            location /try/ { try_files $uri @fallback; }
            location @fallback { testkit_reply named; }
            location /internal/ { internal; testkit_reply hidden; }
        } }\n",
        &[],
    );
    for (path, want) in [
        ("/", "exact-root"),
        ("/index.html", "prefix-root"),
        ("/documents/doc.html", "documents"),
        ("/documents/a.txt", "nested-txt"),
        ("/images/1.gif", "images"),
        ("/documents/1.JPG", "regex-img"),
        ("/x.gif", "regex-img"),
        ("/case/ABC", "case-sensitive"),
        ("/case/abc", "prefix-root"),
        ("/try/nothing-here", "named"),
    ] {
        let r = get(s.port, path).unwrap();
        assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (200, want), "{path}");
    }
    assert_eq!(get(s.port, "/internal/x").unwrap().status, 404, "internal locations are not reachable directly");
}

#[test]
fn virtual_servers_by_name() {
    let s = serve(
        "http { access_log off;
            server { listen 127.0.0.1:PORT; server_name first.test; testkit_reply first; }
            server { listen 127.0.0.1:PORT default_server; server_name dflt.test; testkit_reply default; }
            server { listen 127.0.0.1:PORT; server_name *.wild.test; testkit_reply wildcard; }
            server { listen 127.0.0.1:PORT; server_name www.pre.*; testkit_reply prefix-wild; }
            server { listen 127.0.0.1:PORT; server_name ~^api\\d+\\.test$; testkit_reply regex; }
            server { listen 127.0.0.1:PORT; server_name exact.wild.test; testkit_reply exact; }
        }\n",
        &[],
    );
    for (host, want) in [
        ("first.test", "first"),
        ("FIRST.test:8080", "first"),
        ("a.wild.test", "wildcard"),
        ("exact.wild.test", "exact"),
        ("www.pre.org", "prefix-wild"),
        ("api7.test", "regex"),
        ("unknown.test", "default"),
    ] {
        let r = req(s.port, &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        assert_eq!(String::from_utf8_lossy(&r.body), want, "Host: {host}");
    }
    // HTTP/1.0 without Host and an absolute URI's host both pick servers.
    assert_eq!(req(s.port, "GET / HTTP/1.0\r\n\r\n").body, b"default");
    assert_eq!(req(s.port, "GET http://first.test/ HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n").body, b"first");
}

#[test]
fn error_pages_and_try_files() {
    let s = serve(
        &site_conf(
            "error_page 404 /404.html;
             location /eq/ { error_page 404 =200 /page.html; }
             location /named/ { error_page 404 = @fb; }
             location @fb { testkit_reply from-named; }
             location /away/ { error_page 404 http://example.test/gone; }
             location /tf/ { try_files $uri $uri/ /page.html; }
             location /tf404/ { try_files $uri =404; }
             location /tfa/ { alias html/; try_files $uri =404; }
             location /teapot { testkit_reply x; error_page 418 /page.html; }
             location = /404.html { internal; }",
        ),
        SITE,
    );
    let r = get(s.port, "/nothing").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (404, &b"custom not found"[..]));
    assert_eq!(get(s.port, "/404.html").unwrap().status, 404, "internal");
    let r = get(s.port, "/eq/nothing").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<p>page</p>"[..]));
    let r = get(s.port, "/named/nothing").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"from-named"[..]));
    let r = get(s.port, "/away/x").unwrap();
    assert_eq!((r.status, r.header("location")), (302, Some("http://example.test/gone")));
    let r = get(s.port, "/tf/whatever").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<p>page</p>"[..]));
    // `$uri/` finds a directory: as nginx, the URI tried is without the
    // '/', which the static handler then redirects to.
    s.prefix.write("html/tf/d/index.html", "d index");
    let r = get(s.port, "/tf/d").unwrap();
    assert_eq!((r.status, r.header("location").map(|l| l.ends_with("/tf/d/"))), (301, Some(true)));
    let r = get(s.port, "/tf/d/").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"d index"[..]));
    assert_eq!(get(s.port, "/tf404/x").unwrap().status, 404);
    let r = get(s.port, "/tfa/a.txt").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789"[..]), "try_files under alias");
    let r = get(s.port, "/teapot").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (418, &b"<p>page</p>"[..]));
}

#[test]
fn keepalive_pipelining_and_limits() {
    let s = serve(&site_conf("location /two/ { keepalive_requests 2; testkit_reply two; } location /aged/ { keepalive_time 300ms; testkit_reply aged; }"), SITE);
    // Three pipelined requests in one write, answered in order on one connection.
    let mut c = Client::new(s.port);
    c.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\nHEAD /page.html HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n");
    let r1 = c.response().unwrap();
    assert_eq!((r1.status, r1.body.as_slice(), r1.header("connection")), (200, &b"0123456789"[..], Some("keep-alive")));
    let r2 = c.response_to(true).unwrap();
    assert_eq!((r2.status, r2.header("content-length")), (200, Some("11")));
    assert_eq!(c.response().unwrap().status, 404);
    c.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(c.response().unwrap().header("connection"), Some("close"));
    assert!(c.closed());
    // HTTP/1.0 closes unless it asks for keep-alive.
    let mut c = Client::new(s.port);
    c.send(b"GET /a.txt HTTP/1.0\r\n\r\n");
    assert_eq!(c.response().unwrap().header("connection"), Some("close"));
    assert!(c.closed());
    let mut c = Client::new(s.port);
    c.send(b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /a.txt HTTP/1.0\r\n\r\n");
    assert_eq!(c.response().unwrap().header("connection"), Some("keep-alive"));
    assert_eq!(c.response().unwrap().header("connection"), Some("close"));
    // keepalive_requests 2: the second response closes.
    let mut c = Client::new(s.port);
    c.send(b"GET /two/ HTTP/1.1\r\nHost: x\r\n\r\nGET /two/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().header("connection"), Some("keep-alive"));
    assert_eq!(c.response().unwrap().header("connection"), Some("close"));
    assert!(c.closed());
    // keepalive_time: a request on a connection older than that is its last.
    let mut c = Client::new(s.port);
    c.send(b"GET /aged/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().header("connection"), Some("keep-alive"));
    std::thread::sleep(Duration::from_millis(400)); // the connection's age, not a wait for readiness
    c.send(b"GET /aged/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().header("connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn request_bodies() {
    let s = serve(&site_conf("client_max_body_size 1k; location /echo { testkit_reply x; }"), SITE);
    // A body a plugin reads asynchronously, by length and chunked.
    let mut c = Client::new(s.port);
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(c.response().unwrap().body, b"hello");
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n");
    assert_eq!(c.response().unwrap().body, b"abcdefg");
    // The body arrives slowly, in pieces: the handler waits for all of it.
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab");
    std::thread::sleep(Duration::from_millis(50)); // the worker has read part of the body
    c.send(b"cdef");
    assert_eq!(c.response().unwrap().body, b"abcdef");
    // Expect: 100-continue gets the interim response before the body.
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response().unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"ok");
    assert_eq!(c.response().unwrap().body, b"ok");
    // A body nobody reads is discarded: the next pipelined request is intact.
    c.send(b"POST /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().status, 405);
    assert_eq!(c.response().unwrap().body, b"0123456789");
    c.send(b"POST /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n0\r\n\r\nGET /page.html HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().status, 405);
    assert_eq!(c.response().unwrap().body, b"<p>page</p>");
    // client_max_body_size: declared too large → 413 at once; chunked too
    // large → 413 while reading.
    let r = req(s.port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n");
    assert_eq!(r.status, 413);
    let big = format!("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n", "x".repeat(2048));
    assert_eq!(req(s.port, &big).status, 413);
    // Lingering close: the client is still sending a large body when the
    // 413 goes out; the server keeps reading (and dropping) so the client
    // sees the response rather than a reset.
    let mut c = Client::new(s.port);
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n");
    for _ in 0..16 {
        let _ = std::io::Write::write_all(&mut c.sock, &[b'z'; 65536]);
    }
    let r = c.response().unwrap();
    assert_eq!((r.status, r.header("connection")), (413, Some("close")));
}

#[test]
fn suspended_requests_and_streamed_responses() {
    let s = serve(&site_conf("location / { testkit_reply x; }"), SITE);
    // A handler suspends on a timer; other connections are served meanwhile.
    let slow = std::thread::spawn({
        let port = s.port;
        move || get(port, "/sleep?ms=300").unwrap()
    });
    let t0 = std::time::Instant::now();
    assert_eq!(get(s.port, "/quick").unwrap().status, 200);
    assert!(t0.elapsed() < Duration::from_millis(300), "the worker was not blocked");
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"slept"[..]));
    // A body sent in pieces without a length: chunked on 1.1, close on 1.0.
    let mut c = Client::new(s.port);
    c.send(b"GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.response().unwrap();
    assert_eq!((r.header("transfer-encoding"), r.body.as_slice()), (Some("chunked"), &b"one,two,three"[..]));
    c.send(b"GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().body, b"one,two,three", "keepalive after a chunked response");
    let r = req(s.port, "GET /chunks HTTP/1.0\r\n\r\n");
    assert_eq!((r.header("transfer-encoding"), r.header("connection"), r.body.as_slice()), (None, Some("close"), &b"one,two,three"[..]));
}

/// Malformed and hostile requests get nginx's status, and the worker
/// keeps serving.
#[test]
fn hostile_requests_table() {
    let s = serve(&site_conf("large_client_header_buffers 4 1k; location /echo { testkit_reply x; }"), SITE);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1100));
    let long_header = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(1100));
    let many_headers = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-H: 0123456789012345678901234567890123456789\r\n".repeat(120));
    let cases: Vec<(&str, String, u16)> = vec![
        ("no Host in 1.1", "GET / HTTP/1.1\r\n\r\n".into(), 400),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
        ("bad Host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".into(), 400),
        ("Host with ..", "GET / HTTP/1.1\r\nHost: a..b\r\n\r\n".into(), 400),
        ("CL and TE", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("two CL", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), 400),
        ("same CL twice", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into(), 400),
        ("bad CL", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".into(), 400),
        ("CL with sign", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".into(), 400),
        ("unknown TE", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(), 501),
        ("TE list", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".into(), 501),
        ("TRACE", "TRACE / HTTP/1.1\r\nHost: x\r\n\r\n".into(), 405),
        ("space in the target", "GET / / HTTP/1.0\r\n\r\n".into(), 400),
        ("control in the target", "GET /\x02 HTTP/1.0\r\n\r\n".into(), 400),
        ("TE in 1.0", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("bad chunk size", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".into(), 400),
        ("chunk without CRLF", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n".into(), 400),
        ("huge chunk size", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n".into(), 400),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".into(), 400),
        ("NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".into(), 400),
        ("CR in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".into(), 400),
        ("space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n".into(), 400),
        ("lowercase method", "get / HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n".into(), 400),
        ("HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n".into(), 505),
        ("HTTP/3.0", "GET / HTTP/3.0\r\n\r\n".into(), 505),
        ("climbs above root", "GET /a/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("encoded climb", "GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("bad escape", "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("encoded NUL", "GET /a%00.txt HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("relative target", "GET a.txt HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
        ("long URI", long_uri, 414),
        ("long header", long_header.clone(), 400),
        ("huge head", many_headers, 400),
    ];
    for (what, text, want) in &cases {
        let buf = raw(s.port, text.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (r, _) = parse_response(&buf).unwrap_or_else(|| panic!("{what}: no response: {:?}", String::from_utf8_lossy(&buf)));
        assert_eq!(r.status, *want, "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        let ok = get(s.port, "/a.txt").unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"0123456789"[..]), "after {what}");
    }
    let buf = raw(s.port, long_header.as_bytes()).unwrap();
    assert!(String::from_utf8_lossy(&buf).contains("<title>400 Request Header Or Cookie Too Large</title>"));
    assert!(s.workers().len() == 1, "no worker crashed");
}

#[test]
fn timeouts() {
    let s = serve(
        &site_conf("client_header_timeout 1s; client_body_timeout 1s; keepalive_timeout 1s; location /echo { testkit_reply x; }"),
        SITE,
    );
    // A partial head is closed after client_header_timeout.
    let mut c = Client::new(s.port);
    c.send(b"GET / HTTP/1.1\r\n");
    let t0 = std::time::Instant::now();
    assert!(c.closed());
    assert!(t0.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", t0.elapsed());
    // A stalled body: 408.
    let mut c = Client::new(s.port);
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(c.response().unwrap().status, 408);
    // An idle keepalive connection is closed after keepalive_timeout.
    let mut c = Client::new(s.port);
    c.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().status, 200);
    let t0 = std::time::Instant::now();
    assert!(c.closed());
    assert!(t0.elapsed() >= Duration::from_millis(900));
    // The timer the first request armed is kept while the deadline moves
    // on by less than nginx's lazy delay (300 ms), but the connection
    // still idles a whole keepalive_timeout after its last request.
    let mut c = Client::new(s.port);
    for _ in 0..3 {
        c.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.response().unwrap().status, 200);
        // The pause between requests is what is tested.
        std::thread::sleep(Duration::from_millis(200));
    }
    c.send(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response().unwrap().status, 200);
    let t0 = std::time::Instant::now();
    assert!(c.closed());
    assert!(t0.elapsed() >= Duration::from_millis(900), "closed {:?} after the last request", t0.elapsed());
}

#[test]
fn access_log_formats() {
    let s = serve(
        "http { types { text/plain txt; }
            log_format test '$request_method $request_uri $uri $args $status $body_bytes_sent '
                            '\"$http_x_test\" $arg_a $sent_http_content_type $server_name:$server_port $host';
            log_format js escape=json '{\"ua\":\"$http_user_agent\",\"st\":$status}';
            access_log logs/test.log test;
            server { listen 127.0.0.1:PORT; server_name main.test; root html;
                access_log logs/combined.log;
                access_log logs/test.log test;
                location /quiet/ { access_log off; }
                location /json/ { access_log logs/json.log js; }
                location /buffered/ { access_log logs/buf.log combined buffer=64k; }
                location /cond/ { access_log logs/cond.log test if=$arg_log; }
            }
            server { listen 127.0.0.1:PORT; server_name other.test; root html; }
        }\n",
        SITE,
    );
    let p = s.prefix.path().to_path_buf();
    get_h(s.port, "/a.txt?a=1&b=2", "X-Test: hi \"there\"\r\nUser-Agent: t/1\r\n");
    get(s.port, "/quiet/x").unwrap();
    get_h(s.port, "/json/x", "User-Agent: a\"b\r\n");
    get(s.port, "/buffered/x").unwrap();
    for q in ["?log=1", "?log=0", "", "?log=yes"] {
        get(s.port, &format!("/cond/x{q}")).unwrap();
    }
    req(s.port, "GET /a.txt HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n");
    let test_log = poll_until("test.log lines", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(p.join("logs/test.log")).unwrap_or_default();
        (t.lines().count() >= 2).then_some(t)
    });
    let lines: Vec<&str> = test_log.lines().collect();
    assert_eq!(
        lines[0],
        "GET /a.txt?a=1&b=2 /a.txt a=1&b=2 200 10 \"hi \\x22there\\x22\" 1 text/plain main.test:".to_string()
            + &s.port.to_string()
            + " localhost"
    );
    assert!(!test_log.contains("/json/"), "a location's own access_log replaces the inherited ones");
    assert!(!test_log.contains("/quiet/"), "access_log off");
    assert!(lines.iter().any(|l| l.starts_with("GET /a.txt /a.txt - 200 10 \"-\" - text/plain other.test:")), "http-level log inherited: {test_log}");
    let combined = std::fs::read_to_string(p.join("logs/combined.log")).unwrap();
    let line = combined.lines().next().unwrap();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.ends_with("] \"GET /a.txt?a=1&b=2 HTTP/1.1\" 200 10 \"-\" \"t/1\""), "{line}");
    // if=: only the requests whose condition is neither "" nor "0".
    let cond = poll_until("cond.log lines", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(p.join("logs/cond.log")).unwrap_or_default();
        (t.lines().count() >= 2).then_some(t)
    });
    let logged: Vec<&str> = cond.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(logged, ["/cond/x?log=1", "/cond/x?log=yes"]);
    let json = std::fs::read_to_string(p.join("logs/json.log")).unwrap();
    assert_eq!(json.trim(), "{\"ua\":\"a\\\"b\",\"st\":404}");
    // buffer=: written when the worker exits (graceful quit).
    assert_eq!(std::fs::read_to_string(p.join("logs/buf.log")).unwrap_or_default(), "");
    let mut s = s;
    s.signal(libc::SIGQUIT);
    s.wait_exit(Duration::from_secs(10));
    let buf = std::fs::read_to_string(p.join("logs/buf.log")).unwrap_or_default();
    assert!(buf.contains("\"GET /buffered/x HTTP/1.1\" 404"), "{buf:?}");
}

#[test]
fn default_access_log_and_server_tokens() {
    let s = serve("http { server_tokens off; server { listen 127.0.0.1:PORT; root html; } }\n", SITE);
    let r = get(s.port, "/nope").unwrap();
    assert_eq!(r.header("server"), Some("ngxr"));
    assert!(String::from_utf8_lossy(&r.body).contains("<hr><center>ngxr</center>"));
    let log = poll_until("default access log", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(s.prefix.path().join("logs/access.log")).unwrap_or_default();
        (!t.is_empty()).then_some(t)
    });
    assert!(log.contains("\"GET /nope HTTP/1.1\" 404 "), "{log}");
}

#[test]
fn shipped_config_serves_out_of_the_box() {
    let root = repo_root();
    let port = free_port();
    let p = Prefix::new();
    let conf = std::fs::read_to_string(root.join("conf/ngxr.conf")).unwrap();
    let debug_dir = ngxr_bin().parent().unwrap().display().to_string();
    let conf = conf
        .replace("target/release", &debug_dir)
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("worker_processes auto;", "worker_processes 1;");
    p.write_conf(&conf);
    std::fs::copy(root.join("conf/mime.types"), p.path().join("conf/mime.types")).unwrap();
    for f in ["index.html", "50x.html"] {
        p.write(&format!("html/{f}"), &std::fs::read_to_string(root.join("html").join(f)).unwrap());
    }
    p.write("docs/readme.md", "# docs");
    let s = Server::start_in(p, port);
    let r = get(s.port, "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert!(String::from_utf8_lossy(&r.body).contains("Welcome to ngxr!"));
    let listing = get(s.port, "/docs/").unwrap();
    assert!(String::from_utf8_lossy(&listing.body).contains("readme.md"));
    assert_eq!((listing.header("cache-control"), listing.header("x-served-by")), (Some("max-age=60"), Some("ngxr")));
    assert_eq!(get(s.port, "/docs/readme.md").unwrap().header("content-type"), Some("text/plain"));
    assert_eq!(get(s.port, "/missing").unwrap().status, 404);
    let h = get(s.port, "/health").unwrap();
    assert_eq!((h.status, h.header("content-type"), h.body.as_slice()), (200, Some("text/plain"), &b"ok\n"[..]));
    // The proxy example: the same page through the "self" upstream.
    let r = get(s.port, "/proxied/").unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("Welcome to ngxr!"));
    let r = get(s.port, "/proxied/missing").unwrap();
    assert_eq!(r.status, 404);
    let r = get(s.port, "/nginx_status").unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).starts_with("Active connections: "), "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn alias_in_nested_and_regex_locations() {
    let s = serve(
        "http { access_log off; server { listen 127.0.0.1:PORT; root html;
            location /static/ { alias files/; location ~ \\.css$ { } }
            location ~ ^/re/(.*)$ { alias files/$1; }
            location ~ /tried\\.txt$ { alias files/dir; try_files $uri =404; }
        } }\n",
        &[("files/a.css", "css a"), ("files/b.txt", "txt b"), ("files/dir/tried.txt", "tried"), ("html/static/a.css", "wrong root")],
    );
    // A regex location nested in an aliased prefix keeps the alias.
    assert_eq!(body_of(s.port, "/static/a.css"), "css a");
    assert_eq!(body_of(s.port, "/static/b.txt"), "txt b");
    // A regex location's alias is the whole path (with captures).
    assert_eq!(body_of(s.port, "/re/b.txt"), "txt b");
    // try_files under a regex location's alias looks for the URI beneath
    // it, as nginx.
    assert_eq!(body_of(s.port, "/tried.txt"), "tried");
    assert_eq!(get(s.port, "/x/tried.txt").unwrap().status, 404);
}

#[test]
fn one_file_through_locations_with_their_own_types() {
    // The static plugin keeps a file's type on its cache entry: it must
    // still answer each location's (and each extension's) own type.
    let s = serve(
        "http { access_log off; types { text/plain txt; } default_type application/x-default; server { listen 127.0.0.1:PORT; root html;
            location /a/ { alias files/; types { text/x-a txt; } }
            location /b/ { alias files/; }
            location = /c/any.bin { alias files/f.txt; }
            location = /c/any.txt { alias files/f.txt; }
            location ~ ^/d/(\\w+)\\.\\w+$ { alias files/$1.txt; }
        } }\n",
        &[("files/f.txt", "f"), ("files/g.txt", "g")],
    );
    // Old enough for the cache to keep them.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for f in ["files/f.txt", "files/g.txt"] {
        std::fs::File::options().write(true).open(s.prefix.path().join(f)).unwrap().set_modified(old).unwrap();
    }
    let ctype = |path: &str| get(s.port, path).unwrap().header("content-type").map(str::to_string);
    for _ in 0..2 {
        assert_eq!(ctype("/a/f.txt").as_deref(), Some("text/x-a"));
        assert_eq!(ctype("/b/f.txt").as_deref(), Some("text/plain"));
        // The same file under a URI with another extension (or none).
        assert_eq!(ctype("/c/any.bin").as_deref(), Some("application/x-default"));
        assert_eq!(ctype("/c/any.txt").as_deref(), Some("text/plain"));
        // One location, one file, two extensions.
        assert_eq!(ctype("/d/g.txt").as_deref(), Some("text/plain"));
        assert_eq!(ctype("/d/g.bin").as_deref(), Some("application/x-default"));
    }
}

#[test]
fn large_request_bodies_wait_in_temporary_files() {
    let s = serve(
        &site_conf(
            "client_max_body_size 10m; client_body_buffer_size 1k; client_body_temp_path body_temp;
             location /echo { testkit_reply x; }
             location /kept/ { client_body_in_file_only on; testkit_reply x; }",
        ),
        SITE,
    );
    let temp = s.prefix.path().join("body_temp");
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let post = |path: &str, body: &[u8]| {
        let mut c = Client::new(s.port);
        c.send(format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
        c.send(body);
        c.response().unwrap()
    };
    // Below client_body_buffer_size: in memory, no file.
    let r = post("/echo", b"small body");
    assert_eq!((r.body.as_slice(), r.header("x-body-file")), (&b"small body"[..], None));
    // Above it: in a file under client_body_temp_path while the request
    // lasts, whole when read, removed after.
    let r = post("/echo", &body);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "the body read back from the file differs");
    let file = r.header("x-body-file").expect("the body went to a file").to_string();
    assert!(file.starts_with(&temp.display().to_string()), "{file}");
    poll_until("the temporary file to go", Duration::from_secs(5), || (!std::path::Path::new(&file).exists()).then_some(()));
    // Chunked, too.
    let mut c = Client::new(s.port);
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for part in body.chunks(70_000) {
        c.send(format!("{:x}\r\n", part.len()).as_bytes());
        c.send(part);
        c.send(b"\r\n");
    }
    c.send(b"0\r\n\r\n");
    let r = c.response().unwrap();
    assert!(r.body == body && r.header("x-body-file").is_some());
    // client_body_in_file_only on: every body in a file, kept afterwards.
    let r = post("/kept/echo", b"tiny");
    assert_eq!(r.body, b"tiny");
    let kept = r.header("x-body-file").unwrap().to_string();
    assert_eq!(std::fs::read(&kept).unwrap(), b"tiny");
}

#[test]
fn nginx_tuning_directives_and_keepalive_disable() {
    // Directives from stock nginx.conf files (Debian's has
    // types_hash_max_size) are accepted; keepalive_disable works.
    let s = serve(
        &site_conf(
            "types_hash_max_size 2048; types_hash_bucket_size 64; connection_pool_size 512; request_pool_size 4k;
             sendfile_max_chunk 2m; aio threads; directio off; log_subrequest off;
             open_log_file_cache max=1000 inactive=20s valid=1m min_uses=2;
             location /safari/ { keepalive_disable safari; alias html/; }",
        ),
        SITE,
    );
    let conn = |path: &str, method: &str, ua: &str| {
        let body = if method == "POST" { "Content-Length: 0\r\n" } else { "" };
        let mut c = Client::new(s.port);
        c.send(format!("{method} {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\n{body}\r\n").as_bytes());
        c.response().unwrap().header("connection").map(str::to_string)
    };
    let msie6 = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)";
    let safari = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15";
    // The default (msie6): an old MSIE's POST closes; its GET keeps.
    assert_eq!(conn("/a.txt", "POST", msie6).as_deref(), Some("close"));
    assert_eq!(conn("/a.txt", "GET", msie6).as_deref(), Some("keep-alive"));
    assert_eq!(conn("/a.txt", "GET", safari).as_deref(), Some("keep-alive"));
    assert_eq!(conn("/safari/a.txt", "GET", safari).as_deref(), Some("close"));
}

#[test]
fn limit_rate_paces_responses() {
    let body = "x".repeat(16 * 1024);
    let files: Vec<(&str, &str)> = ["html/slow/f", "html/after/f", "html/set/f"].iter().map(|p| (*p, body.as_str())).collect();
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}{}events {{}}\nhttp {{ server {{ listen 127.0.0.1:{}; root html;
               location /slow/ {{ limit_rate 8k; }}
               location /after/ {{ limit_rate 8k; limit_rate_after 16k; }}
               location /set/ {{ set $limit_rate 8k; add_header X-Rate $limit_rate; }}
               location = /rate {{ add_header X-Rate $limit_rate always; return 204; }} }} }}\n",
            conf_head(),
            load_plugins(&["static", "rewrite", "headers"]),
            p[0]
        )
    });
    for (path, text) in &files {
        s.prefix.write(path, text);
    }
    // 16 KiB at 8 KiB/s: a second's worth at once (as nginx), the rest
    // over the next second.
    for path in ["/slow/f", "/set/f"] {
        let t = std::time::Instant::now();
        let r = get_h(s.port, path, "");
        assert_eq!((r.status, r.body.len()), (200, 16 * 1024), "{path}");
        assert!(t.elapsed() >= Duration::from_millis(800), "{path} took {:?}", t.elapsed());
    }
    assert_eq!(req(s.port, "HEAD /set/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").header("x-rate"), Some("8192"));
    assert_eq!(get_h(s.port, "/rate", "").header("x-rate"), Some("0"));
    // Everything falls within limit_rate_after: no pause.
    let t = std::time::Instant::now();
    assert_eq!(get_h(s.port, "/after/f", "").body.len(), 16 * 1024);
    assert!(t.elapsed() < Duration::from_millis(700), "took {:?}", t.elapsed());
}

#[test]
fn server_names_as_nginx_reads_them() {
    let (s, _) = Server::start_with_ports(1, |p| {
        let conf = "http {
           server { listen 127.0.0.1:PORT; server_name localhost; return 200 \"$server_name\"; }
           server { listen 127.0.0.1:PORT; server_name \"\"; return 200 \"[$server_name]\"; }
           server { listen 127.0.0.1:PORT; server_name *.wc.test; return 200 \"$server_name\"; }
           server { listen 127.0.0.1:PORT; server_name .dot.test; return 200 \"$server_name\"; }
           server { listen 127.0.0.1:PORT; server_name ~^(?P<user>[a-z]+)\\Q.users.test\\E$; return 200 \"$server_name $user $1\"; }
         }\n";
        format!("{}{}events {{}}\n{}", conf_head(), load_plugins(&["rewrite"]), conf.replace("PORT", &p[0].to_string()))
    });
    let name = |head: &str| String::from_utf8_lossy(&req(s.port, &format!("GET / HTTP/1.0\r\n{head}\r\n")).body).into_owned();
    // $server_name is the first name as written: a wildcard kept, a
    // leading dot dropped, a regex with its '~'.
    assert_eq!(name("Host: a.wc.test\r\n"), "*.wc.test");
    assert_eq!(name("Host: www.dot.test\r\n"), "dot.test");
    assert_eq!(name("Host: dot.test\r\n"), "dot.test");
    // A regex name's captures are variables ($user, $1); \Q…\E is PCRE's.
    assert_eq!(name("Host: alice.users.test\r\n"), "~^(?P<user>[a-z]+)\\Q.users.test\\E$ alice alice");
    // No Host: the server named "".
    assert_eq!(name(""), "[]");
    assert_eq!(name("Host: other.test\r\n"), "localhost");
    // An empty Host, or an IPv6 literal without its ']', is a 400.
    for bad in ["", "[::1"] {
        assert_eq!(req(s.port, &format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")).status, 400, "{bad:?}");
    }
}

#[test]
fn log_not_found_off_keeps_missing_files_out_of_the_error_log() {
    let s = serve(
        "http { access_log off; server { listen 127.0.0.1:PORT; root html;
           location = /favicon.ico { log_not_found off; }
           location /quiet/ { log_not_found off; }
         } }\n",
        &[("html/index.html", "x")],
    );
    for path in ["/favicon.ico", "/quiet/", "/quiet/gone.txt"] {
        assert_eq!(get(s.port, path).unwrap().status, 404, "{path}");
    }
    assert_eq!(get(s.port, "/loud.txt").unwrap().status, 404);
    let log = poll_until("the not-found line", std::time::Duration::from_secs(5), || {
        let l = s.prefix.error_log();
        l.contains("loud.txt").then_some(l)
    });
    assert!(log.contains("open() \"") && log.contains("/html/loud.txt\" failed (2: No such file or directory)"), "{log}");
    for quiet in ["favicon.ico", "/quiet/"] {
        assert!(!log.contains(quiet), "{quiet}: {log}");
    }
}

#[test]
fn keepalive_header_and_colon_names_in_listings() {
    let s = serve(
        "http { access_log off; server { listen 127.0.0.1:PORT; root html; keepalive_timeout 30s 9;
           location /list/ { autoindex on; }
         } }\n",
        &[("html/index.html", "x"), ("html/list/a:b", "colon")],
    );
    let mut c = Client::new(s.port);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.response().unwrap();
    assert_eq!((r.header("connection"), r.header("keep-alive")), (Some("keep-alive"), Some("timeout=9")));
    let r = req(s.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.header("keep-alive"), None, "only on kept-alive responses");
    // "a:b" would read as a URI scheme: the listing links "./a:b".
    let body = String::from_utf8_lossy(&get(s.port, "/list/").unwrap().body).into_owned();
    assert!(body.contains("href=\"./a:b\""), "{body}");
}

#[test]
fn empty_gif_answers_with_a_transparent_pixel() {
    let s = serve("http { access_log off; server { listen 127.0.0.1:PORT; location = /p.gif { empty_gif; } } }\n", &[]);
    let r = get(s.port, "/p.gif").unwrap();
    assert_eq!((r.status, r.header("content-type"), r.header("content-length")), (200, Some("image/gif"), Some("43")));
    assert_eq!(r.header("last-modified"), Some("Mon, 28 Sep 1970 06:00:00 GMT"));
    // GIF89a, 1×1, and its trailer.
    assert_eq!((&r.body[..6], &r.body[6..10], r.body.last()), (&b"GIF89a"[..], &[1u8, 0, 1, 0][..], Some(&0x3b)));
    assert_eq!(req(s.port, "POST /p.gif HTTP/1.0\r\nContent-Length: 0\r\n\r\n").status, 405);
}
