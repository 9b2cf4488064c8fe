//! Plugins: loading `.so` files and everything that calls into them.
//!
//! This module and [`host_api`] are the only code that touches plugin
//! images. Each configuration generation loads every plugin afresh from a
//! private copy of its bytes (a sealed-in-spirit memfd opened by
//! `/proc/self/fd/N`), with `RTLD_LOCAL`: a `.so` replaced at the same path
//! is picked up by the next reload (glibc would hand back the cached image
//! for the same path), and overwriting the file in place cannot crash
//! processes still running the old copy.

#![allow(unsafe_code)]
// Request and connection "pointers" here are opaque handles the host
// resolves itself (or hands to plugin code); nothing dereferences them raw.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod conf;
pub mod files;
pub mod host_api;
pub mod io;

use crate::config::table::{Registry, Spec};
use crate::config::{ConfError, Directive};
use plugin_api::sys;
use std::ffi::{c_void, CStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// One loaded plugin image and what it declared.
pub struct Plugin {
    /// The plugin's name (from its definition).
    pub name: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// FNV-1a 64 hash of the file's bytes, logged per generation.
    pub hash: u64,
    /// The definition (points into the image; valid while `lib` lives).
    def: *const sys::Def,
    /// Phase handlers in declaration order.
    pub handlers: Vec<(u32, sys::HttpHandlerFn)>,
    /// Directive setters by name.
    pub setters: Vec<(String, Option<sys::SetFn>)>,
    lib: Option<libloading::Library>,
    memfd: Option<OwnedFd>,
}

/// Copies of the definition's optional hooks (read once, within struct_size).
#[derive(Clone, Copy, Default)]
pub struct Hooks {
    /// See `ngx_plugin_def_t`.
    pub create_conf: Option<unsafe extern "C" fn(*mut sys::Conf, u32) -> *mut c_void>,
    /// See `ngx_plugin_def_t`.
    pub merge_conf: Option<unsafe extern "C" fn(*mut sys::Conf, u32, *const c_void, *mut c_void) -> sys::Rc>,
    /// See `ngx_plugin_def_t`.
    pub free_conf: Option<unsafe extern "C" fn(u32, *mut c_void)>,
    /// See `ngx_plugin_def_t`.
    pub init_cycle: Option<unsafe extern "C" fn(*mut sys::Cycle, *mut c_void) -> sys::Rc>,
    /// See `ngx_plugin_def_t`.
    pub init_worker: Option<unsafe extern "C" fn(*mut sys::Cycle, *mut c_void) -> sys::Rc>,
    /// See `ngx_plugin_def_t`.
    pub exit_worker: Option<unsafe extern "C" fn(*mut sys::Cycle, *mut c_void)>,
    /// See `ngx_plugin_def_t`.
    pub fini_cycle: Option<unsafe extern "C" fn(*mut sys::Cycle, *mut c_void)>,
    /// See `ngx_plugin_def_t`.
    pub header_filter: Option<sys::HeaderFilterFn>,
    /// See `ngx_plugin_def_t`.
    pub body_filter: Option<sys::BodyFilterFn>,
}

impl Plugin {
    /// The definition's hooks.
    pub fn hooks(&self) -> Hooks {
        // SAFETY: def was validated at load (non-null, struct_size covers
        // every field read) and lives as long as the image.
        let d = unsafe { &*self.def };
        Hooks {
            create_conf: d.create_conf,
            merge_conf: d.merge_conf,
            free_conf: d.free_conf,
            init_cycle: d.init_cycle,
            init_worker: d.init_worker,
            exit_worker: d.exit_worker,
            fini_cycle: d.fini_cycle,
            header_filter: d.header_filter,
            body_filter: d.body_filter,
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        drop(self.lib.take());
        // If dlclose did not unmap the image (a Rust cdylib with live
        // thread-local destructors stays), its /proc/self/fd/N name must
        // not be reused by a later load, or glibc would return this old
        // image: keep such an fd open for the life of the process.
        if let Some(fd) = self.memfd.take() {
            let name = format!("/proc/self/fd/{}", fd.as_raw_fd());
            // SAFETY: RTLD_NOLOAD only queries; a returned handle is closed at once.
            let still = unsafe {
                libloading::os::unix::Library::open(Some(&name), libc::RTLD_NOLOAD | libc::RTLD_LAZY)
            };
            if still.is_ok() {
                std::mem::forget(fd);
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn memfd_with(name: &str, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(format!("ngxr-plugin:{name}")).unwrap_or_default();
    // SAFETY: cname is NUL-terminated and outlives the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh fd owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(owned.try_clone()?);
    std::io::Write::write_all(&mut f, bytes)?;
    Ok(owned)
}

fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the plugin promises NUL-terminated strings valid while loaded.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Loads the plugin at `path` for the `load_module` directive `at`.
pub fn load(path: &Path, at: &Directive) -> Result<Plugin, ConfError> {
    let shown = path.display();
    let fail = |why: String| at.err(format!("load_module \"{shown}\" failed: {why}"));
    let bytes = std::fs::read(path).map_err(|e| {
        fail(format!("open() \"{shown}\" failed ({})", crate::config::parser::os_err(&e)))
    })?;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(fail("not a shared object (no ELF header)".into()));
    }
    let base = path.file_name().map_or("plugin".into(), |n| n.to_string_lossy().into_owned());
    let memfd = memfd_with(&base, &bytes).map_err(|e| fail(format!("memfd_create() failed ({e})")))?;
    let proc_path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    // SAFETY: loading runs the image's initialisers. That is the contract
    // of load_module: the operator vouches for the file. RTLD_LOCAL keeps
    // its symbols from binding to or from any other image.
    let lib = unsafe {
        libloading::os::unix::Library::open(Some(&proc_path), libc::RTLD_NOW | libc::RTLD_LOCAL)
    }
    .map_err(|e| fail(format!("not a loadable shared object ({})", e.to_string().replace(&proc_path, &shown.to_string()))))?;
    let lib: libloading::Library = lib.into();
    // SAFETY: the symbol's type is fixed by the ABI (ngx_plugin_entry_pt).
    let entry = match unsafe { lib.get::<sys::EntryFn>(sys::ENTRY_SYMBOL.as_bytes()) } {
        Ok(f) => *f,
        Err(_) => {
            for major in 2..10 {
                let sym = format!("ngx_plugin_entry_v{major}");
                // SAFETY: only probing for existence; never called.
                if unsafe { lib.get::<*const c_void>(sym.as_bytes()) }.is_ok() {
                    return Err(fail(format!(
                        "built for plugin ABI {major}.x (it exports \"{sym}\"); this host implements ABI {}.{}",
                        sys::ABI_MAJOR,
                        sys::ABI_MINOR
                    )));
                }
            }
            return Err(fail(format!(
                "no \"{}\" symbol: not an ngxr plugin, or built for another ABI major",
                sys::ENTRY_SYMBOL
            )));
        }
    };
    let host = host_api::table();
    // SAFETY: entry has the ABI's signature; the host table is static.
    let def = host_api::with_plugin(usize::MAX, &base, || unsafe { entry(host) });
    if def.is_null() {
        return Err(fail("the plugin refused to load (its entry point returned NULL)".into()));
    }
    // SAFETY: non-null; the three leading u32 fields exist in every version.
    let (size, major, minor) = unsafe { ((*def).struct_size, (*def).abi_major, (*def).abi_minor) };
    let host_v = format!("{}.{}", sys::ABI_MAJOR, sys::ABI_MINOR);
    if major != sys::ABI_MAJOR {
        return Err(fail(format!("built for plugin ABI {major}.{minor}; this host implements ABI {host_v}")));
    }
    if (size as usize) < std::mem::size_of::<sys::Def>() {
        // Minor 0 is the first version: every 1.x definition is at least this big.
        return Err(fail(format!("its definition is {size} bytes, smaller than ABI 1.0's")));
    }
    // SAFETY: struct_size covers the whole 1.0 definition.
    let d = unsafe { &*def };
    if minor > sys::ABI_MINOR || d.min_host_minor > sys::ABI_MINOR {
        return Err(fail(format!(
            "needs plugin ABI {major}.{}; this host implements ABI {host_v}",
            minor.max(d.min_host_minor)
        )));
    }
    let name = cstr(d.name).filter(|n| !n.is_empty()).ok_or_else(|| fail("the plugin has no name".into()))?;
    let mut setters = Vec::new();
    let dirs: &[sys::Directive] = if d.ndirectives == 0 || d.directives.is_null() {
        &[]
    } else {
        // SAFETY: the plugin declares ndirectives entries at directives.
        unsafe { std::slice::from_raw_parts(d.directives, d.ndirectives) }
    };
    for x in dirs {
        let dn = cstr(x.name).ok_or_else(|| fail(format!("plugin \"{name}\" has a directive without a name")))?;
        setters.push((dn, x.set));
    }
    let hs: &[sys::HttpHandler] = if d.nhandlers == 0 || d.handlers.is_null() {
        &[]
    } else {
        // SAFETY: as for directives.
        unsafe { std::slice::from_raw_parts(d.handlers, d.nhandlers) }
    };
    let mut handlers = Vec::new();
    for h in hs {
        if h.phase > sys::PHASE_LOG {
            return Err(fail(format!("plugin \"{name}\" declares a handler for unknown phase {}", h.phase)));
        }
        if let Some(f) = h.handler {
            handlers.push((h.phase, f));
        }
    }
    let p = Plugin {
        name,
        path: path.to_path_buf(),
        hash: fnv1a(&bytes),
        def,
        handlers,
        setters,
        lib: Some(lib),
        memfd: Some(memfd),
    };
    Ok(p)
}

/// Adds a plugin's directives to the registry; refuses clashes by name.
pub fn register(plugins: &[Plugin], idx: usize, reg: &mut Registry, at: &Directive) -> Result<(), ConfError> {
    let p = &plugins[idx];
    // SAFETY: validated at load.
    let d = unsafe { &*p.def };
    let dirs: &[sys::Directive] = if d.ndirectives == 0 || d.directives.is_null() {
        &[]
    } else {
        // SAFETY: as in load.
        unsafe { std::slice::from_raw_parts(d.directives, d.ndirectives) }
    };
    for (x, (name, _)) in dirs.iter().zip(&p.setters) {
        let mut spec = Spec::new(name, x.contexts & !sys::CTX_OPAQUE, x.min_args as usize, if x.max_args == sys::ARGS_ANY { usize::MAX } else { x.max_args as usize });
        if x.flags & sys::DIR_BLOCK != 0 {
            spec = spec.block(x.block_context);
        }
        spec.unique = x.flags & sys::DIR_UNIQUE != 0;
        spec.owner = Some(idx);
        if let Some(old) = reg.add(spec) {
            let who = match old.owner {
                None => "the host".to_string(),
                Some(i) => format!("plugin \"{}\"", plugins[i].name),
            };
            return Err(at.err(format!(
                "load_module \"{}\" failed: plugin \"{}\" declares directive \"{name}\", which {who} already declares",
                p.path.display(),
                p.name
            )));
        }
    }
    Ok(())
}

/// Calls a phase handler.
pub fn call_handler(h: sys::HttpHandlerFn, r: *mut sys::Request, conf: *mut c_void) -> sys::Rc {
    // SAFETY: h comes from a validated plugin definition; r is a live
    // request and conf the plugin's own object, per the phase contract.
    unsafe { h(r, conf) }
}

/// Calls a helper's main function in the helper process.
pub fn call_helper(h: &host_api::HelperSpec) {
    // SAFETY: run/data come from the plugin's spawn_helper call; the cycle
    // handle is reserved (NULL) in this version.
    host_api::with_plugin(h.plugin, &h.plugin_name, || unsafe { (h.run)(std::ptr::null_mut(), h.data) });
}
