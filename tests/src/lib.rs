//! End-to-end harness: runs the real `ngxr` binary in a temporary prefix
//! and talks to it with real sockets.
//!
//! Every server gets ephemeral ports, every wait has a deadline
//! ([`poll_until`]), and every started master is stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `ngxr` binary under test: `$NGXR_BIN`, else next to the test
/// executable's target directory (built by `cargo build --workspace`).
pub fn ngxr_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NGXR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("ngxr");
    assert!(bin.exists(), "{} not found: run `cargo build --workspace` first", bin.display());
    static FRESH: std::sync::Once = std::sync::Once::new();
    FRESH.call_once(|| assert_fresh(&bin));
    bin
}

/// Panics when `built` is older than one of its sources (as listed in
/// cargo's dep-info file beside it): `cargo test -p ngxr-tests` builds the
/// tests, not the binary and plugins they run, and a stale one would test
/// old code.
fn assert_fresh(built: &Path) {
    let Ok(at) = std::fs::metadata(built).and_then(|m| m.modified()) else { return };
    let Ok(deps) = std::fs::read_to_string(built.with_extension("d")) else { return };
    let stale = deps
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(_, srcs)| srcs))
        .flat_map(str::split_whitespace)
        .find(|src| std::fs::metadata(src).and_then(|m| m.modified()).is_ok_and(|t| t > at));
    if let Some(src) = stale {
        panic!("{} is older than {src}: run `cargo build --workspace` first", built.display());
    }
}

/// Repeats `f` until it returns `Some`, or panics naming `what` at the deadline.
pub fn poll_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the kernel does not
/// hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A temporary prefix with `conf/` and `logs/`.
pub struct Prefix {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Prefix {
    /// Creates a prefix readable by everyone (workers may drop to nobody).
    pub fn new() -> Prefix {
        let dir = tempfile::Builder::new().prefix("ngxr-e2e-").tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        Prefix { dir }
    }

    /// The prefix path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `conf/ngxr.conf`.
    pub fn write_conf(&self, text: &str) {
        std::fs::write(self.path().join("conf/ngxr.conf"), text).unwrap();
    }

    /// Writes a file relative to the prefix.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Runs `ngxr -p PREFIX ARGS…` to completion.
    pub fn ngxr(&self, args: &[&str]) -> Output {
        Command::new(ngxr_bin())
            .arg("-p")
            .arg(self.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Writes `conf` and asserts that `ngxr -t` refuses it with exit code 1
    /// and a message holding `want` at `conf/ngxr.conf:line`.
    pub fn assert_refused(&self, conf: &str, want: &str, line: u32) {
        self.write_conf(conf);
        let o = self.ngxr(&["-t"]);
        let out = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
        let at = format!("{}:{line}", self.path().join("conf/ngxr.conf").display());
        assert_eq!(o.status.code(), Some(1), "{conf}: {out}");
        assert!(out.contains(want) && out.contains(&at), "{conf}: wanted {want:?} at {at}: {out}");
    }

    /// The error log's text so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.path().join("logs/error.log")).unwrap_or_default()
    }

    /// The master pid from the pid file.
    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.path().join("logs/ngxr.pid"))
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix::new()
    }
}

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The common head of a test config: foreground, info log, pid file.
pub fn conf_head() -> String {
    "daemon off;\nerror_log logs/error.log info;\npid logs/ngxr.pid;\n".to_string()
}

/// A running master started by a test.
pub struct Server {
    /// The prefix it runs in.
    pub prefix: Prefix,
    /// The master process.
    pub child: Option<Child>,
    /// Primary port.
    pub port: u16,
}

impl Server {
    /// Writes `conf_head() + body` (with `PORT` replaced) and starts the
    /// master, waiting until the pid file exists and `port` accepts.
    pub fn start(body: &str) -> Server {
        let port = free_port();
        let prefix = Prefix::new();
        prefix.write_conf(&format!("{}{}", conf_head(), body.replace("PORT", &port.to_string())));
        Server::start_in(prefix, port)
    }

