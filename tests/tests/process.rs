//! Master/worker supervision with the real binary: workers exist, crashed
//! workers are respawned, reload keeps serving (also with a broken config),
//! graceful and fast stop, log reopen, WINCH, binary upgrade, daemon and
//! single-process modes.

use ngxr_tests::*;
use std::time::Duration;

const SECS: Duration = Duration::from_secs(10);

fn http_conf(workers: usize) -> String {
    format!("worker_processes {workers};\nevents {{ worker_connections 256; }}\nhttp {{ server {{ listen 127.0.0.1:PORT; }} }}\n")
}

#[test]
fn master_forks_workers_that_serve_http() {
    let s = Server::start(&http_conf(2));
    assert_eq!(s.wait_workers(2, &[]).len(), 2);
    let r = get(s.port, "/anything").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.header("server").unwrap().starts_with("ngxr"));
    assert!(r.header("date").is_some());
    assert_eq!(s.prefix.pid(), Some(s.master()));
}

#[test]
fn killed_worker_is_respawned() {
    let s = Server::start(&http_conf(2));
    let before = s.wait_workers(2, &[]);
    kill(before[0], libc::SIGKILL);
    let after = s.wait_workers(2, &before[..1]);
    assert!(after.contains(&before[1]), "the other worker is untouched");
    poll_until("the crash to be logged", SECS, || {
        s.prefix.error_log().contains(&format!("worker process {} exited on signal 9", before[0])).then_some(())
    });
    assert_eq!(get(s.port, "/").unwrap().status, 403);
}

#[test]
fn crash_loop_backs_off() {
    let s = Server::start(&http_conf(1));
    let mut seen = vec![];
    for _ in 0..3 {
        let w = s.wait_workers(1, &seen);
        seen.extend(w.iter().copied());
        kill(w[0], libc::SIGKILL);
    }
    poll_until("backoff to be logged", SECS, || {
        s.prefix.error_log().contains("is crashing repeatedly, respawning in").then_some(())
    });
    s.wait_workers(1, &seen);
}

#[test]
fn reload_with_broken_config_keeps_old_generation_serving() {
    let s = Server::start(&http_conf(2));
    let before = s.wait_workers(2, &[]);
    let good = std::fs::read_to_string(s.prefix.path().join("conf/ngxr.conf")).unwrap();
    s.prefix.write_conf(&format!("{good}\nbroken_directive 1;\n"));
    let o = s.prefix.ngxr(&["-s", "reload"]);
    assert!(o.status.success());
    let conf = s.prefix.path().join("conf/ngxr.conf").display().to_string();
    poll_until("the refusal to be logged", SECS, || {
        s.prefix.error_log().contains("[emerg]").then_some(())
    });
    let log = s.prefix.error_log();
    assert!(log.contains(&format!("unknown directive \"broken_directive\" in {conf}:")), "{log}");
    assert_eq!(s.workers(), before, "old workers keep running");
    assert_eq!(get(s.port, "/").unwrap().status, 403, "listeners still accept");
}

#[test]
fn reload_replaces_workers_without_refusing_connections() {
    let s = Server::start(&http_conf(1));
    let before = s.wait_workers(1, &[]);
    let hammer = Hammer::start(s.port);
    poll_until("some traffic", SECS, || (get(s.port, "/").is_ok()).then_some(()));
    // A new generation with more workers.
    let text = std::fs::read_to_string(s.prefix.path().join("conf/ngxr.conf")).unwrap();
    s.prefix.write_conf(&text.replace("worker_processes 1;", "worker_processes 2;"));
    s.signal(libc::SIGHUP);
    let after = s.wait_workers(2, &before);
    for _ in 0..20 {
        assert_eq!(get(s.port, "/").unwrap().status, 403);
    }
    let (ok, errs) = hammer.finish();
    assert!(errs.is_empty(), "{ok} ok, failures: {errs:?}");
    assert!(ok > 0);
    assert!(!after.iter().any(|p| before.contains(p)));
}

