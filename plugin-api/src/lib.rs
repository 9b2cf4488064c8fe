//! `plugin-api`: write ngxr plugins in Rust.
//!
//! [`sys`] mirrors `include/ngx_plugin.h` exactly. On top of it:
//! - [`Plugin`]: a trait with no-op defaults for everything a plugin may
//!   provide (directives, per-block configuration and its merge, phase
//!   handlers, worker lifecycle);
//! - [`Request`]: a borrowed, `!Send` view of one HTTP request;
//! - [`export_plugin!`]: emits the one entry symbol and the trampolines the
//!   host calls, each under `catch_unwind`: a panic is logged and becomes
//!   an error (a 500 for a request), never unwinding into the host.
//!
//! With the `mock` feature, [`mock`] provides a host table for unit tests.

#![deny(missing_docs)]

pub mod hash;
pub mod http;
pub mod io;
pub mod net;
pub mod sys;
pub mod syslog;
pub mod template;
#[cfg(feature = "mock")]
pub mod mock;
#[doc(hidden)]
pub mod rt;

use std::ffi::c_void;
use std::marker::PhantomData;

/// What a phase handler tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// This phase is done (content: the response is complete).
    Ok,
    /// Not handled here; try the next handler.
    Declined,
    /// Finalize with this HTTP status (100..599).
    Http(u16),
    /// Failure: finalize with 500.
    Error,
    /// The handler finalized the request itself (or redirected it).
    Done,
    /// Suspended: the host calls the handler again after `http_resume`
    /// (see [`Request::read_body`], [`Request::resume_after`]).
    Again,
}

impl Status {
    /// The ABI return code.
    pub fn rc(self) -> sys::Rc {
        match self {
            Status::Ok => sys::OK,
            Status::Declined => sys::DECLINED,
            Status::Http(s) if (100..600).contains(&s) => s as sys::Rc,
            Status::Http(_) | Status::Error => sys::ERROR,
            Status::Done => sys::DONE,
            Status::Again => sys::AGAIN,
        }
    }
}

/// HTTP phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    /// Right after the request head is read.
    PostRead = sys::PHASE_POST_READ,
    /// Rewrites at server level.
    ServerRewrite = sys::PHASE_SERVER_REWRITE,
    /// Rewrites in the matched location.
    Rewrite = sys::PHASE_REWRITE,
    /// Limits (rate, connections).
    Preaccess = sys::PHASE_PREACCESS,
    /// Access control.
    Access = sys::PHASE_ACCESS,
    /// try_files, mirror.
    Precontent = sys::PHASE_PRECONTENT,
    /// Produces the response.
    Content = sys::PHASE_CONTENT,
    /// After the response: logging.
    Log = sys::PHASE_LOG,
}

/// Where a directive may appear (bit set of `sys::CTX_*`).
pub type Contexts = u32;

/// Applies a directive's arguments to the plugin's configuration.
pub type SetFn<C> = fn(conf: &mut C, args: &[&str], cx: &ConfCx<'_>) -> Result<(), String>;

/// One directive, typed by the plugin's configuration.
pub struct DirectiveSpec<C> {
    /// Directive name.
    pub name: &'static str,
    /// Contexts it may appear in.
    pub contexts: Contexts,
    /// Minimum argument count.
    pub min_args: u32,
    /// Maximum argument count (`sys::ARGS_ANY` for no bound).
    pub max_args: u32,
    /// Applies it.
    pub set: SetFn<C>,
    /// `sys::DIR_*` flags.
    pub flags: u32,
    /// For blocks: the children's context.
    pub block_context: u32,
}

impl<C> DirectiveSpec<C> {
    /// A directive taking `min..=max` arguments in `contexts`.
    pub const fn new(name: &'static str, contexts: Contexts, min_args: u32, max_args: u32, set: SetFn<C>) -> Self {
        DirectiveSpec { name, contexts, min_args, max_args, set, flags: 0, block_context: 0 }
    }

    /// Makes it a block whose children are free-form words (like
    /// `types {}`): read them in `set` with [`ConfCx::block_children`].
    pub const fn opaque_block(mut self) -> Self {
        self.flags |= sys::DIR_BLOCK;
        self.block_context = sys::CTX_OPAQUE;
        self
    }

    /// Makes it a block whose children are directives of context
    /// `inner` (`mail {}` with `sys::CTX_MAIL`, its `server {}` with
    /// `sys::CTX_MAIL_SERVER`): a configuration level, so the plugin gets
    /// an object for it from [`Plugin::create`], merged from the
    /// enclosing level's.
    pub const fn block(mut self, inner: u32) -> Self {
        self.flags |= sys::DIR_BLOCK;
        self.block_context = inner;
        self
    }

    /// Refuses a second occurrence in the same block.
    pub const fn unique(mut self) -> Self {
        self.flags |= sys::DIR_UNIQUE;
        self
    }
}

/// A plugin. Every method has a default that does nothing.
pub trait Plugin: 'static {
    /// Unique name ("static", "proxy").
    const NAME: &'static str;
    /// Version text.
    const VERSION: &'static str = "";
    /// Per-block configuration (one per main/http/server/location block).
    type Conf: Default + 'static;

    /// Directives this plugin adds.
    fn directives() -> Vec<DirectiveSpec<Self::Conf>> {
        Vec::new()
    }

    /// Creates the configuration object for one block at `level` (a
    /// `sys::CTX_*` bit), before its directives. By default `Default`.
    fn create(_cx: &ConfCx<'_>, _level: u32) -> Self::Conf {
        Self::Conf::default()
    }

    /// Merges the enclosing block's configuration into a child's: called
    /// after the child block is read. By default the child keeps its own.
    fn merge(_parent: &Self::Conf, _child: &mut Self::Conf) {}

    /// [`Plugin::merge`] with the configuration context (for host services
    /// such as [`ConfCx::tls`]) and the right to refuse the configuration
    /// (the error is reported at the child block). By default calls
    /// `merge`.
    fn merge_in(_cx: &ConfCx<'_>, _level: u32, parent: &Self::Conf, child: &mut Self::Conf) -> Result<(), String> {
        Self::merge(parent, child);
        Ok(())
    }

    /// Phases this plugin handles; [`Plugin::handle`] is called for each.
    fn phases() -> &'static [Phase] {
        &[]
    }

    /// Handles a request in `phase` with the location's merged `conf`.
    fn handle(_phase: Phase, _req: &mut Request<'_>, _conf: &Self::Conf) -> Status {
        Status::Declined
    }

    /// True if [`Plugin::header_filter`] is to be registered.
    const HEADER_FILTER: bool = false;

    /// Output header filter (when [`Plugin::HEADER_FILTER`]): runs with the
    /// location's merged `conf` for every response, before its head is
    /// rendered, and may change the status and the headers. Filters run in
    /// reverse load order, as nginx's. `Err` aborts the response: the
    /// message is logged and the connection closed.
    fn header_filter(_req: &mut Request<'_>, _conf: &Self::Conf) -> Result<(), String> {
        Ok(())
    }

    /// True if [`Plugin::body_filter`] is to be registered.
    const BODY_FILTER: bool = false;

    /// Output body filter (when [`Plugin::BODY_FILTER`]): receives the
    /// response body as it is sent, in pieces ([`Piece`]), and passes on
    /// what the client gets with [`Request::next_body`]; passing nothing
    /// holds data back. Runs in reverse load order. `Err` aborts the
    /// response (logged, the connection closed).
    fn body_filter(req: &mut Request<'_>, _conf: &Self::Conf, body: &[sys::Buf]) -> Result<(), String> {
        req.next_body_raw(body).map_err(|rc| format!("next body filter failed (rc {rc})"))
    }

    /// Runs in each worker after fork; an error stops the worker.
    fn init_worker(_main: &Self::Conf) -> Result<(), String> {
        Ok(())
    }

    /// Runs in each worker before it exits.
    fn exit_worker(_main: &Self::Conf) {}
}

