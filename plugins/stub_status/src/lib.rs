//! `stub_status`: the server's connection and request counters as a
//! small text page, as nginx's stub_status module, for monitoring agents
//! (Prometheus' nginx exporter, Datadog, collectd…) that read it:
//!
//! ```text
//! Active connections: 2
//! server accepts handled requests
//!  16 16 31
//! Reading: 0 Writing: 1 Waiting: 1
//! ```
//!
//! The numbers come from the host (ABI 1.12 `stats`) and cover every
//! worker. Also `$connections_active`, `$connections_reading`,
//! `$connections_writing` and `$connections_waiting`, for `log_format`.

use plugin_api::{export_plugin, sys, ConfCx, DirectiveSpec, Phase, Plugin, Request, Stats, Status};
use std::fmt::Write as _;

/// Per-block configuration: nothing but the content handler, which the
/// host keeps.
#[derive(Default, Clone)]
pub struct Conf;

/// The plugin.
pub struct StubStatus;

impl Plugin for StubStatus {
    const NAME: &'static str = "stub_status";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        // An argument is accepted and ignored, as nginx does (older
        // configurations say `stub_status on;`).
        vec![DirectiveSpec::<Conf>::new("stub_status", sys::CTX_SERVER | sys::CTX_LOCATION, 0, 1, |_, _, cx| {
            cx.set_content_handler::<StubStatus>()
        })]
    }

    fn create(cx: &ConfCx<'_>, level: u32) -> Conf {
        if level == sys::CTX_MAIN {
            for (name, get) in VARS {
                let _ = cx.define_variable(name, *get);
            }
        }
        Conf
    }

    fn phases() -> &'static [Phase] {
        &[]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, _conf: &Conf) -> Status {
        if !matches!(req.method(), "GET" | "HEAD") {
            return Status::Http(405);
        }
        let Some(s) = plugin_api::stats() else {
            plugin_api::log(sys::LOG_ERR, "stub_status needs a host with plugin ABI 1.12");
            return Status::Error;
        };
        req.respond(200, "text/plain", page(&s).as_bytes())
    }
}

/// The page, byte for byte as nginx writes it (the spaces before the
/// line ends included: parsers expect them).
pub fn page(s: &Stats) -> String {
    let mut p = String::with_capacity(128);
    let _ = write!(
        p,
        "Active connections: {} \nserver accepts handled requests\n {} {} {} \nReading: {} Writing: {} Waiting: {} \n",
        s.active, s.accepts, s.handled, s.requests, s.reading, s.writing, s.waiting
    );
    p
}

type VarGet = fn(&mut Request<'_>) -> Option<String>;

const VARS: &[(&str, VarGet)] = &[
    ("connections_active", |_| plugin_api::stats().map(|s| s.active.to_string())),
    ("connections_reading", |_| plugin_api::stats().map(|s| s.reading.to_string())),
    ("connections_writing", |_| plugin_api::stats().map(|s| s.writing.to_string())),
    ("connections_waiting", |_| plugin_api::stats().map(|s| s.waiting.to_string())),
];

export_plugin!(StubStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_nginx_format() {
        let s = Stats { active: 2, accepts: 16, handled: 15, requests: 31, reading: 0, writing: 1, waiting: 1 };
        assert_eq!(page(&s), "Active connections: 2 \nserver accepts handled requests\n 16 15 31 \nReading: 0 Writing: 1 Waiting: 1 \n");
    }
}
