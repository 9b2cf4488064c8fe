//! Plugins through the real binary: C and Rust plugins load and serve, a
//! plugin built against the frozen 1.0 header still loads, every refusal
//! names the file and the reason, panics fail one request only, and a
//! `.so` replaced in place is picked up by reload while in-flight requests
//! finish on the old code.

use ngxr_tests::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECS: Duration = Duration::from_secs(10);

fn hello_c(dir: &Path, variant: &str, include: &Path) -> PathBuf {
    let out = dir.join(format!("hello_c-{variant}.so"));
    let def = format!("HELLO_VARIANT=\"{variant}\"");
    build_c_plugin(&repo_root().join("plugins/hello_c/hello_c.c"), include, &[&def], &out);
    out
}

fn refuse(dir: &Path, tag: &str, defines: &[&str]) -> PathBuf {
    let out = dir.join(format!("refuse-{tag}.so"));
    build_c_plugin(&repo_root().join("tests/fixtures/refuse.c"), &repo_root().join("include"), defines, &out);
    out
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn c_plugin_and_frozen_abi_1_0_fixture_serve() {
    let p = Prefix::new();
    let cur = hello_c(p.path(), "current", &repo_root().join("include"));
    let frozen = hello_c(p.path(), "frozen", &repo_root().join("tests/fixtures/abi-1.0"));
    for so in [cur, frozen] {
        let port = free_port();
        let pre = Prefix::new();
        pre.write_conf(&format!(
            "load_module {};\n{}events {{}}\nhttp {{ hello_c \"hi from C\"; server {{ listen 127.0.0.1:{port}; }} }}\n",
            so.display(),
            conf_head()
        ));
        let s = Server::start_in(pre, port);
        let r = get(s.port, "/").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi from C"[..]), "{}", so.display());
        assert!(s.prefix.error_log().contains("plugin \"hello_c\" loaded from"));
    }
}

#[test]
fn rust_plugin_request_api_and_merge() {
    let so = testkit_so();
    let s = Server::start(&format!(
        "load_module {};\nevents {{}}\nhttp {{ testkit_reply outer;
           server {{ listen 127.0.0.1:PORT; }}
           server {{ listen 127.0.0.1:PORT2; testkit_reply inner; }} }}\n",
        so.display()
    )
    .replace("PORT2", &free_port().to_string()));
    let buf = raw(s.port, b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-Test: hello\r\nConnection: close\r\n\r\n").unwrap();
    let (r, _) = parse_response(&buf).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"outer"[..]));
    assert_eq!(r.header("x-uri"), Some("/a/b"));
    assert_eq!(r.header("x-args"), Some("x=1"));
    assert_eq!(r.header("x-test-echo"), Some("hello"));
    assert_eq!(get(s.port, "/teapot").unwrap().status, 418);
    let conf = std::fs::read_to_string(s.prefix.path().join("conf/ngxr.conf")).unwrap();
    let p2: u16 = conf.split("127.0.0.1:").nth(2).unwrap().split(';').next().unwrap().parse().unwrap();
    assert_eq!(get(p2, "/").unwrap().body, b"inner");
}