/// A piece of response body as a body filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes in memory.
    Mem(&'a [u8]),
    /// A region of an open file (read it with `pread`; the fd is only
    /// borrowed for the call).
    File {
        /// The descriptor.
        fd: i32,
        /// Where the region starts.
        pos: u64,
        /// Its length.
        len: u64,
    },
}

impl<'a> Piece<'a> {
    /// What `b` holds (borrowed for the filter call).
    pub fn of(b: &'a sys::Buf) -> Piece<'a> {
        if b.flags & sys::BUF_FILE != 0 {
            Piece::File { fd: b.fd, pos: b.file_pos.max(0) as u64, len: b.file_len.max(0) as u64 }
        } else if b.data.is_null() || b.len == 0 {
            Piece::Mem(&[])
        } else {
            // SAFETY: the host passes len readable bytes, valid for the call.
            Piece::Mem(unsafe { std::slice::from_raw_parts(b.data, b.len) })
        }
    }

    /// Reads `len` bytes at `pos` of a file piece into `out` (appended);
    /// for a memory piece, copies it.
    pub fn read_into(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        match *self {
            Piece::Mem(m) => out.extend_from_slice(m),
            Piece::File { fd, pos, len } => {
                use std::os::fd::FromRawFd;
                use std::os::unix::fs::FileExt;
                // SAFETY: the host's descriptor, live for the call; borrowed
                // (ManuallyDrop: never closed here).
                let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
                let (start, mut done) = (out.len(), 0u64);
                out.resize(start + len as usize, 0);
                while done < len {
                    let n = match file.read_at(&mut out[start + done as usize..], pos + done) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            out.truncate(start);
                            return Err(e);
                        }
                    };
                    if n == 0 {
                        out.truncate(start);
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file is shorter than its region"));
                    }
                    done += n as u64;
                }
            }
        }
        Ok(())
    }

    /// True for the last piece of the body.
    pub fn is_last(b: &sys::Buf) -> bool {
        b.flags & sys::BUF_LAST != 0
    }
}

/// A variable's getter and the data it reads: see
/// [`ConfCx::define_variable_with`].
pub struct VarDef<T> {
    /// Computes the value for a request (`None`: not found).
    pub get: fn(&T, &mut Request<'_>) -> Option<String>,
    /// What `get` reads.
    pub data: T,
}

/// What [`ConfCx::tls`] builds (nginx's `ssl_*` / `proxy_ssl_*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Server side (STARTTLS) rather than client side.
    pub server: bool,
    /// Client: verify the peer's certificate chain and name.
    pub verify: bool,
    /// Client: send the server name (SNI).
    pub sni: bool,
    /// Client: resume sessions.
    pub reuse: bool,
    /// Server: issue session tickets.
    pub tickets: bool,
    /// (certificate, key) PEM files: a server's (several for RSA and
    /// ECDSA), or a client certificate.
    pub certificates: Vec<(String, String)>,
    /// PEM file of trusted CAs (required with `verify`).
    pub trusted_certificate: String,
    /// `ssl_protocols` words ("TLSv1.2 TLSv1.3"); empty: the default.
    pub protocols: String,
    /// OpenSSL cipher string; empty: the default.
    pub ciphers: String,
}

impl Default for TlsOptions {
    fn default() -> TlsOptions {
        TlsOptions {
            server: false,
            verify: false,
            sni: false,
            reuse: true,
            tickets: true,
            certificates: Vec::new(),
            trusted_certificate: String::new(),
            protocols: String::new(),
            ciphers: String::new(),
        }
    }
}

/// A TLS context the host built (a handle, valid for the generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsCtx(*mut sys::Tls);

impl TlsCtx {
    /// The raw handle.
    pub fn raw(self) -> *mut sys::Tls {
        self.0
    }
}

/// A file opened for appending with [`ConfCx::open_file`]: on a host
/// with ABI 1.3 the host's (reopened on USR1 for log rotation), on an
/// older host the plugin's own descriptor.
#[derive(Debug)]
pub enum LogFile {
    /// The host's handle, valid for the generation.
    Host(*mut sys::File),
    /// Opened by the plugin (a host before 1.3: not reopened).
    Own(std::fs::File),
}

impl LogFile {
    /// Appends `data` in one write where possible. A failure is logged
    /// (by the host, in nginx's words) and returns false.
    pub fn write(&self, data: &[u8]) -> bool {
        match self {
            LogFile::Host(h) => match rt::host().file_write {
                // SAFETY: a live handle from conf_open_file; data borrowed
                // for the call.
                Some(f) => unsafe { f(*h, data.as_ptr(), data.len()) == sys::OK },
                None => false,
            },
            LogFile::Own(f) => {
                use std::io::Write;
                (&*f).write_all(data).is_ok()
            }
        }
    }
}

/// The configuration context of one directive being applied.
pub struct ConfCx<'a> {
    raw: *mut sys::Conf,
    _l: PhantomData<&'a ()>,
}