    /// Starts the master in a prepared prefix.
    pub fn start_in(prefix: Prefix, port: u16) -> Server {
        Server::try_start_in(prefix, port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the master in a prepared prefix; Err (with its log) if it
    /// exits before serving.
    pub fn try_start_in(prefix: Prefix, port: u16) -> Result<Server, String> {
        let child = Command::new(ngxr_bin())
            .arg("-p")
            .arg(prefix.path())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Server { prefix, child: Some(child), port };
        let mut early = None;
        poll_until("the master to serve", Duration::from_secs(10), || {
            if let Some(Ok(Some(st))) = s.child.as_mut().map(|c| c.try_wait()) {
                early = Some(format!("ngxr exited early ({st}); log:\n{}", s.prefix.error_log()));
                return Some(());
            }
            (s.prefix.pid().is_some() && TcpStream::connect(("127.0.0.1", port)).is_ok()).then_some(())
        });
        match early {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    /// Starts a master whose configuration (`conf_head()` and all) is
    /// `render(&ports)` for `n` fresh ports, the first being the one
    /// waited on. `free_port` only proposes a port; if another process
    /// takes one before ngxr binds it, this tries again with new ports
    /// (three times at most).
    pub fn start_with_ports(n: usize, render: impl Fn(&[u16]) -> String) -> (Server, Vec<u16>) {
        let mut last = String::new();
        for _ in 0..3 {
            let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let prefix = Prefix::new();
            prefix.write_conf(&render(&ports));
            match Server::try_start_in(prefix, ports[0]) {
                Ok(s) => return (s, ports),
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("three tries found no free ports: {last}");
    }

    /// The master's pid.
    pub fn master(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Current worker pids.
    pub fn workers(&self) -> Vec<i32> {
        children_named(self.master(), "ngxr: worker")
    }

    /// Waits until exactly `n` workers run and none of `not` is among them.
    pub fn wait_workers(&self, n: usize, not: &[i32]) -> Vec<i32> {
        poll_until(&format!("{n} fresh workers"), Duration::from_secs(10), || {
            let w = self.workers();
            (w.len() == n && !w.iter().any(|p| not.contains(p))).then_some(w)
        })
    }

    /// Waits for the master to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take().unwrap();
        let st = poll_until("the master to exit", limit, || c.try_wait().unwrap());
        st.code()
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: i32) {
        kill(self.master(), sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stop anything still running from this prefix (an upgraded binary
        // has its own pid in the pid file).
        for p in [self.prefix.pid(), read_pid(&self.prefix.path().join("logs/ngxr.pid.oldbin"))]
            .into_iter()
            .flatten()
        {
            if self.child.as_ref().map(|c| c.id() as i32) != Some(p) && is_ngxr(p) {
                kill(p, libc::SIGKILL);
            }
        }
        if let Some(mut c) = self.child.take() {
            // The master first, so it cannot respawn what we kill next.
            let workers = children_named(c.id() as i32, "ngxr: worker");
            let _ = c.kill();
            let _ = c.wait();
            for w in workers.into_iter().chain(children_named(1, "ngxr: worker")) {
                if std::fs::read_link(format!("/proc/{w}/cwd")).is_ok() && is_from(w, self.prefix.path()) {
                    kill(w, libc::SIGKILL);
                }
            }
        }
    }
}

/// True when process `pid` was started with `-p prefix`.
fn is_from(pid: i32, prefix: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*prefix.to_string_lossy()))
        .unwrap_or(false)
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// True when `pid` is a live (non-zombie) ngxr process.
pub fn is_ngxr(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next());
    state != Some("Z") && stat.contains("(ngxr")
}

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()) != Some("Z")
}

/// Live children of `parent` whose comm is `name`.
pub fn children_named(parent: i32, name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[l + 1..r];
        let mut rest = stat[r + 1..].split_whitespace();
        let state = rest.next();
        let ppid: i32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && comm == name && state != Some("Z") {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines as (lowercase name, value).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes and reads until the server closes (or 5 s pass).
pub fn raw(port: u16, req: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Parses one response from the front of `buf` (Content-Length bodies).
pub fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    parse_response_to(buf, false)
}

/// Decodes a chunked body at the start of `buf`: (body, bytes used).
fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
        let size_text = std::str::from_utf8(&buf[pos..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            let end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            if end != pos {
                let t = buf[pos..].windows(4).position(|w| w == b"\r\n\r\n")? + pos + 4;
                return Some((body, t));
            }
            return Some((body, end + 2));
        }
        body.extend_from_slice(buf.get(pos..pos + size)?);
        pos += size;
        if buf.get(pos..pos + 2)? != b"\r\n" {
            return None;
        }
        pos += 2;
    }
}

/// Parses one response; `head_only` for a HEAD request (no body follows
/// whatever Content-Length says). Chunked bodies are decoded.
pub fn parse_response_to(buf: &[u8], head_only: bool) -> Option<(Response, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if head_only || status == 304 || status == 204 || (100..200).contains(&status) {
        return Some((Response { status, headers, body: Vec::new() }, end));
    }
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        let (body, used) = dechunk(&buf[end..])?;
        return Some((Response { status, headers, body }, end + used));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(buf.len() - end);
    let body = buf.get(end..end + len)?.to_vec();
    Some((Response { status, headers, body }, end + len))
}

/// `GET path` with `Connection: close`.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let buf = raw(port, req.as_bytes())?;
    parse_response(&buf)
        .map(|(r, _)| r)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&buf))))
}

