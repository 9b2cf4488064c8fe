//! `index`: `index file…;` — a request for a directory (URI ending in
//! `/`) is internally redirected to the first index file that exists, as
//! nginx's index module does. Names may contain variables; a name
//! starting with `/` (usually the last) is redirected to as is.

use plugin_api::{export_plugin, log, sys, template::Template, DirectiveSpec, Phase, Plugin, Request, Status};

/// Per-block configuration.
#[derive(Default, Clone)]
pub struct Conf {
    index: Option<Vec<Template>>,
}

/// The plugin.
pub struct Index;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

impl Plugin for Index {
    const NAME: &'static str = "index";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![DirectiveSpec::<Conf>::new("index", H, 1, sys::ARGS_ANY, |c, a, _| {
            for (i, name) in a.iter().enumerate() {
                if name.is_empty() {
                    return Err("index \"\" in \"index\" directive is invalid".into());
                }
                if name.starts_with('/') && i + 1 != a.len() {
                    return Err("only the last index in \"index\" directive should be absolute".into());
                }
            }
            c.index.get_or_insert_with(Vec::new).extend(a.iter().map(|n| Template::parse(n)));
            Ok(())
        })]
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.index.is_none() {
            child.index = parent.index.clone();
        }
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Content]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let uri = req.uri().to_string();
        if !uri.ends_with('/') || !matches!(req.method(), "GET" | "HEAD" | "POST") {
            return Status::Declined;
        }
        let default = [Template::parse("index.html")];
        let list: &[Template] = conf.index.as_deref().unwrap_or(&default);
        let Some(dir) = req.var("request_filename").map(str::to_string) else { return Status::Error };
        let args = req.args().to_string();
        for t in list {
            let mut name = Vec::new();
            t.render(&mut name, |v, out| out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
            let name = String::from_utf8_lossy(&name).into_owned();
            if name.starts_with('/') {
                return req.internal_redirect(&name, &args);
            }
            match std::fs::metadata(format!("{dir}{name}")) {
                Ok(m) if !m.is_dir() => return req.internal_redirect(&format!("{uri}{name}"), &args),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {}
                Err(e) => {
                    log(sys::LOG_ERR, &format!("stat() \"{dir}{name}\" failed ({e})"));
                    return Status::Http(if e.kind() == std::io::ErrorKind::PermissionDenied { 403 } else { 500 });
                }
            }
        }
        if std::fs::metadata(&dir).is_err() {
            plugin_api::log_not_found(&format!("\"{dir}\" is not found"));
            return Status::Http(404);
        }
        Status::Declined
    }
}

export_plugin!(Index);