impl ConfCx<'_> {
    /// Parses `on`/`off`.
    pub fn flag(&self, s: &str) -> Result<bool, String> {
        match s {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("invalid value \"{s}\", it must be \"on\" or \"off\"")),
        }
    }

    /// Parses an nginx size ("8k", "1m").
    pub fn size(&self, s: &str) -> Result<u64, String> {
        rt::host_parse(rt::host().parse_size, s).ok_or_else(|| format!("invalid size \"{s}\""))
    }

    /// Parses an nginx time into milliseconds ("10s", "500ms").
    pub fn time_ms(&self, s: &str) -> Result<u64, String> {
        rt::host_parse(rt::host().parse_time_ms, s).ok_or_else(|| format!("invalid time \"{s}\""))
    }

    /// Declares a protocol listener on `addr` ("143", "127.0.0.1:110"):
    /// the master binds it, and each worker calls `on_accept(conn, data)`
    /// for every connection it accepts (the connection is then the
    /// plugin's to close).
    ///
    /// # Safety
    /// `data` must stay valid for as long as this configuration
    /// generation runs (a pointer to the directive's own configuration
    /// object qualifies: the host frees it only when the generation dies).
    pub unsafe fn listen(&self, addr: &str, on_accept: sys::AcceptFn, data: *mut std::ffi::c_void) -> Result<(), String> {
        let f = rt::host().conf_listen.ok_or("protocol listeners are not supported by this host")?;
        // SAFETY: live conf handle; addr borrowed for the call; data per
        // this function's contract.
        match unsafe { f(self.raw, sys::Str::from_bytes(addr.as_bytes()), false, Some(on_accept), data) } {
            sys::OK => Ok(()),
            // The host has recorded its reason.
            _ => Err(String::new()),
        }
    }

    /// The raw handle, for calls the safe layer does not wrap yet.
    pub fn raw(&self) -> *mut sys::Conf {
        self.raw
    }

    /// The children of the opaque block being applied: each child's words
    /// (name first), in file order.
    pub fn block_children(&self) -> Vec<Vec<String>> {
        let Some(f) = rt::host().conf_block_child else { return Vec::new() };
        let mut out = Vec::new();
        for i in 0.. {
            let mut words = [sys::Str::empty(); 64];
            let mut n = words.len();
            // SAFETY: live conf handle; words has n entries.
            if unsafe { f(self.raw, i, words.as_mut_ptr(), &mut n) } != sys::OK {
                break;
            }
            // SAFETY: the host's words are borrowed for the set call.
            out.push(words[..n.min(64)].iter().map(|w| unsafe { rt::str_of(*w) }.to_string()).collect());
        }
        out
    }

    /// A config path resolved against the prefix.
    pub fn full_path(&self, p: &str) -> String {
        let Some(f) = rt::host().conf_full_path else { return p.to_string() };
        let mut out = sys::Str::empty();
        // SAFETY: live conf handle; the result is borrowed for the set call.
        match unsafe { f(self.raw, sys::Str::from_bytes(p.as_bytes()), &mut out) } {
            sys::OK => unsafe { rt::str_of(out) }.to_string(),
            _ => p.to_string(),
        }
    }

    /// A config path resolved against the directory of the main
    /// configuration file (nginx's conf prefix: `include`,
    /// `ssl_certificate`, `auth_basic_user_file`); an older host resolves
    /// it against the prefix.
    pub fn conf_path(&self, p: &str) -> String {
        let Some(f) = rt::slot!(conf_conf_path) else { return self.full_path(p) };
        let mut out = sys::Str::empty();
        // SAFETY: live conf handle; the result is borrowed for the set call.
        match unsafe { f(self.raw, sys::Str::from_bytes(p.as_bytes()), &mut out) } {
            sys::OK => unsafe { rt::str_of(out) }.to_string(),
            _ => self.full_path(p),
        }
    }

    /// Asks the host (ABI 1.6) for a directory the workers may write: made
    /// with its parents and given to the worker user before workers drop
    /// their privileges, as nginx's master makes its cache and temp paths.
    /// On an older host the workers make it themselves (which fails when
    /// they run unprivileged under a directory they cannot write).
    pub fn add_path(&self, p: &str) -> Result<(), String> {
        let Some(f) = rt::slot!(conf_add_path) else { return Ok(()) };
        // SAFETY: live conf handle; the path is copied by the host.
        match unsafe { f(self.raw, sys::Str::from_bytes(p.as_bytes())) } {
            sys::OK => Ok(()),
            rc => Err(format!("cannot register the path \"{p}\" (rc {rc})")),
        }
    }

    /// For a directive declared with `.block(sys::CTX_IF)`: the id of the
    /// conditional block it opens (ABI 1.7), to pass to
    /// [`Request::enter_block`] when its condition holds. None on an older
    /// host or for another directive.
    pub fn block_id(&self) -> Option<u32> {
        let f = rt::slot!(conf_block_id)?;
        // SAFETY: live conf handle.
        Some(unsafe { f(self.raw) }).filter(|&id| id != 0)
    }

    /// Makes `P`'s [`Plugin::handle`] (with [`Phase::Content`]) the
    /// content handler of the location being configured, as nginx's
    /// `proxy_pass` does.
    pub fn set_content_handler<P: Plugin>(&self) -> Result<(), String> {
        let f = rt::host().conf_set_content_handler.ok_or("content handlers are not supported by this host")?;
        // SAFETY: live conf handle; the trampoline is a plain function.
        match unsafe { f(self.raw, Some(rt::handler_for::<P>(sys::PHASE_CONTENT))) } {
            sys::OK => Ok(()),
            rc => Err(format!("cannot set the content handler (rc {rc})")),
        }
    }

    /// Builds a TLS context (ABI 1.2): certificates and keys are loaded
    /// and checked now, so a problem refuses the configuration. On failure
    /// the host has already recorded the reason; return the (empty) error
    /// unchanged from the directive or [`Plugin::merge_in`].
    pub fn tls(&self, o: &TlsOptions) -> Result<TlsCtx, String> {
        let h = rt::host();
        if !rt::host_has(std::mem::offset_of!(sys::Host, conf_tls)) {
            return Err("TLS is not supported by this host (ABI 1.2 needed)".into());
        }
        let f = h.conf_tls.ok_or("TLS is not supported by this host")?;
        let certs: Vec<sys::Str> = o.certificates.iter().map(|(c, _)| sys::Str::from_bytes(c.as_bytes())).collect();
        let keys: Vec<sys::Str> = o.certificates.iter().map(|(_, k)| sys::Str::from_bytes(k.as_bytes())).collect();
        let mut flags = 0;
        for (on, bit) in [(o.server, sys::TLS_SERVER), (o.verify, sys::TLS_VERIFY), (o.sni, sys::TLS_SNI), (!o.reuse, sys::TLS_NO_REUSE), (!o.tickets, sys::TLS_NO_TICKETS)] {
            if on {
                flags |= bit;
            }
        }
        let opts = sys::TlsOpts {
            struct_size: std::mem::size_of::<sys::TlsOpts>(),
            flags,
            reserved: 0,
            certificates: certs.as_ptr(),
            keys: keys.as_ptr(),
            ncertificates: certs.len(),
            trusted_certificate: sys::Str::from_bytes(o.trusted_certificate.as_bytes()),
            protocols: sys::Str::from_bytes(o.protocols.as_bytes()),
            ciphers: sys::Str::from_bytes(o.ciphers.as_bytes()),
        };
        let mut out = std::ptr::null_mut();
        // SAFETY: live conf handle; opts and the strings it points at are
        // borrowed for the call.
        match unsafe { f(self.raw, &opts, &mut out) } {
            sys::OK => Ok(TlsCtx(out)),
            // The host has recorded why (with the file names): an empty
            // error, returned as it is, keeps that message.
            _ => Err(String::new()),
        }
    }

    /// Opens `path` (relative to the prefix) for appending, as nginx opens
    /// its logs: on an ABI 1.3 host in the master, reopened on USR1
    /// (`ngxr -s reopen`). The error names the file (nginx's wording).
    pub fn open_file(&self, path: &str) -> Result<LogFile, String> {
        let h = rt::host();
        if let (true, Some(f)) = (rt::host_has(std::mem::offset_of!(sys::Host, conf_open_file)), h.conf_open_file) {
            let mut out = std::ptr::null_mut();
            // SAFETY: live conf handle; path borrowed for the call.
            return match unsafe { f(self.raw, sys::Str::from_bytes(path.as_bytes()), &mut out) } {
                sys::OK => Ok(LogFile::Host(out)),
                // The host has recorded why, with the file name.
                _ => Err(String::new()),
            };
        }
        let full = self.full_path(path);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&full)
            .map(LogFile::Own)
            .map_err(|e| format!("open() \"{full}\" failed ({e})"))
    }

    /// The enclosing location: (modifier, name) where modifier is "",
    /// "=", "~", "~*", "^~" or "@" (named). None outside a location or on
    /// a host before ABI 1.1.
    pub fn location(&self) -> Option<(String, String)> {
        let h = rt::host();
        if !rt::host_has(std::mem::offset_of!(sys::Host, conf_location)) {
            return None;
        }
        let f = h.conf_location?;
        let (mut m, mut n) = (sys::Str::empty(), sys::Str::empty());
        // SAFETY: live conf handle; strings copied at once.
        (unsafe { f(self.raw, &mut m, &mut n) } == sys::OK).then(|| unsafe { (rt::str_of(m).to_string(), rt::str_of(n).to_string()) })
    }

    /// The enclosing server block's `server_name` arguments, as written
    /// (ABI 1.14; None outside a server block or on an older host).
    pub fn server_names(&self) -> Option<Vec<String>> {
        let f = rt::slot!(conf_server_names)?;
        let mut n = 0usize;
        // SAFETY: live conf handle; a count query (no room).
        if unsafe { f(self.raw, std::ptr::null_mut(), &mut n) } != sys::OK {
            return None;
        }
        let mut out = vec![sys::Str::empty(); n];
        // SAFETY: room for n strings, copied at once.
        if unsafe { f(self.raw, out.as_mut_ptr(), &mut n) } != sys::OK {
            return None;
        }
        Some(out.iter().take(n).map(|s| unsafe { rt::str_of(*s) }.to_string()).collect())
    }

    /// Defines `$name`, computed by `get` for each request (`None`: not
    /// found). Defining the same name again from this plugin is a no-op.
    pub fn define_variable(&self, name: &str, get: fn(&mut Request<'_>) -> Option<String>) -> Result<(), String> {
        let f = rt::host().conf_define_variable.ok_or("variables are not supported by this host")?;
        // SAFETY: live conf handle; get is a plain function pointer passed
        // through `data` and called back by rt::var_tramp.
        match unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), Some(rt::var_tramp), get as *mut c_void) } {
            sys::OK => Ok(()),
            rc => Err(format!("cannot define variable \"{name}\" (rc {rc})")),
        }
    }

    /// Defines the family `$prefix…` (ABI 1.9), as nginx's
    /// `$upstream_http_*`: `get(req, rest)` computes `$prefix<rest>`
    /// (`None`: not found). A second definition from this plugin is a
    /// no-op.
    pub fn define_variable_prefix(&self, prefix: &str, get: fn(&mut Request<'_>, &str) -> Option<String>) -> Result<(), String> {
        let f = rt::slot!(conf_define_variable_prefix).ok_or("variable families need ABI 1.9")?;
        // SAFETY: live conf handle; get is a plain function pointer passed
        // through `data` and called back by rt::prefix_var_tramp.
        match unsafe { f(self.raw, sys::Str::from_bytes(prefix.as_bytes()), Some(rt::prefix_var_tramp), get as *mut c_void) } {
            sys::OK => Ok(()),
            rc => Err(format!("cannot define variables \"${prefix}…\" (rc {rc})")),
        }
    }

    /// Defines `$name`, computed by `def.get` from `def.data` for each
    /// request: for variables a directive makes (nginx's `map`, `set`-like
    /// tables), where one function serves many variables.
    ///
    /// # Safety
    /// `def` must stay where it is, unchanged, for as long as this
    /// configuration is in use: box it in the plugin's configuration
    /// object for the block being read (freed with the generation).
    pub unsafe fn define_variable_with<T: 'static>(&self, name: &str, def: &VarDef<T>) -> Result<(), String> {
        let f = rt::host().conf_define_variable.ok_or("variables are not supported by this host")?;
        // SAFETY: live conf handle; def outlives the generation (caller's
        // contract) and is read back by rt::var_with_tramp::<T>.
        match unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), Some(rt::var_with_tramp::<T>), def as *const VarDef<T> as *mut c_void) } {
            sys::OK => Ok(()),
            rc => Err(format!("cannot define variable \"{name}\" (rc {rc})")),
        }
    }

    /// Declares (or, across reload, finds again) a shared memory zone of
    /// `size` bytes; `layout` is the version of what you store in it: a
    /// different value gives a fresh zone instead of reusing the old one.
    pub fn shm_zone(&self, name: &str, size: u64, layout: u32) -> Result<Shm, String> {
        let f = rt::host().conf_shm_zone.ok_or("shared zones are not supported by this host")?;
        let mut z = std::ptr::null_mut();
        // SAFETY: live conf handle; name borrowed for the call; z is a
        // valid out-pointer.
        match unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), size, layout, &mut z) } {
            sys::OK if !z.is_null() => Ok(Shm { raw: z }),
            rc => Err(format!("cannot create shared zone \"{name}\" (rc {rc})")),
        }
    }
}

