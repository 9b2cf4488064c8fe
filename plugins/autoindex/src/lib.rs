//! `autoindex`: directory listings for URIs ending in `/`, as nginx's
//! autoindex module: `autoindex on`, `autoindex_format html|json`,
//! `autoindex_exact_size`, `autoindex_localtime`. Hidden files (starting
//! with `.`) are skipped; directories come first, then by name.
//!
//! Load it after `index`: content handlers run in load order, and an
//! index file should win over a listing.

use plugin_api::{export_plugin, log, sys, DirectiveSpec, Phase, Plugin, Request, Status};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, UNIX_EPOCH};

/// Per-block configuration.
#[derive(Default, Clone)]
pub struct Conf {
    on: Option<bool>,
    json: Option<bool>,
    exact_size: Option<bool>,
    localtime: Option<bool>,
}

/// The plugin.
pub struct Autoindex;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

impl Plugin for Autoindex {
    const NAME: &'static str = "autoindex";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("autoindex", H, 1, 1, |c, a, cx| {
                c.on = Some(cx.flag(a[0])?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("autoindex_format", H, 1, 1, |c, a, _| {
                c.json = Some(match a[0] {
                    "html" => false,
                    "json" => true,
                    v => return Err(format!("invalid value \"{v}\" in \"autoindex_format\" directive")),
                });
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("autoindex_exact_size", H, 1, 1, |c, a, cx| {
                c.exact_size = Some(cx.flag(a[0])?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("autoindex_localtime", H, 1, 1, |c, a, cx| {
                c.localtime = Some(cx.flag(a[0])?);
                Ok(())
            }),
        ]
    }

    fn merge(p: &Conf, c: &mut Conf) {
        c.on = c.on.or(p.on);
        c.json = c.json.or(p.json);
        c.exact_size = c.exact_size.or(p.exact_size);
        c.localtime = c.localtime.or(p.localtime);
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Content]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        if conf.on != Some(true) || !req.uri().ends_with('/') {
            return Status::Declined;
        }
        if !matches!(req.method(), "GET" | "HEAD") {
            return Status::Declined;
        }
        let Some(dir) = req.var("request_filename").map(str::to_string) else { return Status::Error };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                log(sys::LOG_ERR, &format!("opendir() \"{dir}\" failed ({e})"));
                return Status::Http(match e.kind() {
                    std::io::ErrorKind::NotFound => 404,
                    std::io::ErrorKind::PermissionDenied => 403,
                    _ => 500,
                });
            }
        };
        let mut entries: Vec<Entry> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    return None;
                }
                // Follow symlinks, as nginx's stat() does; skip dangling ones.
                let m = std::fs::metadata(e.path()).ok()?;
                Some(Entry { name, dir: m.is_dir(), size: m.len(), mtime: m.mtime() })
            })
            .collect();
        entries.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.cmp(&b.name)));
        let uri = req.uri().to_string();
        let (body, ctype) = if conf.json == Some(true) {
            (json(&entries), "application/json")
        } else {
            (html(&uri, &entries, conf.exact_size != Some(false), conf.localtime == Some(true)), "text/html")
        };
        req.respond(200, ctype, body.as_bytes())
    }
}

struct Entry {
    name: String,
    dir: bool,
    size: u64,
    mtime: i64,
}

fn escape_html(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

fn escape_uri(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn broken_down(secs: i64, local: bool) -> (i32, u32, u32, u32, u32) {
    let t = secs as libc::time_t;
    // SAFETY: a zeroed tm is valid; *_r functions write only into it.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if local {
            libc::localtime_r(&t, &mut tm);
        } else {
            libc::gmtime_r(&t, &mut tm);
        }
        tm
    };
    (tm.tm_year + 1900, tm.tm_mon as u32, tm.tm_mday as u32, tm.tm_hour as u32, tm.tm_min as u32)
}

fn human(size: u64) -> String {
    // nginx: the largest unit keeping the number under 1024, rounded.
    let units = ["", "K", "M", "G", "T"];
    let (mut n, mut u) = (size as f64, 0);
    while n >= 1024.0 && u + 1 < units.len() {
        n /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{size}")
    } else {
        format!("{}{}", n.round() as u64, units[u])
    }
}

fn html(uri: &str, entries: &[Entry], exact: bool, local: bool) -> String {
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let mut t = String::new();
    escape_html(uri, &mut t);
    let mut out = format!("<html>\r\n<head><title>Index of {t}</title></head>\r\n<body>\r\n<h1>Index of {t}</h1><hr><pre><a href=\"../\">../</a>\r\n");
    for e in entries {
        let shown = if e.dir { format!("{}/", e.name) } else { e.name.clone() };
        let mut href = String::new();
        // A name with ':' would read as a scheme: "./" first, as nginx.
        if e.name.contains(':') {
            href.push_str("./");
        }
        escape_uri(&e.name, &mut href);
        if e.dir {
            href.push('/');
        }
        let chars: Vec<char> = shown.chars().collect();
        let (display, pad) = if chars.len() > 50 {
            (chars[..47].iter().collect::<String>() + "..>", 1)
        } else {
            (shown.clone(), 51 - chars.len())
        };
        let mut esc = String::new();
        escape_html(&display, &mut esc);
        let _ = write!(out, "<a href=\"{href}\">{esc}</a>{}", " ".repeat(pad));
        let (y, mo, d, h, mi) = broken_down(e.mtime, local);
        let _ = write!(out, "{d:02}-{}-{y} {h:02}:{mi:02} ", MON[mo as usize % 12]);
        let size = if e.dir {
            "-".to_string()
        } else if exact {
            e.size.to_string()
        } else {
            human(e.size)
        };
        let _ = write!(out, "{size:>19}\r\n");
    }
    out.push_str("</pre><hr></body>\r\n</html>\r\n");
    out
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json(entries: &[Entry]) -> String {
    let mut out = String::from("[\r\n");
    for (i, e) in entries.iter().enumerate() {
        out.push_str("{ \"name\":");
        json_str(&e.name, &mut out);
        let when = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64));
        let _ = write!(out, ", \"type\":\"{}\", \"mtime\":\"{when}\"", if e.dir { "directory" } else { "file" });
        if !e.dir {
            let _ = write!(out, ", \"size\":{}", e.size);
        }
        out.push_str(" }");
        out.push_str(if i + 1 < entries.len() { ",\r\n" } else { "\r\n" });
    }
    out.push_str("]\r\n");
    out
}

export_plugin!(Autoindex);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_escapes() {
        assert_eq!(human(1000), "1000");
        assert_eq!(human(2048), "2K");
        assert_eq!(human(5 * 1024 * 1024 + 1), "5M");
        let mut s = String::new();
        escape_uri("a b?c", &mut s);
        assert_eq!(s, "a%20b%3Fc");
        let j = json(&[Entry { name: "x\"y".into(), dir: false, size: 3, mtime: 0 }]);
        assert!(j.contains("\"name\":\"x\\\"y\", \"type\":\"file\", \"mtime\":\"Thu, 01 Jan 1970 00:00:00 GMT\", \"size\":3"), "{j}");
    }
}
