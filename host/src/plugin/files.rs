//! Files plugins append to (ABI 1.3 `conf_open_file`, `file_write`):
//! access logs and the like, opened in the master while the configuration
//! is read (so workers that dropped privileges still write to them) and
//! reopened on USR1 — in the master first, which hands the new file to the
//! worker user, then in every worker — as nginx reopens its open files.

use plugin_api::sys;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

/// A file opened for appending; the `ngx_plugin_file_t` behind a handle.
pub struct OpenFile {
    path: PathBuf,
    file: RefCell<File>,
}

thread_local! {
    /// Addresses of live files: a handle is checked before use, and USR1
    /// reopens every one.
    static LIVE: RefCell<HashSet<usize>> = RefCell::new(HashSet::new());
}

impl OpenFile {
    /// Opens `path` and registers the file; the box is the generation's.
    pub fn open(path: PathBuf) -> Result<Box<OpenFile>, String> {
        let file = crate::log::open_append(&path)?;
        let b = Box::new(OpenFile { path, file: RefCell::new(file) });
        LIVE.with(|l| l.borrow_mut().insert(b.handle() as usize));
        Ok(b)
    }

    /// The handle plugins hold.
    pub fn handle(&self) -> *mut sys::File {
        self as *const OpenFile as *mut sys::File
    }

    /// Appends `data`; logs a failure in nginx's words.
    pub fn write(&self, data: &[u8]) -> bool {
        match self.file.borrow_mut().write_all(data) {
            Ok(()) => true,
            Err(e) => {
                crate::log!(Alert, "write() to \"{}\" failed ({})", self.path.display(), crate::config::parser::os_err(&e));
                false
            }
        }
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let p = self.handle() as usize;
        LIVE.with(|l| l.borrow_mut().remove(&p));
    }
}

/// The file behind a handle, if it is live.
fn file<'a>(h: *mut sys::File) -> Option<&'a OpenFile> {
    let live = LIVE.with(|l| l.borrow().contains(&(h as usize)));
    // SAFETY: registered addresses are boxes owned by a live generation
    // (Drop unregisters them before the memory goes).
    live.then(|| unsafe { &*(h as *const OpenFile) })
}

/// Reopens every live file (USR1). `owner`: in the master running as
/// root, the worker user the new files are given to, so that workers can
/// reopen them too. A file that cannot be reopened keeps the old one.
pub fn reopen_all(owner: Option<(u32, u32)>) {
    let live: Vec<usize> = LIVE.with(|l| l.borrow().iter().copied().collect());
    for h in live {
        let Some(f) = file(h as *mut sys::File) else { continue };
        match crate::log::open_append(&f.path) {
            Ok(new) => {
                if let Some((uid, gid)) = owner {
                    if let Err(e) = crate::sys::chown(&f.path, uid, gid) {
                        crate::log!(Alert, "chown(\"{}\", {uid}) failed ({})", f.path.display(), crate::config::parser::os_err(&e));
                    }
                }
                *f.file.borrow_mut() = new;
            }
            Err(e) => crate::log!(Alert, "{e}"),
        }
    }
}

/// (1.3) Opens a file for appending, for the generation.
pub(super) unsafe extern "C" fn conf_open_file(c: *mut sys::Conf, path: sys::Str, out: *mut *mut sys::File) -> sys::Rc {
    let Some(c) = super::host_api::cf(c) else { return sys::INVALID };
    if out.is_null() {
        return sys::INVALID;
    }
    // SAFETY: the plugin passes a valid string for the call.
    let name = String::from_utf8_lossy(unsafe { path.as_bytes() }).into_owned();
    if name.is_empty() {
        return sys::INVALID;
    }
    let full = crate::config::core::Prefix(c.prefix.clone()).resolve(&name);
    match OpenFile::open(full) {
        Ok(b) => {
            // SAFETY: non-null out-pointer.
            unsafe { *out = b.handle() };
            c.files.push(b);
            sys::OK
        }
        Err(e) => {
            c.error = Some(e);
            sys::ERROR
        }
    }
}

/// (1.3) Appends bytes to a file.
pub(super) unsafe extern "C" fn file_write(f: *mut sys::File, data: *const u8, len: usize) -> sys::Rc {
    let Some(f) = file(f) else { return sys::INVALID };
    if data.is_null() && len > 0 {
        return sys::INVALID;
    }
    let bytes = if len == 0 {
        &[][..]
    } else {
        // SAFETY: the plugin passes len readable bytes for the call.
        unsafe { std::slice::from_raw_parts(data, len) }
    };
    if f.write(bytes) {
        sys::OK
    } else {
        sys::ERROR
    }
}