/// A subrequest's handle ([`Request::subrequest`]); kept in a plugin's
/// request state between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subrequest(*mut sys::Request);

/// A shared memory zone: the same bytes in every worker, behind a
/// cross-process lock. Store offsets, never pointers, inside it.
#[derive(Clone, Copy, Debug)]
pub struct Shm {
    raw: *mut sys::Shm,
}

impl Shm {
    /// True if this generation created the zone (initialise it then).
    pub fn is_new(&self) -> bool {
        // SAFETY: live zone handle from the host.
        rt::host().shm_is_new.is_some_and(|f| unsafe { f(self.raw) })
    }

    /// Runs `f` on the zone's bytes with the zone locked (unlocked even if
    /// `f` panics).
    pub fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, sys::Rc> {
        let h = rt::host();
        let (Some(addr), Some(lock), Some(unlock)) = (h.shm_addr, h.shm_lock, h.shm_unlock) else {
            return Err(sys::UNSUPPORTED);
        };
        let (mut p, mut n) = (std::ptr::null_mut(), 0u64);
        // SAFETY: live zone handle; valid out-pointers.
        let rc = unsafe { addr(self.raw, &mut p, &mut n) };
        if rc != sys::OK || p.is_null() {
            return Err(rc);
        }
        struct Unlock(unsafe extern "C" fn(*mut sys::Shm), *mut sys::Shm);
        impl Drop for Unlock {
            fn drop(&mut self) {
                // SAFETY: releases the lock taken below on the same zone.
                unsafe { (self.0)(self.1) }
            }
        }
        // SAFETY: live zone handle.
        unsafe { lock(self.raw) };
        let _guard = Unlock(unlock, self.raw);
        // SAFETY: the host maps n bytes at p in this process; the lock makes
        // this the only process touching them until the guard drops.
        Ok(f(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), n as usize) }))
    }
}

