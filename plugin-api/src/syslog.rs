//! nginx's `syslog:` log targets (RFC 3164 over UDP or a Unix datagram
//! socket), for `error_log` in the host and `access_log` in the log
//! plugin: `syslog:server=addr[:port]|unix:/path[,facility=][,severity=]
//! [,tag=][,nohostname]`.
//!
//! A message goes out as `<PRI>Mmm dd hh:mm:ss host tag: text`, one
//! datagram each. Sending never blocks and a failure loses only that
//! message (a server that comes back gets the next ones).

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "intern", "lpr", "news", "uucp", "clock", "authpriv", "ftp", "ntp", "audit", "alert", "cron", "local0", "local1", "local2",
    "local3", "local4", "local5", "local6", "local7",
];

const SEVERITIES: [&str; 8] = ["emerg", "alert", "crit", "error", "warn", "notice", "info", "debug"];

enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram, std::path::PathBuf),
}

/// One syslog target.
pub struct Syslog {
    sock: Socket,
    facility: u8,
    /// `severity=` (0 emerg … 7 debug); info unless given.
    pub severity: u8,
    tag: String,
    hostname: Option<String>,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Syslog(facility {}, tag {})", self.facility, self.tag)
    }
}

/// A syslog severity by its nginx level name (`error` is 3).
pub fn severity_of(level: &str) -> Option<u8> {
    SEVERITIES.iter().position(|s| *s == level).map(|i| i as u8)
}

impl Syslog {
    /// Parses what follows `syslog:` and opens the socket. Each message
    /// names this machine (unless `nohostname`).
    pub fn open(spec: &str) -> Result<Syslog, String> {
        let (mut server, mut facility, mut severity, mut tag, mut nohost) = (None, 23u8, 6u8, "nginx".to_string(), false);
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "server" if !v.is_empty() => server = Some(v.to_string()),
                "facility" => facility = FACILITIES.iter().position(|f| *f == v).ok_or(format!("unknown syslog facility \"{v}\""))? as u8,
                "severity" => severity = severity_of(v).ok_or(format!("unknown syslog severity \"{v}\""))?,
                "tag" if !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => tag = v.to_string(),
                "tag" => return Err(format!("syslog \"tag\" only allows alphanumeric characters and underscore, at most 32: \"{v}\"")),
                "nohostname" if v.is_empty() => nohost = true,
                _ => return Err(format!("unknown syslog parameter \"{part}\"")),
            }
        }
        let server = server.ok_or("no syslog server specified")?;
        let sock = match server.strip_prefix("unix:") {
            Some(path) => Socket::Unix(UnixDatagram::unbound().map_err(|e| format!("socket() failed ({e})"))?, path.into()),
            None => {
                let with_port = if server.starts_with('[') && !server.contains("]:") || !server.starts_with('[') && !server.contains(':') { format!("{server}:514") } else { server.clone() };
                let addr: SocketAddr = with_port.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or(format!("host not found in syslog server \"{server}\""))?;
                let local: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
                let s = UdpSocket::bind(local).map_err(|e| format!("socket() failed ({e})"))?;
                s.connect(addr).map_err(|e| format!("connect() to {addr} failed ({e})"))?;
                s.set_nonblocking(true).map_err(|e| format!("fcntl(O_NONBLOCK) failed ({e})"))?;
                Socket::Udp(s)
            }
        };
        Ok(Syslog { sock, facility, severity, tag, hostname: (!nohost).then(libc_time::hostname) })
    }

    /// Sends `text` (without a line end) with severity `severity`.
    pub fn send(&self, severity: u8, text: &[u8]) {
        let mut m = Vec::with_capacity(64 + text.len());
        m.extend_from_slice(format!("<{}>{} ", u32::from(self.facility) * 8 + u32::from(severity), stamp()).as_bytes());
        if let Some(h) = &self.hostname {
            m.extend_from_slice(h.as_bytes());
            m.push(b' ');
        }
        m.extend_from_slice(self.tag.as_bytes());
        m.extend_from_slice(b": ");
        m.extend_from_slice(text.strip_suffix(b"\n").unwrap_or(text));
        let sent = match &self.sock {
            Socket::Udp(s) => s.send(&m).map(drop),
            Socket::Unix(s, path) => s.send_to(&m, path).map(drop),
        };
        if let (Err(_), Socket::Udp(s)) = (&sent, &self.sock) {
            // A refusal reported late (ICMP) fails one send: the next
            // message may go through again, so try this one once more.
            let _ = s.send(&m);
        }
    }
}

