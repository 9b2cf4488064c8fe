//! `rewrite`: nginx's rewrite module — `return`, `rewrite`, `set`, `break`,
//! `if`, `rewrite_log`, `uninitialized_variable_warn`.
//!
//! A server's directives run in SERVER_REWRITE, a location's in REWRITE, in
//! file order, as nginx's compiled script; they are not inherited by
//! nested locations. As in nginx:
//!
//! - `rewrite regex replacement [last|break|redirect|permanent]` matches
//!   `$uri`; `$1`… are its captures. A replacement starting with `http://`,
//!   `https://` or `$scheme`, or the `redirect`/`permanent` flag, answers
//!   302/301 with that Location. Otherwise the URI changes: with `last` (or
//!   no flag, once the list ends) the locations are searched again; with
//!   `break` the request stays in its location. New arguments in the
//!   replacement come before the old ones, unless it ends with `?`.
//! - `return code [text|URL]`, `return URL`: 301/302/303/307/308 send the
//!   Location; another code with text (or below 400) sends the text with
//!   the type of `$uri` (`types`/`default_type`); 400 and above without
//!   text answer the error page; 444 closes the connection.
//! - `set $name value`, values with variables and captures.
//! - `if (condition) { … }` with `$var`, `$var = s`, `!=`, `~`, `~*`, `!~`,
//!   `!~*` (captures set), `-f`, `-d`, `-e`, `-x` and their `!` forms.
//!   The block is a conditional configuration (ABI 1.7): when the
//!   condition holds the request switches to it, so other plugins'
//!   directives declared for `if` apply (`add_header`, `proxy_pass`,
//!   `access_log`, `root`, `limit_rate`, …), and its own rewrite
//!   directives run inline before the rest of the enclosing list. In a
//!   server-level `if` only this module's directives are allowed.

use plugin_api::{export_plugin, log, sys, template::Template, ConfCx, DirectiveSpec, Phase, Plugin, Request, Status};
use regex::{Regex, RegexBuilder};
use std::cell::RefCell;

/// What a rewrite does after it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    /// Go on with the next directive (the locations are searched again
    /// once the list ends).
    None,
    /// Stop; search the locations for the new URI.
    Last,
    /// Stop; stay in this location.
    Break,
}

#[derive(Debug)]
struct Rewrite {
    re: Regex,
    repl: Template,
    /// Keep the request's arguments (the replacement does not end in `?`).
    add_args: bool,
    /// 301 or 302 with the result as Location.
    redirect: Option<u16>,
    flag: Flag,
}

#[derive(Debug)]
enum Cond {
    /// `($var)`: true unless empty or "0".
    Var(Template),
    /// `($var = s)`, `!=`.
    Eq(Template, Template, bool),
    /// `($var ~ re)` and its forms; the bool negates.
    Re(Template, Regex, bool),
    /// `-f`, `-d`, `-e`, `-x` (the byte), negated or not.
    File(u8, Template, bool),
}

#[derive(Debug)]
enum Op {
    Rewrite(Box<Rewrite>),
    Return(u16, Option<Template>),
    Set(String, Template),
    Break,
    /// The condition and its block (ABI 1.7 conditional block id): the
    /// block's own directives are in this plugin's object for it.
    If(Cond, u32),
}

/// Per-block configuration.
#[derive(Debug, Default)]
pub struct Conf {
    ops: Vec<Op>,
    /// A server's own block (its directives run in SERVER_REWRITE).
    server: bool,
    log: Option<bool>,
}

/// The plugin.
pub struct Rewriter;

/// Server, location, and inside `if` (nginx's SIF and LIF).
const SL: u32 = sys::CTX_SERVER | sys::CTX_LOCATION | sys::CTX_IF;
const HSL: u32 = sys::CTX_HTTP | SL;

fn is_redirect_target(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://") || s.starts_with("$scheme")
}

fn regex(src: &str, caseless: bool) -> Result<Regex, String> {
    RegexBuilder::new(&plugin_api::http::pcre_compat(src)).case_insensitive(caseless).build().map_err(|e| format!("regex \"{src}\" is invalid: {}", e.to_string().lines().last().unwrap_or("")))
}