#[test]
fn reload_moves_to_a_new_port_and_closes_the_old() {
    let s = Server::start(&http_conf(1));
    let new_port = free_port();
    let text = std::fs::read_to_string(s.prefix.path().join("conf/ngxr.conf")).unwrap();
    s.prefix.write_conf(&text.replace(&format!(":{};", s.port), &format!(":{new_port};")));
    s.signal(libc::SIGHUP);
    poll_until("the new port", SECS, || get(new_port, "/").ok());
    poll_until("the old port to close", SECS, || {
        std::net::TcpStream::connect(("127.0.0.1", s.port)).is_err().then_some(())
    });
}

#[test]
fn quit_is_graceful_and_removes_pid_file() {
    let mut s = Server::start(&http_conf(2));
    s.wait_workers(2, &[]);
    // A request in flight (head sent partly) is still answered after QUIT.
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(SECS)).unwrap();
    c.write_all(b"GET /inflight HTTP/1.1\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let a worker read the partial head
    let o = s.prefix.ngxr(&["-s", "quit"]);
    assert!(o.status.success());
    // Once the workers are draining, the answer tells the client to go
    // (Connection: close), as nginx's does.
    // (The master says it too, with "worker processes" after it on a
    // reload only: three lines here, the master's and two workers'.)
    poll_until("the workers to drain", SECS, || (s.prefix.error_log().matches("gracefully shutting down\n").count() >= 3).then_some(()));
    c.write_all(b"\r\n").unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.starts_with(b"HTTP/1.1 404") && text.contains("Connection: close"), "{text}");
    assert_eq!(s.wait_exit(SECS), Some(0));
    assert!(!s.prefix.path().join("logs/ngxr.pid").exists());
}

#[test]
fn stop_is_fast_even_with_idle_connections() {
    let mut s = Server::start(&http_conf(1));
    let _idle = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let o = s.prefix.ngxr(&["-s", "stop"]);
    assert!(o.status.success());
    assert_eq!(s.wait_exit(SECS), Some(0));
    assert!(!s.prefix.path().join("logs/ngxr.pid").exists());
}

/// Log rotation as logrotate does it: move the files, `ngxr -s reopen`.
/// The master reopens the error log and the access log the log plugin
/// opened through the host, hands the new files to the worker user, and
/// the workers — unprivileged — reopen them too: the next request's
/// access line and the worker's own error line land in the new files.
#[test]
fn reopen_rotates_access_and_error_logs_in_workers() {
    let body = format!(
        "{}worker_processes 2;\nevents {{}}\nhttp {{ access_log logs/access.log; server {{ listen 127.0.0.1:PORT; root html; }} }}\n",
        load_plugins(&["static", "log"])
    );
    let s = Server::start(&body);
    let logs = s.prefix.path().join("logs");
    assert_eq!(get(s.port, "/before").unwrap().status, 404);
    poll_until("the first access line", SECS, || std::fs::read_to_string(logs.join("access.log")).ok()?.contains("GET /before ").then_some(()));
    for f in ["access.log", "error.log"] {
        std::fs::rename(logs.join(f), logs.join(format!("{f}.1"))).unwrap();
    }
    assert!(s.prefix.ngxr(&["-s", "reopen"]).status.success());
    // Workers reopen after the master: until they have, lines still go to
    // the old files. Ask until one lands in the new access log.
    let mut n = 0;
    poll_until("an access line in the new access.log", SECS, || {
        n += 1;
        get(s.port, &format!("/after-{n}")).ok()?;
        std::fs::read_to_string(logs.join("access.log")).ok()?.contains(&format!("GET /after-{n} ")).then_some(())
    });
    // The worker that logged it reopened its error log too: its "open()
    // failed" line for the same request is in the new error log.
    let err = std::fs::read_to_string(logs.join("error.log")).unwrap();
    assert!(err.contains(&format!("/after-{n}\" failed (2: No such file or directory)")), "{err}");
    assert!(std::fs::read_to_string(logs.join("access.log.1")).unwrap().contains("GET /before "));
    // Running as root, the new files belong to the workers' user.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::fs::MetadataExt;
        let nobody = std::fs::metadata(logs.join("access.log")).unwrap().uid();
        assert_ne!(nobody, 0, "the new access.log is still root's");
        assert_eq!(std::fs::metadata(logs.join("error.log")).unwrap().uid(), nobody);
    }
}

