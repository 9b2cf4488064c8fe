//! `proxy_cache`: responses kept on disk, one file per key, as nginx.
//!
//! - `proxy_cache_path path [levels=1:2] keys_zone=name:size
//!   [inactive=10m] [max_size=size]` (http) declares a cache; the
//!   directory is made for the workers (ABI 1.6 `conf_add_path`).
//! - A response's file is `path/<levels>/<md5(key)>` (nginx's layout:
//!   `levels=1:2` puts `…/c/ab/…abc` under the hash's last characters),
//!   holding the key, the time it stays fresh, the status, the response
//!   headers and the body. Written to a temporary file beside it while
//!   the response streams to the client, renamed into place when the
//!   body is complete (a cut-short response is never kept).
//! - Freshness as nginx decides it: `X-Accel-Expires`, then
//!   `Cache-Control` (`no-cache`, `no-store`, `private` keep nothing;
//!   `s-maxage`, `max-age`), then `Expires`, then `proxy_cache_valid` for
//!   the status; `Set-Cookie` or `Vary: *` keep nothing
//!   (`proxy_ignore_headers` lifts each of these).
//! - A lookup reads the file (one open, one read of its head); a hit is
//!   sent with sendfile.
//! - Worker 0 removes entries unused for `inactive` and, over `max_size`,
//!   the least recently used, every few seconds.

use plugin_api::{sys, template::Template};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `proxy_ignore_headers` bits that concern the cache.
pub mod ignore {
    pub const CACHE_CONTROL: u32 = 1;
    pub const EXPIRES: u32 = 2;
    pub const SET_COOKIE: u32 = 4;
    pub const X_ACCEL_EXPIRES: u32 = 8;
    pub const VARY: u32 = 16;
    /// (Not a cache header: X-Accel-Limit-Rate.)
    pub const LIMIT_RATE: u32 = 32;
}

/// `proxy_cache_use_stale` bits.
pub mod stale {
    pub const ERROR: u32 = 1;
    pub const TIMEOUT: u32 = 2;
    pub const INVALID_HEADER: u32 = 4;
    pub const UPDATING: u32 = 8;
    pub const HTTP_500: u32 = 16;
    pub const HTTP_502: u32 = 32;
    pub const HTTP_503: u32 = 64;
    pub const HTTP_504: u32 = 128;
    pub const HTTP_403: u32 = 256;
    pub const HTTP_404: u32 = 512;
    pub const HTTP_429: u32 = 1024;
}

/// One `proxy_cache_path`.
#[derive(Debug)]
pub struct Zone {
    pub name: String,
    pub dir: PathBuf,
    pub levels: Vec<usize>,
    pub inactive_ms: u64,
    pub max_size: u64,
}

thread_local! {
    /// This generation's caches by zone name.
    pub static ZONES: RefCell<HashMap<String, Rc<Zone>>> = RefCell::new(HashMap::new());
}

/// Parses `proxy_cache_path`'s arguments.
pub fn parse_path(a: &[&str], size: impl Fn(&str) -> Result<u64, String>, time: impl Fn(&str) -> Result<u64, String>, full: impl Fn(&str) -> String) -> Result<Zone, String> {
    let mut z = Zone { name: String::new(), dir: PathBuf::from(full(a[0])), levels: Vec::new(), inactive_ms: 600_000, max_size: 0 };
    for opt in &a[1..] {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        match k {
            "levels" => {
                z.levels = v.split(':').map(|l| l.parse::<usize>().ok().filter(|n| (1..=2).contains(n))).collect::<Option<Vec<_>>>().filter(|l| l.len() <= 3).ok_or_else(|| format!("invalid \"levels\" \"{v}\""))?;
            }
            "keys_zone" => {
                let (name, sz) = v.split_once(':').ok_or_else(|| format!("invalid keys zone size \"{v}\""))?;
                size(sz)?;
                if name.is_empty() {
                    return Err(format!("invalid keys zone name \"{v}\""));
                }
                z.name = name.to_string();
            }
            "inactive" => z.inactive_ms = time(v)?,
            "max_size" => z.max_size = size(v)?,
            "use_temp_path" | "min_free" | "manager_files" | "manager_sleep" | "manager_threshold" | "loader_files" | "loader_sleep" | "loader_threshold" | "purger" | "purger_files" | "purger_sleep" | "purger_threshold" => {}
            _ => return Err(format!("invalid parameter \"{opt}\"")),
        }
    }
    if z.name.is_empty() {
        return Err(format!("\"{}\" must have \"keys_zone\" parameter", "proxy_cache_path"));
    }
    Ok(z)
}

