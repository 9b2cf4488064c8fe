//! The directive registry: which directives exist, where they may appear,
//! how many arguments they take, and whether they open a block.
//!
//! The host registers its own directives ([`Registry::core`]); plugins add
//! theirs before the tree is checked. One name may have several entries for
//! different contexts (`server` is a block in `http` and a line in
//! `upstream`); the entry whose context mask contains the current context
//! wins.

use super::{ConfError, Directive};
use std::collections::HashMap;

/// Context bits: where a directive may appear, and what a block opens.
pub mod ctx {
    /// Top level of the main file.
    pub const MAIN: u32 = 1 << 0;
    /// Inside `events {}`.
    pub const EVENTS: u32 = 1 << 1;
    /// Inside `http {}`.
    pub const HTTP: u32 = 1 << 2;
    /// Inside `http { server {} }`.
    pub const SERVER: u32 = 1 << 3;
    /// Inside `location {}` (at any depth).
    pub const LOCATION: u32 = 1 << 4;
    /// Inside `http { upstream {} }`.
    pub const UPSTREAM: u32 = 1 << 5;
    /// Inside `if () {}` in server or location.
    pub const IF: u32 = 1 << 6;
    /// Inside `limit_except {}`.
    pub const LIMIT_EXCEPT: u32 = 1 << 7;
    /// Inside `mail {}`.
    pub const MAIL: u32 = 1 << 8;
    /// Inside `mail { server {} }`.
    pub const MAIL_SERVER: u32 = 1 << 9;
    /// A block whose contents are free-form pairs (`types {}`, `map {}`):
    /// its children are not checked against the registry.
    pub const OPAQUE: u32 = 1 << 31;
}

/// One registered directive.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Directive name.
    pub name: String,
    /// Bitmask of contexts it may appear in.
    pub contexts: u32,
    /// Minimum number of arguments.
    pub min_args: usize,
    /// Maximum number of arguments (`usize::MAX` for "1 or more" etc.).
    pub max_args: usize,
    /// For block directives, the context its children are in.
    pub block: Option<u32>,
    /// Refuse a second occurrence in the same block ("is duplicate").
    pub unique: bool,
    /// Who registered it: `None` for the host, else the plugin's index
    /// in load order.
    pub owner: Option<usize>,
}

impl Spec {
    /// A simple directive taking `min..=max` arguments.
    pub fn new(name: &str, contexts: u32, min_args: usize, max_args: usize) -> Self {
        Spec {
            name: name.to_string(),
            contexts,
            min_args,
            max_args,
            block: None,
            unique: false,
            owner: None,
        }
    }

    /// Makes this a block directive whose children are in `inner`.
    pub fn block(mut self, inner: u32) -> Self {
        self.block = Some(inner);
        self
    }

    /// Refuses duplicates in one block.
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }
}

/// All directives known for one configuration generation.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_name: HashMap<String, Vec<Spec>>,
}

const MANY: usize = usize::MAX;

impl Registry {
    /// The host's own directives.
    pub fn core() -> Self {
        use ctx::*;
        let mut r = Registry::default();
        let any_http = HTTP | SERVER | LOCATION;
        for s in [
            Spec::new("worker_processes", MAIN, 1, 1).unique(),
            Spec::new("daemon", MAIN, 1, 1).unique(),
            Spec::new("master_process", MAIN, 1, 1).unique(),
            Spec::new("user", MAIN, 1, 2).unique(),
            Spec::new("worker_rlimit_nofile", MAIN, 1, 1).unique(),
            Spec::new("worker_priority", MAIN, 1, 1).unique(),
            Spec::new("worker_cpu_affinity", MAIN, 1, MANY).unique(),
            Spec::new("worker_shutdown_timeout", MAIN, 1, 1).unique(),
            Spec::new("working_directory", MAIN, 1, 1).unique(),
            Spec::new("pid", MAIN, 1, 1).unique(),
            Spec::new("lock_file", MAIN, 1, 1).unique(),
            Spec::new("pcre_jit", MAIN, 1, 1).unique(),
            Spec::new("timer_resolution", MAIN, 1, 1).unique(),
            Spec::new("env", MAIN, 1, 1),
            Spec::new("error_log", MAIN | any_http | MAIL | MAIL_SERVER, 1, 2),
            Spec::new("load_module", MAIN, 1, 1),
            Spec::new("events", MAIN, 0, 0).block(EVENTS).unique(),
            Spec::new("worker_connections", EVENTS, 1, 1).unique(),
            Spec::new("use", EVENTS, 1, 1).unique(),
            Spec::new("multi_accept", EVENTS, 1, 1).unique(),
            Spec::new("accept_mutex", EVENTS, 1, 1).unique(),
            Spec::new("accept_mutex_delay", EVENTS, 1, 1).unique(),
            Spec::new("http", MAIN, 0, 0).block(HTTP).unique(),
            Spec::new("server", HTTP, 0, 0).block(SERVER),
            Spec::new("listen", SERVER, 1, MANY),
            Spec::new("server_name", SERVER, 1, MANY),
            Spec::new("location", SERVER | LOCATION, 1, 2).block(LOCATION),
            Spec::new("types", any_http, 0, 0).block(OPAQUE),
            Spec::new("limit_except", LOCATION, 1, MANY).block(LIMIT_EXCEPT).unique(),
        ] {
            r.add(s);
        }
        for &(name, contexts, min, max) in crate::http::conf::DIRECTIVES {
            r.add(Spec::new(name, contexts, min, max));
        }
        r
    }