/// `Request::ctx`: a fresh state per request, the same one within it,
/// aligned for its type, dropped exactly once when the request ends, for
/// a state small enough for the request's memory, a large one and an
/// over-aligned one, on a keepalive connection whose request memory is
/// reused.
#[test]
fn rust_plugin_ctx_is_per_request_and_dropped_once() {
    let s = Server::start(&format!(
        "load_module {};\nevents {{}}\nhttp {{ server {{ listen 127.0.0.1:PORT; testkit_reply x; }} }}\n",
        testkit_so().display()
    ));
    let mut c = Client::new(s.port);
    let mut last: Option<u64> = None;
    for kind in ["small", "big", "aligned", "small", "big", "aligned", "small"] {
        c.send(format!("GET /ctx/{kind} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let r = c.response().unwrap();
        let body = String::from_utf8(r.body).unwrap();
        let drops: u64 = body.rsplit("drops=").next().unwrap().parse().unwrap();
        assert!(body.starts_with("fresh=true same=true aligned=true "), "{kind}: {body}");
        // The previous request's state was dropped when it ended, once.
        if let Some(prev) = last {
            assert_eq!(drops, prev + 1, "{kind}: {body}");
        }
        last = Some(drops);
    }
}

#[test]
fn panic_in_rust_handler_fails_only_that_request() {
    let so = testkit_so();
    let s = Server::start(&format!(
        "load_module {};\nevents {{}}\nhttp {{ server {{ listen 127.0.0.1:PORT; testkit_reply ok; testkit_panic on; }} }}\n",
        so.display()
    ));
    // One worker: the panic, then a good request on the same process (a
    // 500 closes its connection, as in nginx).
    let w = s.wait_workers(1, &[]);
    let first = get(s.port, "/panic").unwrap();
    assert_eq!(first.status, 500);
    assert_eq!(first.header("connection"), Some("close"));
    let second = get(s.port, "/fine").unwrap();
    assert_eq!((second.status, second.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(s.workers(), w, "the worker survived");
    assert!(s.prefix.error_log().contains("plugin \"testkit\" panicked in a phase handler: testkit was asked to panic"));
}

#[test]
fn refusals_name_the_file_and_the_reason() {
    let p = Prefix::new();
    let dir = p.path();
    std::fs::write(dir.join("text.so"), "not a library\n").unwrap();
    let good = hello_c(dir, "good", &repo_root().join("include"));
    // The version the header (and so the host) is at.
    let h = std::fs::read_to_string(repo_root().join("include/ngx_plugin.h")).unwrap();
    let minor = h.lines().find_map(|l| l.strip_prefix("#define NGX_PLUGIN_ABI_MINOR ")).unwrap().trim();
    let host = format!("this host implements ABI 1.{minor}");
    let cases: Vec<(String, String)> = vec![
        ("modules/missing.so".into(), "failed: open() \"{p}/modules/missing.so\" failed (2: No such file or directory)".into()),
        (dir.join("text.so").display().to_string(), "failed: not a shared object (no ELF header)".into()),
        (refuse(dir, "noentry", &["NO_ENTRY"]).display().to_string(), "failed: no \"ngx_plugin_entry_v1\" symbol".into()),
        (refuse(dir, "v2sym", &["ENTRY_V2"]).display().to_string(), format!("failed: built for plugin ABI 2.x (it exports \"ngx_plugin_entry_v2\"); {host}")),
        (refuse(dir, "null", &["ENTRY_NULL"]).display().to_string(), "failed: the plugin refused to load (its entry point returned NULL)".into()),
        (refuse(dir, "major", &["MAJOR=2", "MINOR=0"]).display().to_string(), format!("failed: built for plugin ABI 2.0; {host}")),
        (refuse(dir, "minor", &["MINOR=15"]).display().to_string(), format!("failed: needs plugin ABI 1.15; {host}")),
        (refuse(dir, "clash", &["DIRECTIVE=\"listen\""]).display().to_string(), "plugin \"refuse\" declares directive \"listen\", which the host already declares".into()),
    ];
    for (path, want) in cases {
        p.write_conf(&format!("load_module {path};\nevents {{}}\n"));
        let o = p.ngxr(&["-t"]);
        let want = want.replace("{p}", &dir.display().to_string());
        let conf = dir.join("conf/ngxr.conf").display().to_string();
        assert_eq!(o.status.code(), Some(1), "{path}");
        let out = text(&o);
        assert!(out.contains("[emerg] load_module \""), "{out}");
        assert!(out.contains(&want), "{path}: want {want:?} in {out}");
        assert!(out.contains(&format!(" in {conf}:1")), "{out}");
    }
    // Duplicate name: the same plugin twice; clash between two plugins.
    let twin = refuse(dir, "twin", &["NAME=\"twin\"", "DIRECTIVE=\"hello_c\""]);
    for (conf, want) in [
        (format!("load_module {0};\nload_module {0};\n", good.display()), "plugin \"hello_c\" is already loaded from".to_string()),
        (format!("load_module {};\nload_module {};\n", good.display(), twin.display()), "plugin \"twin\" declares directive \"hello_c\", which plugin \"hello_c\" already declares".to_string()),
    ] {
        p.write_conf(&format!("{conf}events {{}}\n"));
        let o = p.ngxr(&["-t"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o).contains(&want), "{}", text(&o));
        assert!(text(&o).contains("conf/ngxr.conf:2"), "{}", text(&o));
    }
}

#[test]
fn plugin_directive_errors_carry_file_and_line() {
    let p = Prefix::new();
    let so = hello_c(p.path(), "e", &repo_root().join("include"));
    p.write_conf(&format!("load_module {};\nevents {{}}\nhttp {{\n  server {{\n    hello_c \"\";\n  }}\n}}\n", so.display()));
    let o = p.ngxr(&["-t"]);
    assert_eq!(o.status.code(), Some(1));
    let conf = p.path().join("conf/ngxr.conf").display().to_string();
    assert!(text(&o).contains(&format!("\"hello_c\" needs a non-empty text in {conf}:5")), "{}", text(&o));
    p.write_conf(&format!("load_module {};\nevents {{}}\nhello_c x;\n", so.display()));
    assert!(text(&p.ngxr(&["-t"])).contains("\"hello_c\" directive is not allowed here"));
}

/// Copies `so` to `modules/hello.so` (the path operators deploy to) and
/// starts one worker serving `hello_c` from it.
fn serve_live_copy(p: Prefix, so: &Path) -> (Server, PathBuf) {
    let live = p.path().join("modules/hello.so");
    std::fs::create_dir_all(live.parent().unwrap()).unwrap();
    std::fs::copy(so, &live).unwrap();
    let port = free_port();
    p.write_conf(&format!(
        "load_module modules/hello.so;\n{}events {{}}\nhttp {{ hello_c live; server {{ listen 127.0.0.1:{port}; }} }}\n",
        conf_head()
    ));
    (Server::start_in(p, port), live)
}

#[test]
fn refused_plugin_on_reload_keeps_old_generation() {
    let p = Prefix::new();
    let so = hello_c(p.path(), "A", &repo_root().join("include"));
    let (s, live) = serve_live_copy(p, &so);
    let w = s.wait_workers(1, &[]);
    // Deploy something that is not a plugin, then reload: refused, old serves.
    let tmp = s.prefix.path().join("modules/.hello.so.new");
    std::fs::write(&tmp, "garbage").unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    s.signal(libc::SIGHUP);
    poll_until("the refusal", SECS, || s.prefix.error_log().contains("not a shared object").then_some(()));
    assert_eq!(s.workers(), w);
    assert_eq!(get(s.port, "/").unwrap().header("x-hello-variant"), Some("A"));
}

#[test]
fn plugin_swapped_in_place_across_reload() {
    let p = Prefix::new();
    let a = hello_c(p.path(), "A", &repo_root().join("include"));
    let b = hello_c(p.path(), "B", &repo_root().join("include"));
    let (s, live) = serve_live_copy(p, &a);
    let old = s.wait_workers(1, &[]);
    assert_eq!(get(s.port, "/").unwrap().header("x-hello-variant"), Some("A"));

    let hammer = Hammer::start(s.port);
    // A slow request in flight on the old worker (it sleeps 1.5 s inside A).
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    slow.set_read_timeout(Some(SECS)).unwrap();
    slow.write_all(b"GET /?sleep=1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let the old worker pick it up

    // Overwrite the file in place (same inode, as `cp` does), then reload.
    std::fs::copy(&b, &live).unwrap();
    assert!(s.prefix.ngxr(&["-s", "reload"]).status.success());
    s.wait_workers(1, &old);
    poll_until("B to answer", SECS, || {
        (get(s.port, "/").ok()?.header("x-hello-variant") == Some("B")).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(get(s.port, "/").unwrap().header("x-hello-variant"), Some("B"));
    }
    let mut buf = Vec::new();
    slow.read_to_end(&mut buf).unwrap();
    let (r, _) = parse_response(&buf).unwrap();
    assert_eq!(r.header("x-hello-variant"), Some("A"), "the in-flight request finished on the old code");
    let (ok, errs) = hammer.finish();
    assert!(errs.is_empty(), "{ok} ok, failures during the swap: {errs:?}");
    let log = s.prefix.error_log();
    let hashes: std::collections::BTreeSet<&str> =
        log.lines().filter(|l| l.contains("plugin \"hello_c\" loaded")).filter_map(|l| l.split("fnv1a ").nth(1)).collect();
    assert_eq!(hashes.len(), 2, "each generation logs the hash it runs: {log}");
}

#[test]
fn shared_zone_counts_across_workers_and_survives_reload() {
    let so = testkit_so();
    let s = Server::start(&format!(
        "load_module {};\nworker_processes 2;\nevents {{}}\nhttp {{ server {{ listen 127.0.0.1:PORT reuseport; testkit_reply x; testkit_counter hits; }} }}\n",
        so.display()
    ));
    let old = s.wait_workers(2, &[]);
    let mut seen = std::collections::BTreeSet::new();
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let r = get(s.port, "/count").unwrap();
        assert_eq!(r.status, 200);
        seen.insert(String::from_utf8(r.body.clone()).unwrap().parse::<u64>().unwrap());
        pids.insert(r.header("x-pid").unwrap().to_string());
    }
    assert_eq!(seen, (1..=60).collect(), "no lost or repeated increments");
    // reuseport hashes each new connection to one of the two workers'
    // sockets: 60 connections all landing on one worker has odds 2^-59.
    assert_eq!(pids.len(), 2, "both workers incremented the same counter");
    s.signal(libc::SIGHUP);
    s.wait_workers(2, &old);
    let r = get(s.port, "/count").unwrap();
    assert_eq!(r.body, b"61", "the zone (same name, size, layout) is kept across reload");
}

fn lineecho(dir: &Path) -> PathBuf {
    let out = dir.join("lineecho.so");
    build_c_plugin(&repo_root().join("tests/fixtures/lineecho.c"), &repo_root().join("include"), &[], &out);
    out
}

fn read_line(r: &mut impl std::io::BufRead) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

#[test]
fn protocol_listener_echoes_lines_with_an_idle_timer() {
    let p = Prefix::new();
    let so = lineecho(p.path());
    let port = free_port();
    p.write_conf(&format!("load_module {};\n{}worker_processes 2;\nevents {{}}\nline_echo 127.0.0.1:{port} 300ms;\n", so.display(), conf_head()));
    let s = Server::start_in(p, port);
    let connect = || {
        let c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(SECS)).unwrap();
        let r = std::io::BufReader::new(c.try_clone().unwrap());
        (c, r)
    };
    let (mut a, mut ra) = connect();
    let (mut b, mut rb) = connect();
    assert_eq!(read_line(&mut ra), "+OK ngxr line echo\r\n");
    assert_eq!(read_line(&mut rb), "+OK ngxr line echo\r\n");
    a.write_all(b"hello\r\nwor").unwrap();
    b.write_all(b"from b\n").unwrap();
    assert_eq!(read_line(&mut ra), "echo: hello\r\n");
    assert_eq!(read_line(&mut rb), "echo: from b\r\n");
    a.write_all(b"ld\nquit\n").unwrap();
    assert_eq!(read_line(&mut ra), "echo: world\r\n");
    assert_eq!(read_line(&mut ra), "+OK bye\r\n");
    assert_eq!(read_line(&mut ra), "", "closed after quit");
    // b stays idle: the plugin's 300 ms timer closes it.
    let t0 = std::time::Instant::now();
    assert_eq!(read_line(&mut rb), "-ERR timeout\r\n");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(read_line(&mut rb), "");
    let mut buf = [0u8; 1];
    assert_eq!(rb.get_mut().read(&mut buf).unwrap_or(0), 0);
    drop(b);
}

/// Python's ssl module upgrades a plain line-echo session (STARTTLS).
const STARTTLS_PY: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
def line(sock):
    out = b""
    while not out.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            break
        out += b
    return out.decode().strip()
print(line(s))
s.sendall(b"hello\r\n")
print(line(s))
s.sendall(b"starttls\r\n")
print(line(s))
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(s, server_hostname="echo.test")
print(line(t))
t.sendall(b"secret\r\nstarttls\r\nquit\r\n")
print(line(t))
print(line(t))
print(line(t))
"#;

#[test]
fn plugin_connection_upgrades_to_tls() {
    let p = Prefix::new();
    let so = lineecho(p.path());
    certs::self_signed(&p.path().join("conf"), "echo", "/CN=echo.test", "DNS:echo.test", true);
    let port = free_port();
    p.write_conf(&format!(
        "load_module {};\n{}worker_processes 1;\nevents {{}}\nline_echo 127.0.0.1:{port};\nline_echo_tls echo.crt echo.key;\n",
        so.display(),
        conf_head()
    ));
    let s = Server::start_in(p, port);
    let ca = s.prefix.path().join("conf/echo.crt");
    let out = std::process::Command::new("python3").args(["-c", STARTTLS_PY, &port.to_string()]).arg(&ca).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["+OK ngxr line echo", "echo: hello", "+OK begin TLS", "+OK tls TLSv1.3", "echo: secret", "-ERR no tls", "+OK bye"]
    );
    // A client that is not speaking TLS after "starttls" is dropped, and
    // the reason logged.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(SECS)).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    read_line(&mut r);
    c.write_all(b"starttls\r\n").unwrap();
    assert_eq!(read_line(&mut r), "+OK begin TLS\r\n");
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    // A TLS alert record (0x15), then the connection closes.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.first(), Some(&0x15), "{rest:?}");
    poll_until("the handshake failure in the log", Duration::from_secs(5), || {
        s.prefix.error_log().contains("SSL_do_handshake() failed").then_some(())
    });
    // A bad certificate refuses the configuration, naming the file.
    let q = Prefix::new();
    let so = lineecho(q.path());
    q.write_conf(&format!("load_module {};\n{}events {{}}\nline_echo_tls nope.crt nope.key;\n", so.display(), conf_head()));
    let out = q.ngxr(&["-t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot load certificate \"") && err.contains("nope.crt\": 2: No such file or directory in "), "{err}");
}

/// The host relays bytes both ways between two plugin connections (the
/// client's and one the plugin connected), with backpressure: 1 MiB each
/// way arrives intact, the backend's close ends the relay after its last
/// bytes are delivered, and the plugin's done callback runs once.
#[test]
fn host_relays_between_two_plugin_connections() {
    let p = Prefix::new();
    let so = lineecho(p.path());
    let port = free_port();
    p.write_conf(&format!("load_module {};\n{}worker_processes 1;\nevents {{}}\nline_echo 127.0.0.1:{port};\n", so.display(), conf_head()));
    let s = Server::start_in(p, port);
    // The backend echoes what it reads until it has seen 1 MiB, then closes.
    const N: usize = 1 << 20;
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bport = backend.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut c, _) = backend.accept().unwrap();
        c.set_read_timeout(Some(SECS)).unwrap();
        let mut seen = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while seen < N {
            let k = c.read(&mut buf).unwrap();
            assert!(k > 0, "the relay closed after {seen} bytes");
            c.write_all(&buf[..k]).unwrap();
            seen += k;
        }
    });
    let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(SECS)).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    assert_eq!(read_line(&mut r), "+OK ngxr line echo\r\n");
    (&c).write_all(format!("relay 127.0.0.1:{bport}\r\n").as_bytes()).unwrap();
    assert_eq!(read_line(&mut r), "+OK relaying\r\n");
    let data: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    echo.join().unwrap();
    assert!(back.len() == N && back == data, "got {} bytes back, intact: {}", back.len(), back == data[..back.len().min(N)]);
    poll_until("the relay's done callback", SECS, || s.prefix.error_log().contains("lineecho relay done: 0").then_some(()));
    assert_eq!(s.prefix.error_log().matches("lineecho relay done").count(), 1);
    // A backend that refuses: the plugin hears of it and answers.
    let closed = free_port();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(SECS)).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    read_line(&mut r);
    c.write_all(format!("relay 127.0.0.1:{closed}\r\n").as_bytes()).unwrap();
    assert_eq!(read_line(&mut r), "-ERR connect\r\n");
}

