//! The host's own settings, read out of a checked directive tree.
//!
//! Defaults are nginx's: one worker, `daemon on`, `master_process on`,
//! `worker_connections 512`, pid and error log under the prefix.

use super::{ConfError, Directive};
use crate::log::Level;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a relative path in the config is resolved.
#[derive(Debug, Clone)]
pub struct Prefix(pub PathBuf);

impl Prefix {
    /// `p` if absolute, else prefix/p.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.0.join(p)
        }
    }
}

/// One `error_log` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    /// A file path, or `None` for `stderr` (or syslog).
    pub path: Option<PathBuf>,
    /// `syslog:…`: what follows the prefix (checked when parsed).
    pub syslog: Option<String>,
    /// Minimum level written.
    pub level: Level,
}

/// One `load_module` line.
#[derive(Debug, Clone)]
pub struct ModuleRef {
    /// Resolved path of the `.so`.
    pub path: PathBuf,
    /// The directive, for error positions.
    pub at: Directive,
}

/// One listening socket to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Address and port.
    pub addr: SocketAddr,
    /// `default_server` was given on some `listen` for this address.
    pub default_server: bool,
    /// `backlog=` (nginx's default is 511).
    pub backlog: i32,
    /// `reuseport`: one socket per worker.
    pub reuseport: bool,
    /// `ipv6only=on|off` (default on).
    pub ipv6only: bool,
    /// `rcvbuf=`, `sndbuf=`.
    pub rcvbuf: Option<usize>,
    /// See `rcvbuf`.
    pub sndbuf: Option<usize>,
    /// `ssl` flag, for the TLS layer.
    pub ssl: bool,
    /// `deferred`: TCP_DEFER_ACCEPT.
    pub deferred: bool,
    /// `bind`: bind this address even when a wildcard covers its port.
    pub bind: bool,
    /// `so_keepalive=on`.
    pub so_keepalive: bool,
    /// `proxy_protocol`: connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Everything the host itself reads from the config.
#[derive(Debug, Clone)]
pub struct CoreConf {
    /// `worker_processes` (`auto` resolved to the CPU count).
    pub worker_processes: usize,
    /// `daemon`.
    pub daemon: bool,
    /// `master_process`.
    pub master_process: bool,
    /// `user name [group]`.
    pub user: Option<(String, Option<String>)>,
    /// `worker_rlimit_nofile`.
    pub rlimit_nofile: Option<u64>,
    /// `worker_priority`.
    pub priority: Option<i32>,
    /// `worker_cpu_affinity`: `Some(vec![])` for `auto`, else one mask per worker.
    pub cpu_affinity: Option<Vec<u64>>,
    /// `worker_shutdown_timeout`.
    pub shutdown_timeout: Option<Duration>,
    /// `working_directory`.
    pub working_directory: Option<PathBuf>,
    /// `pid`.
    pub pid: PathBuf,
    /// `error_log` at main level (empty: the default log).
    pub error_logs: Vec<LogTarget>,
    /// `load_module`s in order.
    pub modules: Vec<ModuleRef>,
    /// `events { worker_connections }`.
    pub worker_connections: usize,
    /// `events { multi_accept }`.
    pub multi_accept: bool,
    /// Listening sockets to open, deduplicated.
    pub listens: Vec<Listen>,
}

/// Default pid file, relative to the prefix.
pub const DEFAULT_PID: &str = "logs/ngxr.pid";
/// Default error log, relative to the prefix.
pub const DEFAULT_ERROR_LOG: &str = "logs/error.log";