    /// Adds a directive; refuses a second entry with the same name whose
    /// contexts overlap an existing one (a clash between owners).
    pub fn add(&mut self, spec: Spec) -> Option<&Spec> {
        let list = self.by_name.entry(spec.name.clone()).or_default();
        if let Some(i) = list.iter().position(|s| s.contexts & spec.contexts != 0) {
            return Some(&list[i]);
        }
        list.push(spec);
        None
    }

    /// Looks a directive up for context `in_ctx`: `Ok(spec)`, or
    /// `Err(true)` when the name exists elsewhere, `Err(false)` when unknown.
    pub fn find(&self, name: &str, in_ctx: u32) -> Result<&Spec, bool> {
        match self.by_name.get(name) {
            None => Err(false),
            Some(list) => list.iter().find(|s| s.contexts & in_ctx != 0).ok_or(true),
        }
    }

    /// Checks a whole tree, starting in the main context.
    pub fn check(&self, root: &[Directive]) -> Result<(), ConfError> {
        self.check_block(root, ctx::MAIN, None)
    }

    /// `only`: inside a server-level `if`, only the directives of the
    /// plugin owning `if` are allowed (nginx's NGX_HTTP_SIF_CONF: the
    /// server's block is replaced by a location's right after).
    fn check_block(&self, list: &[Directive], in_ctx: u32, only: Option<Option<usize>>) -> Result<(), ConfError> {
        let mut seen: Vec<&str> = Vec::new();
        for d in list {
            let spec = match self.find(&d.name, in_ctx) {
                Ok(s) if only.is_some_and(|o| o != s.owner) => {
                    return Err(d.err(format!("\"{}\" directive is not allowed here", d.name)))
                }
                Ok(s) => s,
                Err(true) => {
                    return Err(d.err(format!("\"{}\" directive is not allowed here", d.name)))
                }
                Err(false) => return Err(d.err(format!("unknown directive \"{}\"", d.name))),
            };
            if d.args.len() < spec.min_args || d.args.len() > spec.max_args {
                return Err(d.err(format!(
                    "invalid number of arguments in \"{}\" directive",
                    d.name
                )));
            }
            match (spec.block, &d.block) {
                (Some(_), None) => {
                    return Err(d.err(format!("directive \"{}\" has no opening \"{{\"", d.name)))
                }
                (None, Some(_)) => {
                    return Err(d.err(format!(
                        "directive \"{}\" is not terminated by \";\"",
                        d.name
                    )))
                }
                _ => {}
            }
            if spec.unique {
                if seen.contains(&d.name.as_str()) {
                    return Err(d.err(format!("\"{}\" directive is duplicate", d.name)));
                }
                seen.push(&d.name);
            }
            if let (Some(inner), Some(children)) = (spec.block, &d.block) {
                if inner & ctx::OPAQUE == 0 {
                    let only = (inner == ctx::IF && in_ctx == ctx::SERVER).then_some(spec.owner);
                    self.check_block(children, inner, only)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;

    fn check(src: &str) -> Result<(), String> {
        let tree = parse_str(src, "ngxr.conf").map_err(|e| e.to_string())?;
        Registry::core().check(&tree).map_err(|e| e.to_string())
    }

    #[test]
    fn valid_configs() {
        for src in [
            "worker_processes 2; events { worker_connections 10; }",
            "http { server { listen 80; server_name a b; location / { location /x { } } } }",
            "error_log logs/e.log info; daemon off; master_process on;",
            "events {}",
        ] {
            assert_eq!(check(src), Ok(()), "{src}");
        }
    }

    #[test]
    fn invalid_configs_table() {
        let cases = [
            ("\n\nfoo bar;", "unknown directive \"foo\" in ngxr.conf:3"),
            ("worker_processes;", "invalid number of arguments in \"worker_processes\" directive in ngxr.conf:1"),
            ("worker_processes 1 2;", "invalid number of arguments in \"worker_processes\" directive in ngxr.conf:1"),
            ("events { listen 80; }", "\"listen\" directive is not allowed here in ngxr.conf:1"),
            ("http { worker_processes 1; }", "\"worker_processes\" directive is not allowed here in ngxr.conf:1"),
            ("http;", "directive \"http\" has no opening \"{\" in ngxr.conf:1"),
            ("daemon off {}", "directive \"daemon\" is not terminated by \";\" in ngxr.conf:1"),
            ("pid a;\npid b;", "\"pid\" directive is duplicate in ngxr.conf:2"),
            ("http { server { location { } } }", "invalid number of arguments in \"location\" directive in ngxr.conf:1"),
        ];
        for (src, want) in cases {
            assert_eq!(check(src), Err(want.to_string()), "{src}");
        }
    }

    #[test]
    fn clash_detected() {
        let mut r = Registry::core();
        assert!(r.add(Spec::new("listen", ctx::SERVER, 1, 1)).is_some());
        assert!(r.add(Spec::new("server", ctx::UPSTREAM, 1, MANY)).is_none());
        assert!(r.find("server", ctx::UPSTREAM).is_ok());
        assert!(r.find("server", ctx::HTTP).unwrap().block.is_some());
    }
}
