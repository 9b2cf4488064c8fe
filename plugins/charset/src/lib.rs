//! `charset`: nginx's charset filter, without recoding — the `charset`
//! parameter of the Content-Type response header.
//!
//! - `charset name|off;` (http, server, location, `if`): responses whose
//!   type is in `charset_types` get `; charset=name` (the common
//!   `charset utf-8;`).
//! - `charset_types type…;` (default `text/html text/xml text/plain
//!   text/vnd.wap.wml application/javascript application/rss+xml`; `*`:
//!   any).
//! - `override_charset on|off;` (default off): a charset the response
//!   already names (a proxied one) is replaced rather than kept.
//! - `source_charset name;`: accepted when it names the same charset;
//!   recoding between charsets (nginx's `charset_map`) is not done, so
//!   another one is refused at configuration.

use plugin_api::{export_plugin, http::Types, sys, DirectiveSpec, Plugin, Request};

const DEFAULT_TYPES: [&str; 6] = ["text/html", "text/xml", "text/plain", "text/vnd.wap.wml", "application/javascript", "application/rss+xml"];

/// Per-block configuration.
#[derive(Default)]
pub struct Conf {
    /// `charset`: Some(None) is `off`.
    charset: Option<Option<String>>,
    source: Option<String>,
    types: Types,
    override_charset: Option<bool>,
}

/// The plugin.
pub struct Charset;

/// Refuses a `source_charset` other than `charset`: no recoding here.
fn no_recoding(c: &Conf) -> Result<(), String> {
    match (&c.charset, &c.source) {
        (Some(Some(to)), Some(from)) if !to.eq_ignore_ascii_case(from) => Err(format!("recoding from \"{from}\" to \"{to}\" is not supported (no charset_map tables)")),
        _ => Ok(()),
    }
}

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

impl Plugin for Charset {
    const NAME: &'static str = "charset";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HEADER_FILTER: bool = true;
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("charset", H | sys::CTX_IF, 1, 1, |c, a, _| {
                if c.charset.is_some() {
                    return Err("\"charset\" directive is duplicate".into());
                }
                c.charset = Some((a[0] != "off").then(|| a[0].to_string()));
                no_recoding(c)
            }),
            DirectiveSpec::<Conf>::new("source_charset", H | sys::CTX_IF, 1, 1, |c, a, _| {
                c.source = Some(a[0].to_string());
                no_recoding(c)
            }),
            DirectiveSpec::<Conf>::new("override_charset", H | sys::CTX_IF, 1, 1, |c, a, cx| {
                c.override_charset = Some(cx.flag(a[0])?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("charset_types", H, 1, sys::ARGS_ANY, |c, a, _| {
                c.types = Types::parse(a);
                Ok(())
            }),
        ]
    }

    fn merge_in(_cx: &plugin_api::ConfCx<'_>, _level: u32, p: &Conf, c: &mut Conf) -> Result<(), String> {
        if c.charset.is_none() {
            c.charset.clone_from(&p.charset);
        }
        if c.source.is_none() {
            c.source.clone_from(&p.source);
        }
        c.override_charset = c.override_charset.or(p.override_charset);
        c.types.merge(&p.types);
        no_recoding(c)
    }

    fn header_filter(req: &mut Request<'_>, conf: &Conf) -> Result<(), String> {
        let Some(Some(charset)) = &conf.charset else { return Ok(()) };
        let Some(ctype) = req.header_out("Content-Type") else { return Ok(()) };
        let mut parts = ctype.split(';');
        let base = parts.next().unwrap_or("").trim();
        if !conf.types.covers(base, &DEFAULT_TYPES) {
            return Ok(());
        }
        let named = parts.clone().any(|p| p.trim().to_ascii_lowercase().starts_with("charset="));
        if named && !conf.override_charset.unwrap_or(false) {
            return Ok(());
        }
        let mut v = String::from(base);
        for p in parts.filter(|p| !p.trim().to_ascii_lowercase().starts_with("charset=")) {
            v.push(';');
            v.push_str(p);
        }
        v.push_str("; charset=");
        v.push_str(charset);
        req.set_header("Content-Type", &v);
        Ok(())
    }
}

export_plugin!(Charset);