/// `Mmm dd hh:mm:ss` in local time (RFC 3164's timestamp).
fn stamp() -> String {
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as libc_time::TimeT);
    let tm = libc_time::local(now);
    format!("{} {:2} {:02}:{:02}:{:02}", MON[tm.mon % 12], tm.mday, tm.hour, tm.min, tm.sec)
}

/// localtime_r and gethostname without a libc crate dependency.
mod libc_time {
    pub type TimeT = i64;

    #[repr(C)]
    struct Tm {
        tm_sec: i32,
        tm_min: i32,
        tm_hour: i32,
        tm_mday: i32,
        tm_mon: i32,
        tm_year: i32,
        tm_wday: i32,
        tm_yday: i32,
        tm_isdst: i32,
        tm_gmtoff: i64,
        tm_zone: *const std::ffi::c_char,
    }

    extern "C" {
        fn localtime_r(t: *const TimeT, out: *mut Tm) -> *mut Tm;
        fn gethostname(name: *mut std::ffi::c_char, len: usize) -> i32;
    }

    /// This machine's name.
    pub fn hostname() -> String {
        let mut b = [0u8; 256];
        // SAFETY: gethostname writes at most b.len() bytes into b.
        if unsafe { gethostname(b.as_mut_ptr().cast(), b.len()) } != 0 {
            return String::new();
        }
        let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    pub struct Local {
        pub mon: usize,
        pub mday: i32,
        pub hour: i32,
        pub min: i32,
        pub sec: i32,
    }

    pub fn local(t: TimeT) -> Local {
        let mut tm = Tm { tm_sec: 0, tm_min: 0, tm_hour: 0, tm_mday: 1, tm_mon: 0, tm_year: 0, tm_wday: 0, tm_yday: 0, tm_isdst: 0, tm_gmtoff: 0, tm_zone: std::ptr::null() };
        // SAFETY: valid pointers for the call; localtime_r is thread-safe.
        unsafe { localtime_r(&t, &mut tm) };
        Local { mon: tm.tm_mon.max(0) as usize, mday: tm.tm_mday, hour: tm.tm_hour, min: tm.tm_min, sec: tm.tm_sec }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_udp_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let at = server.local_addr().unwrap();
        let s = Syslog::open(&format!("server={at},facility=user,severity=alert,tag=T_1")).unwrap();
        s.send(s.severity, b"hello\n");
        let mut b = [0u8; 256];
        let n = server.recv(&mut b).unwrap();
        let m = String::from_utf8_lossy(&b[..n]).into_owned();
        assert!(m.starts_with("<9>"), "{m}");
        assert!(m.ends_with(&format!(" {} T_1: hello", libc_time::hostname())), "{m}");
        let s = Syslog::open(&format!("server={at},nohostname")).unwrap();
        s.send(3, b"x");
        let n = server.recv(&mut b).unwrap();
        let m = String::from_utf8_lossy(&b[..n]).into_owned();
        assert!(m.starts_with("<187>") && m.ends_with(" nginx: x") && !m.contains(&libc_time::hostname()), "{m}");
        assert!(Syslog::open("facility=user").is_err());
        assert!(Syslog::open("server=127.0.0.1,tag=a-b").is_err());
    }
}
