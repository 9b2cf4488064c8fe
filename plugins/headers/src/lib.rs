//! `headers`: nginx's headers filter — `add_header name value [always]`,
//! `add_header_inherit on|off|merge` and `expires [modified] time|epoch|max|off`.
//!
//! A header filter: it runs on every response of a location that sets
//! something, after the content handler chose the status. As in nginx:
//!
//! - headers and `expires` apply to 200, 201, 204, 206, 301, 302, 303, 304,
//!   307 and 308 responses; `always` makes an `add_header` apply to every
//!   status (expires has no `always`);
//! - a location's `add_header` lines replace the enclosing block's, unless
//!   it has none (then it inherits them all) or says
//!   `add_header_inherit merge` (its own, then the enclosing block's);
//! - values may hold variables; an empty value adds nothing, and for
//!   `Last-Modified` and `ETag` (which replace the response's own) removes
//!   the header;
//! - `expires` sets `Expires` and one `Cache-Control` (replacing any
//!   others): `max-age=N`, or `no-cache` for a negative time; `epoch` and
//!   `max` as nginx; `@15h30m` the next such local time of day; `modified`
//!   counts from the response's `Last-Modified`. A value with variables is
//!   read per request (an invalid one sets nothing).

use plugin_api::{export_plugin, sys, template::Template, DirectiveSpec, Plugin, Request};
use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How `expires` computes the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// No `expires` in this block (inherits).
    #[default]
    Unset,
    /// `expires off`: headers left alone.
    Off,
    /// `expires epoch`.
    Epoch,
    /// `expires max`.
    Max,
    /// `expires time`: from the time of the request.
    Access,
    /// `expires modified time`: from the response's Last-Modified.
    Modified,
    /// `expires @time`: the next such time of day.
    Daily,
}

/// An `expires` setting.
#[derive(Debug, Clone, Default)]
pub struct Expires {
    /// What to compute.
    pub kind: Kind,
    /// Seconds (negative: in the past) or, for `Daily`, seconds into the day.
    pub secs: i64,
    /// A value with variables, parsed per request (`kind` is then
    /// `Access` or `Modified`).
    pub value: Option<Template>,
}

/// How a block's `add_header` lines combine with the enclosing block's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Inherit {
    /// Not set here: as the enclosing block, `On` at the top.
    #[default]
    Unset,
    /// The enclosing block's lines if this block has none (nginx's rule).
    On,
    /// Never the enclosing block's.
    Off,
    /// This block's lines, then the enclosing block's.
    Merge,
}

/// What `add_header` does with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Adds a line (even if the header is already there).
    Add,
    /// Replaces the response's own header; empty removes it.
    Replace,
}

/// One `add_header` line.
#[derive(Debug, Clone)]
pub struct Line {
    name: String,
    value: Template,
    always: bool,
    how: How,
}

/// Per-block configuration.
#[derive(Debug, Clone, Default)]
pub struct Conf {
    headers: Option<Vec<Line>>,
    inherit: Inherit,
    expires: Expires,
}

/// The plugin.
pub struct Headers;

const ANY: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION | sys::CTX_IF;

/// Parses nginx's time with units in seconds ("1y 2M 3w 4d 5h 6m 7s",
/// a bare number is seconds); None if malformed.
pub fn parse_secs(s: &str) -> Option<i64> {
    let units: [(u8, i64); 7] = [(b'y', 365 * 86400), (b'M', 30 * 86400), (b'w', 7 * 86400), (b'd', 86400), (b'h', 3600), (b'm', 60), (b's', 1)];
    let (mut total, mut value, mut digits, mut step) = (0i64, 0i64, false, 0usize);
    for &c in s.as_bytes() {
        match c {
            b'0'..=b'9' => {
                value = value.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
                digits = true;
            }
            b' ' => {}
            _ => {
                let at = units.iter().position(|&(u, _)| u == c)?;
                if !digits || at < step {
                    return None;
                }
                total = total.checked_add(value.checked_mul(units[at].1)?)?;
                (value, digits, step) = (0, false, at + 1);
            }
        }
    }
    if digits {
        if step > units.len() - 1 {
            return None;
        }
        total = total.checked_add(value)?;
    } else if step == 0 {
        return None;
    }
    Some(total)
}