#[test]
fn helper_process_is_supervised() {
    let p = Prefix::new();
    let so = lineecho(p.path());
    let port = free_port();
    // The helper runs unprivileged (nobody) when the master is root.
    let run = p.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    p.write_conf(&format!(
        "load_module {};\n{}events {{}}\nhelper_pidfile run/helper.pid;\nhttp {{ server {{ listen 127.0.0.1:{port}; }} }}\n",
        so.display(),
        conf_head()
    ));
    let mut s = Server::start_in(p, port);
    let pidfile = s.prefix.path().join("run/helper.pid");
    let helper = poll_until("the helper", SECS, || {
        let pid = read_pid(&pidfile)?;
        children_named(s.master(), "ngxr: pidfile").contains(&pid).then_some(pid)
    });
    assert_eq!(s.workers().len(), 1, "the helper is not a worker");
    kill(helper, libc::SIGKILL);
    let again = poll_until("the helper to be respawned", SECS, || {
        let pid = read_pid(&pidfile)?;
        (pid != helper && children_named(s.master(), "ngxr: pidfile").contains(&pid)).then_some(pid)
    });
    s.signal(libc::SIGQUIT);
    assert_eq!(s.wait_exit(SECS), Some(0));
    assert!(!alive(again), "the helper stopped with its master");
}