/// Runs `f` in a loop on a thread until the returned guard is stopped;
/// counts successes and failures (with the first few errors).
pub struct Hammer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Hammer {
    /// Starts requesting `GET /` on `port` continuously (bounded: at most
    /// 60 s and 200k requests).
    pub fn start(port: u16) -> Hammer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut ok, mut errs) = (0u64, Vec::new());
            let t0 = Instant::now();
            while !s2.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) && ok < 200_000 {
                match get(port, "/") {
                    Ok(r) if r.status < 500 => ok += 1,
                    Ok(r) => errs.push(format!("status {}", r.status)),
                    Err(e) => errs.push(e.to_string()),
                }
            }
            (ok, errs)
        });
        Hammer { stop, handle: Some(handle) }
    }

    /// Stops and returns (successes, errors).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Compiles a C plugin with the project's flags
/// (`cc -std=c99 -Wall -Wextra -Werror -fPIC -shared -Wl,-z,defs`)
/// against the header directory `include`, with `-D` definitions.
pub fn build_c_plugin(src: &Path, include: &Path, defines: &[&str], out: &Path) {
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-Wl,-z,defs", "-I"])
        .arg(include);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    let o = cmd.arg(src).arg("-o").arg(out).output().expect("cc must be installed");
    assert!(o.status.success(), "cc {}: {}", src.display(), String::from_utf8_lossy(&o.stderr));
}

/// The Rust test plugin built by `cargo build --workspace`.
pub fn plugin_so(name: &str) -> PathBuf {
    let so = ngxr_bin().parent().unwrap().join(format!("libngxr_{name}.so"));
    assert!(so.exists(), "{} not found: run `cargo build --workspace` first", so.display());
    assert_fresh(&so);
    so
}

/// `load_module` lines for the named product plugins (in this order).
pub fn load_plugins(names: &[&str]) -> String {
    names.iter().map(|n| format!("load_module {};\n", plugin_so(n).display())).collect()
}