fn parse_rewrite(a: &[&str]) -> Result<Op, String> {
    if a[1].is_empty() {
        return Err("empty replacement".into());
    }
    let re = regex(a[0], false)?;
    let (repl, add_args) = match a[1].strip_suffix('?') {
        Some(r) => (r, false),
        None => (a[1], true),
    };
    let mut redirect = is_redirect_target(repl).then_some(302);
    let flag = match a.get(2).copied() {
        None => Flag::None,
        Some("last") => Flag::Last,
        Some("break") => Flag::Break,
        Some("redirect") => {
            redirect = Some(302);
            Flag::Last
        }
        Some("permanent") => {
            redirect = Some(301);
            Flag::Last
        }
        Some(p) => return Err(format!("invalid parameter \"{p}\"")),
    };
    Ok(Op::Rewrite(Box::new(Rewrite { re, repl: Template::parse(repl), add_args, redirect, flag })))
}

fn parse_return(a: &[&str]) -> Result<Op, String> {
    match (a[0].parse::<u16>(), a.len()) {
        (Ok(code), _) if code <= 999 => Ok(Op::Return(code, a.get(1).map(|t| Template::parse(t)))),
        (Err(_), 1) if is_redirect_target(a[0]) => Ok(Op::Return(302, Some(Template::parse(a[0])))),
        _ => Err(format!("invalid return code \"{}\"", a[0])),
    }
}

fn parse_set(a: &[&str]) -> Result<Op, String> {
    let name = a[0].strip_prefix('$').ok_or_else(|| format!("invalid variable name \"{}\"", a[0]))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("invalid variable name \"{}\"", a[0]));
    }
    Ok(Op::Set(name.to_string(), Template::parse(a[1])))
}

/// Parses an `if` condition as nginx's `ngx_http_rewrite_if_condition`,
/// from the directive's words with the parentheses still on.
fn parse_cond(words: &[&str]) -> Result<Cond, String> {
    let invalid = || format!("invalid condition \"{}\"", words.join(" "));
    let mut w: Vec<&str> = words.to_vec();
    let first = *w.first().ok_or_else(invalid)?;
    if !first.starts_with('(') {
        return Err(invalid());
    }
    if first == "(" {
        w.remove(0);
    } else {
        w[0] = &first[1..];
    }
    let last = *w.last().ok_or_else(invalid)?;
    if !last.ends_with(')') {
        return Err(invalid());
    }
    if last == ")" {
        w.pop();
    } else {
        let n = w.len() - 1;
        w[n] = &last[..last.len() - 1];
    }
    match w.as_slice() {
        [v] if v.starts_with('$') && v.len() > 1 => Ok(Cond::Var(Template::parse(v))),
        [v, op, rhs] if v.starts_with('$') && v.len() > 1 => {
            let v = Template::parse(v);
            match *op {
                "=" => Ok(Cond::Eq(v, Template::parse(rhs), false)),
                "!=" => Ok(Cond::Eq(v, Template::parse(rhs), true)),
                "~" => Ok(Cond::Re(v, regex(rhs, false)?, false)),
                "~*" => Ok(Cond::Re(v, regex(rhs, true)?, false)),
                "!~" => Ok(Cond::Re(v, regex(rhs, false)?, true)),
                "!~*" => Ok(Cond::Re(v, regex(rhs, true)?, true)),
                o => Err(format!("unexpected \"{o}\" in condition")),
            }
        }
        [op, path] => {
            let (neg, op) = match op.strip_prefix('!') {
                Some(o) => (true, o),
                None => (false, *op),
            };
            match op {
                "-f" | "-d" | "-e" | "-x" => Ok(Cond::File(op.as_bytes()[1], Template::parse(path), neg)),
                _ => Err(invalid()),
            }
        }
        _ => Err(invalid()),
    }
}

fn directives() -> Vec<DirectiveSpec<Conf>> {
    vec![
        DirectiveSpec::<Conf>::new("rewrite", SL, 2, 3, |c, a, _| parse_rewrite(a).map(|op| c.ops.push(op))),
        DirectiveSpec::<Conf>::new("return", SL, 1, 2, |c, a, _| parse_return(a).map(|op| c.ops.push(op))),
        DirectiveSpec::<Conf>::new("set", SL, 2, 2, |c, a, _| parse_set(a).map(|op| c.ops.push(op))),
        DirectiveSpec::<Conf>::new("break", SL, 0, 0, |c, _, _| {
            c.ops.push(Op::Break);
            Ok(())
        }),
        // `if` is nginx's: not nested, in a server or a location.
        DirectiveSpec::<Conf>::new("if", SL ^ sys::CTX_IF, 1, sys::ARGS_ANY, |c, a, cx: &ConfCx<'_>| {
            let cond = parse_cond(a)?;
            let id = cx.block_id().ok_or("\"if\" needs a host with conditional blocks (ABI 1.7)")?;
            c.ops.push(Op::If(cond, id));
            Ok(())
        })
        .block(sys::CTX_IF),
        DirectiveSpec::<Conf>::new("rewrite_log", HSL, 1, 1, |c, a, cx| {
            c.log = Some(cx.flag(a[0])?);
            Ok(())
        }),
        DirectiveSpec::<Conf>::new("uninitialized_variable_warn", HSL, 1, 1, |_, a, cx| cx.flag(a[0]).map(drop)),
    ]
}

