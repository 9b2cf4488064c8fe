//! The command line, flag for flag as nginx: -v -V -h -t -T -q -g -s, and
//! config errors reported as `file:line` with exit code 1.

use ngxr_tests::*;

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn version_flags() {
    let p = Prefix::new();
    let v = p.ngxr(&["-v"]);
    assert!(v.status.success());
    assert!(text(&v).starts_with("ngxr version: ngxr/"), "{}", text(&v));
    let vv = text(&p.ngxr(&["-V"]));
    // The version the header declares, not one written down twice.
    let h = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../include/ngx_plugin.h")).unwrap();
    let define = |name: &str| {
        let line = h.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap();
        line.split_whitespace().nth(2).unwrap().to_string()
    };
    let abi = format!("plugin ABI: {}.{}\n", define("NGX_PLUGIN_ABI_MAJOR"), define("NGX_PLUGIN_ABI_MINOR"));
    assert!(vv.contains(&abi), "{vv} lacks {abi}");
    assert!(vv.contains("\nconfigure arguments: --prefix="), "{vv}");
    let h = p.ngxr(&["-h"]);
    assert!(h.status.success() && text(&h).contains("-s signal"));
    let bad = p.ngxr(&["-x"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("invalid option: \"-x\""));
    let bad = p.ngxr(&["-s", "explode"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn test_flag_ok_and_quiet() {
    let p = Prefix::new();
    p.write_conf("events {}\nhttp { server { listen 127.0.0.1:1; } }\n");
    let o = p.ngxr(&["-t"]);
    let conf = p.path().join("conf/ngxr.conf");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("the configuration file {} syntax is ok", conf.display())));
    assert!(text(&o).contains("test is successful"));
    let q = p.ngxr(&["-t", "-q"]);
    assert!(q.status.success());
    assert_eq!(text(&q), "");
}

#[test]
fn test_flag_reports_file_and_line() {
    let p = Prefix::new();
    let cases = [
        ("events {}\n\nfoo bar;\n", "unknown directive \"foo\" in {conf}:3"),
        ("events {\n", "unexpected end of file, expecting \"}\" in {conf}:2"),
        ("worker_processes 1 2;", "invalid number of arguments in \"worker_processes\" directive in {conf}:1"),
        ("events { listen 80; }", "\"listen\" directive is not allowed here in {conf}:1"),
        ("include nothere.conf;", "open() \"{dir}/nothere.conf\" failed (2: No such file or directory) in {conf}:1"),
        ("daemon perhaps;", "invalid value \"perhaps\" in \"daemon\" directive, it must be \"on\" or \"off\" in {conf}:1"),
    ];
    let conf = p.path().join("conf/ngxr.conf").display().to_string();
    let dir = p.path().join("conf").display().to_string();
    for (src, want) in cases {
        p.write_conf(src);
        let o = p.ngxr(&["-t"]);
        assert_eq!(o.status.code(), Some(1), "{src}");
        let want = want.replace("{conf}", &conf).replace("{dir}", &dir);
        assert!(text(&o).contains(&format!("ngxr: [emerg] {want}")), "{src}: {}", text(&o));
        assert!(text(&o).contains("test failed"));
    }
}

#[test]
fn error_inside_included_file_names_that_file() {
    let p = Prefix::new();
    p.write("conf/sites/a.conf", "server {\n  listen 127.0.0.1:1;\n  bogus;\n}\n");
    p.write_conf("http {\n include sites/*.conf;\n}\n");
    let o = p.ngxr(&["-t"]);
    let inc = p.path().join("conf/sites/a.conf").display().to_string();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains(&format!("unknown directive \"bogus\" in {inc}:3")), "{}", text(&o));
}

#[test]
fn dump_shows_every_file() {
    let p = Prefix::new();
    p.write("conf/extra.conf", "worker_processes 2;\n");
    p.write_conf("include extra.conf;\nevents {}\n");
    let o = p.ngxr(&["-T"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("# configuration file {}:", p.path().join("conf/ngxr.conf").display())));
    assert!(out.contains("# configuration file ") && out.contains("worker_processes 2;"), "{out}");
}

#[test]
fn global_directives_and_duplicates() {
    let p = Prefix::new();
    p.write_conf("events {}\n");
    assert!(p.ngxr(&["-t", "-g", "worker_processes 3;"]).status.success());
    p.write_conf("events {}\n\ndaemon on;\n");
    let o = p.ngxr(&["-t", "-g", "daemon off;"]);
    assert_eq!(o.status.code(), Some(1));
    let conf = p.path().join("conf/ngxr.conf").display().to_string();
    assert!(text(&o).contains(&format!("\"daemon\" directive is duplicate in {conf}:3")), "{}", text(&o));
    let o = p.ngxr(&["-t", "-g", "nope;"]);
    assert!(text(&o).contains("unknown directive \"nope\" in command line:1"), "{}", text(&o));
}

#[test]
fn signal_without_running_master_fails_clearly() {
    let p = Prefix::new();
    // A config that would not even load (unknown plugin directive): -s only
    // reads the pid path and never checks or loads anything else.
    p.write_conf("load_module modules/none.so;\nsome_plugin_directive on;\n");
    let o = p.ngxr(&["-s", "reload"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("logs/ngxr.pid\" failed (2: No such file or directory)"), "{}", text(&o));
}

#[test]
fn startup_failure_exits_nonzero_with_message() {
    let p = Prefix::new();
    let port = free_port();
    let _hold = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    p.write_conf(&format!("{}http {{ server {{ listen 127.0.0.1:{port}; }} }}\n", conf_head()));
    let o = p.ngxr(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains(&format!("bind() to 127.0.0.1:{port} failed (98: Address already in use)")), "{}", text(&o));
}