/// Parses an `expires` value as nginx (`modified` already read: then
/// `epoch`, `max`, `off` and `@` are refused). Returns the kind and the
/// seconds.
pub fn parse_expires(v: &str, modified: bool) -> Result<(Kind, i64), &'static str> {
    if !modified {
        match v {
            "epoch" => return Ok((Kind::Epoch, 0)),
            "max" => return Ok((Kind::Max, 0)),
            "off" => return Ok((Kind::Off, 0)),
            _ => {}
        }
    }
    let base = if modified { Kind::Modified } else { Kind::Access };
    let (kind, minus, t) = match v.as_bytes().first() {
        Some(b'@') if modified => return Err("daily time cannot be used with \"modified\" parameter"),
        Some(b'@') => (Kind::Daily, false, &v[1..]),
        Some(b'+') => (base, false, &v[1..]),
        Some(b'-') => (base, true, &v[1..]),
        _ => (base, false, v),
    };
    let secs = parse_secs(t).ok_or("invalid value")?;
    if kind == Kind::Daily && secs > 86400 {
        return Err("daily time value must be less than 24 hours");
    }
    Ok((kind, if minus { -secs } else { secs }))
}

fn is_safe_status(s: u16) -> bool {
    matches!(s, 200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308)
}

/// The next local time `secs` into a day after `now` (nginx's
/// `ngx_next_time`).
fn next_daily(now: i64, secs: i64) -> Option<i64> {
    // SAFETY: localtime_r and mktime write only the struct given.
    unsafe {
        let t = now as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return None;
        }
        tm.tm_hour = (secs / 3600) as i32;
        tm.tm_min = (secs % 3600 / 60) as i32;
        tm.tm_sec = (secs % 60) as i32;
        let next = libc::mktime(&mut tm);
        if next == -1 {
            return None;
        }
        if next as i64 > now {
            return Some(next as i64);
        }
        tm.tm_mday += 1;
        let next = libc::mktime(&mut tm);
        (next != -1).then_some(next as i64)
    }
}

fn http_date(secs: i64) -> String {
    let t = if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs as u64) } else { UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) };
    httpdate::fmt_http_date(t)
}

/// The `Expires` and `Cache-Control` values for `kind`/`secs` at `now`,
/// with the response's Last-Modified time if it has one.
pub fn expires_values(kind: Kind, secs: i64, now: i64, last_modified: Option<i64>) -> Option<(String, String)> {
    let (expires, max_age) = match kind {
        Kind::Unset | Kind::Off => return None,
        Kind::Epoch => return Some(("Thu, 01 Jan 1970 00:00:01 GMT".into(), "no-cache".into())),
        // nginx's "10 years".
        Kind::Max => return Some(("Thu, 31 Dec 2037 23:55:55 GMT".into(), "max-age=315360000".into())),
        Kind::Access | Kind::Modified if secs == 0 => return Some((http_date(now), "max-age=0".into())),
        Kind::Daily => {
            let at = next_daily(now, secs)?;
            (at, at - now)
        }
        Kind::Modified if last_modified.is_some() => {
            let at = last_modified.unwrap_or(now) + secs;
            (at, at - now)
        }
        Kind::Access | Kind::Modified => (now + secs, secs),
    };
    let cc = if secs < 0 || max_age < 0 { "no-cache".to_string() } else { format!("max-age={max_age}") };
    Some((http_date(expires), cc))
}

