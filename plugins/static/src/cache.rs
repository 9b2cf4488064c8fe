//! The open-file cache (nginx's `open_file_cache`, on by default here):
//! per worker, a file once opened stays open with its metadata, its
//! response header values, and — when small and not just modified — its
//! contents, so a hit costs one `stat()` and the response goes out in one
//! write.
//!
//! Unlike nginx's, which trusts an entry for `open_file_cache_valid`
//! seconds, every hit is revalidated: the path is stat()ed and the entry
//! used only if device, inode, size, mtime and ctime (to the nanosecond)
//! all match, so a replaced, renamed, rewritten, truncated or
//! chmod-ed file is seen at once. Contents are kept only for files whose
//! mtime and ctime are at least two seconds old when read: a write in the
//! same clock tick as the read could otherwise leave both timestamps
//! unchanged (git's "racily clean" problem); such files are served from
//! the open descriptor (sendfile) until they have aged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Files up to this size are kept in memory.
pub const BODY_MAX: u64 = 64 * 1024;
/// Memory for contents per worker.
const BODY_BUDGET: usize = 16 << 20;

/// `open_file_cache` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub max: usize,
    pub inactive: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { max: 1000, inactive: Duration::from_secs(60) }
    }
}

/// What identifies a file's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()) }
    }
}

/// An open regular file and what a response needs from it.
pub struct Entry {
    pub file: File,
    stamp: Stamp,
    pub size: u64,
    /// Seconds since the epoch (Last-Modified, ETag).
    pub mtime: u64,
    pub etag: String,
    pub last_modified: String,
    pub length: String,
    /// The contents, for a small file that was not just modified.
    pub body: Option<Box<[u8]>>,
    used: std::cell::Cell<Instant>,
}

impl Entry {
    /// Makes an entry for a regular file just opened, with its fstat()
    /// `meta`; Err when reading its contents failed.
    pub fn new(file: File, meta: &Metadata, keep_body: bool) -> std::io::Result<Entry> {
        let stamp = Stamp::of(meta);
        let size = meta.len();
        let mtime = meta.mtime().max(0) as u64;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let settled = now - stamp.mtime.0.max(stamp.ctime.0) >= 2;
        let mut body = None;
        if keep_body && settled && size <= BODY_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            (&file).take(size).read_to_end(&mut buf)?;
            // Changed while being read: serve it from the descriptor.
            if buf.len() as u64 == size && Stamp::of(&file.metadata()?) == stamp {
                body = Some(buf.into_boxed_slice());
            }
        }
        Ok(Entry {
            file,
            stamp,
            size,
            mtime,
            etag: format!("\"{mtime:x}-{size:x}\""),
            last_modified: httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(mtime)),
            length: size.to_string(),
            body,
            used: std::cell::Cell::new(Instant::now()),
        })
    }
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, Rc<Entry>>,
    body_bytes: usize,
    swept: Option<Instant>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The cached entry for `path` if the file is still the one cached; the
/// stale entry is dropped otherwise. `meta`: the path's stat() just taken.
pub fn lookup(path: &str, meta: &Metadata) -> Option<Rc<Entry>> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let e = c.map.get(path)?;
        if e.stamp == Stamp::of(meta) {
            e.used.set(Instant::now());
            return Some(e.clone());
        }
        let gone = c.map.remove(path)?;
        c.body_bytes -= gone.body.as_ref().map_or(0, |b| b.len());
        None
    })
}

/// Forgets `path` (the file is gone or unreadable).
pub fn forget(path: &str) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(gone) = c.map.remove(path) {
            c.body_bytes -= gone.body.as_ref().map_or(0, |b| b.len());
        }
    });
}

/// Whether a new entry may keep its contents (the worker's budget).
pub fn room_for_body() -> bool {
    CACHE.with(|c| c.borrow().body_bytes + BODY_MAX as usize <= BODY_BUDGET)
}

/// Caches `e` for `path` under `s`: entries unused for `inactive` go
/// first (checked at most once a second); when still full, the least
/// recently used one goes.
pub fn insert(path: &str, e: Entry, s: Settings) -> Rc<Entry> {
    let e = Rc::new(e);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let now = Instant::now();
        if c.swept.map_or(true, |t| now.duration_since(t) >= Duration::from_secs(1)) {
            c.swept = Some(now);
            let mut freed = 0;
            c.map.retain(|_, v| {
                let keep = now.duration_since(v.used.get()) < s.inactive;
                if !keep {
                    freed += v.body.as_ref().map_or(0, |b| b.len());
                }
                keep
            });
            c.body_bytes -= freed;
        }
        while c.map.len() >= s.max.max(1) {
            let Some(oldest) = c.map.iter().min_by_key(|(_, v)| v.used.get()).map(|(k, _)| k.clone()) else { break };
            if let Some(gone) = c.map.remove(&oldest) {
                c.body_bytes -= gone.body.as_ref().map_or(0, |b| b.len());
            }
        }
        c.body_bytes += e.body.as_ref().map_or(0, |b| b.len());
        if let Some(old) = c.map.insert(path.to_string(), e.clone()) {
            c.body_bytes -= old.body.as_ref().map_or(0, |b| b.len());
        }
    });
    e
}
