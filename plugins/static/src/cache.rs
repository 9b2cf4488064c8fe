//! The open-file cache (nginx's `open_file_cache`, on by default here):
//! per worker, a file once opened stays open with its metadata, its
//! response header values, and — when small — its contents, so a hit
//! costs no file system call and the response goes out in one write.
//!
//! Unlike nginx's, which trusts an entry for `open_file_cache_valid`
//! seconds, an entry is never used after its file changed:
//! - normally the file and the directories on its path are watched
//!   ([`crate::watch`], inotify) and the events read before every lookup
//!   drop what changed — a replaced, renamed, rewritten, truncated or
//!   chmod-ed file, a renamed directory, a re-pointed symlink is seen on
//!   the next request;
//! - where watching is not possible or not reliable (network file
//!   systems, no inotify), every hit is revalidated instead: the path is
//!   stat()ed and the entry used only if device, inode, size, mtime and
//!   ctime (to the nanosecond) all match. Such an entry keeps contents
//!   only for files whose mtime and ctime are at least two seconds old
//!   when read: a write in the same clock tick as the read could
//!   otherwise leave both timestamps unchanged (git's "racily clean"
//!   problem); those files are served from the open descriptor
//!   (sendfile) until they have aged.

use std::cell::RefCell;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use crate::watch::{self, Held, Stale, Watch};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// When it was last used ([`coarse_ms`]).
    used: std::cell::Cell<u64>,
    /// The inotify watches this entry holds; None: validated by stat().
    held: Option<Held>,
    /// The Content-Type the host gave the first time the file was served,
    /// with what the answer depends on: the location's configuration (its
    /// address) and the URI's extension (packed).
    pub ctype: std::cell::OnceCell<((usize, u64), String)>,
}

impl Entry {
    /// Makes an entry for a regular file just opened, with its fstat()
    /// `meta`; `held`: its watches (see [`watch_for`]). Err when reading its
    /// contents failed.
    pub fn new(file: File, meta: &Metadata, keep_body: bool, held: Option<Held>) -> std::io::Result<Entry> {
        let stamp = Stamp::of(meta);
        let size = meta.len();
        let mtime = meta.mtime().max(0) as u64;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        // A watched file's later writes raise events; an unwatched one's
        // contents are trusted only once its timestamps would show them.
        let settled = held.is_some() || now - stamp.mtime.0.max(stamp.ctime.0) >= 2;
        let mut body = None;
        if keep_body && settled && size <= BODY_MAX {
            match read_body(&file, stamp) {
                Ok(b) => body = b,
                Err(e) => {
                    if let Some(h) = &held {
                        CACHE.with(|c| c.borrow_mut().release(h));
                    }
                    return Err(e);
                }
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
            used: std::cell::Cell::new(coarse_ms()),
            held,
            ctype: std::cell::OnceCell::new(),
        })
    }
}

/// The contents of `file` if they are still those of `stamp` once read.
fn read_body(file: &File, stamp: Stamp) -> std::io::Result<Option<Box<[u8]>>> {
    let mut buf = Vec::with_capacity(stamp.size as usize);
    file.take(stamp.size).read_to_end(&mut buf)?;
    // Changed while being read: serve it from the descriptor.
    Ok((buf.len() as u64 == stamp.size && Stamp::of(&file.metadata()?) == stamp).then(|| buf.into_boxed_slice()))
}

#[derive(Default)]
struct Cache {
    map: plugin_api::hash::Map<String, Rc<Entry>>,
    body_bytes: usize,
    swept: Option<u64>,
    /// This worker's inotify instance: None until first needed, Some(None)
    /// where it cannot be had.
    watch: Option<Option<Watch>>,
}

impl Cache {
    fn remove(&mut self, path: &str) {
        if let Some(gone) = self.map.remove(path) {
            self.dropped(&gone);
        }
    }

    fn dropped(&mut self, gone: &Entry) {
        self.body_bytes -= gone.body.as_ref().map_or(0, |b| b.len());
        if let Some(held) = &gone.held {
            self.release(held);
        }
    }

    fn release(&mut self, held: &Held) {
        if let Some(Some(w)) = &mut self.watch {
            w.release(held);
        }
    }

    /// Drops the entries the pending change events name.
    fn apply_changes(&mut self) {
        let Some(Some(w)) = &mut self.watch else { return };
        let changes = w.changes();
        for ch in changes {
            let stale: Vec<String> = match &ch {
                Stale::All => self.map.keys().cloned().collect(),
                Stale::Under(top) => self.map.iter().filter(|(_, e)| e.held.as_ref().is_some_and(|h| h.iter().any(|(p, _)| watch::is_under(p, top)))).map(|(k, _)| k.clone()).collect(),
            };
            for k in stale {
                self.remove(&k);
            }
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Milliseconds of the monotonic clock at the kernel tick's resolution
/// (a few ms): the time for least-recently-used order and `inactive`,
/// read on every hit, where `Instant::now()` would cost more.
fn coarse_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The cached entry for `path` if it is watched and nothing changed it
/// (no file system call when nothing did); None: look it up with
/// [`lookup`].
pub fn lookup_watched(path: &str) -> Option<Rc<Entry>> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.apply_changes();
        let e = c.map.get(path)?;
        e.held.as_ref()?;
        e.used.set(coarse_ms());
        Some(e.clone())
    })
}

/// The cached entry for `path` if the file is still the one cached; the
/// stale entry is dropped otherwise. `meta`: the path's stat() just taken.
pub fn lookup(path: &str, meta: &Metadata) -> Option<Rc<Entry>> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let e = c.map.get(path)?;
        if e.stamp == Stamp::of(meta) {
            e.used.set(coarse_ms());
            return Some(e.clone());
        }
        c.remove(path);
        None
    })
}

/// Forgets `path` (the file is gone or unreadable).
pub fn forget(path: &str) {
    CACHE.with(|c| c.borrow_mut().remove(path));
}

/// Starts watching regular file `path`, just opened as `file` with
/// fstat() `meta`, for an entry about to be made: None when it cannot be
/// watched reliably, or when the path no longer names that file (changed
/// between the open and the watch). Called before the contents are read,
/// so any later change raises an event.
pub fn watch_for(path: &str, file: &File, meta: &Metadata) -> Option<Held> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let w = c.watch.get_or_insert_with(Watch::new).as_mut()?;
        let held = w.hold(path, file)?;
        match std::fs::metadata(path) {
            Ok(now) if Stamp::of(&now) == Stamp::of(meta) => Some(held),
            _ => {
                w.release(&held);
                None
            }
        }
    })
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
        let now = coarse_ms();
        if c.swept.is_none_or(|t| now.saturating_sub(t) >= 1000) {
            c.swept = Some(now);
            let inactive = s.inactive.as_millis() as u64;
            let idle: Vec<String> = c.map.iter().filter(|(_, v)| now.saturating_sub(v.used.get()) >= inactive).map(|(k, _)| k.clone()).collect();
            for k in idle {
                c.remove(&k);
            }
        }
        while c.map.len() >= s.max.max(1) {
            let Some(oldest) = c.map.iter().min_by_key(|(_, v)| v.used.get()).map(|(k, _)| k.clone()) else { break };
            c.remove(&oldest);
        }
        c.remove(path);
        c.body_bytes += e.body.as_ref().map_or(0, |b| b.len());
        c.map.insert(path.to_string(), e.clone());
    });
    e
}