/// The last regex match: the subject and its groups' spans. Kept in the
/// request between phases, as nginx's `r->captures` (a server's rewrite
/// captures are seen by its locations' directives).
#[derive(Default)]
struct Caps {
    subject: String,
    spans: Vec<Option<(usize, usize)>>,
    /// The request's URI came escaped (`%` or `+`): captures copied into
    /// a redirect or into arguments are escaped again (NGX_ESCAPE_ARGS).
    quoted: bool,
    /// Rendering a redirect.
    redirect: bool,
}

impl Caps {
    fn set(&mut self, re: &Regex, subject: &str, req: &mut Request<'_>) -> bool {
        let Some(c) = re.captures(subject) else { return false };
        self.subject.clear();
        self.subject.push_str(subject);
        self.spans.clear();
        self.spans.extend(c.iter().map(|m| m.map(|m| (m.start(), m.end()))));
        // Named groups become variables, as in nginx.
        for (i, name) in re.capture_names().enumerate() {
            if let (Some(n), Some(Some((a, b)))) = (name, self.spans.get(i)) {
                let _ = req.set_var(n, &subject[*a..*b]);
            }
        }
        true
    }
}

/// Bytes nginx escapes in arguments (NGX_ESCAPE_ARGS).
fn escaped(b: u8) -> bool {
    b <= b' ' || b >= 0x7f || b"\"#%&+;<>?\\^`{|}".contains(&b)
}

fn render(req: &Request<'_>, t: &Template, caps: &Caps, out: &mut Vec<u8>) {
    t.render(out, |v, out| {
        if let Ok(n) = v.parse::<usize>() {
            match caps.spans.get(n) {
                Some(Some((a, b))) => {
                    let s = &caps.subject.as_bytes()[*a..*b];
                    if caps.quoted && (caps.redirect || out.contains(&b'?')) {
                        for &c in s {
                            if escaped(c) {
                                out.extend_from_slice(format!("%{c:02X}").as_bytes());
                            } else {
                                out.push(c);
                            }
                        }
                    } else {
                        out.extend_from_slice(s);
                    }
                }
                // Not this module's match: the host's (a regex location).
                _ if caps.spans.is_empty() => out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")),
                _ => {}
            }
        } else {
            out.extend_from_slice(req.var_bytes(v).unwrap_or(b""));
        }
    })
}

