//! A generation's plugins and their configuration objects.
//!
//! [`Plugins::configure`] walks the checked tree once. Each block that is
//! a configuration level (http, server, location, mail, mail server) gets
//! one object per plugin from `create_conf`; the plugin's directives in
//! that block are applied to it with `set`; when the block ends, the
//! parent's object is merged into it (`merge_conf`), as nginx merges.
//! Other block directives a plugin owns (`upstream {}`) keep the enclosing
//! level's objects and pass data to their children via block data.

#![allow(unsafe_code)]

use super::host_api::{self, ConfCtx};
use super::{Hooks, Plugin};
use crate::config::table::{ctx, Registry};
use crate::config::{ConfError, Directive};
use plugin_api::sys;
use std::ffi::c_void;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration level block (http, server, location, mail, mail
/// server) with each plugin's object for it, recorded in file order so a
/// parent always comes before its children.
pub struct Node {
    /// The level (`ctx::HTTP`, `ctx::SERVER`, …).
    pub level: u32,
    /// The context the block appears in (a `location` in a server or in a
    /// location; a `server` in http or in mail).
    pub in_ctx: u32,
    /// The enclosing level block, if any.
    pub parent: Option<usize>,
    /// The block directive itself (with its children).
    pub d: Directive,
    /// Per plugin (load order): its object for this block (NULL if none),
    /// merged from the parent's.
    pub confs: Vec<*mut c_void>,
    /// A content handler a directive in this block set: (plugin, handler).
    pub content: Option<(usize, sys::HttpHandlerFn)>,
}

/// A generation's loaded plugins and every configuration object they made.
pub struct Plugins {
    /// Loaded plugins in `load_module` order.
    pub list: Vec<Plugin>,
    /// Each plugin's hooks.
    pub hooks: Vec<Hooks>,
    /// Declared phase handlers, per phase, in load then declaration order
    /// (computed once per generation, not per request).
    pub phase_handlers: Vec<Vec<(usize, sys::HttpHandlerFn)>>,
    /// Header filters, in the order they run (reverse load order, as nginx).
    pub header_filters: Vec<(usize, sys::HeaderFilterFn)>,
    /// Body filters, likewise.
    pub body_filters: Vec<(usize, sys::BodyFilterFn)>,
    /// Variables plugins defined: (name, plugin, getter, data).
    pub vars: Vec<(String, usize, sys::VarFn, *mut c_void)>,
    /// Variable families plugins defined: (prefix, plugin, getter, data).
    pub prefix_vars: Vec<(String, usize, sys::PrefixVarFn, *mut c_void)>,
    /// Bit b set when some family's prefix starts with byte b (ASCII):
    /// most names are ruled out without a scan.
    pub prefix_first: u128,
    /// Each plugin's MAIN-level object.
    pub main: Vec<*mut c_void>,
    /// Every level block, parents before children.
    pub nodes: Vec<Node>,
    /// Every object made, for free_conf: (plugin, level, object).
    made: Vec<(usize, u32, *mut c_void)>,
    /// True once init_cycle ran (fini_cycle is owed).
    initialised: bool,
    /// Protocol listeners plugins declared: (address, plugin, callback, data).
    pub proto: Vec<(SocketAddr, usize, sys::AcceptFn, *mut c_void)>,
    /// Helper processes plugins asked for in init_cycle.
    pub helpers: Vec<host_api::HelperSpec>,
    /// Shared zones this generation's plugins declared.
    pub zones: Vec<std::rc::Rc<crate::shm::Zone>>,
    prefix: PathBuf,
    /// The main configuration file's directory (relative TLS file names).
    pub conf_dir: PathBuf,
    /// TLS contexts plugins built with conf_tls (alive for the generation).
    /// Boxed: plugins hold their addresses while the Vec grows.
    #[allow(clippy::vec_box)]
    tls: std::cell::RefCell<Vec<Box<super::io::TlsCtx>>>,
    /// Files plugins opened with conf_open_file (alive for the generation).
    #[allow(clippy::vec_box)]
    files: std::cell::RefCell<Vec<Box<super::files::OpenFile>>>,
    /// Directories plugins asked for (conf_add_path): made and given to
    /// the worker user before privileges go.
    pub paths: std::cell::RefCell<Vec<PathBuf>>,
}

/// Blocks that are configuration levels. `if` and `limit_except` blocks
/// are too: conditional configurations a request switches to (nginx's
/// unnamed locations).
const LEVELS: u32 = ctx::HTTP | ctx::SERVER | ctx::LOCATION | ctx::MAIL | ctx::MAIL_SERVER | ctx::IF | ctx::LIMIT_EXCEPT;

impl Plugins {
    /// Wraps loaded plugins; nothing is configured yet.
    pub fn new(list: Vec<Plugin>, prefix: PathBuf) -> Plugins {
        let hooks: Vec<Hooks> = list.iter().map(Plugin::hooks).collect();
        let phase_handlers = (sys::PHASE_POST_READ..=sys::PHASE_LOG)
            .map(|phase| {
                list.iter()
                    .enumerate()
                    .flat_map(|(i, p)| p.handlers.iter().filter(move |(ph, _)| *ph == phase).map(move |(_, h)| (i, *h)))
                    .collect()
            })
            .collect();
        let header_filters = hooks.iter().enumerate().rev().filter_map(|(i, h): (usize, &Hooks)| h.header_filter.map(|f| (i, f))).collect();
        let body_filters = hooks.iter().enumerate().rev().filter_map(|(i, h): (usize, &Hooks)| h.body_filter.map(|f| (i, f))).collect();
        Plugins { list, hooks, phase_handlers, header_filters, body_filters, vars: Vec::new(), prefix_vars: Vec::new(), prefix_first: 0, main: Vec::new(), nodes: Vec::new(), made: Vec::new(), initialised: false, proto: Vec::new(), helpers: Vec::new(), zones: Vec::new(), conf_dir: prefix.join("conf"), prefix, tls: Default::default(), files: Default::default(), paths: Default::default() }
    }

    fn cx<'d>(&self, d: &'d Directive, block_data: *mut c_void) -> ConfCtx<'d> {
        ConfCtx::new(d, self.prefix.clone(), self.conf_dir.clone(), block_data)
    }

    /// Keeps what a configuration call made for the generation.
    fn keep(&self, cx: &mut ConfCtx<'_>) {
        self.tls.borrow_mut().append(&mut cx.tls);
        self.files.borrow_mut().append(&mut cx.files);
        self.paths.borrow_mut().append(&mut cx.paths);
    }

    fn create(&mut self, level: u32, at: &Directive) -> Result<Vec<*mut c_void>, ConfError> {
        let mut out = Vec::with_capacity(self.list.len());
        for i in 0..self.list.len() {
            let Some(f) = self.hooks[i].create_conf else {
                out.push(std::ptr::null_mut());
                continue;
            };
            let mut cx = self.cx(at, std::ptr::null_mut());
            let p = &self.list[i];
            // SAFETY: create_conf gets a live ConfCtx for the call.
            let obj = host_api::with_plugin(i, &p.name, || unsafe { f((&mut cx as *mut ConfCtx).cast(), level) });
            self.keep(&mut cx);
            if obj.is_null() {
                return Err(at.err(cx.error.unwrap_or_else(|| format!("plugin \"{}\" could not create its configuration", p.name))));
            }
            // Variables may be defined when a block's configuration is made
            // (the main one: before any directive) as from directives.
            self.take_vars(i, &mut cx, at)?;
            self.made.push((i, level, obj));
            out.push(obj);
        }
        Ok(out)
    }

    /// Registers the variables plugin `pi` defined during a call.
    fn take_vars(&mut self, pi: usize, cx: &mut ConfCtx, at: &Directive) -> Result<(), ConfError> {
        for (name, get, vdata) in cx.vars.drain(..) {
            // A plugin may define its variables from any of its
            // directives: the first definition stands.
            if self.vars.iter().any(|v| v.0 == name && v.1 == pi) {
                continue;
            }
            if self.vars.iter().any(|v| v.0 == name) || crate::http::vars::is_core(&name) {
                return Err(at.err(format!("variable \"{name}\" is already defined")));
            }
            self.vars.push((name, pi, get, vdata));
        }
        for (prefix, get, vdata) in cx.prefix_vars.drain(..) {
            if self.prefix_vars.iter().any(|v| v.0 == prefix && v.1 == pi) {
                continue;
            }
            // Families may not overlap each other or the host's.
            let overlaps = |a: &str| a.starts_with(prefix.as_str()) || prefix.starts_with(a);
            if self.prefix_vars.iter().any(|v| overlaps(&v.0)) || crate::http::vars::overlaps_core_family(&prefix) {
                return Err(at.err(format!("variables \"${prefix}…\" are already defined")));
            }
            self.prefix_first |= 1 << (prefix.as_bytes()[0] & 0x7f);
            self.prefix_vars.push((prefix, pi, get, vdata));
        }
        Ok(())
    }

    fn merge(&self, level: u32, parent: &[*mut c_void], child: &[*mut c_void], at: &Directive) -> Result<(), ConfError> {
        for i in 0..self.list.len() {
            let Some(f) = self.hooks[i].merge_conf else { continue };
            if parent[i].is_null() || child[i].is_null() {
                continue;
            }
            let mut cx = self.cx(at, std::ptr::null_mut());
            // SAFETY: both objects came from this plugin's create_conf.
            let rc = host_api::with_plugin(i, &self.list[i].name, || unsafe {
                f((&mut cx as *mut ConfCtx).cast(), level, parent[i], child[i])
            });
            self.keep(&mut cx);
            if rc != sys::OK {
                return Err(at.err(cx.error.unwrap_or_else(|| format!("plugin \"{}\" failed to merge its configuration", self.list[i].name))));
            }
        }
        Ok(())
    }

    /// Creates, applies and merges every plugin's configuration.
    pub fn configure(&mut self, root: &[Directive], reg: &Registry) -> Result<(), ConfError> {
        let top = Directive { name: "main".into(), args: vec![], file: "main".into(), line: 0, block: None };
        let at = root.first().unwrap_or(&top);
        self.main = self.create(sys::CTX_MAIN, at)?;
        let main = self.main.clone();
        let mut data = vec![std::ptr::null_mut(); self.list.len()];
        self.apply(root, ctx::MAIN, &main, None, &mut data, reg)?;
        // Merge top-down once everything is read, as nginx does: a
        // location inherits from its server after the server has inherited
        // from http, whatever the order of directives in the file.
        for i in 0..self.nodes.len() {
            let (level, Some(p)) = (self.nodes[i].level, self.nodes[i].parent) else { continue };
            let parent = self.nodes[p].confs.clone();
            self.merge(level, &parent, &self.nodes[i].confs, &self.nodes[i].d)?;
        }
        Ok(())
    }

    fn apply(
        &mut self,
        list: &[Directive],
        in_ctx: u32,
        confs: &[*mut c_void],
        node: Option<usize>,
        data: &mut [*mut c_void],
        reg: &Registry,
    ) -> Result<(), ConfError> {
        for d in list {
            let Ok(spec) = reg.find(&d.name, in_ctx) else { continue };
            let mut child_data = data.to_vec();
            if let Some(pi) = spec.owner {
                let p = &self.list[pi];
                let set = p.setters.iter().find(|(n, _)| *n == d.name).and_then(|(_, s)| *s);
                if let Some(set) = set {
                    let mut cx = self.cx(d, data[pi]);
                    cx.location = self.enclosing_location(node);
                    cx.server_names = self.enclosing_server_names(node);
                    if spec.block == Some(ctx::IF) {
                        // The node this block is about to become.
                        cx.block_id = self.nodes.len() as u32 + 1;
                    }
                    let (args, n) = (cx.args.as_ptr(), cx.args.len());
                    // SAFETY: cx lives across the call; conf is this plugin's
                    // object for the block; args borrow d.args.
                    let rc = host_api::with_plugin(pi, &p.name, || unsafe {
                        set((&mut cx as *mut ConfCtx).cast(), confs[pi], args, n)
                    });
                    self.keep(&mut cx);
                    if rc != sys::OK {
                        let msg = cx.error.take().unwrap_or_else(|| format!("invalid parameters in \"{}\" directive", d.name));
                        return Err(d.err(msg));
                    }
                    self.zones.append(&mut cx.zones);
                    self.take_vars(pi, &mut cx, d)?;
                    for (addr, cb, data) in cx.listens.drain(..) {
                        if self.proto.iter().any(|p| p.0 == addr) {
                            return Err(d.err(format!("a duplicate listen {addr}")));
                        }
                        self.proto.push((addr, pi, cb, data));
                    }
                    if let (Some(h), Some(n)) = (cx.content_handler, node) {
                        self.nodes[n].content = Some((pi, h));
                    }
                    if let Some(bd) = cx.new_block_data {
                        child_data[pi] = bd;
                    }
                }
            }
            let (Some(inner), Some(children)) = (spec.block, &d.block) else { continue };
            if inner & ctx::OPAQUE != 0 {
                continue;
            }
            if inner & LEVELS == 0 {
                self.apply(children, inner, confs, node, &mut child_data, reg)?;
                continue;
            }
            let own = self.create(inner, d)?;
            let parent = if inner == ctx::HTTP || inner == ctx::MAIL { None } else { node };
            self.nodes.push(Node { level: inner, in_ctx, parent, d: d.clone(), confs: own.clone(), content: None });
            let me = self.nodes.len() - 1;
            self.apply(children, inner, &own, Some(me), &mut child_data, reg)?;
        }
        Ok(())
    }

    /// The (modifier, name) of the nearest `location` around `node`:
    /// modifier "", "=", "~", "~*", "^~" or "@" (a named location).
    fn enclosing_location(&self, mut node: Option<usize>) -> Option<(String, String)> {
        while let Some(n) = node {
            let d = &self.nodes[n].d;
            if d.name == "location" {
                return crate::http::conf::split_location(d).map(|(m, p)| (m.to_string(), p.to_string()));
            }
            node = self.nodes[n].parent;
        }
        None
    }

    /// The `server_name` arguments of the `server` block around `node`
    /// (all of them, wherever they stand in the block), or None outside
    /// one.
    fn enclosing_server_names(&self, mut node: Option<usize>) -> Option<Vec<String>> {
        while let Some(n) = node {
            let d = &self.nodes[n].d;
            if d.name == "server" {
                return Some(d.children().iter().filter(|c| c.name == "server_name").flat_map(|c| c.args.iter().cloned()).collect());
            }
            node = self.nodes[n].parent;
        }
        None
    }

    /// Calls one lifecycle hook (picked by `get`) of every plugin that has
    /// it, with the plugin's MAIN object, handing each result to `check`.
    fn each_main_hook<R>(
        &self,
        get: impl Fn(&Hooks) -> Option<unsafe extern "C" fn(*mut sys::Cycle, *mut c_void) -> R>,
        mut check: impl FnMut(&str, R) -> Result<(), String>,
    ) -> Result<(), String> {
        for i in 0..self.list.len() {
            let (Some(f), Some(&main)) = (get(&self.hooks[i]), self.main.get(i)) else { continue };
            let name = &self.list[i].name;
            // SAFETY: main is this plugin's MAIN object; the cycle handle is
            // reserved (NULL) in this version.
            let r = host_api::with_plugin(i, name, || unsafe { f(std::ptr::null_mut(), main) });
            check(name, r)?;
        }
        Ok(())
    }

    /// Runs every plugin's init_cycle in the master.
    pub fn init_cycle(&mut self) -> Result<(), String> {
        self.initialised = true;
        self.helpers = host_api::collect_helpers(|| {
            self.each_main_hook(|h| h.init_cycle, |name, rc| match rc {
                sys::OK => Ok(()),
                rc => Err(format!("plugin \"{name}\" failed to initialise (init_cycle returned {rc})")),
            })
        })?;
        Ok(())
    }

    /// Runs init_worker (after fork); an error names the plugin.
    pub fn init_worker(&self) -> Result<(), String> {
        self.each_main_hook(|h| h.init_worker, |name, rc| match rc {
            sys::OK => Ok(()),
            rc => Err(format!("plugin \"{name}\" failed to initialise the worker (init_worker returned {rc})")),
        })
    }

    /// Runs exit_worker before a worker exits.
    pub fn exit_worker(&self) {
        let _ = self.each_main_hook(|h| h.exit_worker, |_, ()| Ok(()));
    }
}

impl Drop for Plugins {
    fn drop(&mut self) {
        if self.initialised {
            let _ = self.each_main_hook(|h| h.fini_cycle, |_, ()| Ok(()));
        }
        for (i, level, obj) in self.made.drain(..) {
            if let Some(f) = self.hooks[i].free_conf {
                // SAFETY: obj came from this plugin's create_conf and is freed once.
                host_api::with_plugin(i, &self.list[i].name, || unsafe { f(level, obj) });
            }
        }
        // Plugin images are dropped (dlclose) after their objects are freed.
    }
}