/// A client connection for keepalive and pipelining conversations.
pub struct Client {
    /// The socket.
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to 127.0.0.1:port with a 5 s read timeout.
    pub fn new(port: u16) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { sock, buf: Vec::new() }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, b: &[u8]) {
        self.sock.write_all(b).unwrap();
    }

    /// Reads one response (None on EOF before a complete one).
    pub fn response_to(&mut self, head_only: bool) -> Option<Response> {
        loop {
            if let Some((r, n)) = parse_response_to(&self.buf, head_only) {
                // A close-delimited body is complete only at EOF.
                let delimited = !head_only
                    && r.header("content-length").is_none()
                    && r.header("transfer-encoding").is_none()
                    && r.status >= 200
                    && r.status != 204
                    && r.status != 304;
                if !delimited {
                    self.buf.drain(..n);
                    return Some(r);
                }
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    let r = parse_response_to(&self.buf, head_only).map(|(r, _)| r);
                    self.buf.clear();
                    return r;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads one response to a non-HEAD request.
    pub fn response(&mut self) -> Option<Response> {
        self.response_to(false)
    }

    /// True once the server closed the connection (EOF within 5 s).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The path of the testkit plugin.
pub fn testkit_so() -> PathBuf {
    let bin = ngxr_bin();
    let so = bin.parent().unwrap().join("libngxr_testkit.so");
    assert!(so.exists(), "{} not found: run `cargo build --workspace` first", so.display());
    assert_fresh(&so);
    so
}

/// True when the tests run as root (workers then drop to nobody).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Starts `cmd`, which prints "PORT <n>" once it listens on 127.0.0.1,
/// and returns it with that port (10 s at most).
pub fn spawn_listening(cmd: &mut Command) -> (Child, u16) {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().expect("the server process starts");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("the server to print its port");
    let port = line.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("the server said {line:?}"));
    (child, port)
}

/// One request on a connection of its own: `head` (request line and
/// headers) with `Host: localhost` and `Connection: close` added, and
/// `body` with its Content-Length and `ctype`.
pub fn send_with_body(port: u16, head: &str, ctype: &str, body: &[u8]) -> Response {
    let mut wire = format!("{head}\r\nHost: localhost\r\nConnection: close\r\n").into_bytes();
    if !body.is_empty() {
        wire.extend_from_slice(format!("Content-Length: {}\r\nContent-Type: {ctype}\r\n", body.len()).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(body);
    parse_response(&raw(port, &wire).unwrap()).unwrap().0
}

/// `KEY=value` lines (what the test applications answer) as a map.
pub fn key_values(body: &[u8]) -> std::collections::HashMap<String, String> {
    String::from_utf8_lossy(body).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// MD5 in hex by the system's md5sum (an implementation independent of
/// the applications').
pub fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out[..32].to_string()
}

/// An application server listening on a Unix-domain socket (PHP's
/// FastCGI server, uWSGI, an SCGI server); killed on drop.
pub struct SocketServer {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl SocketServer {
    /// Starts `cmd` (`what` names it in failures), which listens on
    /// `socket`, and waits (10 s at most) until it accepts connections.
    pub fn start(cmd: &mut Command, socket: &Path, what: &str) -> SocketServer {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap_or_else(|e| panic!("{what} runs ({e}; .ci/run installs it)"));
        let mut s = SocketServer { child, socket: socket.to_path_buf() };
        poll_until(&format!("{what} to listen"), Duration::from_secs(10), || {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("{what} exited ({st})");
            }
            std::os::unix::net::UnixStream::connect(socket).ok()
        });
        s
    }

    /// PHP's FastCGI server (`php-cgi -b`, Debian's php-cgi): one process
    /// (no children to leave behind), serving one connection at a time.
    pub fn php_cgi(socket: &Path) -> SocketServer {
        SocketServer::start(Command::new("php-cgi").arg("-b").arg(socket).env("PHP_FCGI_CHILDREN", "0"), socket, "php-cgi")
    }

    /// tests/wsgi_app.py under uWSGI (Debian's uwsgi-core and
    /// uwsgi-plugin-python3), one process.
    pub fn uwsgi(socket: &Path) -> SocketServer {
        let mut cmd = Command::new("uwsgi");
        cmd.args(["--plugin", "python3", "--chmod-socket=666", "--disable-logging", "--socket"]).arg(socket).arg("--wsgi-file").arg(repo_root().join("tests/wsgi_app.py"));
        SocketServer::start(cmd.stderr(Stdio::null()), socket, "uwsgi")
    }

    /// tests/wsgi_app.py under flup's SCGI server (PyPI's flup).
    pub fn scgi(socket: &Path) -> SocketServer {
        SocketServer::start(Command::new("python3").arg(repo_root().join("tests/wsgi_app.py")).arg("scgi").arg(socket), socket, "the SCGI server (flup)")
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        // SIGKILL: uWSGI reloads on SIGTERM instead of exiting.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An independent HTTP backend (tests/backend.py, Python's standard
/// library) on an ephemeral 127.0.0.1 port; killed on drop.
pub struct Backend {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Its name (sent back in `X-Backend`).
    pub name: String,
}

impl Backend {
    /// Starts one named `name` and waits (10 s at most) until it listens.
    pub fn start(name: &str) -> Backend {
        let (child, port) = spawn_listening(Command::new("python3").arg(repo_root().join("tests/backend.py")).arg(name));
        Backend { child, port, name: name.to_string() }
    }

    /// Starts one on the Unix-domain socket `path` instead (`port` is 0).
    pub fn start_unix(name: &str, path: &Path) -> Backend {
        let (child, port) = spawn_listening(Command::new("python3").arg(repo_root().join("tests/backend.py")).arg(name).arg(format!("unix:{}", path.display())));
        Backend { child, port, name: name.to_string() }
    }

    /// How many TCP connections it has accepted (this query's included).
    pub fn conns(&self) -> u64 {
        let r = get(self.port, "/conns").unwrap();
        String::from_utf8_lossy(&r.body).trim().parse().unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test certificates, made at test time with the `openssl` command line
/// (nothing private is checked in). Files land in `dir` as STEM.crt and
/// STEM.key.
pub mod certs {
    use std::path::Path;
    use std::process::Command;

    fn run(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn key_args(ec: bool) -> Vec<&'static str> {
        if ec {
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        } else {
            vec!["-newkey", "rsa:2048"]
        }
    }

    /// A self-signed certificate with `subject` (e.g. "/CN=a.test") and
    /// subjectAltName `san` (e.g. "DNS:a.test"); ECDSA P-256 or RSA.
    pub fn self_signed(dir: &Path, stem: &str, subject: &str, san: &str, ec: bool) {
        let (crt, key, ext) = (format!("{stem}.crt"), format!("{stem}.key"), format!("subjectAltName={san}"));
        let mut a = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", subject, "-addext", &ext, "-keyout", &key, "-out", &crt];
        a.extend(key_args(ec));
        run(dir, &a);
    }

    /// A self-signed X.509 version 1 certificate (no extensions), as
    /// older tooling and nginx's own tests make them.
    pub fn v1(dir: &Path, stem: &str, subject: &str) {
        let (crt, key, csr) = (format!("{stem}.crt"), format!("{stem}.key"), format!("{stem}.csr"));
        run(dir, &["req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj", subject, "-keyout", &key, "-out", &csr]);
        run(dir, &["x509", "-req", "-in", &csr, "-signkey", &key, "-days", "2", "-out", &crt]);
    }

    /// A certificate authority STEM.crt/STEM.key.
    pub fn ca(dir: &Path, stem: &str) {
        let (crt, key, subj) = (format!("{stem}.crt"), format!("{stem}.key"), format!("/CN=ngxr test CA {stem}"));
        run(dir, &["req", "-x509", "-nodes", "-days", "2", "-newkey", "rsa:2048", "-subj", &subj, "-keyout", &key, "-out", &crt]);
    }

    /// A server certificate for `subject`/`san` signed by the CA `ca`.
    pub fn signed(dir: &Path, stem: &str, subject: &str, san: &str, ca: &str) {
        let (crt, key, csr, ext) = (format!("{stem}.crt"), format!("{stem}.key"), format!("{stem}.csr"), format!("{stem}.ext"));
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        run(dir, &["req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj", subject, "-keyout", &key, "-out", &csr]);
        let (cacrt, cakey) = (format!("{ca}.crt"), format!("{ca}.key"));
        run(dir, &["x509", "-req", "-in", &csr, "-CA", &cacrt, "-CAkey", &cakey, "-CAcreateserial", "-days", "2", "-extfile", &ext, "-out", &crt]);
    }
}

/// Runs curl (silent, 10 s limit) with `args`: (success, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl").args(["-s", "--max-time", "10"]).args(args).stdin(Stdio::null()).output().expect("curl runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `openssl s_client -connect 127.0.0.1:PORT ARGS…` with no input
/// (10 s limit): its stdout and stderr together.
pub fn s_client(port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The cipher an s_client run negotiated (None: the handshake failed).
pub fn negotiated(s_client_out: &str) -> Option<String> {
    let c = s_client_out.lines().find_map(|l| l.split_once("Cipher is ").map(|(_, c)| c))?;
    (c.trim() != "(NONE)" && c.trim() != "0000").then(|| c.trim().to_string())
}