thread_local! {
    /// Rendering buffer, kept between requests.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn render(req: &Request<'_>, t: &Template) -> String {
    BUF.with_borrow_mut(|b| {
        b.clear();
        t.render(b, |v, out| out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
        String::from_utf8_lossy(b).into_owned()
    })
}

fn set_expires(req: &mut Request<'_>, e: &Expires) {
    let (kind, secs) = match &e.value {
        None => (e.kind, e.secs),
        Some(t) => match parse_expires(&render(req, t), e.kind == Kind::Modified) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let lm = req
        .header_out("Last-Modified")
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    if let Some((expires, cc)) = expires_values(kind, secs, now, lm) {
        let _ = req.set_headers(&[("Expires", Some(&expires)), ("Cache-Control", Some(&cc))]);
    }
}

fn directives() -> Vec<DirectiveSpec<Conf>> {
    vec![
        DirectiveSpec::<Conf>::new("add_header", ANY, 2, 3, |c, a, _| {
            let always = match a.get(2) {
                None => false,
                Some(&"always") => true,
                Some(p) => return Err(format!("invalid parameter \"{p}\"")),
            };
            let name = a[0];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("invalid header name \"{name}\""));
            }
            let how = if name.eq_ignore_ascii_case("Last-Modified") || name.eq_ignore_ascii_case("ETag") { How::Replace } else { How::Add };
            c.headers.get_or_insert_with(Vec::new).push(Line { name: name.to_string(), value: Template::parse(a[1]), always, how });
            Ok(())
        }),
        DirectiveSpec::<Conf>::new("add_header_inherit", ANY, 1, 1, |c, a, _| {
            if c.inherit != Inherit::Unset {
                return Err("is duplicate".into());
            }
            c.inherit = match a[0] {
                "on" => Inherit::On,
                "off" => Inherit::Off,
                "merge" => Inherit::Merge,
                v => return Err(format!("invalid value \"{v}\" in \"add_header_inherit\" directive, it must be \"on\", \"off\" or \"merge\"")),
            };
            Ok(())
        }),
        DirectiveSpec::<Conf>::new("expires", ANY, 1, 2, |c, a, _| {
            if c.expires.kind != Kind::Unset {
                return Err("\"expires\" directive is duplicate".into());
            }
            let modified = a.len() == 2;
            if modified && a[0] != "modified" {
                return Err("\"expires\" directive invalid value".into());
            }
            let v = a[a.len() - 1];
            let t = Template::parse(v);
            if t.segs.iter().any(|(var, _)| *var) {
                c.expires = Expires { kind: if modified { Kind::Modified } else { Kind::Access }, secs: 0, value: Some(t) };
                return Ok(());
            }
            let (kind, secs) = parse_expires(v, modified).map_err(|e| format!("\"expires\" directive {e}"))?;
            c.expires = Expires { kind, secs, value: None };
            Ok(())
        }),
    ]
}

impl Plugin for Headers {
    const NAME: &'static str = "headers";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HEADER_FILTER: bool = true;
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        directives()
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.expires.kind == Kind::Unset {
            child.expires = parent.expires.clone();
        }
        if child.inherit == Inherit::Unset {
            child.inherit = parent.inherit;
        }
        match (child.inherit, &parent.headers) {
            (Inherit::Off, _) | (_, None) => {}
            (Inherit::Merge, Some(p)) => child.headers.get_or_insert_with(Vec::new).extend(p.iter().cloned()),
            (_, Some(p)) => {
                if child.headers.is_none() {
                    child.headers = Some(p.clone());
                }
            }
        }
    }

    fn header_filter(req: &mut Request<'_>, conf: &Conf) -> Result<(), String> {
        let expires = !matches!(conf.expires.kind, Kind::Unset | Kind::Off);
        if !expires && conf.headers.is_none() {
            return Ok(());
        }
        let safe = is_safe_status(req.status());
        if expires && safe {
            set_expires(req, &conf.expires);
        }
        for h in conf.headers.iter().flatten() {
            if !safe && !h.always {
                continue;
            }
            let v = render(req, &h.value);
            // A configured value ending in "\n" (nginx configs write
            // `add_header X "$v\n"`) loses its line end: the host refuses
            // line breaks in header values, which could split a response.
            let v = v.trim_end_matches(['\r', '\n']);
            match (h.how, v.is_empty()) {
                (How::Add, true) => {}
                (How::Add, false) => req.add_header(&h.name, v),
                (How::Replace, true) => req.remove_header(&h.name),
                (How::Replace, false) => req.set_header(&h.name, v),
            }
        }
        Ok(())
    }
}