/// The md5 of the key, in hex.
pub fn hash(key: &[u8]) -> String {
    use md5::{Digest, Md5};
    let d = Md5::digest(key);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the entry for `key` lives (nginx's layout).
pub fn file_path(z: &Zone, key: &[u8]) -> PathBuf {
    let h = hash(key);
    let mut p = z.dir.clone();
    let mut end = h.len();
    for &l in &z.levels {
        p.push(&h[end - l..end]);
        end -= l;
    }
    p.push(&h);
    p
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An entry read from disk.
pub struct Entry {
    pub file: File,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_off: u64,
    pub body_len: u64,
    pub valid_until: u64,
    /// The response's Vary: its header names (lowercase, sorted, comma
    /// separated) and the hash of the values the request that fetched it
    /// had for them.
    pub vary: Option<(String, String)>,
}

impl Entry {
    pub fn fresh(&self) -> bool {
        self.valid_until > now_secs()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

const MAGIC: &[u8] = b"NGXRCACHE1\r\n";

/// Opens the entry at `path` if it is one for `key`.
pub fn open(path: &Path, key: &[u8]) -> Option<Entry> {
    let mut file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    // The head (meta lines and headers) is read 4 KiB at a time until
    // both of its blank lines are in (64 KiB at most), not the body.
    let mut head = Vec::with_capacity(4096);
    loop {
        let got = head.len();
        let want = (got + 4096).min(64 * 1024).min(meta.len() as usize);
        if want <= got {
            break;
        }
        head.resize(want, 0);
        match file.read(&mut head[got..]) {
            Ok(0) | Err(_) => {
                head.truncate(got);
                break;
            }
            Ok(n) => head.truncate(got + n),
        }
        if head.windows(4).filter(|w| *w == b"\r\n\r\n").count() >= 2 || head.windows(6).any(|w| w == b"\r\n\r\n\r\n") {
            break;
        }
    }
    let rest = head.strip_prefix(MAGIC)?;
    // The meta lines end with an empty line; the headers after them too.
    let meta_end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let hdrs = &rest[meta_end..];
    let hdr_end = if hdrs.starts_with(b"\r\n") { 2 } else { hdrs.windows(4).position(|w| w == b"\r\n\r\n")? + 4 };
    let meta_text = std::str::from_utf8(&rest[..meta_end]).ok()?;
    let (mut k, mut valid, mut status, mut vary, mut variant) = (None, None, None, None, None);
    for l in meta_text.split("\r\n").filter(|l| !l.is_empty()) {
        match l.split_once(": ") {
            Some(("KEY", v)) => k = Some(v),
            Some(("VALID", v)) => valid = v.parse().ok(),
            Some(("STATUS", v)) => status = v.parse().ok(),
            Some(("VARY", v)) => vary = Some(v.to_string()),
            Some(("VARIANT", v)) => variant = Some(v.to_string()),
            _ => return None,
        }
    }
    if k?.as_bytes() != key {
        return None;
    }
    let text = std::str::from_utf8(&hdrs[..hdr_end]).ok()?;
    let headers = text.split("\r\n").filter_map(|l| l.split_once(": ").map(|(a, b)| (a.to_string(), b.to_string()))).collect();
    let body_off = (MAGIC.len() + meta_end + hdr_end) as u64;
    // A hit counts as a use (the manager's "inactive"); dated at most
    // once a minute, so most hits cost no extra system call.
    if meta.modified().is_ok_and(|m| m.elapsed().unwrap_or_default() > Duration::from_secs(60)) {
        let _ = file.set_modified(SystemTime::now());
    }
    let vary = vary.map(|n| (n, variant.unwrap_or_default()));
    Some(Entry { file, status: status?, headers, body_off, body_len: meta.len().saturating_sub(body_off), valid_until: valid?, vary })
}

/// A response being written into the cache.
pub struct Store {
    tmp: PathBuf,
    file: Option<File>,
    dest: PathBuf,
}

impl Store {
    /// Starts the entry: its meta data and headers now, the body as it
    /// comes. None if the file cannot be made (logged).
    pub fn begin(dest: PathBuf, key: &[u8], valid_until: u64, status: u16, headers: &[(String, String)], vary: Option<&(String, String)>) -> Option<Store> {
        if key.contains(&b'\r') || key.contains(&b'\n') {
            return None;
        }
        let dir = dest.parent()?;
        if let Err(e) = std::fs::create_dir_all(dir) {
            plugin_api::log(sys::LOG_CRIT, &format!("mkdir() \"{}\" failed ({e})", dir.display()));
            return None;
        }
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), crate::session_serial()));
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => f,
            Err(e) => {
                plugin_api::log(sys::LOG_CRIT, &format!("open() \"{}\" failed ({e})", tmp.display()));
                return None;
            }
        };
        let mut h = Vec::with_capacity(512);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(b"KEY: ");
        h.extend_from_slice(key);
        h.extend_from_slice(format!("\r\nVALID: {valid_until}\r\nSTATUS: {status}\r\n").as_bytes());
        if let Some((names, variant)) = vary {
            h.extend_from_slice(format!("VARY: {names}\r\nVARIANT: {variant}\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            if v.contains(['\r', '\n']) {
                continue;
            }
            h.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        let mut s = Store { tmp, file: None, dest };
        if file.write_all(&h).is_err() {
            return None;
        }
        s.file = Some(file);
        Some(s)
    }

    /// Appends body bytes; a failed write abandons the entry.
    pub fn write(&mut self, data: &[u8]) {
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(data) {
                plugin_api::log(sys::LOG_CRIT, &format!("write() to cache file \"{}\" failed ({e})", self.tmp.display()));
                self.file = None;
            }
        }
    }

    /// The body is complete: the entry takes its place.
    pub fn commit(mut self) {
        if self.file.take().is_some() {
            if let Err(e) = std::fs::rename(&self.tmp, &self.dest) {
                plugin_api::log(sys::LOG_CRIT, &format!("rename() \"{}\" to \"{}\" failed ({e})", self.tmp.display(), self.dest.display()));
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Not committed (or the rename failed): the partial file goes.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// A Vary record: the header names and a request's values' hash.
pub type Vary = (String, String);

/// Where an entry lives: its key and its file.
pub type At = (Vec<u8>, PathBuf);

/// A response's Vary header names: lowercase, sorted, without repeats,
/// comma separated (None without any).
pub fn vary_names(values: &[String]) -> Option<String> {
    let mut names: Vec<String> = values.iter().flat_map(|v| v.split(',')).map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty() && n != "*").collect();
    names.sort();
    names.dedup();
    (!names.is_empty()).then(|| names.join(","))
}

/// The hash of a request's values for the Vary header `names`.
pub fn variant(header: &dyn Fn(&str) -> Option<String>, names: &str) -> String {
    let mut text = Vec::new();
    for n in names.split(',') {
        text.extend_from_slice(n.as_bytes());
        text.push(b':');
        // Whitespace and empty elements do not make another variant
        // ("a, b" is "a,b"), as nginx normalizes.
        let v = header(n).unwrap_or_default();
        let parts: Vec<&str> = v.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        text.extend_from_slice(parts.join(",").as_bytes());
        text.push(b'\n');
    }
    hash(&text)
}

/// The key of one variant of `key`'s response.
pub fn variant_key(key: &[u8], variant: &str) -> Vec<u8> {
    [key, b" variant=", variant.as_bytes()].concat()
}

/// How long a response stays fresh (seconds from now), or None when it
/// must not be cached: nginx's order of X-Accel-Expires, Cache-Control,
/// Expires, then `valid` for the status.
pub fn ttl(status: u16, header: &dyn Fn(&str) -> Vec<String>, ignored: u32, valid: &[(Vec<u16>, u64)]) -> Option<u64> {
    let now = now_secs();
    if ignored & ignore::SET_COOKIE == 0 && !header("set-cookie").is_empty() {
        return None;
    }
    if ignored & ignore::VARY == 0 && header("vary").iter().any(|v| v.split(',').any(|t| t.trim() == "*")) {
        return None;
    }
    if ignored & ignore::X_ACCEL_EXPIRES == 0 {
        if let Some(v) = header("x-accel-expires").first() {
            let v = v.trim();
            let secs = match v.strip_prefix('@') {
                Some(abs) => abs.parse::<u64>().ok().map(|t| t.saturating_sub(now)),
                None => v.parse::<u64>().ok(),
            };
            if let Some(s) = secs {
                return (s > 0).then_some(s);
            }
        }
    }
    if ignored & ignore::CACHE_CONTROL == 0 {
        let cc = header("cache-control").join(",").to_ascii_lowercase();
        let mut max_age = None;
        for d in cc.split(',').map(str::trim) {
            if ["no-cache", "no-store", "private"].contains(&d) || d.starts_with("no-cache=") || d.starts_with("private=") {
                return None;
            }
            if let Some(v) = d.strip_prefix("s-maxage=").or_else(|| d.strip_prefix("max-age=")) {
                let v = v.trim_matches('"').parse::<u64>().ok();
                // s-maxage wins over max-age, as nginx.
                if d.starts_with("s-maxage=") || max_age.is_none() {
                    max_age = v.or(max_age);
                }
            }
        }
        if let Some(s) = max_age {
            return (s > 0).then_some(s);
        }
    }
    if ignored & ignore::EXPIRES == 0 {
        if let Some(v) = header("expires").first() {
            return match httpdate::parse_http_date(v.trim()) {
                Ok(t) => {
                    let t = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    (t > now).then(|| t - now)
                }
                Err(_) => None,
            };
        }
    }
    valid.iter().find(|(codes, _)| if codes.is_empty() { true } else { codes.contains(&status) }).map(|(_, ms)| ms / 1000).filter(|&s| s > 0)
}

/// `proxy_cache_valid [code… | any] time`: codes (empty: any), time.
pub fn parse_valid(a: &[&str], time: impl Fn(&str) -> Result<u64, String>) -> Result<(Vec<u16>, u64), String> {
    let ms = time(a[a.len() - 1])?;
    let mut codes = Vec::new();
    let mut any = false;
    for c in &a[..a.len() - 1] {
        if *c == "any" {
            any = true;
            continue;
        }
        codes.push(c.parse::<u16>().ok().filter(|c| (100..=599).contains(c)).ok_or_else(|| format!("invalid status \"{c}\""))?);
    }
    if a.len() == 1 {
        // nginx: a time alone means 200, 301 and 302.
        codes = vec![200, 301, 302];
    }
    Ok((if any { Vec::new() } else { codes }, ms))
}

/// `proxy_cache_use_stale` words.
pub fn parse_stale(a: &[&str]) -> Result<u32, String> {
    let mut m = 0;
    for w in a {
        m |= match *w {
            "off" => 0,
            "error" => stale::ERROR,
            "timeout" => stale::TIMEOUT,
            "invalid_header" => stale::INVALID_HEADER,
            "updating" => stale::UPDATING,
            "http_500" => stale::HTTP_500,
            "http_502" => stale::HTTP_502,
            "http_503" => stale::HTTP_503,
            "http_504" => stale::HTTP_504,
            "http_403" => stale::HTTP_403,
            "http_404" => stale::HTTP_404,
            "http_429" => stale::HTTP_429,
            _ => return Err(format!("invalid value \"{w}\" in \"proxy_cache_use_stale\" directive")),
        };
    }
    Ok(m)
}

/// The use_stale bit for an upstream status.
pub fn stale_bit(status: u16) -> u32 {
    match status {
        500 => stale::HTTP_500,
        502 => stale::HTTP_502,
        503 => stale::HTTP_503,
        504 => stale::HTTP_504,
        403 => stale::HTTP_403,
        404 => stale::HTTP_404,
        429 => stale::HTTP_429,
        _ => 0,
    }
}

/// `proxy_cache_valid` entries: (statuses, empty for any; milliseconds).
pub type Valid = Vec<(Vec<u16>, u64)>;

/// `proxy_cache`'s zone: named, or picked per request by variables.
pub enum ZoneRef {
    Fixed(Rc<Zone>),
    Var(Template),
}

/// A request's cache settings, resolved from its location.
pub struct CacheConf {
    pub zone: ZoneRef,
    pub key: Template,
    pub valid: Rc<Valid>,
    /// GET 1, HEAD 2, POST 4.
    pub methods: u32,
    pub bypass: Rc<Vec<Template>>,
    pub no_cache: Rc<Vec<Template>>,
    pub use_stale: u32,
    /// `proxy_cache_convert_head`: a cached HEAD goes upstream as GET.
    pub convert_head: bool,
    /// `proxy_ignore_headers` bits (`ignore::*`).
    pub ignore: u32,
    /// `proxy_cache_revalidate`: an expired entry is checked with
    /// If-Modified-Since / If-None-Match.
    pub revalidate: bool,
    /// `proxy_cache_lock` (with `_timeout` and `_age`): one request at a
    /// time fills a missing entry.
    pub lock: Option<(Duration, Duration)>,
}

/// A missing entry's fill lock ([`try_lock`]).
pub enum Lock {
    /// This request fills the entry: the lock file, removed when done.
    Held(PathBuf),
    /// Another request is filling it.
    Busy,
}

/// `proxy_cache_lock`: takes the right to fill the entry at `path`. The
/// lock is a file beside the entry, made exclusively, so every worker
/// sees it as it sees the cache. One older than `age` is taken over (its
/// holder is slow or gone: nginx's proxy_cache_lock_age).
pub fn try_lock(path: &Path, age: Duration) -> Lock {
    let mut lp = path.as_os_str().to_owned();
    lp.push(".lock");
    let lp = PathBuf::from(lp);
    if let Some(dir) = lp.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&lp) {
        Ok(_) => Lock::Held(lp),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let old = std::fs::metadata(&lp).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_none_or(|a| a >= age);
            // Taking over starts its age again.
            if old && File::create(&lp).is_ok() {
                Lock::Held(lp)
            } else {
                Lock::Busy
            }
        }
        // No lock can be made (permissions): fill without one.
        Err(_) => Lock::Held(PathBuf::new()),
    }
}

/// Gives a [`Lock::Held`] back.
pub fn unlock(lock: PathBuf) {
    if !lock.as_os_str().is_empty() {
        let _ = std::fs::remove_file(lock);
    }
}

/// Request headers a cached request does not pass upstream (nginx's
/// proxy cache headers): the upstream must send the whole response.
pub const DROPPED_UPSTREAM: [&str; 6] = ["if-modified-since", "if-unmodified-since", "if-none-match", "if-match", "range", "if-range"];

/// Rewrites `e` with a new freshness (after a 304 revalidated it).
pub fn refresh(path: &Path, key: &[u8], e: &Entry, valid_until: u64) {
    let Some(mut st) = Store::begin(path.to_path_buf(), key, valid_until, e.status, &e.headers, e.vary.as_ref()) else { return };
    let mut f = match e.file.try_clone() {
        Ok(f) => f,
        Err(_) => return,
    };
    use std::io::Seek;
    if f.seek(std::io::SeekFrom::Start(e.body_off)).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = e.body_len;
    while left > 0 {
        match f.read(&mut buf[..(left as usize).min(64 * 1024)]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                st.write(&buf[..n]);
                left -= n as u64;
            }
        }
    }
    st.commit();
}

/// How often worker 0 runs the manager.
const MANAGER_EVERY_MS: u64 = 5_000;

/// In worker 0: runs the manager over every zone now and then (nginx has
/// a cache manager process; the walk here is short for the caches a
/// single machine's tests and small sites keep).
pub fn start_manager() {
    let slot = plugin_api::rt::host().worker_slot.map_or(-1, |f| {
        // SAFETY: a plain query.
        unsafe { f() }
    });
    if slot != 0 || ZONES.with(|z| z.borrow().is_empty()) {
        return;
    }
    arm_manager();
}

fn arm_manager() {
    // SAFETY: the callback uses no data.
    let _ = unsafe { plugin_api::io::timer_raw(MANAGER_EVERY_MS, manager_tick, std::ptr::null_mut()) };
}

unsafe extern "C" fn manager_tick(_: *mut std::ffi::c_void) {
    let _ = std::panic::catch_unwind(|| {
        let zones: Vec<Rc<Zone>> = ZONES.with(|z| z.borrow().values().cloned().collect());
        for z in &zones {
            manage(z);
        }
    });
    arm_manager();
}

/// One pass of the cache manager over a zone: entries unused for
/// `inactive` go, then the least recently used while over `max_size`.
pub fn manage(z: &Zone) {
    let mut files = Vec::new();
    walk(&z.dir, &mut files, 0);
    let inactive = Duration::from_millis(z.inactive_ms);
    let now = SystemTime::now();
    let mut total = 0u64;
    let mut live = Vec::new();
    for (p, len, used, tmp) in files {
        let age = now.duration_since(used).unwrap_or_default();
        // A temporary file is a store in progress, a lock a fill in
        // progress (or left by a crash: gone once as old as "inactive").
        if age > inactive {
            let _ = std::fs::remove_file(&p);
        } else if !tmp {
            total += len;
            live.push((used, len, p));
        }
    }
    if z.max_size > 0 && total > z.max_size {
        live.sort_by_key(|(used, _, _)| *used);
        for (_, len, p) in live {
            if total <= z.max_size {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime, bool)>, depth: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() && depth < 3 {
            walk(&e.path(), out, depth + 1);
        } else if m.is_file() {
            // Stores in progress and fill locks are not entries.
            let name = e.file_name();
            let name = name.to_string_lossy();
            let tmp = name.starts_with(".tmp-") || name.ends_with(".lock");
            out.push((e.path(), m.len(), m.modified().unwrap_or(UNIX_EPOCH), tmp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(list: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Vec<String> + 'a {
        move |n: &str| list.iter().filter(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.to_string()).collect()
    }

    #[test]
    fn layout_is_nginx_s() {
        let z = Zone { name: "z".into(), dir: "/c".into(), levels: vec![1, 2], inactive_ms: 0, max_size: 0 };
        // levels=1:2: the hash's last character, then the two before it.
        let p = file_path(&z, b"key");
        let hx = hash(b"key");
        assert_eq!(hx, "3c6e0b8a9c15224a8228b9a98ca1531d");
        assert_eq!(p, PathBuf::from(format!("/c/d/31/{hx}")));
    }

    #[test]
    fn freshness_order() {
        let valid = vec![(vec![200], 60_000), (vec![404], 1_000)];
        assert_eq!(ttl(200, &h(&[]), 0, &valid), Some(60));
        assert_eq!(ttl(404, &h(&[]), 0, &valid), Some(1));
        assert_eq!(ttl(500, &h(&[]), 0, &valid), None);
        assert_eq!(ttl(200, &h(&[("Cache-Control", "public, max-age=30")]), 0, &valid), Some(30));
        assert_eq!(ttl(200, &h(&[("Cache-Control", "max-age=30, s-maxage=90")]), 0, &valid), Some(90));
        assert_eq!(ttl(200, &h(&[("Cache-Control", "private")]), 0, &valid), None);
        assert_eq!(ttl(200, &h(&[("Cache-Control", "no-store")]), ignore::CACHE_CONTROL, &valid), Some(60));
        assert_eq!(ttl(200, &h(&[("X-Accel-Expires", "5"), ("Cache-Control", "max-age=30")]), 0, &valid), Some(5));
        assert_eq!(ttl(200, &h(&[("X-Accel-Expires", "0")]), 0, &valid), None);
        assert_eq!(ttl(200, &h(&[("Set-Cookie", "a=b")]), 0, &valid), None);
        assert_eq!(ttl(200, &h(&[("Set-Cookie", "a=b")]), ignore::SET_COOKIE, &valid), Some(60));
        assert_eq!(ttl(200, &h(&[("Vary", "*")]), 0, &valid), None);
        assert_eq!(ttl(200, &h(&[("Expires", "Thu, 01 Jan 1970 00:00:01 GMT")]), 0, &valid), None);
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        assert!(ttl(200, &h(&[("Expires", later.as_str())]), 0, &valid).is_some_and(|s| (98..=100).contains(&s)));
    }

    #[test]
    fn valid_and_stale_words() {
        let t = |s: &str| Ok::<u64, String>(s.trim_end_matches('m').parse::<u64>().unwrap() * 60_000);
        assert_eq!(parse_valid(&["10m"], t).unwrap(), (vec![200, 301, 302], 600_000));
        assert_eq!(parse_valid(&["404", "1m"], t).unwrap(), (vec![404], 60_000));
        assert_eq!(parse_valid(&["any", "1m"], t).unwrap(), (vec![], 60_000));
        assert!(parse_valid(&["99", "1m"], t).is_err());
        assert_eq!(parse_stale(&["error", "timeout", "http_500"]).unwrap(), stale::ERROR | stale::TIMEOUT | stale::HTTP_500);
        assert!(parse_stale(&["sometimes"]).is_err());
    }

    #[test]
    fn entries_round_trip() {
        let d = std::env::temp_dir().join(format!("ngxr-cache-test-{}", std::process::id()));
        let z = Zone { name: "z".into(), dir: d.clone(), levels: vec![1, 2], inactive_ms: 0, max_size: 0 };
        let p = file_path(&z, b"k1");
        let mut s = Store::begin(p.clone(), b"k1", now_secs() + 60, 200, &[("Content-Type".into(), "text/plain".into())], None).unwrap();
        s.write(b"hello ");
        assert!(open(&p, b"k1").is_none(), "visible before the commit");
        s.write(b"cache");
        s.commit();
        let e = open(&p, b"k1").unwrap();
        assert_eq!((e.status, e.header("content-type"), e.body_len, e.fresh()), (200, Some("text/plain"), 11, true));
        assert!(open(&p, b"other key").is_none());
        // An abandoned store leaves nothing.
        let p2 = file_path(&z, b"k2");
        drop(Store::begin(p2.clone(), b"k2", now_secs() + 60, 200, &[], None).unwrap());
        assert!(open(&p2, b"k2").is_none());
        // The manager: everything is older than inactive=0.
        manage(&z);
        assert!(open(&p, b"k1").is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