/// A borrowed view of one HTTP request, valid for one handler call.
pub struct Request<'a> {
    raw: *mut sys::Request,
    _l: PhantomData<&'a mut ()>,
    // Requests belong to the worker's event-loop thread.
    _not_send: PhantomData<*mut ()>,
}

impl<'a> Request<'a> {
    /// Wraps a handle the host passed to a handler.
    ///
    /// # Safety
    /// `raw` must be a live request handle for the duration of `'a`.
    pub unsafe fn from_raw(raw: *mut sys::Request) -> Self {
        Request { raw, _l: PhantomData, _not_send: PhantomData }
    }

    fn get(&self, what: u32) -> &str {
        let mut out = sys::Str::empty();
        match rt::host().http_get {
            // SAFETY: live handle; the host fills `out` with bytes valid
            // until the request finishes, which outlives `&self`.
            Some(f) if unsafe { f(self.raw, what, &mut out) } == sys::OK => unsafe { rt::str_of(out) },
            _ => "",
        }
    }

    /// The method ("GET").
    pub fn method(&self) -> &str {
        self.get(sys::REQ_METHOD)
    }

    /// The normalized, decoded path (`$uri`).
    pub fn uri(&self) -> &str {
        self.get(sys::REQ_URI)
    }

    /// The MIME type for `$uri`'s extension by the location's `types`, else
    /// its `default_type` (nginx's `ngx_http_set_content_type`); None from
    /// a host older than ABI 1.5.
    pub fn mime_type(&self) -> Option<&str> {
        let mut out = sys::Str::empty();
        let f = rt::host().http_get?;
        // SAFETY: as in `get`.
        (unsafe { f(self.raw, sys::REQ_CONTENT_TYPE, &mut out) } == sys::OK).then(|| unsafe { rt::str_of(out) })
    }

    /// True when a rewrite changed `$uri` in this location without a new
    /// location search (`break`): the URI no longer is the one the
    /// location was chosen for (nginx's `!valid_location`).
    pub fn uri_rewritten(&self) -> bool {
        self.get(sys::REQ_URI_REWRITTEN) == "1"
    }

    /// True when the location has an `error_page` for `status`.
    pub fn has_error_page(&self, status: u16) -> bool {
        let s = status.to_string();
        self.get(sys::REQ_ERROR_PAGES).split(' ').any(|c| c == s)
    }

