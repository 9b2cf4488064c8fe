//! `sub`: nginx's sub module — replaces strings in response bodies.
//!
//! - `sub_filter string replacement;` (http, server, location; several;
//!   a block's own list replaces the inherited one): `string` is matched
//!   without regard to case; both may hold variables (evaluated once per
//!   response).
//! - `sub_filter_once on|off` (on: each string is replaced at its first
//!   occurrence only), `sub_filter_types type…` (text/html always; `*`:
//!   any), `sub_filter_last_modified on|off` (off: Last-Modified and ETag
//!   go, as the body changed; on: they stay, the ETag made weak).
//!
//! Matches are found across the body's pieces (a match may straddle two
//! buffers or a file region); a compressed response (Content-Encoding)
//! is left alone. Load it after `gzip` so that it runs first (filters run
//! in reverse load order, as nginx's).

use plugin_api::{export_plugin, http::Types, sys, template::Template, DirectiveSpec, Piece, Plugin, Request};
use std::rc::Rc;

/// Per-block configuration.
#[derive(Clone, Default)]
pub struct Conf {
    subs: Option<Rc<Vec<(Template, Template)>>>,
    once: Option<bool>,
    types: Types,
    last_modified: Option<bool>,
}

/// A response being rewritten.
#[derive(Default)]
struct Ctx {
    on: bool,
    /// (lowercase string, replacement, used once already).
    pats: Vec<(Vec<u8>, Vec<u8>, bool)>,
    once: bool,
    /// Bytes held back: a match may continue in the next piece.
    tail: Vec<u8>,
}

fn render(req: &Request<'_>, t: &Template) -> Vec<u8> {
    let mut out = Vec::new();
    t.render(&mut out, |v, out| out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
    out
}

impl Ctx {
    /// Rewrites `data` (after what was held back) into `out`; unless
    /// `last`, keeps back the bytes a match could still begin in.
    fn run(&mut self, data: &[u8], last: bool, out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(data);
        let mut at = 0;
        let mut i = 0;
        while i < buf.len() {
            let live = |p: &[u8], used: bool| !(p.is_empty() || self.once && used);
            let rest = &buf[i..];
            match self.pats.iter().position(|(p, _, used)| live(p, *used) && rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p)) {
                Some(k) => {
                    out.extend_from_slice(&buf[at..i]);
                    out.extend_from_slice(&self.pats[k].1);
                    i += self.pats[k].0.len();
                    at = i;
                    self.pats[k].2 = true;
                }
                // The data ends inside what may still become a match:
                // hold it back for the next piece.
                None if !last && self.pats.iter().any(|(p, _, used)| live(p, *used) && p.len() > rest.len() && p[..rest.len()].eq_ignore_ascii_case(rest)) => break,
                None => i += 1,
            }
        }
        let keep_from = i.min(buf.len());
        out.extend_from_slice(&buf[at..keep_from]);
        self.tail = buf[keep_from..].to_vec();
    }

    /// Every string was replaced once (with `once`): nothing more to do.
    fn finished(&self) -> bool {
        self.once && self.pats.iter().all(|p| p.2)
    }
}

/// The plugin.
pub struct Sub;

