//! `testkit`: a Rust test plugin exercising the plugin-api crate.
//!
//! - `testkit_reply TEXT;` (http, server, location): answer with TEXT,
//!   inherited by inner blocks.
//! - `testkit_panic on;`: requests to `/panic` panic inside the handler
//!   (the host must turn that into a 500 and keep the worker alive).
//! - `testkit_counter ZONE;`: `/count` increments a counter kept in a
//!   shared zone (all workers, kept across reload) and answers its value.
//! - Requests echo `$uri`, `?args` and the `X-Test` header back in
//!   response headers so tests can see the request API work.
//! - `/echo` reads the request body asynchronously (the handler suspends
//!   and is resumed when it is complete) and answers it back.
//! - `/sleep?ms=N` suspends for N ms on a request-owned timer, then
//!   answers "slept".
//! - `/chunks` sends its body in three pieces without a length (chunked
//!   on HTTP/1.1, close-delimited on HTTP/1.0).
//! - `/ctx/small`, `/ctx/big`, `/ctx/aligned` take a per-request state
//!   (`Request::ctx`) of that kind and answer whether it was fresh, the
//!   same object when asked again, aligned for its type, and how many
//!   states this worker has dropped so far.

use plugin_api::{export_plugin, sys, DirectiveSpec, Phase, Plugin, Request, Shm, Status};
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-block configuration.
#[derive(Default, Clone)]
pub struct Conf {
    reply: Option<String>,
    panic: Option<bool>,
    counter: Option<Shm>,
}

/// The plugin.
pub struct Testkit;

/// Per-request states dropped by this worker (`/ctx/*`).
static CTX_DROPS: AtomicU64 = AtomicU64::new(0);

/// A per-request state for `/ctx/*`: each kind lands in a different place
/// (request memory, its own block, the heap).
trait Probe: Default + 'static {
    fn fresh(&self) -> bool;
    fn mark(&mut self);
    fn marked(&self) -> bool;
}

