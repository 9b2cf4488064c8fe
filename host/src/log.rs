//! The error log: nginx's line format and levels, several targets,
//! reopened on USR1.
//!
//! Format: `2026/11/23 01:27:00 [notice] 1234#1234: message`. Each process
//! keeps its own open files; the master opens them before forking so a
//! worker that drops privileges still writes.

use crate::config::core::LogTarget;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::Mutex;

/// nginx's levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The system is unusable / the config is unusable.
    Emerg = 1,
    /// Action needed now.
    Alert,
    /// Critical condition.
    Crit,
    /// Error (the default threshold).
    Error,
    /// Warning.
    Warn,
    /// Normal but significant.
    Notice,
    /// Informational.
    Info,
    /// Debugging.
    Debug,
}

impl Level {
    /// Parses a level name as written in `error_log`.
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "emerg" => Level::Emerg,
            "alert" => Level::Alert,
            "crit" => Level::Crit,
            "error" => Level::Error,
            "warn" => Level::Warn,
            "notice" => Level::Notice,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    /// The level's name.
    pub fn name(self) -> &'static str {
        match self {
            Level::Emerg => "emerg",
            Level::Alert => "alert",
            Level::Crit => "crit",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

struct Sink {
    path: Option<PathBuf>,
    file: Option<File>,
    syslog: Option<plugin_api::syslog::Syslog>,
    level: Level,
}

static SINKS: Mutex<Vec<Sink>> = Mutex::new(Vec::new());

/// Opens a log file for appending (created if missing), as nginx opens
/// its logs; the error names the file in nginx's words. Also used for the
/// files plugins open (plugin::files).
pub fn open_append(path: &std::path::Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("open() \"{}\" failed ({})", path.display(), crate::config::parser::os_err(&e)))
}

fn open_sinks(targets: &[LogTarget]) -> Result<Vec<Sink>, String> {
    let mut new = Vec::new();
    for t in targets {
        let file = match &t.path {
            None => None,
            Some(p) => Some(open_append(p)?),
        };
        let syslog = match &t.syslog {
            Some(spec) => Some(plugin_api::syslog::Syslog::open(spec)?),
            None => None,
        };
        new.push(Sink { path: t.path.clone(), file, syslog, level: t.level });
    }
    Ok(new)
}

/// Replaces the targets; on failure to open any of them, keeps the old
/// ones and returns the error naming the file (nginx's wording).
pub fn set_targets(targets: &[LogTarget]) -> Result<(), String> {
    let new = open_sinks(targets)?;
    *SINKS.lock().unwrap_or_else(|e| e.into_inner()) = new;
    Ok(())
}

/// A block's own error log (`error_log` in http, server or location):
/// for the requests served there it replaces the main one, as nginx's
/// per-location log. Opened with the configuration (by the master,
/// before workers drop their privileges).
pub struct Scoped {
    sinks: RefCell<Vec<Sink>>,
}

impl std::fmt::Debug for Scoped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scoped")
    }
}

thread_local! {
    /// Every scoped log this process has (for reopen and chown).
    static SCOPES: RefCell<Vec<Weak<Scoped>>> = const { RefCell::new(Vec::new()) };
    /// The log of the request being served now (None: the main one).
    static SCOPE: RefCell<Option<Rc<Scoped>>> = const { RefCell::new(None) };
}

thread_local! {
    /// The running request's location logs "not found" errors
    /// (`log_not_found`).
    static NOT_FOUND: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether "not found" errors are logged now (`log_not_found`, set by
/// the request engine for the request it runs).
pub fn not_found_on() -> bool {
    NOT_FOUND.with(std::cell::Cell::get)
}

/// Sets it (the request engine, per location; on again after).
pub fn set_not_found(on: bool) {
    NOT_FOUND.with(|c| c.set(on));
}

/// Some block has its own error log (else requests never switch logs).
static ANY_SCOPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Scoped {
    /// Opens `targets`; the error names the file that failed.
    pub fn open(targets: &[LogTarget]) -> Result<Rc<Scoped>, String> {
        ANY_SCOPED.store(true, std::sync::atomic::Ordering::Relaxed);
        let s = Rc::new(Scoped { sinks: RefCell::new(open_sinks(targets)?) });
        SCOPES.with(|l| {
            let mut l = l.borrow_mut();
            l.retain(|w| w.strong_count() > 0);
            l.push(Rc::downgrade(&s));
        });
        Ok(s)
    }
}

/// Lines written from now on go to `s` (None: the main log), until the
/// next call: the request engine sets it for the request it runs.
#[inline]
pub fn set_scope(s: Option<&Rc<Scoped>>) {
    if !ANY_SCOPED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    SCOPE.with(|c| {
        let same = match (&*c.borrow(), s) {
            (None, None) => true,
            (Some(a), Some(b)) => Rc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            *c.borrow_mut() = s.cloned();
        }
    });
}

fn each_scoped(mut f: impl FnMut(&mut Sink)) {
    SCOPES.with(|l| {
        for s in l.borrow().iter().filter_map(Weak::upgrade) {
            for sink in s.sinks.borrow_mut().iter_mut() {
                f(sink);
            }
        }
    });
}

/// Reopens every file target (USR1), keeping the old file on failure.
pub fn reopen() {
    let again = |s: &mut Sink| {
        if let Some(p) = &s.path {
            if let Ok(f) = open_append(p) {
                s.file = Some(f);
            }
        }
    };
    SINKS.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().for_each(again);
    each_scoped(again);
}

/// The first file target's path, if any (daemons send stderr there).
pub fn first_file() -> Option<PathBuf> {
    SINKS.lock().unwrap_or_else(|e| e.into_inner()).iter().find_map(|s| s.path.clone())
}

/// Makes every file target owned by `uid:gid` (workers that drop
/// privileges must still reopen them).
pub fn chown_all(uid: u32, gid: u32) {
    let give = |s: &mut Sink| {
        if let Some(p) = &s.path {
            let _ = crate::sys::chown(p, uid, gid);
        }
    };
    SINKS.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().for_each(give);
    each_scoped(give);
}

/// Formats the current local time as nginx's error log does.
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, mo, d, h, mi, s, _) = crate::sys::localtime(now);
    format!("{y:04}/{mo:02}/{d:02} {h:02}:{mi:02}:{s:02}")
}

/// Writes one line at `level` to every target whose threshold admits it.
pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    let pid = crate::sys::pid();
    let line = format!("{} [{}] {pid}#{pid}: {msg}\n", timestamp(), level.name());
    let put = |s: &mut Sink| {
        if level <= s.level {
            // (A syslog message's severity is the line's level, as nginx.)
            let _ = match (&mut s.file, &s.syslog) {
                (_, Some(sl)) => {
                    sl.send(level as u8 - 1, line.as_bytes());
                    Ok(())
                }
                (Some(f), None) => f.write_all(line.as_bytes()),
                (None, None) => std::io::stderr().write_all(line.as_bytes()),
            };
        }
    };
    let scoped = SCOPE.with(|c| c.borrow().clone());
    match scoped {
        Some(s) => s.sinks.borrow_mut().iter_mut().for_each(put),
        None => SINKS.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().for_each(put),
    }
}

/// `log!(Notice, "fmt", args…)` writes to the error log.
#[macro_export]
macro_rules! log {
    ($lvl:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::Level::$lvl, format_args!($($arg)*))
    };
}