/// A C plugin's header and body filters and its variable: memory buffers
/// are rewritten into request memory, file regions pass untouched, and
/// the log phase reads the plugin-defined variable.
#[test]
fn c_output_filters_and_plugin_variable() {
    let p = Prefix::new();
    let dir = p.path();
    let so = dir.join("upper.so");
    build_c_plugin(&repo_root().join("tests/fixtures/upper.c"), &repo_root().join("include"), &[], &so);
    // Larger than what the static plugin keeps in memory (64 KiB): it
    // goes out as a file region.
    let big = "file text ".repeat(7000);
    p.write("html/f.txt", &big);
    let port = free_port();
    p.write_conf(&format!(
        "{}load_module {};\nload_module {};\n{}events {{}}\n\
         http {{ log_format up '$uri $upper_bytes'; access_log logs/up.log up;\n\
           server {{ listen 127.0.0.1:{port}; root html;\n\
             location /up/ {{ upper on; testkit_reply \"hello, filters\"; }}\n\
             location /file/ {{ upper on; alias html/; }}\n\
             location /plain/ {{ testkit_reply plain; }} }} }}\n",
        conf_head(),
        testkit_so().display(),
        so.display(),
        load_plugins(&["static", "log"]),
    ));
    let s = Server::start_in(p, port);
    let r = get(s.port, "/up/x").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"HELLO, FILTERS"[..]));
    assert_eq!(r.header("x-upper"), Some("on"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "the filter dropped Content-Length");
    // The batched header calls (ABI 1.4): two request headers read in one
    // call, and a batch with one bad line refused whole.
    assert_eq!((r.header("x-echo-back"), r.header("x-missing")), (Some("absent"), Some("absent")));
    assert_eq!((r.header("x-batch"), r.header("x-half"), r.header("x-evil")), (Some("refused"), None, None));
    let mut c = Client::new(s.port);
    c.send(b"GET /up/x HTTP/1.1\r\nHost: a\r\nX-Echo: hi there\r\nX-MISSING: \r\nX-Echo: second\r\n\r\n");
    let r = c.response().expect("a response");
    assert_eq!(r.header("x-echo-back"), Some("hi there"), "the first of a repeated header, name matched case-insensitively");
    assert_eq!(r.header("x-missing"), Some("present"), "an empty header is present");
    let r = get(s.port, "/file/f.txt").unwrap();
    assert_eq!((r.body.as_slice(), r.header("x-upper")), (big.as_bytes(), Some("on")), "file regions pass untouched");
    let r = get(s.port, "/plain/").unwrap();
    assert_eq!((r.body.as_slice(), r.header("x-upper")), (&b"plain"[..], None));
    let log = poll_until("up.log", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(s.prefix.path().join("logs/up.log")).unwrap_or_default();
        (t.lines().count() >= 4).then_some(t)
    });
    assert_eq!(log, "/up/x 14\n/up/x 14\n/file/f.txt 0\n/plain/ -\n");
}