macro_rules! probe {
    ($(#[$a:meta])* $name:ident, $words:expr) => {
        $(#[$a])*
        struct $name([u64; $words]);
        impl Default for $name {
            fn default() -> Self {
                // Not zero: request memory comes zeroed, and the test
                // must see Default's value written there.
                $name([7; $words])
            }
        }
        impl Probe for $name {
            fn fresh(&self) -> bool {
                self.0.iter().all(|&w| w == 7)
            }
            fn mark(&mut self) {
                self.0.fill(u64::MAX);
            }
            fn marked(&self) -> bool {
                self.0.iter().all(|&w| w == u64::MAX)
            }
        }
        impl Drop for $name {
            fn drop(&mut self) {
                CTX_DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
}
probe!(Small, 1);
probe!(Big, 64);
probe!(#[repr(align(64))] Aligned, 2);

fn ctx_probe<T: Probe>(req: &mut Request<'_>) -> Status {
    let c: &mut T = req.ctx();
    let aligned = (c as *const T as usize).is_multiple_of(std::mem::align_of::<T>());
    let fresh = c.fresh();
    c.mark();
    let same = req.ctx::<T>().marked();
    let drops = CTX_DROPS.load(Ordering::Relaxed);
    let text = format!("fresh={fresh} same={same} aligned={aligned} drops={drops}");
    req.respond(200, "text/plain", text.as_bytes())
}

const ANY_HTTP: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

impl Plugin for Testkit {
    const NAME: &'static str = "testkit";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::new("testkit_reply", ANY_HTTP, 1, 1, |c, a, _| {
                c.reply = Some(a[0].to_string());
                Ok(())
            }),
            DirectiveSpec::new("testkit_panic", ANY_HTTP, 1, 1, |c, a, cx| {
                c.panic = Some(cx.flag(a[0])?);
                Ok(())
            }),
            DirectiveSpec::new("testkit_counter", sys::CTX_SERVER, 1, 1, |c, a, cx| {
                c.counter = Some(cx.shm_zone(a[0], 4096, 1)?);
                Ok(())
            }),
        ]
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.reply.is_none() {
            child.reply = parent.reply.clone();
        }
        if child.panic.is_none() {
            child.panic = parent.panic;
        }
        if child.counter.is_none() {
            child.counter = parent.counter;
        }
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Content]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let Some(reply) = &conf.reply else { return Status::Declined };
        if conf.panic == Some(true) && req.uri() == "/panic" {
            panic!("testkit was asked to panic");
        }
        if req.uri() == "/teapot" {
            return Status::Http(418);
        }
        if let (Some(zone), "/count") = (conf.counter, req.uri()) {
            let Ok(n) = zone.with(|mem| {
                let n = u64::from_ne_bytes(mem[..8].try_into().unwrap()) + 1;
                mem[..8].copy_from_slice(&n.to_ne_bytes());
                n
            }) else {
                return Status::Error;
            };
            req.add_header("X-Pid", &std::process::id().to_string());
            return req.respond(200, "text/plain", n.to_string().as_bytes());
        }
        match req.uri() {
            u if u.ends_with("/echo") => {
                return match req.read_body() {
                    Ok(true) => {
                        let mut body = Vec::new();
                        if let Some(p) = req.body_piece() {
                            if p.read_into(&mut body).is_err() {
                                return Status::Error;
                            }
                        }
                        // Where a large body waited (a temporary file).
                        if let Some(f) = req.var("request_body_file").map(str::to_string) {
                            req.add_header("X-Body-File", &f);
                        }
                        req.respond(200, "application/octet-stream", &body)
                    }
                    Ok(false) => Status::Again,
                    Err(_) => Status::Error,
                };
            }
            "/sleep" => {
                let slept: &mut bool = req.ctx();
                if *slept {
                    return req.respond(200, "text/plain", b"slept");
                }
                *slept = true;
                let ms = req.args().strip_prefix("ms=").and_then(|v| v.parse().ok()).unwrap_or(10);
                return match req.resume_after(ms) {
                    Ok(()) => Status::Again,
                    Err(_) => Status::Error,
                };
            }
            "/ctx/small" => return ctx_probe::<Small>(req),
            "/ctx/big" => return ctx_probe::<Big>(req),
            "/ctx/aligned" => return ctx_probe::<Aligned>(req),
            "/chunks" => {
                req.set_status(200);
                for (i, piece) in [&b"one,"[..], b"two,", b"three"].iter().enumerate() {
                    if req.send(piece, i == 2).is_err() {
                        return Status::Error;
                    }
                }
                return Status::Ok;
            }
            _ => {}
        }
        let (uri, args) = (req.uri().to_string(), req.args().to_string());
        let xt = req.header("x-test").unwrap_or("").to_string();
        req.add_header("X-Uri", &uri);
        req.add_header("X-Args", &args);
        req.add_header("X-Test-Echo", &xt);
        req.respond(200, "text/plain", reply.as_bytes())
    }
}

export_plugin!(Testkit);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::mock::{run, MockRequest};

    #[test]
    fn replies_with_configured_text() {
        let conf = Conf { reply: Some("hi".into()), ..Conf::default() };
        let mut r = MockRequest::get("/a?b=c");
        assert_eq!(run::<Testkit>(Phase::Content, &conf, &mut r), Status::Ok);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        assert_eq!(r.header_out("x-args"), Some("b=c"));
        assert!(r.finished);
    }

    #[test]
    fn declines_without_reply_and_panics_are_caught() {
        let mut r = MockRequest::get("/");
        assert_eq!(run::<Testkit>(Phase::Content, &Conf::default(), &mut r), Status::Declined);
        let conf = Conf { reply: Some("x".into()), panic: Some(true), ..Conf::default() };
        let mut r = MockRequest::get("/panic");
        assert_eq!(run::<Testkit>(Phase::Content, &conf, &mut r), Status::Error);
    }

    #[test]
    fn merge_inherits_unset_values() {
        let parent = Conf { reply: Some("p".into()), panic: Some(true), ..Conf::default() };
        let mut child = Conf { reply: Some("c".into()), ..Conf::default() };
        Testkit::merge(&parent, &mut child);
        assert_eq!((child.reply.as_deref(), child.panic), (Some("c"), Some(true)));
    }
}