#[test]
fn reopen_creates_a_fresh_log() {
    let s = Server::start(&http_conf(1));
    let log = s.prefix.path().join("logs/error.log");
    let moved = s.prefix.path().join("logs/error.log.1");
    std::fs::rename(&log, &moved).unwrap();
    assert!(s.prefix.ngxr(&["-s", "reopen"]).status.success());
    // The -s client may create the file itself (as nginx's does): wait for
    // the master to have reopened it, not merely for it to exist.
    poll_until("the reopened log", SECS, || {
        std::fs::read_to_string(&log).ok()?.contains("logs reopened").then_some(())
    });
    s.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + SECS;
    while !std::fs::read_to_string(&log).unwrap().contains("reconfiguring") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload line in the new log; new: {:?}\nold: {}",
            std::fs::read_to_string(&log).unwrap(),
            std::fs::read_to_string(&moved).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn winch_retires_workers_but_master_stays() {
    let s = Server::start(&http_conf(2));
    s.wait_workers(2, &[]);
    s.signal(libc::SIGWINCH);
    s.wait_workers(0, &[]);
    assert!(alive(s.master()));
}

#[test]
fn binary_upgrade_hands_listeners_over_without_refusals() {
    let mut s = Server::start(&http_conf(1));
    let old_master = s.master();
    let old_workers = s.wait_workers(1, &[]);
    let hammer = Hammer::start(s.port);
    s.signal(libc::SIGUSR2);
    let oldbin = s.prefix.path().join("logs/ngxr.pid.oldbin");
    let new_master = poll_until("the new master's pid file", SECS, || {
        let p = s.prefix.pid()?;
        (p != old_master && read_pid(&oldbin) == Some(old_master)).then_some(p)
    });
    poll_until("the new master's worker", SECS, || {
        (children_named(new_master, "ngxr: worker").len() == 1).then_some(())
    });
    s.signal(libc::SIGQUIT);
    assert_eq!(s.wait_exit(SECS), Some(0));
    assert!(old_workers.iter().all(|&w| !alive(w)));
    for _ in 0..20 {
        assert_eq!(get(s.port, "/").unwrap().status, 403);
    }
    let (ok, errs) = hammer.finish();
    assert!(errs.is_empty(), "{ok} ok, failures: {errs:?}");
    assert!(!oldbin.exists(), "the old master removed its .oldbin pid file");
    assert_eq!(s.prefix.pid(), Some(new_master));
    kill(new_master, libc::SIGQUIT);
    poll_until("the new master to exit", SECS, || (!alive(new_master)).then_some(()));
}

#[test]
fn failed_upgrade_restores_pid_file() {
    let s = Server::start(&http_conf(1));
    // Break the config: the new binary refuses it and exits; the old master
    // renames .oldbin back and keeps serving.
    let good = std::fs::read_to_string(s.prefix.path().join("conf/ngxr.conf")).unwrap();
    s.prefix.write_conf(&format!("{good}\nbad_one;\n"));
    s.signal(libc::SIGUSR2);
    poll_until("the new binary's exit to be logged", SECS, || {
        s.prefix.error_log().contains("new binary process").then_some(())
    });
    poll_until("the pid file restored", SECS, || (s.prefix.pid() == Some(s.master())).then_some(()));
    assert_eq!(get(s.port, "/").unwrap().status, 403);
}

#[test]
fn daemon_mode_detaches_and_stops_by_signal() {
    let p = Prefix::new();
    let port = free_port();
    p.write_conf(&format!(
        "error_log logs/error.log info;\nevents {{}}\nhttp {{ server {{ listen 127.0.0.1:{port}; }} }}\n"
    ));
    let o = p.ngxr(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid = poll_until("the daemon's pid file", SECS, || p.pid());
    poll_until("the daemon to serve", SECS, || get(port, "/").ok());
    assert!(p.ngxr(&["-s", "quit"]).status.success());
    poll_until("the daemon to exit", SECS, || (!alive(pid)).then_some(()));
}

#[test]
fn single_process_mode_serves_and_quits() {
    let mut s = Server::start("master_process off;\nevents {}\nhttp { server { listen 127.0.0.1:PORT; } }\n");
    assert!(s.workers().is_empty());
    assert_eq!(get(s.port, "/").unwrap().status, 403);
    s.signal(libc::SIGQUIT);
    assert_eq!(s.wait_exit(SECS), Some(0));
}

#[test]
fn ipv6_reuseport_and_backlog_listeners() {
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let p6 = free_port();
    let conf = format!(
        "worker_processes 2;\nevents {{}}\nhttp {{ server {{ listen 127.0.0.1:PORT reuseport backlog=64; {} }} }}\n",
        if v6 { format!("listen [::1]:{p6};") } else { String::new() }
    );
    let s = Server::start(&conf);
    s.wait_workers(2, &[]);
    for _ in 0..20 {
        assert_eq!(get(s.port, "/").unwrap().status, 403);
    }
    if v6 {
        let buf = {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(("::1", p6)).unwrap();
            c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut b = Vec::new();
            c.read_to_end(&mut b).unwrap();
            b
        };
        assert!(buf.starts_with(b"HTTP/1.1 403"));
    }
}

#[test]
fn workers_drop_privileges_when_master_is_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let s = Server::start(&format!("user nobody;\n{}", http_conf(1)));
    let w = s.wait_workers(1, &[])[0];
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(2).map(str::to_string))
        .unwrap();
    // The worker drops privileges right after fork: wait for it.
    poll_until("the worker to run as nobody", SECS, || {
        let status = std::fs::read_to_string(format!("/proc/{w}/status")).ok()?;
        let uid_line = status.lines().find(|l| l.starts_with("Uid:"))?.to_string();
        uid_line.split_whitespace().skip(1).all(|u| u == nobody).then_some(())
    });
    assert_eq!(get(s.port, "/").unwrap().status, 403);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

#[test]
fn worker_connections_cap_defers_accepts() {
    use std::io::{Read, Write};
    let s = Server::start("events { worker_connections 2; }\nhttp { server { listen 127.0.0.1:PORT; } }\n");
    let a = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let _b = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    poll_until("the cap to be logged", SECS, || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).ok()?;
        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
        s.prefix.error_log().contains("2 worker_connections are not enough").then_some(())
    });
    drop(a);
    // Once a slot frees, queued connections are served again.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(SECS)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut b = Vec::new();
    let _ = c.read_to_end(&mut b);
    assert!(b.starts_with(b"HTTP/1.1 403") || s.prefix.error_log().contains("not enough"));
}