/// Parses nginx's time syntax: `10` (seconds), `500ms`, `10s`, `1m`,
/// `2h`, `1d`, `1w`, `1M` (30 days), `1y` (365 days), and sums such as
/// `1h30m` or `1h 30m` (each unit at most once, larger units first).
pub fn parse_duration(s: &str) -> Option<Duration> {
    const UNITS: [(&str, u64); 8] = [("y", 31_536_000_000), ("M", 2_592_000_000), ("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("ms", 1), ("m", 60_000), ("s", 1000)];
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let (mut total, mut last) = (0u64, usize::MAX);
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (ms, at) = match UNITS.iter().position(|(u, _)| rest.starts_with(u)) {
            Some(i) => {
                rest = &rest[UNITS[i].0.len()..];
                (UNITS[i].1, i)
            }
            // A bare number is seconds, and only at the end.
            None if rest.trim().is_empty() => (1000, UNITS.len()),
            None => return None,
        };
        // "ms" sorts before "m" above only so it matches first; order the
        // units by size for the "larger first" rule.
        let rank = match at {
            5 => 7,
            6 => 5,
            7 => 6,
            n => n,
        };
        if last != usize::MAX && rank <= last {
            return None;
        }
        last = rank;
        total = total.checked_add(n.checked_mul(ms)?)?;
        rest = rest.trim_start();
    }
    Some(Duration::from_millis(total))
}

/// Parses `512`, `8k`, `1m`, `1g` (nginx size syntax).
pub fn parse_size(s: &str) -> Option<usize> {
    let (num, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        b'g' | b'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mul)
}

impl CoreConf {
    /// Reads the host settings from a checked tree.
    pub fn from_tree(root: &[Directive], prefix: &Prefix) -> Result<CoreConf, ConfError> {
        let mut c = CoreConf {
            worker_processes: 1,
            daemon: true,
            master_process: true,
            user: None,
            rlimit_nofile: None,
            priority: None,
            cpu_affinity: None,
            shutdown_timeout: None,
            working_directory: None,
            pid: prefix.resolve(DEFAULT_PID),
            error_logs: Vec::new(),
            modules: Vec::new(),
            worker_connections: 512,
            multi_accept: false,
            listens: Vec::new(),
        };
        for d in root {
            match d.name.as_str() {
                "worker_processes" => {
                    c.worker_processes = match d.args[0].as_str() {
                        "auto" => std::thread::available_parallelism().map_or(1, |n| n.get()),
                        s => s.parse().ok().filter(|&n| n > 0 && n <= 1024).ok_or(d.invalid(0))?,
                    }
                }
                "daemon" => c.daemon = d.flag()?,
                "master_process" => c.master_process = d.flag()?,
                "user" => c.user = Some((d.args[0].clone(), d.args.get(1).cloned())),
                "worker_rlimit_nofile" => {
                    c.rlimit_nofile = Some(d.args[0].parse().map_err(|_| d.invalid(0))?)
                }
                "worker_priority" => {
                    let p: i32 = d.args[0].parse().map_err(|_| d.invalid(0))?;
                    if !(-20..=20).contains(&p) {
                        return Err(d.invalid(0));
                    }
                    c.priority = Some(p);
                }
                "worker_cpu_affinity" => c.cpu_affinity = Some(parse_affinity(d)?),
                "worker_shutdown_timeout" => {
                    c.shutdown_timeout = Some(parse_duration(&d.args[0]).ok_or(d.invalid(0))?)
                }
                "working_directory" => c.working_directory = Some(prefix.resolve(&d.args[0])),
                "pid" => c.pid = prefix.resolve(&d.args[0]),
                "error_log" => c.error_logs.push(parse_error_log(d, prefix)?),
                "load_module" => {
                    c.modules.push(ModuleRef { path: prefix.resolve(&d.args[0]), at: d.clone() })
                }
                "events" => c.read_events(d)?,
                "http" => c.read_http(d)?,
                _ => {}
            }
        }
        Ok(c)
    }

    fn read_events(&mut self, events: &Directive) -> Result<(), ConfError> {
        for d in events.children() {
            match d.name.as_str() {
                "worker_connections" => {
                    self.worker_connections =
                        d.args[0].parse().ok().filter(|&n| n >= 2).ok_or(d.invalid(0))?
                }
                "multi_accept" => self.multi_accept = d.flag()?,
                "accept_mutex" => {
                    d.flag()?;
                }
                "use" if d.args[0] != "epoll" => {
                    return Err(d.err(format!(
                        "invalid event type \"{}\" (ngxr uses epoll)",
                        d.args[0]
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read_http(&mut self, http: &Directive) -> Result<(), ConfError> {
        // Addresses whose socket options were already given by a `listen`.
        let mut with_opts: Vec<SocketAddr> = Vec::new();
        for server in http.children().iter().filter(|d| d.name == "server") {
            let mut any = false;
            for d in server.children().iter().filter(|d| d.name == "listen") {
                any = true;
                let (l, has_opts) = parse_listen(d)?;
                self.add_listen(l, has_opts, &mut with_opts, d)?;
            }
            if !any {
                // nginx's default: listen *:80 (8000 when not root).
                let port = if crate::sys::is_root() { 80 } else { 8000 };
                let l = default_listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
                if !self.listens.iter().any(|x| x.addr == l.addr) {
                    self.listens.push(l);
                }
            }
        }
        self.drop_covered_listens();
        Ok(())
    }

    /// Merges one `listen` into the set: socket options may be given once
    /// per address; `default_server` once per address.
    fn add_listen(
        &mut self,
        l: Listen,
        has_opts: bool,
        with_opts: &mut Vec<SocketAddr>,
        d: &Directive,
    ) -> Result<(), ConfError> {
        if has_opts {
            if with_opts.contains(&l.addr) {
                return Err(d.err(format!("duplicate listen options for {}", l.addr)));
            }
            with_opts.push(l.addr);
        }
        let Some(have) = self.listens.iter_mut().find(|x| x.addr == l.addr) else {
            self.listens.push(l);
            return Ok(());
        };
        if l.default_server && have.default_server {
            return Err(d.err(format!("a duplicate default server for {}", l.addr)));
        }
        let (ds, ssl) = (have.default_server || l.default_server, have.ssl || l.ssl);
        if has_opts {
            *have = l;
        }
        have.default_server = ds;
        have.ssl = ssl;
        Ok(())
    }

    /// nginx binds only the wildcard address of a port when both a wildcard
    /// and specific addresses are listed (unless `bind`); connections are
    /// told apart by their local address.
    fn drop_covered_listens(&mut self) {
        let wild: Vec<(bool, u16)> = self
            .listens
            .iter()
            .filter(|l| l.addr.ip().is_unspecified())
            .map(|l| (l.addr.is_ipv4(), l.addr.port()))
            .collect();
        self.listens.retain(|l| {
            l.addr.ip().is_unspecified()
                || l.bind
                || l.reuseport
                || !wild.contains(&(l.addr.is_ipv4(), l.addr.port()))
        });
    }
}

/// A listen with nginx's default options.
pub fn default_listen(addr: SocketAddr) -> Listen {
    Listen {
        addr,
        default_server: false,
        backlog: 511,
        reuseport: false,
        ipv6only: true,
        rcvbuf: None,
        sndbuf: None,
        ssl: false,
        deferred: false,
        bind: false,
        so_keepalive: false,
        proxy_protocol: false,
    }
}

/// Parses one `listen` directive; the flag says whether it set socket
/// options (which may be given only once per address).
pub fn parse_listen(d: &Directive) -> Result<(Listen, bool), ConfError> {
    let addr = parse_listen_addr(d)?;
    let mut l = default_listen(addr);
    let mut opts = false;
    for a in &d.args[1..] {
        let (k, v) = a.split_once('=').map_or((a.as_str(), None), |(k, v)| (k, Some(v)));
        let bad = || d.err(format!("invalid parameter \"{a}\""));
        match (k, v) {
            ("default_server" | "default", None) => l.default_server = true,
            ("ssl", None) => l.ssl = true,
            ("http2", None) => crate::http::conf::not_yet(d, "http2"),
            ("proxy_protocol", None) => l.proxy_protocol = true,
            ("reuseport", None) => {
                l.reuseport = true;
                opts = true;
            }
            ("bind", None) => l.bind = true,
            ("deferred", None) => {
                l.deferred = true;
                opts = true;
            }
            ("backlog", Some(v)) => {
                l.backlog = v.parse().ok().filter(|&n: &i32| n > 0).ok_or_else(|| {
                    d.err(format!("invalid backlog \"{v}\""))
                })?;
                opts = true;
            }
            ("rcvbuf", Some(v)) => {
                l.rcvbuf = Some(parse_size(v).ok_or_else(|| d.err(format!("invalid rcvbuf \"{v}\"")))?);
                opts = true;
            }
            ("sndbuf", Some(v)) => {
                l.sndbuf = Some(parse_size(v).ok_or_else(|| d.err(format!("invalid sndbuf \"{v}\"")))?);
                opts = true;
            }
            ("ipv6only", Some("on")) => l.ipv6only = true,
            ("ipv6only", Some("off")) => {
                l.ipv6only = false;
                opts = true;
            }
            ("so_keepalive", Some("on")) => {
                l.so_keepalive = true;
                opts = true;
            }
            ("so_keepalive", Some("off")) => {}
            _ => return Err(bad()),
        }
    }
    if l.bind || l.reuseport || l.deferred {
        l.bind = true;
    }
    Ok((l, opts))
}

fn parse_listen_addr(d: &Directive) -> Result<SocketAddr, ConfError> {
    let s = d.args[0].as_str();
    if s.starts_with("unix:") {
        return Err(d.err(format!("unix domain sockets are not supported yet in \"{s}\"")));
    }
    let bad_port = || d.err(format!("invalid port in \"{s}\" of the \"listen\" directive"));
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(bad_port);
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once(']').ok_or_else(bad_port)?;
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| d.err(format!("invalid IPv6 address in \"{s}\" of the \"listen\" directive")))?;
        let port = match port.strip_prefix(':') {
            Some(p) => port_of(p)?,
            None if port.is_empty() => 80,
            None => return Err(bad_port()),
        };
        return Ok(SocketAddr::new(IpAddr::V6(ip), port));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port_of(s)?));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, port_of(p)?),
        None => (s, 80),
    };
    if host == "*" {
        return Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(SocketAddr::new(ip.into(), port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.find(SocketAddr::is_ipv4))
        .ok_or_else(|| d.err(format!("host not found in \"{s}\" of the \"listen\" directive")))
}

pub(crate) fn parse_error_log(d: &Directive, prefix: &Prefix) -> Result<LogTarget, ConfError> {
    let mut syslog = None;
    let path = match d.args[0].as_str() {
        "stderr" => None,
        s if s.starts_with("syslog:") => {
            let spec = &s["syslog:".len()..];
            // Checked now (the socket is made when the logs are opened).
            plugin_api::syslog::Syslog::open(spec).map_err(|e| d.err(e))?;
            syslog = Some(spec.to_string());
            None
        }
        s if s.starts_with("memory:") => return Err(d.err(format!("\"{s}\" error log targets are not supported yet"))),
        s => Some(prefix.resolve(s)),
    };
    let level = match d.args.get(1) {
        None => Level::Error,
        Some(l) => Level::parse(l).ok_or_else(|| d.err(format!("invalid log level \"{l}\"")))?,
    };
    Ok(LogTarget { path, syslog, level })
}

fn parse_affinity(d: &Directive) -> Result<Vec<u64>, ConfError> {
    if d.args[0] == "auto" {
        return Ok(Vec::new());
    }
    d.args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if a.is_empty() || a.len() > 64 || !a.bytes().all(|b| b == b'0' || b == b'1') {
                return Err(d.invalid(i));
            }
            u64::from_str_radix(a, 2).map_err(|_| d.invalid(i))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;
    use crate::config::table::Registry;

    fn core(src: &str) -> Result<CoreConf, String> {
        let t = parse_str(src, "c").map_err(|e| e.to_string())?;
        Registry::core().check(&t).map_err(|e| e.to_string())?;
        CoreConf::from_tree(&t, &Prefix("/p".into())).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_values() {
        let c = core("").unwrap();
        assert_eq!(c.worker_processes, 1);
        assert!(c.daemon && c.master_process);
        assert_eq!(c.pid, PathBuf::from("/p/logs/ngxr.pid"));
        let c = core("worker_processes 3; daemon off; pid /run/x.pid; events { worker_connections 64; }")
            .unwrap();
        assert_eq!((c.worker_processes, c.daemon, c.worker_connections), (3, false, 64));
        assert_eq!(c.pid, PathBuf::from("/run/x.pid"));
    }

    #[test]
    fn listen_forms() {
        let c = core(
            "http { server { listen 127.0.0.1:8080 default_server backlog=10 reuseport; listen [::1]:81; listen 8082; }
                    server { listen 127.0.0.1:8080; listen 127.0.0.2:8082; } }",
        )
        .unwrap();
        let addrs: Vec<String> = c.listens.iter().map(|l| l.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:8080", "[::1]:81", "0.0.0.0:8082"]);
        assert!(c.listens[0].default_server && c.listens[0].reuseport);
        assert_eq!(c.listens[0].backlog, 10);
    }

    #[test]
    fn value_errors_table() {
        let cases = [
            ("worker_processes x;", "invalid value \"x\" in \"worker_processes\" directive in c:1"),
            ("daemon maybe;", "invalid value \"maybe\" in \"daemon\" directive, it must be \"on\" or \"off\" in c:1"),
            ("http { server { listen 1.2.3.4:99999; } }", "invalid port in \"1.2.3.4:99999\" of the \"listen\" directive in c:1"),
            ("http { server { listen 80 foo; } }", "invalid parameter \"foo\" in c:1"),
            ("http {\nserver { listen 81 default_server; }\nserver { listen 81 default_server; } }", "a duplicate default server for 0.0.0.0:81 in c:3"),
            ("http {\nserver { listen 81 backlog=5; }\nserver { listen 81 backlog=6; } }", "duplicate listen options for 0.0.0.0:81 in c:3"),
            ("error_log x.log loud;", "invalid log level \"loud\" in c:1"),
        ];
        for (src, want) in cases {
            assert_eq!(core(src).unwrap_err(), want, "{src}");
        }
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("1y"), Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(parse_duration("1M"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2w"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m 5"), Some(Duration::from_secs(5405)));
        assert_eq!(parse_duration("1m500ms"), Some(Duration::from_millis(60_500)));
        assert_eq!(parse_duration("30m1h"), None);
        assert_eq!(parse_duration("5 5"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_size("8k"), Some(8192));
        assert_eq!(parse_size("1m"), Some(1 << 20));
    }
}