fn text(req: &Request<'_>, t: &Template, caps: &Caps) -> String {
    thread_local!(static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
    BUF.with_borrow_mut(|b| {
        b.clear();
        render(req, t, caps, b);
        String::from_utf8_lossy(b).into_owned()
    })
}

/// How running a list ended.
enum Flow {
    /// Ran to its end.
    Next,
    /// `break`, `last` or a `break` flag: stop this phase's directives.
    Stop,
    /// Answer with this.
    Answer(Status),
}

struct Run {
    caps: Caps,
    /// The URI changed in this phase (and asks for a new search).
    changed: bool,
    log: bool,
}

fn cond_true(req: &mut Request<'_>, c: &Cond, run: &mut Run) -> bool {
    match c {
        Cond::Var(v) => {
            let s = text(req, v, &run.caps);
            !(s.is_empty() || s == "0")
        }
        Cond::Eq(v, rhs, neg) => (text(req, v, &run.caps) == text(req, rhs, &run.caps)) != *neg,
        Cond::Re(v, re, neg) => {
            let s = text(req, v, &run.caps);
            let matched = if *neg { re.is_match(&s) } else { run.caps.set(re, &s, req) };
            matched != *neg
        }
        Cond::File(op, path, neg) => {
            let p = text(req, path, &run.caps);
            let m = std::fs::metadata(&p);
            let yes = match op {
                b'f' => m.is_ok_and(|m| m.is_file()),
                b'd' => m.is_ok_and(|m| m.is_dir()),
                b'e' => m.is_ok() || std::fs::symlink_metadata(&p).is_ok(),
                _ => {
                    use std::os::unix::fs::PermissionsExt;
                    m.is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
                }
            };
            yes != *neg
        }
    }
}

fn do_return(req: &mut Request<'_>, code: u16, t: Option<&Template>, run: &Run) -> Status {
    let body = t.map(|t| text(req, t, &run.caps));
    match (code, body) {
        (301 | 302 | 303 | 307 | 308, Some(url)) => {
            req.set_header("Location", &url);
            Status::Http(code)
        }
        (444, _) => Status::Http(444),
        (c, None) if c >= 400 => Status::Http(c),
        (c, body) => {
            req.set_status(c);
            // A type already set (kept from an X-Accel-Redirect's upstream)
            // stays, as nginx's.
            if req.header_out("Content-Type").is_none() {
                let ctype = req.mime_type().unwrap_or("text/plain").to_string();
                req.set_header("Content-Type", &ctype);
            }
            match req.send(body.as_deref().unwrap_or("").as_bytes(), true) {
                Ok(()) => Status::Done,
                Err(_) => Status::Error,
            }
        }
    }
}

fn do_rewrite(req: &mut Request<'_>, rw: &Rewrite, run: &mut Run) -> Flow {
    let uri = req.uri().to_string();
    if !run.caps.set(&rw.re, &uri, req) {
        return Flow::Next;
    }
    let request_uri = req.request_uri();
    let path = request_uri.split('?').next().unwrap_or("");
    (run.caps.quoted, run.caps.redirect) = (path.contains('%') || path.contains('+'), rw.redirect.is_some());
    let out = text(req, &rw.repl, &run.caps);
    (run.caps.quoted, run.caps.redirect) = (false, false);
    let args = req.args().to_string();
    if let Some(code) = rw.redirect {
        let mut loc = out;
        if rw.add_args && !args.is_empty() {
            loc.push(if loc.contains('?') { '&' } else { '?' });
            loc.push_str(&args);
        }
        if run.log {
            log(sys::LOG_NOTICE, &format!("rewritten redirect: \"{loc}\""));
        }
        req.set_header("Location", &loc);
        return Flow::Answer(Status::Http(code));
    }
    let (new_uri, new_args) = match out.split_once('?') {
        Some((u, a)) => {
            let mut a = a.to_string();
            if rw.add_args && !args.is_empty() {
                a.push('&');
                a.push_str(&args);
            }
            (u.to_string(), Some(a))
        }
        None if !rw.add_args => (out, Some(String::new())),
        None => (out, None),
    };
    if run.log {
        log(sys::LOG_NOTICE, &format!("rewritten data: \"{new_uri}\", args: \"{}\"", new_args.as_deref().unwrap_or(&args)));
    }
    if new_uri.is_empty() {
        log(sys::LOG_ERR, "the rewritten URI has a zero length");
        return Flow::Answer(Status::Error);
    }
    let relocate = rw.flag != Flag::Break;
    if let Err(rc) = req.set_uri(&new_uri, new_args.as_deref(), relocate) {
        log(sys::LOG_ERR, &format!("rewrite to \"{new_uri}\" refused (rc {rc})"));
        return Flow::Answer(Status::Error);
    }
    run.changed = relocate;
    match rw.flag {
        Flag::None => Flow::Next,
        Flag::Last | Flag::Break => Flow::Stop,
    }
}

fn run_ops(req: &mut Request<'_>, ops: &[Op], run: &mut Run) -> Flow {
    for op in ops {
        let flow = match op {
            Op::Rewrite(rw) => do_rewrite(req, rw, run),
            Op::Return(code, t) => Flow::Answer(do_return(req, *code, t.as_ref(), run)),
            Op::Set(name, t) => {
                let v = text(req, t, &run.caps);
                if let Err(rc) = req.set_var(name, &v) {
                    log(sys::LOG_ERR, &format!("set \"${name}\" failed (rc {rc}): the variable cannot be changed"));
                    Flow::Answer(Status::Error)
                } else {
                    Flow::Next
                }
            }
            Op::Break => {
                // nginx's break also cancels a search asked for by an
                // earlier rewrite without a flag.
                if run.changed {
                    let uri = req.uri().to_string();
                    let _ = req.set_uri(&uri, None, false);
                    run.changed = false;
                }
                Flow::Stop
            }
            Op::If(c, id) => {
                if !cond_true(req, c, run) {
                    Flow::Next
                } else if let Some(block) = req.enter_block::<Conf>(*id) {
                    // The request now runs with the block's settings (every
                    // plugin's); its own directives run here, inline, and
                    // then the rest of the enclosing list, as nginx's.
                    run_ops(req, &block.ops, run)
                } else {
                    log(sys::LOG_ERR, "the host refused to enter an \"if\" block");
                    Flow::Answer(Status::Error)
                }
            }
        };
        if !matches!(flow, Flow::Next) {
            return flow;
        }
    }
    Flow::Next
}

impl Plugin for Rewriter {
    const NAME: &'static str = "rewrite";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        directives()
    }

    fn create(_cx: &ConfCx<'_>, level: u32) -> Conf {
        Conf { server: level == sys::CTX_SERVER, ..Conf::default() }
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        // The directives themselves are not inherited, as in nginx.
        child.log = child.log.or(parent.log);
    }

    fn phases() -> &'static [Phase] {
        &[Phase::ServerRewrite, Phase::Rewrite]
    }

    fn handle(phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        // A request no location matched stays on the server's own block:
        // its directives ran in SERVER_REWRITE already.
        if conf.ops.is_empty() || (phase == Phase::Rewrite) == conf.server {
            return Status::Declined;
        }
        let caps = std::mem::take(req.ctx::<Caps>());
        let mut run = Run { caps, changed: false, log: conf.log == Some(true) };
        let flow = run_ops(req, &conf.ops, &mut run);
        *req.ctx::<Caps>() = run.caps;
        match flow {
            Flow::Next | Flow::Stop => Status::Declined,
            Flow::Answer(s) => s,
        }
    }
}