export_plugin!(Headers);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        for (s, want) in [("0", Some(0)), ("30", Some(30)), ("1h", Some(3600)), ("1h 30m", Some(5400)), ("1d12h", Some(129600)), ("2w", Some(1209600)), ("1y", Some(31536000)), ("1M", Some(2592000)), ("10s", Some(10)), ("1m30", Some(90))] {
            assert_eq!(parse_secs(s), want, "{s}");
        }
        for s in ["", "h", "1x", "30m1h", "1h1h", "1ms", "-1"] {
            assert_eq!(parse_secs(s), None, "{s}");
        }
    }

    #[test]
    fn expires_parsing() {
        assert_eq!(parse_expires("epoch", false), Ok((Kind::Epoch, 0)));
        assert_eq!(parse_expires("max", false), Ok((Kind::Max, 0)));
        assert_eq!(parse_expires("off", false), Ok((Kind::Off, 0)));
        assert_eq!(parse_expires("-1h", false), Ok((Kind::Access, -3600)));
        assert_eq!(parse_expires("+1h", true), Ok((Kind::Modified, 3600)));
        assert_eq!(parse_expires("@15h30m", false), Ok((Kind::Daily, 55800)));
        assert!(parse_expires("@25h", false).is_err());
        assert!(parse_expires("@1h", true).is_err());
        assert!(parse_expires("epoch", true).is_err());
        assert!(parse_expires("soon", false).is_err());
    }

    #[test]
    fn expires_headers() {
        let now = 1_700_000_000;
        assert_eq!(expires_values(Kind::Access, 3600, now, None), Some((http_date(now + 3600), "max-age=3600".into())));
        assert_eq!(expires_values(Kind::Access, -60, now, None), Some((http_date(now - 60), "no-cache".into())));
        assert_eq!(expires_values(Kind::Access, 0, now, None), Some((http_date(now), "max-age=0".into())));
        // modified: from Last-Modified; without one, from now.
        assert_eq!(expires_values(Kind::Modified, 3600, now, Some(now - 1000)), Some((http_date(now + 2600), "max-age=2600".into())));
        assert_eq!(expires_values(Kind::Modified, 600, now, Some(now - 1000)), Some((http_date(now - 400), "no-cache".into())));
        assert_eq!(expires_values(Kind::Modified, 600, now, None), Some((http_date(now + 600), "max-age=600".into())));
        assert_eq!(expires_values(Kind::Epoch, 0, now, None).unwrap().1, "no-cache");
        assert_eq!(expires_values(Kind::Max, 0, now, None).unwrap().1, "max-age=315360000");
        assert_eq!(expires_values(Kind::Off, 0, now, None), None);
        let (_, cc) = expires_values(Kind::Daily, 3600, now, None).unwrap();
        let age: i64 = cc.strip_prefix("max-age=").unwrap().parse().unwrap();
        assert!(age > 0 && age <= 86400 + 3600, "{cc}");
    }

    #[test]
    fn inheritance() {
        let line = |n: &str| Line { name: n.into(), value: Template::parse("v"), always: false, how: How::Add };
        let names = |c: &Conf| c.headers.iter().flatten().map(|l| l.name.clone()).collect::<Vec<_>>();
        let parent = Conf { headers: Some(vec![line("P")]), ..Default::default() };
        let mut none = Conf::default();
        Headers::merge(&parent, &mut none);
        assert_eq!(names(&none), ["P"]);
        let mut own = Conf { headers: Some(vec![line("C")]), ..Default::default() };
        Headers::merge(&parent, &mut own);
        assert_eq!(names(&own), ["C"]);
        let mut merged = Conf { headers: Some(vec![line("C")]), inherit: Inherit::Merge, ..Default::default() };
        Headers::merge(&parent, &mut merged);
        assert_eq!(names(&merged), ["C", "P"]);
        let mut off = Conf { inherit: Inherit::Off, ..Default::default() };
        Headers::merge(&parent, &mut off);
        assert!(names(&off).is_empty());
    }
}