    /// Changes `$uri` (and `$args` when `args` is Some) from the
    /// SERVER_REWRITE or REWRITE phase, as nginx's rewrite module does.
    /// In REWRITE, `relocate` searches the locations again for the new URI
    /// once the phase ends (`rewrite … last`); without it the request
    /// stays in its location (`break`). See `http_set_uri` in
    /// ngx_plugin.h.
    pub fn set_uri(&mut self, uri: &str, args: Option<&str>, relocate: bool) -> Result<(), sys::Rc> {
        let f = rt::slot!(http_set_uri).ok_or(sys::UNSUPPORTED)?;
        let a = args.map_or(sys::Str { data: std::ptr::null(), len: 0 }, |a| sys::Str::from_bytes(a.as_bytes()));
        let flags = if relocate { sys::URI_RELOCATE } else { 0 };
        // SAFETY: live handle; strings copied by the host.
        match unsafe { f(self.raw, sys::Str::from_bytes(uri.as_bytes()), a, flags) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Switches the request to conditional block `id`'s configuration
    /// ([`ConfCx::block_id`]; ABI 1.7), as nginx's `if` when its condition
    /// holds: every plugin's settings there, the host's, and its content
    /// handler. Returns this plugin's own configuration for the block
    /// (`C` must be the exported plugin's `Conf`, else None). Only in the
    /// SERVER_REWRITE and REWRITE phases.
    pub fn enter_block<C: 'static>(&mut self, id: u32) -> Option<&'a C> {
        if !rt::is_conf_type::<C>() {
            return None;
        }
        let f = rt::slot!(http_enter_block)?;
        // SAFETY: live handle.
        let p = unsafe { f(self.raw, id) };
        // SAFETY: the host returns the object this plugin's create_conf
        // made (a `C`, checked above), alive for the generation, which
        // outlives the request.
        (!p.is_null()).then(|| unsafe { &*(p as *const C) })
    }

    /// This plugin's configuration for the request's current block (ABI
    /// 1.14), as its handlers receive it: for variable getters. `C` must
    /// be the exported plugin's `Conf`, else None; None on an older host.
    pub fn conf<C: 'static>(&self) -> Option<&'a C> {
        if !rt::is_conf_type::<C>() {
            return None;
        }
        let f = rt::slot!(http_conf)?;
        // SAFETY: live handle.
        let p = unsafe { f(self.raw) };
        // SAFETY: the object this plugin's create_conf made (a `C`,
        // checked above), alive for the generation.
        (!p.is_null()).then(|| unsafe { &*(p as *const C) })
    }

    /// Starts a subrequest for `uri` (ABI 1.10; see `http_subrequest` in
    /// ngx_plugin.h): return [`Status::Again`]; the handler runs again
    /// once it has finished, and [`Request::subrequest_of`] reads it.
    pub fn subrequest(&mut self, uri: &str, args: &str) -> Result<Subrequest, sys::Rc> {
        let f = rt::slot!(http_subrequest).ok_or(sys::UNSUPPORTED)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: live handle; strings copied; out is a valid out-pointer.
        match unsafe { f(self.raw, sys::Str::from_bytes(uri.as_bytes()), sys::Str::from_bytes(args.as_bytes()), &mut out) } {
            sys::OK if !out.is_null() => Ok(Subrequest(out)),
            rc => Err(rc),
        }
    }

    /// A subrequest this request made, to read its status, headers and
    /// variables (a finished request's handle answers nothing).
    pub fn subrequest_of(&self, s: Subrequest) -> Request<'_> {
        // SAFETY: the host checks every handle: one whose subrequest is
        // gone answers GONE, never reaching freed memory.
        unsafe { Request::from_raw(s.0) }
    }

    /// The query string (`$args`).
    pub fn args(&self) -> &str {
        self.get(sys::REQ_ARGS)
    }

    /// The request line's target as received (`$request_uri`).
    pub fn request_uri(&self) -> &str {
        self.get(sys::REQ_REQUEST_URI)
    }

    /// A request header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut out = sys::Str::empty();
        let f = rt::host().http_header_in?;
        // SAFETY: live handle; name is borrowed for the call; the value
        // lives until the request finishes.
        (unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), &mut out) } == sys::OK)
            .then(|| unsafe { rt::str_of(out) })
    }

    /// Several request headers in one host call: the value of the first
    /// header of each name (case-insensitive), in the order of `names`.
    pub fn headers_named<const N: usize>(&self, names: [&str; N]) -> [Option<&str>; N] {
        let Some(f) = rt::slot!(http_headers_in) else { return names.map(|n| self.header(n)) };
        let keys = names.map(|n| sys::Str::from_bytes(n.as_bytes()));
        let mut out = [sys::Str::empty(); N];
        // SAFETY: live handle; N names borrowed for the call, room for N
        // values, which live until the request finishes.
        if unsafe { f(self.raw, keys.as_ptr(), out.as_mut_ptr(), N) } != sys::OK {
            return [None; N];
        }
        out.map(|v| (!v.data.is_null()).then(|| unsafe { rt::str_of(v) }))
    }

    /// Sets the response status.
    pub fn set_status(&mut self, status: u16) {
        if let Some(f) = rt::host().http_set_status {
            // SAFETY: live handle.
            unsafe { f(self.raw, status as u32) };
        }
    }

    /// Adds a response header.
    pub fn add_header(&mut self, name: &str, value: &str) {
        if let Some(f) = rt::host().http_header_out_add {
            // SAFETY: live handle; the host copies both strings.
            unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), sys::Str::from_bytes(value.as_bytes())) };
        }
    }

    /// Sends body bytes (the header first, if not yet sent); `last` ends
    /// the body.
    pub fn send(&mut self, body: &[u8], last: bool) -> Result<(), sys::Rc> {
        self.send_bufs(&[body], last)
    }

    /// nginx's `ngx_http_gzip_ok` (ABI 1.13): may the response go out
    /// gzip-compressed? The host decides from Accept-Encoding and the core
    /// `gzip_http_version`, `gzip_proxied`, `gzip_disable` settings.
    /// `vary`: the response could be compressed, so under `gzip_vary on`
    /// it says `Vary: Accept-Encoding`. None on an older host.
    pub fn gzip_ok(&mut self, vary: bool) -> Option<bool> {
        let f = rt::slot!(http_gzip_ok)?;
        // SAFETY: live handle.
        Some(unsafe { f(self.raw, if vary { sys::GZIP_VARY } else { 0 }) } == sys::OK)
    }

    /// Sends a complete response: status, Content-Type and body.
    pub fn respond(&mut self, status: u16, content_type: &str, body: &[u8]) -> Status {
        self.set_status(status);
        self.add_header("Content-Type", content_type);
        match self.send(body, true) {
            Ok(()) => Status::Ok,
            Err(_) => Status::Error,
        }
    }

    /// The protocol ("HTTP/1.1").
    pub fn protocol(&self) -> &str {
        self.get(sys::REQ_PROTOCOL)
    }

    /// `$host`.
    pub fn host(&self) -> &str {
        self.get(sys::REQ_HOST)
    }

    /// Request headers in received order.
    pub fn headers(&self) -> Headers<'_> {
        Headers { req: self, i: 0 }
    }

    /// A variable's value (`"uri"` for `$uri`) as bytes; `None` if unset.
    pub fn var_bytes(&self, name: &str) -> Option<&[u8]> {
        let f = rt::host().http_var?;
        let mut out = sys::Str::empty();
        // SAFETY: live handle; the host keeps the value for the request's
        // lifetime (copied into request memory).
        (unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), &mut out) } == sys::OK)
            .then(|| unsafe { out.as_bytes() })
    }

    /// A variable's value as text (lossy: invalid UTF-8 reads as empty).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.var_bytes(name).map(rt::text)
    }

    /// Sets a (user) variable, or `uri`/`args`.
    pub fn set_var(&mut self, name: &str, value: &str) -> Result<(), sys::Rc> {
        let f = rt::host().http_var_set.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: live handle; strings copied by the host.
        match unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), sys::Str::from_bytes(value.as_bytes())) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// The response status set so far (0 if none).
    pub fn status(&self) -> u16 {
        // SAFETY: live handle.
        rt::host().http_status.map_or(0, |f| unsafe { f(self.raw) } as u16)
    }

    /// The first response header `name`.
    pub fn header_out(&self, name: &str) -> Option<&str> {
        let f = rt::host().http_header_out?;
        let mut out = sys::Str::empty();
        // SAFETY: live handle; value borrowed until it changes (tied to &self).
        (unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), &mut out) } == sys::OK)
            .then(|| unsafe { rt::str_of(out) })
    }

    /// Replaces every response header `name` with one `value`.
    pub fn set_header(&mut self, name: &str, value: &str) {
        if let Some(f) = rt::host().http_header_out_set {
            // SAFETY: live handle; strings copied.
            unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), sys::Str::from_bytes(value.as_bytes())) };
        }
    }

    /// Sets several response headers in one host call, each as
    /// [`set_header`](Self::set_header) would; a `None` value removes the
    /// header. Up to 8 lines go in one host call, which sets none of them
    /// if one is invalid; a longer list goes 8 at a time, and stops at the
    /// first group refused (earlier groups stay set).
    pub fn set_headers(&mut self, lines: &[(&str, Option<&str>)]) -> Result<(), sys::Rc> {
        let Some(f) = rt::slot!(http_headers_out_set) else {
            for &(n, v) in lines {
                match v {
                    Some(v) => self.set_header(n, v),
                    None => self.remove_header(n),
                }
            }
            return Ok(());
        };
        const CHUNK: usize = 8;
        let mut buf = [sys::Header { name: sys::Str::empty(), value: sys::Str::empty() }; CHUNK];
        // More than CHUNK lines go in several calls (each checked whole).
        for part in lines.chunks(CHUNK) {
            for (b, &(n, v)) in buf.iter_mut().zip(part) {
                *b = sys::Header { name: sys::Str::from_bytes(n.as_bytes()), value: v.map_or(sys::Str::empty(), |v| sys::Str::from_bytes(v.as_bytes())) };
            }
            // SAFETY: live handle; the lines are borrowed for the call.
            match unsafe { f(self.raw, buf.as_ptr(), part.len()) } {
                sys::OK => {}
                rc => return Err(rc),
            }
        }
        Ok(())
    }

    /// Removes every response header `name`.
    pub fn remove_header(&mut self, name: &str) {
        if let Some(f) = rt::host().http_header_out_set {
            // SAFETY: live handle; a NULL value removes.
            unsafe { f(self.raw, sys::Str::from_bytes(name.as_bytes()), sys::Str::empty()) };
        }
    }

    /// Sends the status and headers (through the header filters).
    pub fn send_header(&mut self) -> Result<(), sys::Rc> {
        let f = rt::host().http_send_header.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: live handle.
        match unsafe { f(self.raw) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Sends a file region as body (the host dup()s `fd`; close yours
    /// whenever you like). `last` ends the body.
    pub fn send_file(&mut self, fd: i32, pos: u64, len: u64, last: bool) -> Result<(), sys::Rc> {
        let buf = sys::Buf {
            data: std::ptr::null(),
            len: 0,
            fd,
            flags: sys::BUF_FILE | if last { sys::BUF_LAST } else { 0 },
            file_pos: pos as i64,
            file_len: len as i64,
        };
        let f = rt::host().http_send_body.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: live handle; buf borrowed for the call.
        match unsafe { f(self.raw, &buf, 1) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Restarts the request at `uri` (or `@name`) with `args`; return the
    /// result from the handler.
    pub fn internal_redirect(&mut self, uri: &str, args: &str) -> Status {
        let Some(f) = rt::host().http_internal_redirect else { return Status::Error };
        // SAFETY: live handle; strings copied.
        match unsafe { f(self.raw, sys::Str::from_bytes(uri.as_bytes()), sys::Str::from_bytes(args.as_bytes())) } {
            sys::OK => Status::Done,
            _ => Status::Error,
        }
    }

    /// Starts reading the request body. `Ok(true)`: it is complete now
    /// (see [`Request::body`]); `Ok(false)`: return [`Status::Again`] — the
    /// handler is called again once it is complete (a failed read, such as
    /// 413 or 408, finalizes the request instead).
    pub fn read_body(&mut self) -> Result<bool, sys::Rc> {
        let f = rt::host().http_read_body.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: live handle; the callback is a plain function.
        match unsafe { f(self.raw, Some(rt::resume_on_done), std::ptr::null_mut()) } {
            sys::OK => Ok(true),
            sys::AGAIN => Ok(false),
            rc => Err(rc),
        }
    }

    /// The request body once read, when it is in memory (see
    /// [`Request::body_piece`] for one in a temporary file).
    pub fn body(&self) -> Option<&[u8]> {
        match self.body_piece()? {
            Piece::Mem(m) => Some(m),
            Piece::File { .. } => None,
        }
    }

    /// The whole request body once read: in memory, or (larger than
    /// `client_body_buffer_size`) a region of a temporary file whose
    /// descriptor lives as long as the request.
    pub fn body_piece(&self) -> Option<Piece<'_>> {
        let f = rt::host().http_body?;
        let (mut bufs, mut n) = (std::ptr::null(), 0usize);
        // SAFETY: live handle; valid out-pointers.
        if unsafe { f(self.raw, &mut bufs, &mut n) } != sys::OK || bufs.is_null() || n == 0 {
            return None;
        }
        // SAFETY: the host's buffer lives in the request.
        Some(Piece::of(unsafe { &*bufs }))
    }

    /// Resumes the request after `ms` milliseconds: return
    /// [`Status::Again`]; the handler is called again then. The timer is
    /// owned by the request (gone if the request ends first).
    pub fn resume_after(&mut self, ms: u64) -> Result<(), sys::Rc> {
        let f = rt::host().timer_add.ok_or(sys::UNSUPPORTED)?;
        let mut id = 0;
        // SAFETY: live handle; the callback gets the handle back as data.
        match unsafe { f(self.raw, ms, Some(rt::resume_timer), self.raw.cast(), &mut id) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// This plugin's per-request state, created with `Default` on first
    /// use and dropped when the request ends. It lives in the request's
    /// memory (no allocation per request) unless aligned to more than 16
    /// bytes. One type per plugin: every call must name the same `T`.
    pub fn ctx<T: Default + 'static>(&mut self) -> &mut T {
        let h = rt::host();
        self.state(h.http_ctx, h.http_set_ctx)
    }

    /// Like [`Request::ctx`], but kept across internal redirects (ABI
    /// 1.11 `http_set_data`; None on an older host): for what nginx keeps
    /// on the request itself. One type per plugin, its own (not the
    /// `ctx` one).
    pub fn data<T: Default + 'static>(&mut self) -> Option<&mut T> {
        match (rt::slot!(http_data), rt::slot!(http_set_data)) {
            (Some(get), Some(set)) => Some(self.state(Some(get), Some(set))),
            _ => None,
        }
    }

    #[allow(clippy::type_complexity)]
    fn state<T: Default + 'static>(
        &mut self,
        get: Option<unsafe extern "C" fn(*mut sys::Request) -> *mut c_void>,
        set: Option<unsafe extern "C" fn(*mut sys::Request, *mut c_void, Option<sys::FreeFn>) -> sys::Rc>,
    ) -> &mut T {
        let h = rt::host();
        // SAFETY: live handle.
        let p = get.map_or(std::ptr::null_mut(), |f| unsafe { f(self.raw) });
        if !p.is_null() {
            // SAFETY: set below by this plugin with a Box<T>; one type per
            // plugin by contract of this method.
            return unsafe { &mut *(p as *mut T) };
        }
        let Some(set) = set else {
            // A host without per-request state: this call's own, leaked.
            return Box::leak(Box::<T>::default());
        };
        // In the request's own memory when it fits (as nginx's module
        // contexts live in the request pool): no allocation per request,
        // since the host keeps that memory from one request to the next.
        // Request memory is 16-aligned, and the host runs ctx free
        // functions before releasing it (ngx_plugin.h, http_set_ctx).
        let (size, align) = (std::mem::size_of::<T>(), std::mem::align_of::<T>());
        if size > 0 && align <= 16 {
            if let Some(alloc) = h.http_alloc {
                // SAFETY: live handle.
                let p = unsafe { alloc(self.raw, size) } as *mut T;
                if !p.is_null() {
                    // SAFETY: p is size bytes, aligned for T, ours until the
                    // request ends; dropped once by drop_in_request.
                    unsafe {
                        p.write(T::default());
                        set(self.raw, p.cast(), Some(rt::drop_in_request::<T>));
                        return &mut *p;
                    }
                }
            }
        }
        let b = Box::into_raw(Box::<T>::default());
        // SAFETY: live handle; the host calls drop_box::<T> once.
        unsafe { set(self.raw, b.cast(), Some(rt::drop_box::<T>)) };
        // SAFETY: just allocated; owned by the request from now on.
        unsafe { &mut *b }
    }

    /// From a body filter: passes `data` (copied by the host) on to the
    /// next filter, ending the body when `last`.
    pub fn next_body(&mut self, data: &[u8], last: bool) -> Result<(), sys::Rc> {
        let b = sys::Buf { data: data.as_ptr(), len: data.len(), fd: -1, flags: if last { sys::BUF_LAST } else { 0 }, file_pos: 0, file_len: 0 };
        if data.is_empty() && !last {
            return Ok(());
        }
        self.next_body_raw(std::slice::from_ref(&b))
    }

    /// From a body filter: passes buffers on unchanged (zero copy).
    pub fn next_body_raw(&mut self, bufs: &[sys::Buf]) -> Result<(), sys::Rc> {
        let f = rt::host().http_next_body_filter.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: live handle; bufs borrowed for the call.
        match unsafe { f(self.raw, bufs.as_ptr(), bufs.len()) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Sends several body buffers in one call (the host copies them).
    pub fn send_bufs(&mut self, parts: &[&[u8]], last: bool) -> Result<(), sys::Rc> {
        let mem = |p: &&[u8]| sys::Buf { data: p.as_ptr(), len: p.len(), fd: -1, flags: 0, file_pos: 0, file_len: 0 };
        // A few parts go from the stack, more from the heap.
        const ROOM: usize = 8;
        let mut room = [mem(&&[][..]); ROOM];
        let mut heap = Vec::new();
        let n = parts.iter().filter(|p| !p.is_empty()).count();
        let bufs: &mut [sys::Buf] = if n <= ROOM {
            for (b, p) in room.iter_mut().zip(parts.iter().filter(|p| !p.is_empty())) {
                *b = mem(p);
            }
            &mut room[..n.max(1)]
        } else {
            heap.extend(parts.iter().filter(|p| !p.is_empty()).map(mem));
            &mut heap
        };
        if n == 0 {
            if !last {
                return Ok(());
            }
            // Only the end of the body: one empty buffer says it.
            bufs[0] = sys::Buf { data: std::ptr::null(), ..bufs[0] };
        }
        if last {
            bufs[bufs.len() - 1].flags |= sys::BUF_LAST;
        }
        let f = rt::host().http_send_body.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: live handle; bufs borrow parts for the call.
        match unsafe { f(self.raw, bufs.as_ptr(), bufs.len()) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Bytes of response output queued for the client (ABI 1.1; 0 before).
    pub fn output_queued(&self) -> usize {
        let h = rt::host();
        if !rt::host_has(std::mem::offset_of!(sys::Host, http_output_queued)) {
            return 0;
        }
        // SAFETY: live handle.
        h.http_output_queued.map_or(0, |f| unsafe { f(self.raw) })
    }

    /// Flow control: `true` if at most `limit` bytes are queued for the
    /// client; otherwise `false` — return [`Status::Again`] and the
    /// handler is called again once the client has taken enough.
    pub fn resume_when_drained(&mut self, limit: usize) -> bool {
        let h = rt::host();
        if !rt::host_has(std::mem::offset_of!(sys::Host, http_resume_when_drained)) {
            return true;
        }
        // SAFETY: live handle.
        h.http_resume_when_drained.is_none_or(|f| unsafe { f(self.raw, limit) } != sys::AGAIN)
    }

    /// Hands the client connection and `upstream` to the host, which
    /// copies bytes both ways until either side closes (after a 101
    /// response has been sent). Return [`Status::Done`] from the handler.
    pub fn relay(&mut self, upstream: io::Conn) -> Result<(), sys::Rc> {
        let f = rt::host().relay.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: live handles; no callback.
        match unsafe { f(self.raw, std::ptr::null_mut(), upstream.raw(), None, std::ptr::null_mut()) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// The raw handle, for calls the safe layer does not wrap yet.
    pub fn raw(&self) -> *mut sys::Request {
        self.raw
    }
}

/// Iterator over request headers: (name, value).
pub struct Headers<'r> {
    req: &'r Request<'r>,
    i: usize,
}

impl<'r> Iterator for Headers<'r> {
    type Item = (&'r str, &'r str);

    fn next(&mut self) -> Option<Self::Item> {
        let f = rt::host().http_header_in_at?;
        let (mut k, mut v) = (sys::Str::empty(), sys::Str::empty());
        // SAFETY: live handle; values live until the request finishes.
        if unsafe { f(self.req.raw, self.i, &mut k, &mut v) } != sys::OK {
            return None;
        }
        self.i += 1;
        // SAFETY: as above.
        Some(unsafe { (rt::str_of(k), rt::str_of(v)) })
    }
}

/// Writes to the host's error log.
pub fn log(level: u32, msg: &str) {
    rt::log(level, msg)
}

/// Logs that a file was not found (nginx's wording is the caller's), at
/// error level unless the request's location says `log_not_found off`
/// (ABI 1.14; an older host logs it).
pub fn log_not_found(msg: &str) {
    let newer = rt::host_has(std::mem::offset_of!(sys::Host, http_conf));
    rt::log(if newer { sys::LOG_ERR | sys::LOG_NOT_FOUND } else { sys::LOG_ERR }, msg)
}

/// The server's connection and request counters (ABI 1.12 `stats`),
/// summed over every worker: nginx's stub_status numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open client connections, idle ones included.
    pub active: u64,
    /// Connections accepted since the server started.
    pub accepts: u64,
    /// Connections accepted and taken on.
    pub handled: u64,
    /// Client requests since the server started.
    pub requests: u64,
    /// Connections reading a request head.
    pub reading: u64,
    /// Connections serving a request.
    pub writing: u64,
    /// Idle connections.
    pub waiting: u64,
}

/// The counters; None on a host older than ABI 1.12.
pub fn stats() -> Option<Stats> {
    let f = rt::slot!(stats)?;
    let mut v = [0u64; sys::STAT_COUNT];
    // SAFETY: room for STAT_COUNT values; the host fills at most that many.
    let n = unsafe { f(v.as_mut_ptr(), v.len()) };
    (n >= sys::STAT_COUNT).then(|| Stats {
        active: v[sys::STAT_ACTIVE],
        accepts: v[sys::STAT_ACCEPTS],
        handled: v[sys::STAT_HANDLED],
        requests: v[sys::STAT_REQUESTS],
        reading: v[sys::STAT_READING],
        writing: v[sys::STAT_WRITING],
        waiting: v[sys::STAT_WAITING],
    })
}

/// Sends the `list` ranges of a body of `size` bytes of type `ctype`,
/// which starts at offset `base` of the file `fd`, as a 206
/// multipart/byteranges response, head and all.
pub fn send_multipart(req: &mut Request<'_>, fd: i32, base: u64, list: &[(u64, u64)], size: u64, ctype: &str) -> Result<(), sys::Rc> {
    let boundary = format!("{:020}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64 % 10_000_000_000));
    let heads: Vec<String> = list
        .iter()
        .map(|(a, b)| format!("\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n"))
        .collect();
    let tail = format!("\r\n--{boundary}--\r\n");
    let len: u64 = heads.iter().map(|h| h.len() as u64).sum::<u64>()
        + list.iter().map(|(a, b)| b - a + 1).sum::<u64>()
        + tail.len() as u64;
    req.set_status(206);
    req.set_header("Content-Type", &format!("multipart/byteranges; boundary={boundary}"));
    req.set_header("Content-Length", &len.to_string());
    for (h, (a, b)) in heads.iter().zip(list) {
        req.send(h.as_bytes(), false)?;
        req.send_file(fd, base + *a, b - a + 1, false)?;
    }
    req.send(tail.as_bytes(), true)
}

/// The `word word…;` lines of a file a block includes (`map`, `geo`):
/// words split at blanks, quotes removed, `#` comments skipped.
pub fn file_lines(text: &str) -> Result<Vec<Vec<String>>, String> {
    let (mut lines, mut words, mut word) = (Vec::new(), Vec::new(), None::<String>);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' if word.is_none() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' if word.is_none() => {
                let mut w = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') => w.extend(chars.next()),
                        Some(x) => w.push(x),
                        None => return Err("unexpected end of file in a quoted string".into()),
                    }
                }
                words.push(w);
            }
            ';' => {
                words.extend(word.take());
                if !words.is_empty() {
                    lines.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word.take());
    if !words.is_empty() {
        return Err("unexpected end of file, expecting \";\"".into());
    }
    Ok(lines)
}