export_plugin!(Rewriter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_as_nginx() {
        let ok = |w: &[&str]| parse_cond(w).unwrap_or_else(|e| panic!("{w:?}: {e}"));
        assert!(matches!(ok(&["($a)"]), Cond::Var(_)));
        assert!(matches!(ok(&["(", "$a", ")"]), Cond::Var(_)));
        assert!(matches!(ok(&["($a", "=", "x)"]), Cond::Eq(_, _, false)));
        assert!(matches!(ok(&["($a", "!=", "", ")"]), Cond::Eq(_, _, true)));
        assert!(matches!(ok(&["($a", "~*", "^x)"]), Cond::Re(_, _, false)));
        assert!(matches!(ok(&["($a", "!~", "^x)"]), Cond::Re(_, _, true)));
        assert!(matches!(ok(&["(-f", "$request_filename)"]), Cond::File(b'f', _, false)));
        assert!(matches!(ok(&["(!-d", "$x)"]), Cond::File(b'd', _, true)));
        for bad in [&["$a"][..], &["($a"], &["(a)"], &["(-q", "x)"], &["($a", "<", "b)"], &["()"]] {
            assert!(parse_cond(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_cond(&["($a", "<", "b)"]).err().unwrap(), "unexpected \"<\" in condition");
    }

    #[test]
    fn directives_parse_as_nginx() {
        assert!(matches!(parse_return(&["301", "/x"]), Ok(Op::Return(301, Some(_)))));
        assert!(matches!(parse_return(&["https://x/"]), Ok(Op::Return(302, Some(_)))));
        assert!(matches!(parse_return(&["404"]), Ok(Op::Return(404, None))));
        assert_eq!(parse_return(&["/x"]).err().unwrap(), "invalid return code \"/x\"");
        assert_eq!(parse_return(&["1000"]).err().unwrap(), "invalid return code \"1000\"");
        let Ok(Op::Rewrite(r)) = parse_rewrite(&["^/a", "/b?", "last"]) else { panic!() };
        assert!(!r.add_args && r.flag == Flag::Last && r.redirect.is_none());
        let Ok(Op::Rewrite(r)) = parse_rewrite(&["^", "$scheme://h/"]) else { panic!() };
        assert_eq!((r.redirect, r.add_args), (Some(302), true));
        let Ok(Op::Rewrite(r)) = parse_rewrite(&["^", "/p", "permanent"]) else { panic!() };
        assert_eq!(r.redirect, Some(301));
        assert_eq!(parse_rewrite(&["^", "/p", "later"]).err().unwrap(), "invalid parameter \"later\"");
        assert!(parse_rewrite(&["(", "/p"]).is_err());
        assert_eq!(parse_set(&["x", "1"]).err().unwrap(), "invalid variable name \"x\"");
    }

    #[test]
    fn escaping_matches_nginx_args_table() {
        let esc: String = (0x20u8..0x7f).filter(|&b| escaped(b)).map(char::from).collect();
        assert_eq!(esc, " \"#%&+;<>?\\^`{|}");
    }
}
