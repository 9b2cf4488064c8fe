//! proxy_cache against a real backend (tests/backend.py): what is kept,
//! for how long, what is served from it, and what the cache manager
//! removes.

use ngxr_tests::*;
use std::time::Duration;

const SECS: Duration = Duration::from_secs(10);

/// ngxr (one worker, or two) proxying to `b` with a cache in the prefix;
/// `loc` is the cached location's extra directives.
fn front(b: &Backend, workers: u32, zone: &str, loc: &str) -> Server {
    Server::start_with_ports(1, |p| conf(b, workers, zone, loc, p[0])).0
}

fn conf(b: &Backend, workers: u32, zone: &str, loc: &str, port: u16) -> String {
    format!(
        "{}worker_processes {workers};\n{}events {{}}\nhttp {{
           log_format cache '$request_uri $upstream_cache_status';
           access_log logs/access.log cache;
           proxy_cache_path cache/one levels=1:2 keys_zone=one:1m {zone};
           server {{ listen 127.0.0.1:{port};
             location / {{
               proxy_pass http://127.0.0.1:{bp};
               proxy_cache one;
               add_header X-Cache $upstream_cache_status;
               add_header X-Up-Var $upstream_http_x_up;
               {loc}
             }}
             location /nocache/ {{ proxy_pass http://127.0.0.1:{bp}/; }}
           }}
         }}\n",
        conf_head(),
        load_plugins(&["proxy", "headers", "log"]),
        bp = b.port
    )
}

