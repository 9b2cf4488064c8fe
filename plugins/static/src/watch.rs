//! Change notification for the open-file cache: one inotify instance per
//! worker, watching each cached file and every directory on its path.
//!
//! A cached entry that holds watches is trusted without a `stat()`: before
//! every lookup the cache reads the instance (one nonblocking `read()`,
//! which answers EAGAIN when nothing changed) and drops what the events
//! name. The kernel queues an event inside the system call that makes the
//! change, so a change made before a request was sent is always seen when
//! that request is served.
//!
//! What is watched, and why:
//! - the file itself (`IN_MODIFY`, `IN_ATTRIB`): writes and truncation,
//!   chmod/chown/touch, also when made through a hard link elsewhere;
//! - every directory from `/` down (`IN_CREATE`, `IN_DELETE`,
//!   `IN_MOVED_FROM`, `IN_MOVED_TO`, `IN_ATTRIB`, and the directory's own
//!   `IN_DELETE_SELF`/`IN_MOVE_SELF`): a file replaced by rename, a
//!   directory renamed or swapped (`mv html html.old`), a symlink on the
//!   path re-pointed (the deploy pattern `ln -sfn release current`), a
//!   permission change on a directory. Paths through symlinks are watched
//!   both as written and as resolved.
//!
//! Watches are reference-counted by the entries that hold them and removed
//! with the last one. Where watching is not possible or not reliable — no
//! inotify (limits, sandbox), a path with `.`/`..`, a file on a network
//! file system (NFS, CIFS, FUSE: changes made on another machine raise no
//! event) — the caller keeps validating with `stat()`. Writes through a
//! shared `mmap()` raise no inotify event; nginx's own cache does not see
//! them either for `open_file_cache_valid`.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const DIR_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;
const FILE_MASK: u32 = libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
/// Events that change which inode a path names.
const RENAMED: u32 = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO;
const GONE: u32 = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED;

/// File systems whose changes all happen on this machine (statfs magic).
const LOCAL_FS: &[i64] = &[
    0xEF53,     // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x858_458F6, // ramfs
    0x794C_7630, // overlayfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
    0xCA45_1A4E, // bcachefs
];

/// What an event made stale.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    /// Entries at or under this path.
    Under(String),
    /// Everything (the event queue overflowed).
    All,
}

/// Watches held by one cache entry: (path, watch descriptor).
pub type Held = Vec<(String, i32)>;

struct Watched {
    wd: i32,
    refs: usize,
}

/// One worker's inotify instance and its watches.
pub struct Watch {
    fd: OwnedFd,
    /// Path → its watch.
    paths: HashMap<String, Watched>,
    /// Watch descriptor → the paths it was added under (several when
    /// paths lead to one inode through symlinks or hard links).
    wds: HashMap<i32, Vec<String>>,
    /// The watch limit was reported in the error log (once per worker).
    told_limit: bool,
}