/// `error_log` in a server or location: that block's requests log there
/// instead of the main log (a location's replaces its server's), at the
/// level it names, and the files are reopened with the others.
#[test]
fn error_log_per_server_and_location() {
    let (s, ports) = Server::start_with_ports(2, |p| {
        format!(
            "{}{}worker_processes 1;\nevents {{}}\nhttp {{ root html;
               server {{ listen 127.0.0.1:{}; error_log logs/a.log;
                 location /quiet/ {{ error_log logs/quiet.log crit; }}
               }}
               server {{ listen 127.0.0.1:{}; }}
             }}\n",
            conf_head(),
            load_plugins(&["static"]),
            p[0],
            p[1]
        )
    });
    let logs = s.prefix.path().join("logs");
    let read = |f: &str| std::fs::read_to_string(logs.join(f)).unwrap_or_default();
    assert_eq!(get(ports[0], "/missing-a").unwrap().status, 404);
    assert_eq!(get(ports[0], "/quiet/missing-q").unwrap().status, 404);
    assert_eq!(get(ports[1], "/missing-b").unwrap().status, 404);
    poll_until("the second server's line in the main log", SECS, || read("error.log").contains("missing-b").then_some(()));
    poll_until("the first server's line in its log", SECS, || read("a.log").contains("/missing-a\" failed (2: No such file or directory)").then_some(()));
    assert!(!read("error.log").contains("missing-a"), "{}", read("error.log"));
    // An error line is below the quiet location's threshold (crit): in no
    // log at all.
    assert!(!read("a.log").contains("missing-q") && !read("error.log").contains("missing-q") && !read("quiet.log").contains("missing-q"));
    // Rotated with the rest.
    std::fs::rename(logs.join("a.log"), logs.join("a.log.1")).unwrap();
    assert!(s.prefix.ngxr(&["-s", "reopen"]).status.success());
    let mut n = 0;
    poll_until("a line in the new a.log", SECS, || {
        n += 1;
        get(ports[0], &format!("/again-{n}")).ok()?;
        read("a.log").contains(&format!("/again-{n}\" failed")).then_some(())
    });
}