fn fetch(port: u16, path: &str) -> Response {
    get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn fetch_with(port: u16, req: &str) -> Response {
    let buf = raw(port, req.as_bytes()).unwrap();
    parse_response_to(&buf, req.starts_with("HEAD ")).map(|(r, _)| r).expect("a response")
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn responses_are_kept_and_served_from_the_cache() {
    let b = Backend::start("A");
    let s = front(&b, 2, "", "proxy_cache_valid 200 1m; proxy_cache_valid 404 1s;");
    // A miss goes upstream; the next request is answered from the cache
    // (by either worker: the cache is on disk).
    let r = fetch(s.port, "/counted/a?set=X-Up:1");
    assert_eq!((r.status, text(&r), r.header("x-cache")), (200, "a 1".into(), Some("MISS")));
    for _ in 0..4 {
        let r = fetch(s.port, "/counted/a?set=X-Up:1");
        assert_eq!((r.status, text(&r), r.header("x-cache"), r.header("x-up")), (200, "a 1".into(), Some("HIT"), Some("1")));
        // $upstream_http_* on a hit: the entry's headers, as nginx.
        assert_eq!(r.header("x-up-var"), Some("1"));
        assert_eq!(r.header("content-length"), Some("3"));
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    // A HEAD is answered from the same entry (and a HEAD miss is fetched
    // with GET, so the entry is complete).
    let r = fetch_with(s.port, "HEAD /counted/a?set=X-Up:1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("x-cache"), r.body.len()), (200, Some("HIT"), 0));
    let r = fetch_with(s.port, "HEAD /counted/h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("x-cache"), r.header("content-length")), (200, Some("MISS"), Some("3")));
    assert_eq!(text(&fetch(s.port, "/counted/h")), "h 1");
    // A Range on a hit: 206 from the entry (one range, or several as
    // multipart), 416 past its end.
    let r = fetch_with(s.port, "GET /counted/a?set=X-Up:1 HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, text(&r), r.header("content-range")), (206, " 1".into(), Some("bytes 1-2/3")));
    let r = fetch_with(s.port, "GET /counted/a?set=X-Up:1 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0,2-2\r\nConnection: close\r\n\r\n");
    assert!(r.status == 206 && r.header("content-type").is_some_and(|t| t.starts_with("multipart/byteranges")), "{:?}", r.header("content-type"));
    assert!(text(&r).contains("Content-Range: bytes 0-0/3\r\n\r\na") && text(&r).contains("Content-Range: bytes 2-2/3\r\n\r\n1"), "{}", text(&r));
    let r = fetch_with(s.port, "GET /counted/a?set=X-Up:1 HTTP/1.1\r\nHost: x\r\nRange: bytes=9-\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */3")));
    // A response that varies (Vary: Accept-Encoding, X-Lang) is kept per
    // variant: a request with other values for those headers does not
    // get it.
    let vary = |hdrs: &str| fetch_with(s.port, &format!("GET /counted/v?set=Vary:Accept-Encoding,X-Lang HTTP/1.1\r\nHost: x\r\n{hdrs}Connection: close\r\n\r\n"));
    let r = vary("Accept-Encoding: gzip\r\n");
    assert_eq!((text(&r), r.header("x-cache")), ("v 1".into(), Some("MISS")));
    assert_eq!(text(&vary("Accept-Encoding: gzip\r\n")), "v 1");
    let r = vary("");
    assert_eq!((text(&r), r.header("x-cache")), ("v 2".into(), Some("MISS")));
    assert_eq!((text(&vary("")), vary("").header("x-cache")), ("v 2".into(), Some("HIT")));
    assert_eq!(text(&vary("Accept-Encoding: gzip\r\n")), "v 1");
    assert_eq!(text(&vary("Accept-Encoding: gzip\r\nX-Lang: fr\r\n")), "v 3");
    assert_eq!(text(&vary("X-Lang: fr\r\nAccept-Encoding: gzip\r\n")), "v 3");
    // A conditional request on a hit: 304 when it has the entry.
    // (proxy_cache_valid 200 1m: the entry stays fresh through these.)
    let v = |hdrs: &str| fetch_with(s.port, &format!("GET /counted/c?set=ETag:%22e1%22&set=Last-Modified:Mon,%2002%20Mar%202015%2017:20:58%20GMT HTTP/1.1\r\nHost: x\r\n{hdrs}Connection: close\r\n\r\n"));
    assert_eq!(v("").status, 200);
    let r = v("If-None-Match: \"e1\"\r\n");
    assert_eq!((r.status, r.header("x-cache"), r.header("etag")), (304, Some("HIT"), Some("\"e1\"")));
    assert_eq!(v("If-Modified-Since: Mon, 02 Mar 2015 17:20:58 GMT\r\n").status, 304);
    assert_eq!(v("If-None-Match: \"other\"\r\n").status, 200);
    assert_eq!(text(&v("If-None-Match: \"other\"\r\n")), "c 1");
    // Values differing only in blanks and empty elements are one variant.
    assert_eq!(text(&vary("Accept-Encoding: gzip, br\r\n")), "v 4");
    assert_eq!(text(&vary("Accept-Encoding: gzip,br\r\n")), "v 4");
    assert_eq!(text(&vary("Accept-Encoding: gzip ,, br,\r\n")), "v 4");
    // Another key (the query is part of $request_uri) is another entry.
    assert_eq!(text(&fetch(s.port, "/counted/a?other")), "a 2");
    // Statuses without a proxy_cache_valid are not kept; 404 for 1 s.
    assert_eq!(text(&fetch(s.port, "/counted/e?status=500")), "e 1");
    assert_eq!(text(&fetch(s.port, "/counted/e?status=500")), "e 2");
    let r = fetch(s.port, "/counted/n?status=404");
    assert_eq!((r.status, text(&r)), (404, "n 1".into()));
    assert_eq!(text(&fetch(s.port, "/counted/n?status=404")), "n 1");
    poll_until("the 404 to expire", SECS, || (text(&fetch(s.port, "/counted/n?status=404")) == "n 2").then_some(()));
    // The upstream's own words: no-store, private and Set-Cookie keep
    // nothing; max-age overrides proxy_cache_valid; X-Accel-Expires
    // overrides both.
    for (path, first) in [("/counted/ns?set=Cache-Control:no-store", "ns 1"), ("/counted/pr?set=Cache-Control:private", "pr 1"), ("/counted/ck?set=Set-Cookie:a%3Db", "ck 1")] {
        assert_eq!(text(&fetch(s.port, path)), first);
        assert_ne!(text(&fetch(s.port, path)), first, "{path} was cached");
    }
    assert_eq!(text(&fetch(s.port, "/counted/ma?set=Cache-Control:max-age%3D1")), "ma 1");
    assert_eq!(fetch(s.port, "/counted/ma?set=Cache-Control:max-age%3D1").header("x-cache"), Some("HIT"));
    poll_until("max-age=1 to expire", SECS, || {
        let r = fetch(s.port, "/counted/ma?set=Cache-Control:max-age%3D1");
        (r.header("x-cache") == Some("EXPIRED") && text(&r) == "ma 2").then_some(())
    });
    assert_eq!(text(&fetch(s.port, "/counted/xa?set=X-Accel-Expires:0&set=Cache-Control:max-age%3D60")), "xa 1");
    assert_eq!(text(&fetch(s.port, "/counted/xa?set=X-Accel-Expires:0&set=Cache-Control:max-age%3D60")), "xa 2");
    // The entry is a file under levels=1:2, named by the key's md5.
    let files = walk(&s.prefix.path().join("cache/one"));
    assert!(files.iter().any(|p| p.components().count() >= 3), "{files:?}");
    assert!(files.iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".tmp-")), "{files:?}");
    // The access log has $upstream_cache_status.
    poll_until("the access log", SECS, || std::fs::read_to_string(s.prefix.path().join("logs/access.log")).ok().filter(|l| l.contains("/counted/a?set=X-Up:1 HIT") && l.contains("/counted/a?set=X-Up:1 MISS")));
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The VALID time (unix seconds) of the entry whose key ends with `tail`.
fn valid_until(s: &Server, tail: &str) -> u64 {
    walk(&s.prefix.path().join("cache/one"))
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .find(|t| t.lines().any(|l| l.starts_with("KEY: ") && l.trim_end().ends_with(tail)))
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("VALID: ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or_else(|| panic!("no entry for {tail}"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn bypass_no_cache_and_stale() {
    let b = Backend::start("A");
    let s = front(
        &b,
        1,
        "",
        "proxy_cache_key $scheme$proxy_host$uri;
         proxy_cache_valid 200 1s;
         proxy_cache_bypass $arg_fresh;
         proxy_no_cache $arg_nostore;
         proxy_cache_use_stale error timeout http_500;",
    );
    // no_cache: fetched, not kept.
    assert_eq!(text(&fetch(s.port, "/counted/b?nostore=1")), "b 1");
    assert_eq!(fetch(s.port, "/counted/b").header("x-cache"), Some("MISS"));
    assert_eq!(fetch(s.port, "/counted/b").header("x-cache"), Some("HIT"));
    // bypass: fetched past the cache (and the answer is kept).
    let r = fetch(s.port, "/counted/b?fresh=1");
    assert_eq!((r.header("x-cache"), text(&r)), (Some("BYPASS"), "b 3".into()));
    // An expired entry answers when the upstream says 500 (the key has no
    // query here, so "?status=500" is the same entry) ...
    assert_eq!(text(&fetch(s.port, "/counted/st")), "st 1");
    let until = valid_until(&s, "/counted/st");
    poll_until("the entry to expire", SECS, || (now_secs() >= until).then_some(()));
    let r = fetch(s.port, "/counted/st?status=500");
    assert_eq!((r.status, r.header("x-cache"), text(&r)), (200, Some("STALE"), "st 1".into()));
    // ... and when the upstream is gone.
    drop(b);
    let r = fetch(s.port, "/counted/st");
    assert_eq!((r.status, r.header("x-cache"), text(&r)), (200, Some("STALE"), "st 1".into()));
    // Without an entry the error stands.
    assert_eq!(fetch(s.port, "/counted/none").status, 502);
    let log = s.prefix.error_log();
    assert!(log.contains("connect() failed"), "{log}");
}

#[test]
fn the_manager_removes_inactive_entries_and_bad_configs_are_refused() {
    let b = Backend::start("A");
    let s = front(&b, 1, "inactive=1s", "proxy_cache_valid 200 1h;");
    assert_eq!(text(&fetch(s.port, "/counted/m")), "m 1");
    assert_eq!(fetch(s.port, "/counted/m").header("x-cache"), Some("HIT"));
    assert_eq!(walk(&s.prefix.path().join("cache/one")).len(), 1);
    // Unused for longer than inactive=1s: removed by the manager (it
    // runs every 5 s), though still "fresh" for an hour.
    poll_until("the manager to remove the entry", Duration::from_secs(15), || walk(&s.prefix.path().join("cache/one")).is_empty().then_some(()));
    assert_eq!(text(&fetch(s.port, "/counted/m")), "m 2");

    let p = Prefix::new();
    let head = format!("{}{}events {{}}\n", conf_head(), load_plugins(&["proxy"]));
    let n = head.lines().count() as u32;
    p.assert_refused(&format!("{head}http {{\n  server {{ location / {{ proxy_pass http://127.0.0.1:1; proxy_cache nope; }} }}\n}}\n"), "\"proxy_cache\" zone \"nope\" is unknown", n + 2);
    p.assert_refused(&format!("{head}http {{\n  proxy_cache_path cache keys_zone=z:1m levels=3;\n}}\n"), "invalid \"levels\" \"3\"", n + 2);
    p.assert_refused(&format!("{head}http {{\n  proxy_cache_path cache levels=1:2;\n}}\n"), "must have \"keys_zone\" parameter", n + 2);
    p.assert_refused(&format!("{head}http {{\n  proxy_cache_valid 99 1m;\n}}\n"), "invalid status \"99\"", n + 2);
    p.assert_refused(&format!("{head}http {{\n  proxy_cache_background_update on;\n}}\n"), "\"proxy_cache_background_update on\" is not supported yet", n + 2);
}

#[test]
fn revalidation_zones_by_variable_and_whole_responses_upstream() {
    let b = Backend::start("A");
    let s = front(&b, 1, "", "proxy_cache_valid 200 1m; proxy_cache_revalidate on;");
    // The client's conditional and Range headers do not go upstream: the
    // cache needs the whole response.
    let r = fetch_with(s.port, "GET /validated/v HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\nRange: bytes=0-1\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, text(&r), r.header("x-seen-conditional")), (200, "v 1".into(), Some("no")));
    assert_eq!(fetch(s.port, "/validated/v").header("x-cache"), Some("HIT"));
    // Expired (max-age=1): the upstream is asked with the entry's
    // validators, answers 304, and the entry is fresh again.
    let until = valid_until(&s, "/validated/v");
    poll_until("the entry to expire", SECS, || (now_secs() >= until).then_some(()));
    let r = fetch(s.port, "/validated/v");
    assert_eq!((r.status, r.header("x-cache"), text(&r)), (200, Some("REVALIDATED"), "v 1".into()));
    assert_eq!(fetch(s.port, "/validated/v").header("x-cache"), Some("HIT"));
    drop(s);

    // proxy_cache with variables picks the zone per request; an empty
    // value caches nothing, an unknown zone is an error.
    let (s, _) = Server::start_with_ports(1, |p| {
        format!(
            "{}worker_processes 1;\n{}events {{}}\nhttp {{
               proxy_cache_path cache/one keys_zone=one:1m;
               server {{ listen 127.0.0.1:{}; location / {{
                 proxy_pass http://127.0.0.1:{}; proxy_cache $arg_c; proxy_cache_valid any 1m;
                 add_header X-Cache $upstream_cache_status; }} }} }}\n",
            conf_head(),
            load_plugins(&["proxy", "headers"]),
            p[0],
            b.port
        )
    });
    assert_eq!(fetch(s.port, "/counted/z?c=one").header("x-cache"), Some("MISS"));
    assert_eq!(fetch(s.port, "/counted/z?c=one").header("x-cache"), Some("HIT"));
    let r = fetch(s.port, "/counted/z");
    assert_eq!((r.header("x-cache"), text(&r)), (None, "z 2".into()));
    assert_eq!(fetch(s.port, "/counted/z?c=two").status, 500);
    assert!(s.prefix.error_log().contains("cache \"two\" not found"));
}

#[test]
fn the_lock_lets_one_request_fill_an_entry() {
    let b = Backend::start("L");
    // Two workers: the lock holds across processes (a file beside the
    // entry).
    let s = front(&b, 2, "", "proxy_cache_valid 200 1m; proxy_cache_lock on; proxy_cache_lock_timeout 3s;");
    let port = s.port;
    let concurrent = |path: &'static str, n: usize| {
        let hs: Vec<_> = (0..n).map(|_| std::thread::spawn(move || fetch(port, path))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    };
    // Five at once for a missing entry that takes 600 ms upstream: one
    // goes upstream, the others wait for its entry.
    let rs = concurrent("/counted/slow?delay=600", 5);
    assert!(rs.iter().all(|r| r.status == 200 && text(r) == "slow 1"), "{:?}", rs.iter().map(text).collect::<Vec<_>>());
    let mut st: Vec<_> = rs.iter().map(|r| r.header("x-cache").unwrap_or("-").to_string()).collect();
    st.sort();
    assert_eq!(st, ["HIT", "HIT", "HIT", "HIT", "MISS"]);
    assert_eq!(text(&fetch(port, "/nocache/counted/slow")), "slow 2", "the backend saw one request for it before this one");
    // An uncacheable answer lets the waiters go at once (each upstream).
    let rs = concurrent("/counted/nostore?delay=300&set=Cache-Control:no-store", 3);
    let mut bodies: Vec<_> = rs.iter().map(text).collect();
    bodies.sort();
    assert_eq!(bodies, ["nostore 1", "nostore 2", "nostore 3"]);
    // No lock file is left behind.
    assert!(!walk(&s.prefix.path().join("cache")).iter().any(|p| p.to_string_lossy().ends_with(".lock")));
}

#[test]
fn a_waiter_gives_up_after_the_lock_timeout() {
    let b = Backend::start("T");
    let s = front(&b, 1, "", "proxy_cache_valid 200 1m; proxy_cache_lock on; proxy_cache_lock_timeout 200ms;");
    let port = s.port;
    let first = std::thread::spawn(move || fetch(port, "/counted/t?delay=1000"));
    // The second comes once the first holds the lock.
    let cache = s.prefix.path().join("cache");
    poll_until("the first request's lock", SECS, || walk(&cache).iter().any(|p| p.to_string_lossy().ends_with(".lock")).then_some(()));
    let started = std::time::Instant::now();
    let second = fetch(port, "/counted/t?delay=1000");
    // It waited 200 ms, then went upstream itself (not waiting for the
    // first), and keeps nothing.
    assert_eq!((text(&second), second.header("x-cache")), ("t 2".to_string(), Some("MISS")));
    assert!(started.elapsed() >= Duration::from_millis(1200), "{:?}", started.elapsed());
    let first = first.join().unwrap();
    assert_eq!(text(&first), "t 1");
    // The first one's response is the one kept.
    let r = fetch(port, "/counted/t?delay=1000");
    assert_eq!((text(&r), r.header("x-cache")), ("t 1".to_string(), Some("HIT")));
}
