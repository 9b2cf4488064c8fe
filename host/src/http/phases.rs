//! The phase engine: runs plugin handlers over one request, phase by
//! phase, with nginx's return-code semantics (see `ngx_plugin.h`).

use crate::plugin::conf::{Plugins, ServerConf};
use crate::plugin::host_api::{self, Req};
use plugin_api::sys;
use std::ffi::c_void;

/// How the content phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A handler produced the response in the request.
    Response,
    /// Finalize with this status (error page).
    Status(u16),
}

fn call(plugins: &Plugins, i: usize, h: sys::HttpHandlerFn, req: &mut Req, conf: *mut c_void) -> sys::Rc {
    let raw = (req as *mut Req).cast::<sys::Request>();
    // SAFETY: raw points at a live Req for the whole call; conf is this
    // plugin's object for the request's server.
    host_api::with_plugin(i, &plugins.list[i].name, || crate::plugin::call_handler(h, raw, conf))
}

/// Runs the phases up to and including content.
pub fn run(plugins: &Plugins, server: Option<&ServerConf>, req: &mut Req) -> Outcome {
    let conf_of = |i: usize| server.map_or(plugins.main[i], |s| s.confs[i]);
    for phase in sys::PHASE_POST_READ..=sys::PHASE_CONTENT {
        // In CONTENT, the server's own content handler runs first.
        let own = server.and_then(|s| s.content).filter(|_| phase == sys::PHASE_CONTENT);
        let declared = plugins.phase_handlers[phase as usize].iter().copied();
        for (i, h) in own.into_iter().chain(declared) {
            let rc = call(plugins, i, h, req, conf_of(i));
            match rc {
                sys::DECLINED => continue,
                sys::OK if phase == sys::PHASE_CONTENT => return Outcome::Response,
                sys::OK => break,
                sys::DONE => return Outcome::Response,
                100..=599 => return Outcome::Status(rc as u16),
                sys::AGAIN => {
                    crate::log!(Error, "plugin \"{}\" suspended a request (AGAIN), which this host does not support yet", plugins.list[i].name);
                    return Outcome::Status(500);
                }
                _ => {
                    crate::log!(Error, "plugin \"{}\" failed the request \"{} {}\" (rc {rc})", plugins.list[i].name, req.method, req.request_uri);
                    return Outcome::Status(500);
                }
            }
        }
    }
    Outcome::Status(404)
}

/// Runs the log phase (return values ignored).
pub fn log(plugins: &Plugins, server: Option<&ServerConf>, req: &mut Req) {
    for &(i, h) in &plugins.phase_handlers[sys::PHASE_LOG as usize] {
        let conf = server.map_or(plugins.main[i], |s| s.confs[i]);
        call(plugins, i, h, req, conf);
    }
}