impl Watch {
    /// A new instance, or None where inotify is unavailable.
    pub fn new() -> Option<Watch> {
        // SAFETY: plain system call; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            // Called once per worker: the cache goes on with stat().
            let e = std::io::Error::last_os_error();
            plugin_api::log(
                plugin_api::sys::LOG_WARN,
                &format!("inotify_init1() failed ({}), the open file cache checks every hit with stat() (fs.inotify.max_user_instances)", crate::os_error(&e)),
            );
            return None;
        }
        Some(Watch {
            // SAFETY: fd is a fresh descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            paths: HashMap::new(),
            wds: HashMap::new(),
            told_limit: false,
        })
    }

    /// Watches regular file `path` (already opened as `file`) and every
    /// directory above it, as written and as resolved. None when it cannot
    /// be watched reliably (see the module's notes); nothing is held then.
    pub fn hold(&mut self, path: &str, file: &std::fs::File) -> Option<Held> {
        if !local_fs(file) {
            return None;
        }
        let written = normal(path)?;
        let resolved = std::fs::canonicalize(path).ok()?.into_os_string().into_string().ok()?;
        let mut held = Held::new();
        let mut ok = self.hold_path(&written, &mut held);
        if ok && resolved != written {
            ok = self.hold_path(&resolved, &mut held);
        }
        if !ok {
            self.release(&held);
            return None;
        }
        Some(held)
    }

    /// Adds (or references) the watches for `path`'s directories and the
    /// file, recording each in `held`.
    fn hold_path(&mut self, path: &str, held: &mut Held) -> bool {
        let dirs = std::iter::once(0).chain(path.match_indices('/').skip(1).map(|(i, _)| i));
        for end in dirs {
            let dir = if end == 0 { "/" } else { &path[..end] };
            let Some(wd) = self.add(dir, DIR_MASK) else { return false };
            held.push((dir.to_string(), wd));
        }
        let Some(wd) = self.add(path, FILE_MASK) else { return false };
        held.push((path.to_string(), wd));
        true
    }

    fn add(&mut self, path: &str, mask: u32) -> Option<i32> {
        if let Some(w) = self.paths.get_mut(path) {
            w.refs += 1;
            return Some(w.wd);
        }
        let c = CString::new(path).ok()?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            // A path that vanished or is not readable is that path's
            // matter; the watch limit is the machine's, said once.
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSPC) && !self.told_limit {
                self.told_limit = true;
                plugin_api::log(
                    plugin_api::sys::LOG_WARN,
                    &format!(
                        "inotify_add_watch() \"{path}\" failed ({}), files past the limit are checked with stat() on every hit (fs.inotify.max_user_watches)",
                        crate::os_error(&e)
                    ),
                );
            }
            return None;
        }
        self.paths.insert(path.to_string(), Watched { wd, refs: 1 });
        self.wds.entry(wd).or_default().push(path.to_string());
        Some(wd)
    }

    /// Gives back the watches an entry held; a watch goes with its last
    /// holder. References to watches dropped since (or re-added under a
    /// new descriptor) are ignored.
    pub fn release(&mut self, held: &Held) {
        for (p, wd) in held {
            let Some(w) = self.paths.get_mut(p) else { continue };
            if w.wd != *wd {
                continue;
            }
            w.refs -= 1;
            if w.refs == 0 {
                self.forget(p);
            }
        }
    }

    /// Drops the watch on `p`, removing it from the kernel when no other
    /// path shares its descriptor.
    fn forget(&mut self, p: &str) {
        let Some(w) = self.paths.remove(p) else { return };
        if let Some(v) = self.wds.get_mut(&w.wd) {
            v.retain(|x| x != p);
            if v.is_empty() {
                self.wds.remove(&w.wd);
                // SAFETY: valid descriptor; an already removed wd is EINVAL.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), w.wd) };
            }
        }
    }

    /// Reads the pending events and returns what they made stale (empty
    /// when nothing changed: one `read()` answering EAGAIN). Watches whose
    /// path now names another inode are dropped here.
    pub fn changes(&mut self) -> Vec<Stale> {
        let mut out = Vec::new();
        // Not zeroed: this runs before every cache lookup.
        let mut raw = std::mem::MaybeUninit::<[u8; 4096]>::uninit();
        loop {
            // SAFETY: reads into a local buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), raw.as_mut_ptr().cast(), 4096) };
            if n <= 0 {
                return out;
            }
            // SAFETY: the kernel initialised the first n bytes.
            let buf = unsafe { std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), n as usize) };
            let mut at = 0;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n as usize {
                // SAFETY: the kernel wrote whole events; read unaligned.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                let name = &buf[at + head..at + head + ev.len as usize];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                at += head + ev.len as usize;
                self.event(ev.wd, ev.mask, name, &mut out);
            }
        }
    }

    fn event(&mut self, wd: i32, mask: u32, name: &[u8], out: &mut Vec<Stale>) {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            out.push(Stale::All);
            return;
        }
        let Some(paths) = self.wds.get(&wd) else { return };
        let paths = paths.clone();
        for p in paths {
            let (stale, moved) = if name.is_empty() {
                (p.clone(), mask & GONE != 0)
            } else {
                let Ok(name) = std::str::from_utf8(name) else {
                    out.push(Stale::All);
                    continue;
                };
                (if p == "/" { format!("/{name}") } else { format!("{p}/{name}") }, mask & RENAMED != 0)
            };
            if moved {
                // The watches at and under `stale` follow inodes the path
                // no longer names; their holders are dropped with `out`.
                let under: Vec<String> = self.paths.keys().filter(|k| is_under(k, &stale)).cloned().collect();
                for k in under {
                    self.forget(&k);
                }
            }
            out.push(Stale::Under(stale));
        }
    }
}

/// Whether `path` is `top` or lies under it.
pub fn is_under(path: &str, top: &str) -> bool {
    path.strip_prefix(top).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || top == "/")
}

/// `path` with repeated slashes collapsed; None if not absolute or if it
/// has `.` or `..` components.
fn normal(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut s = String::with_capacity(path.len());
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return None;
        }
        s.push('/');
        s.push_str(c);
    }
    (!s.is_empty()).then_some(s)
}

fn local_fs(f: &std::fs::File) -> bool {
    // SAFETY: statfs is plain data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    LOCAL_FS.contains(&(st.f_type as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(normal("/a//b/c").as_deref(), Some("/a/b/c"));
        assert_eq!(normal("a/b"), None);
        assert_eq!(normal("/a/./b"), None);
        assert_eq!(normal("/a/../b"), None);
        assert!(is_under("/a/b/c", "/a/b"));
        assert!(is_under("/a/b", "/a/b"));
        assert!(!is_under("/a/bc", "/a/b"));
        assert!(is_under("/a", "/"));
    }

    #[test]
    fn events_name_what_changed() {
        let dir = std::env::temp_dir().join(format!("ngxr-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let f = dir.join("sub/f.txt");
        std::fs::write(&f, "x").unwrap();
        let path = f.to_str().unwrap().to_string();
        let Some(mut w) = Watch::new() else { return };
        let file = std::fs::File::open(&f).unwrap();
        let Some(held) = w.hold(&path, &file) else {
            // Not a local file system here (e.g. a network /tmp): nothing to test.
            return;
        };
        assert!(w.changes().is_empty());
        // Every directory from / down and the file itself.
        assert_eq!(held.len(), path.matches('/').count() + 1, "{held:?}");
        std::fs::write(&f, "y").unwrap();
        assert!(w.changes().contains(&Stale::Under(path.clone())));
        // A rename in a directory above: the path, and the watches under it, go.
        let sub = dir.join("sub").to_str().unwrap().to_string();
        std::fs::rename(dir.join("sub"), dir.join("sub2")).unwrap();
        let ch = w.changes();
        assert!(ch.contains(&Stale::Under(sub.clone())), "{ch:?}");
        assert!(!w.paths.contains_key(&sub) && !w.paths.contains_key(&path));
        w.release(&held);
        // The directories above stay until released; released, all go.
        assert!(w.paths.is_empty() && w.wds.is_empty(), "{:?}", w.paths.keys().collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
