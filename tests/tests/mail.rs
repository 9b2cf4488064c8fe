//! The mail plugin against real parts: Dovecot as the IMAP and POP3
//! backend, tests/mail_backends.py as the auth_http server and the SMTP
//! backend (Python's standard library, not ngxr), and Python's imaplib,
//! poplib and smtplib (or raw sockets) as clients.

use ngxr_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECS: Duration = Duration::from_secs(10);

/// Dovecot serving IMAP and POP3 on ephemeral ports from a scratch
/// directory, with users alice/wonderland and bob/builder.
struct Dovecot {
    child: Child,
    imap: u16,
    pop3: u16,
    _dir: tempfile::TempDir,
}

impl Dovecot {
    /// Starts Dovecot on fresh ports (again with others if a port was
    /// taken before Dovecot bound it).
    fn start() -> Dovecot {
        for _ in 0..2 {
            if let Some(d) = Dovecot::try_start() {
                return d;
            }
        }
        Dovecot::try_start().expect("dovecot to start")
    }

    fn try_start() -> Option<Dovecot> {
        let bin = ["/usr/sbin/dovecot", "/usr/bin/dovecot"].into_iter().find(|p| Path::new(p).exists());
        let bin = bin.expect("dovecot is not installed (Debian: dovecot-imapd dovecot-pop3d; .ci/run installs them)");
        let dir = tempfile::Builder::new().prefix("ngxr-dovecot-").tempdir().unwrap();
        let d = dir.path();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        // As root, mail is owned by the dovecot user (Dovecot refuses
        // root); otherwise everything runs as the current user.
        let (uid, gid, user) = if is_root() {
            let id = |flag: &str| String::from_utf8(Command::new("id").args([flag, "dovecot"]).output().unwrap().stdout).unwrap().trim().parse::<u32>().expect("a dovecot user");
            (id("-u"), id("-g"), None)
        } else {
            // SAFETY: plain libc queries.
            let name = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string();
            (unsafe { libc::getuid() }, unsafe { libc::getgid() }, Some(name))
        };
        for sub in ["run", "mail"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
            std::os::unix::fs::chown(d.join(sub), Some(uid), Some(gid)).unwrap();
        }
        std::fs::write(d.join("passwd"), "alice:{PLAIN}wonderland::::::\nbob:{PLAIN}builder::::::\ndown:{PLAIN}x::::::\n").unwrap();
        let (imap, pop3) = (free_port(), free_port());
        let users = match &user {
            Some(u) => format!("default_internal_user = {u}\ndefault_login_user = {u}\n"),
            None => String::new(),
        };
        let conf = format!(
            "protocols = imap pop3\nlisten = 127.0.0.1\nbase_dir = {d}/run\nstate_dir = {d}/run\nlog_path = {d}/dovecot.log\n\
             ssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain login\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n{users}\
             mail_location = maildir:{d}/mail/%u\n\
             passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={d}/mail/%u\n}}\n\
             service imap-login {{\n  chroot =\n  inet_listener imap {{\n    port = {imap}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service pop3-login {{\n  chroot =\n  inet_listener pop3 {{\n    port = {pop3}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        let child = Command::new(bin).arg("-F").arg("-c").arg(d.join("dovecot.conf")).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("dovecot starts");
        let mut dc = Dovecot { child, imap, pop3, _dir: dir };
        let mut exited = false;
        poll_until("dovecot to greet", SECS, || {
            if let Ok(Some(st)) = dc.child.try_wait() {
                let log = std::fs::read_to_string(d_log(&dc)).unwrap_or_default();
                assert!(log.contains("Address already in use"), "dovecot exited ({st}): {log}");
                exited = true;
                return Some(());
            }
            let greets = |port| Line::try_connect(port).and_then(|mut l| l.try_read_line()).is_some_and(|g| g.starts_with("+OK") || g.starts_with("* OK"));
            (greets(dc.imap) && greets(dc.pop3)).then_some(())
        });
        (!exited).then_some(dc)
    }
}

fn d_log(d: &Dovecot) -> PathBuf {
    d._dir.path().join("dovecot.log")
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        kill(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + SECS;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python server from tests/mail_backends.py, logging to a file.
struct PyServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl PyServer {
    fn start(mode: &str, dir: &Path, config: &str) -> PyServer {
        let cfg = dir.join(format!("{mode}.json"));
        let log = dir.join(format!("{mode}.log"));
        std::fs::write(&cfg, config).unwrap();
        std::fs::write(&log, "").unwrap();
        let (child, port) = spawn_listening(Command::new("python3").arg(repo_root().join("tests/mail_backends.py")).arg(mode).arg(&cfg).arg(&log));
        PyServer { child, port, log }
    }

    /// The logged entries, one JSON text per line.
    fn entries(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap().lines().map(str::to_string).collect()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a test talks to: ngxr's IMAP, POP3 and SMTP ports in front
/// of Dovecot and the Python servers.
struct Rig {
    ngxr: Server,
    imap: u16,
    pop3: u16,
    smtp: u16,
    /// Ports asked for with start_with.
    more: Vec<u16>,
    auth: PyServer,
    smtp_backend: PyServer,
    _dovecot: Dovecot,
    _dir: tempfile::TempDir,
}

const USERS: &str = r#""users": {"alice": "wonderland", "bob": "builder", "down": "x", "nowait": "x", "wrongpw": "wonderland"}"#;

/// The `mail {}` body for a rig (ports as @IMAP@, @POP3@, @SMTP@, @AUTH@).
fn mail_conf(extra: &str) -> String {
    format!(
        "mail {{
           server_name mail.test;
           auth_http 127.0.0.1:@AUTH@/mail/auth;
           auth_http_header X-Secret s3cret;
           auth_http_timeout 2s;
           {extra}
           server {{ listen 127.0.0.1:@IMAP@; protocol imap; imap_auth plain login cram-md5; }}
           server {{ listen 127.0.0.1:@POP3@; protocol pop3; pop3_auth plain apop cram-md5; }}
           server {{ listen 127.0.0.1:@SMTP@; protocol smtp; smtp_auth plain login none; smtp_capabilities \"SIZE 10485760\" 8BITMIME; }}
         }}"
    )
}

impl Rig {
    fn start(extra: &str) -> Rig {
        Rig::start_with(0, |_| extra.to_string())
    }

    /// A rig whose `mail {}` also gets `extra(ports)`, for `n` more ports
    /// (in `Rig::more`).
    fn start_with(n: usize, extra: impl Fn(&[u16]) -> String) -> Rig {
        let dovecot = Dovecot::start();
        let dir = tempfile::tempdir().unwrap();
        let smtp_backend = PyServer::start("smtp", dir.path(), &format!("{{{USERS}}}"));
        let routes = format!(r#""routes": {{"imap": "127.0.0.1:{}", "pop3": "127.0.0.1:{}", "smtp": "127.0.0.1:{}"}}"#, dovecot.imap, dovecot.pop3, smtp_backend.port);
        let auth = PyServer::start("auth", dir.path(), &format!("{{{USERS}, {routes}, \"wait\": 1}}"));
        let (ngxr, ports) = Server::start_with_ports(3 + n, |p| Rig::conf(&extra(&p[3..]), p[0], p[1], p[2], auth.port));
        let (imap, pop3, smtp) = (ports[0], ports[1], ports[2]);
        Rig { ngxr, imap, pop3, smtp, more: ports[3..].to_vec(), auth, smtp_backend, _dovecot: dovecot, _dir: dir }
    }

    fn conf(extra: &str, imap: u16, pop3: u16, smtp: u16, auth: u16) -> String {
        let body = mail_conf(extra).replace("@IMAP@", &imap.to_string()).replace("@POP3@", &pop3.to_string()).replace("@SMTP@", &smtp.to_string()).replace("@AUTH@", &auth.to_string());
        format!("{}worker_processes 1;\n{}events {{}}\n{body}\n", conf_head(), load_plugins(&["mail"]))
    }

    /// The last auth_http request's headers (JSON text).
    fn last_auth(&self) -> String {
        self.auth.entries().last().cloned().expect("an auth_http request")
    }
}

/// Runs a Python script (`ARGS` available as sys.argv[1:]); returns its
/// standard output, panicking with its errors if it fails.
fn py(script: &str, args: &[String]) -> String {
    let mut child = Command::new("python3").arg("-c").arg(script).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(st.success(), "python failed ({st}):\n{err}\nstdout:\n{out}");
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("python client timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A line-protocol client on a raw socket.
struct Line {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Line {
    fn try_connect(port: u16) -> Option<Line> {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Some(Line { s, buf: Vec::new() })
    }

    fn connect(port: u16) -> Line {
        Line::try_connect(port).expect("connect")
    }

    fn send(&mut self, line: &str) {
        self.s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }

    fn try_read_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn line(&mut self) -> String {
        self.try_read_line().expect("a line before EOF")
    }

    /// Reads until the connection closes; what came.
    fn rest(&mut self) -> String {
        let mut v = std::mem::take(&mut self.buf);
        let _ = self.s.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

fn base64(b: &[u8]) -> String {
    py("import base64,sys; print(base64.b64encode(sys.argv[1].encode('latin-1').replace(b'|', b'\\0')).decode())", &[String::from_utf8_lossy(b).into_owned()]).trim().to_string()
}

#[test]
fn imap_logs_in_to_dovecot_with_each_method() {
    let r = Rig::start("");
    // LOGIN, APPEND, SELECT, FETCH, LOGOUT with imaplib through ngxr.
    let out = py(
        "import imaplib,sys
m=imaplib.IMAP4('127.0.0.1',int(sys.argv[1]))
print(m.welcome.decode())
print(m.login('alice','wonderland')[0])
print(m.append('INBOX',None,None,b'Subject: t\\r\\n\\r\\nhello through ngxr\\r\\n')[0])
print(m.select()[1][0].decode())
print(m.fetch('1','(BODY[TEXT])')[1][0][1].decode().strip())
print(m.logout()[0])",
        &[r.imap.to_string()],
    );
    assert_eq!(out, "* OK IMAP4 ready\nOK\nOK\n1\nhello through ngxr\nBYE\n");
    let a = r.last_auth();
    for want in [r#""auth-method": "plain""#, r#""auth-user": "alice""#, r#""auth-pass": "wonderland""#, r#""auth-protocol": "imap""#, r#""auth-login-attempt": "1""#, r#""client-ip": "127.0.0.1""#, r#""x-secret": "s3cret""#, r#""host": "127.0.0.1""#, r#""path": "/mail/auth""#] {
        assert!(a.contains(want), "{want} not in {a}");
    }
    // AUTHENTICATE PLAIN and CRAM-MD5 (the auth server checks the digest
    // against the challenge it gets as Auth-Salt, and gives the password
    // for the backend login).
    let out = py(
        "import imaplib,sys
m=imaplib.IMAP4('127.0.0.1',int(sys.argv[1]))
print(m.authenticate('PLAIN', lambda _: b'\\0alice\\0wonderland')[0])
print(m.select()[1][0].decode())
m.logout()
m=imaplib.IMAP4('127.0.0.1',int(sys.argv[1]))
print(m.login_cram_md5('alice','wonderland')[0])
print(m.select()[1][0].decode())
m.logout()",
        &[r.imap.to_string()],
    );
    assert_eq!(out, "OK\n1\nOK\n1\n");
    let a = r.last_auth();
    assert!(a.contains(r#""auth-method": "cram-md5""#) && a.contains(r#""auth-salt": "<"#) && a.contains("@mail.test>"), "{a}");
    // Synchronizing literals: "+ OK" for each, then the backend's OK.
    let mut c = Line::connect(r.imap);
    c.line();
    c.send("a1 LOGIN {5}");
    assert_eq!(c.line(), "+ OK");
    c.send("alice {10}");
    assert_eq!(c.line(), "+ OK");
    c.send("wonderland");
    let ok = c.line();
    assert!(ok.starts_with("a1 OK ") && ok.ends_with("Logged in"), "{ok}");
    c.send("a2 LOGOUT");
    assert!(c.line().starts_with("* BYE"));
}

#[test]
fn imap_answers_before_login_as_nginx() {
    let r = Rig::start("");
    let mut c = Line::connect(r.imap);
    assert_eq!(c.line(), "* OK IMAP4 ready");
    c.send("a1 CAPABILITY");
    assert_eq!(c.line(), "* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5");
    assert_eq!(c.line(), "a1 OK completed");
    c.send("a2 NOOP");
    assert_eq!(c.line(), "a2 OK completed");
    c.send("a3 LOGIN alice");
    assert_eq!(c.line(), "a3 BAD invalid command");
    // A refused login waits Auth-Wait (1 s), then the client may retry.
    let t = Instant::now();
    c.send("a4 LOGIN alice nope");
    assert_eq!(c.line(), "a4 NO Invalid login or password");
    assert!(t.elapsed() >= Duration::from_millis(900), "answered after {:?}", t.elapsed());
    c.send("a5 LOGIN alice wonderland");
    assert!(c.line().starts_with("a5 OK "));
    assert!(r.last_auth().contains(r#""auth-login-attempt": "2""#));
    // Relayed: Dovecot answers from here.
    c.send("a6 SELECT INBOX");
    let mut lines = Vec::new();
    while !lines.last().is_some_and(|l: &String| l.starts_with("a6 ")) {
        lines.push(c.line());
    }
    assert!(lines.last().unwrap().starts_with("a6 OK"), "{lines:?}");

    // max_errors (5): the fifth invalid command ends the session.
    let mut c = Line::connect(r.imap);
    c.line();
    for i in 1..=4 {
        c.send(&format!("x{i} FOO"));
        assert_eq!(c.line(), format!("x{i} BAD invalid command"));
    }
    c.send("x5 FOO");
    assert_eq!(c.rest(), "x5 BAD invalid command\r\n");

    // A command longer than imap_client_buffer (4k).
    let mut c = Line::connect(r.imap);
    c.line();
    c.s.write_all(format!("a1 LOGIN {}", "x".repeat(5000)).as_bytes()).unwrap();
    assert_eq!(c.rest(), "* BAD invalid command\r\n");

    // Refused without Auth-Wait: the answer, then the end.
    let mut c = Line::connect(r.imap);
    c.line();
    c.send("a1 LOGIN nowait x");
    assert_eq!(c.rest(), "a1 NO Go away\r\n");
}

#[test]
fn failures_upstream_get_internal_server_error() {
    let r = Rig::start("");
    let refused = |port: u16, greet: bool, cmds: &[&str]| {
        let mut c = Line::connect(port);
        if greet {
            c.line();
        }
        for cmd in cmds {
            c.send(cmd);
        }
        c.rest()
    };
    // The backend the auth server names does not listen.
    assert_eq!(refused(r.imap, true, &["a1 LOGIN down x"]), "* BAD internal server error\r\n");
    // The auth server's answer has no Auth-Status.
    assert_eq!(refused(r.imap, true, &["a1 LOGIN garbage x"]), "* BAD internal server error\r\n");
    // The backend refuses the password the auth server gave
    // (proxy_pass_error_message off: the client does not see why).
    assert_eq!(refused(r.pop3, true, &["USER wrongpw", "PASS wonderland"]), "+OK\r\n-ERR internal server error\r\n");
    // The auth server does not answer within auth_http_timeout (2s).
    assert_eq!(refused(r.imap, true, &["a1 LOGIN slow x"]), "* BAD internal server error\r\n");
    let log = r.ngxr.prefix.error_log();
    for want in ["connect() failed", "sent no \"Auth-Status\" header", "upstream sent invalid response", "timed out while in http auth state"] {
        assert!(log.contains(want), "{want} not in the error log:\n{log}");
    }
    drop(r);

    // proxy_pass_error_message on: the backend's own refusal goes through.
    let r = Rig::start("proxy_pass_error_message on;");
    let out = refused(r.pop3, true, &["USER wrongpw", "PASS wonderland"]);
    assert!(out.starts_with("+OK\r\n-ERR [AUTH] Authentication failed"), "{out}");
}

#[test]
fn pop3_user_apop_and_capabilities() {
    let r = Rig::start("");
    // Mail arrives by IMAP (through ngxr), is read by POP3.
    py(
        "import imaplib,sys
m=imaplib.IMAP4('127.0.0.1',int(sys.argv[1])); m.login('bob','builder')
m.append('INBOX',None,None,b'Subject: p\\r\\n\\r\\nfor pop3\\r\\n'); m.logout()",
        &[r.imap.to_string()],
    );
    let out = py(
        "import poplib,sys
p=poplib.POP3('127.0.0.1',int(sys.argv[1]))
g=p.getwelcome().decode(); print(g.split(' <')[0], '<' in g and g.endswith('@mail.test>'))
print(sorted(p.capa().items()))
print(p.user('bob').decode()); print(p.pass_('builder').decode())
print(p.stat()); print(b'for pop3' in b'\\n'.join(p.retr(1)[1])); p.quit()
p=poplib.POP3('127.0.0.1',int(sys.argv[1]))
print(p.apop('bob','builder').decode()); print(p.stat()); p.quit()",
        &[r.pop3.to_string()],
    );
    assert_eq!(
        out,
        "+OK POP3 ready True\n[('SASL', ['PLAIN', 'LOGIN', 'CRAM-MD5']), ('TOP', []), ('UIDL', []), ('USER', [])]\n+OK\n+OK Logged in.\n(1, 24)\nTrue\n+OK Logged in.\n(1, 24)\n"
    );
    let a = r.last_auth();
    assert!(a.contains(r#""auth-method": "apop""#) && a.contains(r#""auth-protocol": "pop3""#), "{a}");
    // Before login, by hand.
    let mut c = Line::connect(r.pop3);
    c.line();
    c.send("AUTH");
    for want in ["+OK methods supported:", "PLAIN", "LOGIN", "CRAM-MD5", "."] {
        assert_eq!(c.line(), want);
    }
    c.send("PASS x");
    assert_eq!(c.line(), "-ERR invalid command");
    c.send(&format!("AUTH PLAIN {}", base64(b"|bob|nope")));
    assert_eq!(c.line(), "-ERR Invalid login or password");
    c.send("AUTH LOGIN");
    assert_eq!(c.line(), "+ VXNlcm5hbWU6");
    c.send(&base64(b"bob"));
    assert_eq!(c.line(), "+ UGFzc3dvcmQ6");
    c.send(&base64(b"builder"));
    assert_eq!(c.line(), "+OK Logged in.");
    c.send("QUIT");
    assert!(c.line().starts_with("+OK"));
}

#[test]
fn smtp_auth_xclient_and_unauthenticated_relay() {
    let r = Rig::start("");
    let out = py(
        "import smtplib,sys
s=smtplib.SMTP('127.0.0.1',int(sys.argv[1]))
print(s.ehlo('client.test')[1].decode().replace('\\n','|'))
print(s.login('alice','wonderland')[0])
print(s.sendmail('alice@example.org',['carol@example.net'],'Subject: x\\r\\n\\r\\nauthenticated mail\\r\\n'))
s.quit()",
        &[r.smtp.to_string()],
    );
    assert_eq!(out, "mail.test|SIZE 10485760|8BITMIME|AUTH PLAIN LOGIN\n235\n{}\n");
    let log = r.smtp_backend.entries().join("\n");
    for want in [
        r#"["EHLO", "EHLO mail.test"]"#,
        r#"["XCLIENT", "XCLIENT ADDR=127.0.0.1 LOGIN=alice NAME=[UNAVAILABLE]"]"#,
        r#"["EHLO", "EHLO client.test"]"#,
        r#"["MAIL", "mail FROM:<alice@example.org>"#,
        r#"["RCPT", "rcpt TO:<carol@example.net>"]"#,
        "authenticated mail",
    ] {
        assert!(log.to_ascii_lowercase().contains(&want.to_ascii_lowercase()), "{want} not in the backend's log:\n{log}");
    }
    // smtp_auth none: MAIL FROM and RCPT TO go to the auth server, then
    // are replayed to the backend.
    let out = py(
        "import smtplib,sys
s=smtplib.SMTP('127.0.0.1',int(sys.argv[1]))
print(s.sendmail('zed@elsewhere.test',['bob@example.com'],'Subject: y\\r\\n\\r\\nunauthenticated mail\\r\\n'))
s.quit()",
        &[r.smtp.to_string()],
    );
    assert_eq!(out, "{}\n");
    let a = r.last_auth();
    assert!(a.contains(r#""auth-method": "none""#) && a.contains("auth-smtp-to") && a.contains("bob@example.com") && a.contains(r#""client-host": "[UNAVAILABLE]""#), "{a}");
    assert!(r.smtp_backend.entries().join("\n").contains("unauthenticated mail"));
    // Refusals by hand: a recipient the auth server refuses, the code
    // from Auth-Error-Code; MAIL before HELO is fine, RCPT before MAIL
    // is not.
    let mut c = Line::connect(r.smtp);
    assert_eq!(c.line(), "220 mail.test ESMTP ready");
    c.send("RCPT TO:<x@example.com>");
    assert_eq!(c.line(), "503 5.5.1 Bad sequence of commands");
    c.send("HELO client.test");
    assert_eq!(c.line(), "250 mail.test");
    c.send("MAIL FROM:<a@b.test>");
    assert_eq!(c.line(), "250 2.1.0 OK");
    c.send("RCPT TO:<x@nowhere.test>");
    assert_eq!(c.line(), "535 5.7.8 Invalid login or password");
    c.send("FOO");
    assert_eq!(c.line(), "500 5.5.1 Invalid command");
    c.send("QUIT");
    assert_eq!(c.line(), "221 2.0.0 Bye");
}

#[test]
fn bad_mail_configs_are_refused_with_file_and_line() {
    let p = Prefix::new();
    let head = format!("{}{}events {{}}\n", conf_head(), load_plugins(&["mail"]));
    let lines = head.lines().count() as u32;
    p.assert_refused(&format!("{head}mail {{\n  server {{ listen 127.0.0.1:1143; protocol imap; }}\n}}\n"), "no \"auth_http\" is defined for server", lines + 2);
    p.assert_refused(&format!("{head}mail {{\n  auth_http 127.0.0.1:9/a;\n  server {{ listen 127.0.0.1:1143; }}\n}}\n"), "unknown mail protocol for server", lines + 3);
    p.assert_refused(&format!("{head}mail {{\n  auth_http 127.0.0.1:9/a;\n  server {{ listen 127.0.0.1:1143; protocol nntp; }}\n}}\n"), "unknown protocol \"nntp\"", lines + 3);
    p.assert_refused(&format!("{head}mail {{\n  auth_http 127.0.0.1:9/a;\n  starttls maybe;\n}}\n"), "invalid value \"maybe\" in \"starttls\" directive", lines + 3);
    p.assert_refused(&format!("{head}mail {{\n  auth_http 127.0.0.1:9/a;\n  server {{ listen 127.0.0.1:1993 proxy_protocol; protocol imap; }}\n}}\n"), "\"listen ... proxy_protocol\" in mail is not supported yet", lines + 3);
    p.assert_refused(&format!("{head}mail {{\n  imap_auth plain gssapi;\n}}\n"), "invalid value \"gssapi\" in \"imap_auth\" directive", lines + 2);
    // Without the plugin, nginx's words for an unknown block.
    let bare = format!("{}events {{}}\nmail {{\n}}\n", conf_head());
    p.assert_refused(&bare, "unknown directive \"mail\"", conf_head().lines().count() as u32 + 2);
}

#[test]
fn relayed_sessions_survive_a_reload() {
    let r = Rig::start("");
    let mut c = Line::connect(r.imap);
    c.line();
    c.send("a1 LOGIN alice wonderland");
    assert!(c.line().starts_with("a1 OK"));
    let old = r.ngxr.wait_workers(1, &[]);
    // A new generation with other capabilities.
    r.ngxr.prefix.write_conf(&Rig::conf("imap_capabilities IMAP4rev1 IDLE;", r.imap, r.pop3, r.smtp, r.auth.port));
    r.ngxr.signal(libc::SIGHUP);
    poll_until("a worker of the new generation", SECS, || r.ngxr.workers().iter().any(|w| !old.contains(w)).then_some(()));
    let mut n = Line::connect(r.imap);
    n.line();
    n.send("b1 CAPABILITY");
    assert_eq!(n.line(), "* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5");
    // The old session still talks to Dovecot through the old worker.
    assert!(alive(old[0]), "the old worker left while a session was relayed");
    c.send("a2 NOOP");
    assert!(c.line().starts_with("a2 OK"));
    c.send("a3 LOGOUT");
    assert!(c.line().starts_with("* BYE"));
    poll_until("the old worker to exit once its session ended", SECS, || (!alive(old[0])).then_some(()));
}

#[test]
fn tls_from_the_first_byte_and_by_starttls() {
    let certs_dir = tempfile::tempdir().unwrap();
    certs::self_signed(certs_dir.path(), "mail", "/CN=mail.test", "DNS:mail.test", true);
    let crt = certs_dir.path().join("mail.crt");
    let key = certs_dir.path().join("mail.key");
    let r = Rig::start_with(4, |p| {
        format!(
            "ssl_certificate {crt}; ssl_certificate_key {key};
             server {{ listen 127.0.0.1:{} ssl; protocol imap; }}
             server {{ listen 127.0.0.1:{}; protocol imap; starttls only; }}
             server {{ listen 127.0.0.1:{}; protocol pop3; starttls on; }}
             server {{ listen 127.0.0.1:{}; protocol smtp; starttls on; }}",
            p[0],
            p[1],
            p[2],
            p[3],
            crt = crt.display(),
            key = key.display()
        )
    });
    let (imaps, imap_only, pop3_tls, smtp_tls) = (r.more[0], r.more[1], r.more[2], r.more[3]);
    let out = py(
        "import imaplib,poplib,smtplib,ssl,sys
ctx=ssl.create_default_context(cafile=sys.argv[5]); ctx.check_hostname=False
imaps,only,pop3,smtp=map(int,sys.argv[1:5])
m=imaplib.IMAP4_SSL('127.0.0.1',imaps,ssl_context=ctx)
print(m.welcome.decode(), m.sock.version())
print(m.login('alice','wonderland')[0], m.select()[0]); m.logout()
m=imaplib.IMAP4('127.0.0.1',only)
print(m.capabilities)
try:
    m.login('alice','wonderland')
except imaplib.IMAP4.error as e:
    print('refused before TLS')
print(m.starttls(ssl_context=ctx)[0], m.capabilities)
print(m.login('alice','wonderland')[0], m.select()[0]); m.logout()
p=poplib.POP3('127.0.0.1',pop3)
print('STLS' in p.capa(), p.stls(context=ctx).decode(), 'STLS' in p.capa())
print(p.user('bob').decode(), p.pass_('builder').decode()); p.quit()
s=smtplib.SMTP('127.0.0.1',smtp)
s.ehlo('c.test'); print(s.has_extn('starttls'), s.starttls(context=ctx)[0])
s.ehlo('c.test'); print(s.has_extn('starttls'), s.login('alice','wonderland')[0])
print(s.sendmail('alice@example.org',['x@example.net'],'Subject: t\\r\\n\\r\\nover tls\\r\\n')); s.quit()",
        &[imaps.to_string(), imap_only.to_string(), pop3_tls.to_string(), smtp_tls.to_string(), crt.display().to_string()],
    );
    assert_eq!(
        out,
        "* OK IMAP4 ready TLSv1.3\nOK OK\n('IMAP4', 'IMAP4REV1', 'UIDPLUS', 'STARTTLS', 'LOGINDISABLED')\nrefused before TLS\nOK ('IMAP4', 'IMAP4REV1', 'UIDPLUS', 'AUTH=PLAIN')\nOK OK\nTrue +OK False\n+OK +OK Logged in.\nTrue 220\nFalse 235\n{}\n"
    );
    assert!(r.smtp_backend.entries().join("\n").contains("over tls"));
    // Plain text on the TLS port: the handshake fails, the session ends.
    let mut c = Line::connect(imaps);
    c.send("a1 CAPABILITY");
    assert!(!c.rest().contains("CAPABILITY"));
    // A certificate is required once TLS is asked for.
    let p = Prefix::new();
    let head = format!("{}{}events {{}}\n", conf_head(), load_plugins(&["mail"]));
    p.assert_refused(&format!("{head}mail {{\n  auth_http 127.0.0.1:9/a;\n  server {{ listen 127.0.0.1:1993 ssl; protocol imap; }}\n}}\n"), "no \"ssl_certificate\" is defined for server", head.lines().count() as u32 + 3);
}

#[test]
fn a_relayed_session_ends_after_proxy_timeout_of_client_silence() {
    let r = Rig::start("proxy_timeout 1s;");
    let mut c = Line::connect(r.pop3);
    assert!(c.line().starts_with("+OK"));
    c.send("USER bob");
    assert!(c.line().starts_with("+OK"));
    c.send("PASS builder");
    assert_eq!(c.line(), "+OK Logged in.");
    // Relayed to Dovecot now: a command every 400 ms keeps it open past
    // the limit…
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        c.send("NOOP");
        assert_eq!(c.line(), "+OK");
    }
    // …and a second of silence from the client ends it (EOF, not the
    // 5 s read timeout).
    let silent = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(c.s.read(&mut buf).expect("ngxr closes the session"), 0);
    assert!(silent.elapsed() >= Duration::from_millis(900), "{:?}", silent.elapsed());
    poll_until("the timeout in the error log", SECS, || r.ngxr.prefix.error_log().contains("timed out (nothing read for 1000 ms) while relaying").then_some(()));
}