impl Plugin for Sub {
    const NAME: &'static str = "sub";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HEADER_FILTER: bool = true;
    const BODY_FILTER: bool = true;
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;
        vec![
            DirectiveSpec::<Conf>::new("sub_filter", H, 2, 2, |c, a, _| {
                if a[0].is_empty() {
                    return Err("empty search pattern".into());
                }
                let list = c.subs.get_or_insert_with(|| Rc::new(Vec::new()));
                Rc::get_mut(list).ok_or("sub_filter list is shared")?.push((Template::parse(a[0]), Template::parse(a[1])));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("sub_filter_once", H, 1, 1, |c, a, cx| {
                c.once = Some(cx.flag(a[0])?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("sub_filter_last_modified", H, 1, 1, |c, a, cx| {
                c.last_modified = Some(cx.flag(a[0])?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("sub_filter_types", H, 1, sys::ARGS_ANY, |c, a, _| {
                c.types = Types::parse(a);
                Ok(())
            }),
        ]
    }

    fn merge(p: &Conf, c: &mut Conf) {
        if c.subs.is_none() {
            c.subs.clone_from(&p.subs);
        }
        c.once = c.once.or(p.once);
        c.last_modified = c.last_modified.or(p.last_modified);
        c.types.merge(&p.types);
    }

    fn header_filter(req: &mut Request<'_>, conf: &Conf) -> Result<(), String> {
        let Some(subs) = conf.subs.as_ref().filter(|s| !s.is_empty()) else { return Ok(()) };
        if req.header_out("Content-Length").is_some_and(|v| v.trim() == "0") || req.header_out("Content-Encoding").is_some_and(|v| !v.is_empty()) {
            return Ok(());
        }
        let ctype = req.header_out("Content-Type").unwrap_or("");
        let base = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !(base == "text/html" || conf.types.covers(&base, &[])) {
            return Ok(());
        }
        let pats: Vec<(Vec<u8>, Vec<u8>, bool)> = subs.iter().map(|(s, r)| (render(req, s).to_ascii_lowercase(), render(req, r), false)).collect();
        if pats.iter().all(|p| p.0.is_empty()) {
            return Ok(());
        }
        // The body changes: its length, ranges and (unless kept) its
        // validators no longer hold.
        let etag = req.header_out("ETag").filter(|e| e.starts_with('"')).map(|e| format!("W/{e}"));
        let mut lines: Vec<(&str, Option<&str>)> = vec![("Content-Length", None), ("Accept-Ranges", None)];
        if conf.last_modified == Some(true) {
            if let Some(e) = &etag {
                lines.push(("ETag", Some(e)));
            }
        } else {
            lines.push(("Last-Modified", None));
            lines.push(("ETag", None));
        }
        req.set_headers(&lines).map_err(|rc| format!("sub_filter: setting headers failed (rc {rc})"))?;
        let c = req.ctx::<Ctx>();
        c.on = true;
        c.pats = pats;
        c.once = conf.once.unwrap_or(true);
        Ok(())
    }

    fn body_filter(req: &mut Request<'_>, conf: &Conf, body: &[sys::Buf]) -> Result<(), String> {
        let next_raw = |req: &mut Request<'_>, body: &[sys::Buf]| req.next_body_raw(body).map_err(|rc| format!("next body filter failed (rc {rc})"));
        if conf.subs.is_none() {
            return next_raw(req, body);
        }
        let mut ctx = std::mem::take(req.ctx::<Ctx>());
        if !ctx.on || (ctx.finished() && ctx.tail.is_empty()) {
            *req.ctx::<Ctx>() = ctx;
            return next_raw(req, body);
        }
        let mut last = false;
        let mut data = Vec::new();
        for b in body {
            last |= Piece::is_last(b);
            Piece::of(b).read_into(&mut data).map_err(|e| format!("sub_filter: {e}"))?;
        }
        let mut out = Vec::with_capacity(data.len());
        ctx.run(&data, last, &mut out);
        *req.ctx::<Ctx>() = ctx;
        req.next_body(&out, last).map_err(|rc| format!("next body filter failed (rc {rc})"))
    }
}

export_plugin!(Sub);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pats: &[(&str, &str)], once: bool) -> Ctx {
        Ctx { on: true, pats: pats.iter().map(|(a, b)| (a.to_ascii_lowercase().into_bytes(), b.as_bytes().to_vec(), false)).collect(), once, tail: Vec::new() }
    }

    fn feed(c: &mut Ctx, pieces: &[&str]) -> String {
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            c.run(p.as_bytes(), i + 1 == pieces.len(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replaces_across_pieces_without_regard_to_case() {
        let mut c = ctx(&[("foo", "bar"), ("Hello", "Bye")], false);
        assert_eq!(feed(&mut c, &["xfo", "o hEL", "lo foo", "!"]), "xbar Bye bar!");
        let mut c = ctx(&[("foo", "bar")], true);
        assert_eq!(feed(&mut c, &["foo foo", " foo"]), "bar foo foo");
        let mut c = ctx(&[("abc", "X")], false);
        assert_eq!(feed(&mut c, &["ab", "ab", "c", "ab"]), "abXab");
        let mut c = ctx(&[("a", "aa")], false);
        assert_eq!(feed(&mut c, &["aaa"]), "aaaaaa");
        // Only a possible beginning is held back.
        let mut c = ctx(&[("ab", "AB")], false);
        let mut out = Vec::new();
        c.run(b"xyz", false, &mut out);
        assert_eq!(out, b"xyz");
        c.run(b"xya", false, &mut out);
        assert_eq!(out, b"xyzxy");
        c.run(b"b", true, &mut out);
        assert_eq!(out, b"xyzxyAB");
    }
}
