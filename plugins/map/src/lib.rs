//! `map`: nginx's map module — `map $source $name { … }` in `http`,
//! defining `$name` from the value of `$source` (any text with
//! variables).
//!
//! As in nginx: strings match without regard to case; with `hostnames`,
//! `*.example.com` and `.example.com` (also the bare name) and `mail.*`
//! masks; `~regex` and `~*regex` (case-insensitive) are tried in order;
//! a key starting with `\` is taken literally (`\~x`, `\default`). The
//! order of priority is an exact string, the longest prefix mask, the
//! longest suffix mask, the first matching regex, then `default` (empty
//! when not given). Values may hold variables and the regex's captures
//! (`$1`, named ones, which also become variables). The value is computed
//! the first time the variable is read in a request and kept for the rest
//! of it, internal redirects included, unless the map is `volatile`.
//! `include file;` inside `map` reads more `key value;` lines from a file
//! (relative to the configuration's directory, as nginx).

use plugin_api::{export_plugin, sys, template::Template, ConfCx, DirectiveSpec, Plugin, Request, VarDef};
use regex::{Regex, RegexBuilder};
use std::collections::HashMap;

/// Reads an included file's lines (each line's words).
pub type Reader<'a> = dyn Fn(&str) -> Result<Vec<Vec<String>>, String> + 'a;

/// One map: its source and its entries.
#[derive(Debug, Default)]
pub struct Map {
    source: Template,
    exact: HashMap<String, Template>,
    /// `*.example.com` / `.example.com`: the suffix (".example.com") and
    /// whether the bare name matches too.
    prefix_masks: Vec<(String, bool, Template)>,
    /// `mail.*`: the prefix ("mail.").
    suffix_masks: Vec<(String, Template)>,
    regexes: Vec<(Regex, Template)>,
    default: Option<Template>,
    hostnames: bool,
    volatile: bool,
    /// Where a request keeps the value once computed: a request variable
    /// no configuration can name (`map:` and the map's variable).
    cache: String,
}

fn render(req: &Request<'_>, t: &Template, caps: Option<(&str, &regex::Captures<'_>)>) -> String {
    let mut out = Vec::new();
    t.render(&mut out, |v, out| {
        if let (Some((_, c)), Ok(n)) = (caps, v.parse::<usize>()) {
            out.extend_from_slice(c.get(n).map_or("", |m| m.as_str()).as_bytes());
            return;
        }
        if let Some(m) = caps.and_then(|(_, c)| c.name(v)) {
            out.extend_from_slice(m.as_str().as_bytes());
            return;
        }
        out.extend_from_slice(req.var_bytes(v).unwrap_or(b""));
    });
    String::from_utf8_lossy(&out).into_owned()
}

impl Map {
    /// Parses the block's lines (each child's words); `include` files are
    /// read with `read` (path → their lines).
    pub fn parse(source: &str, lines: &[Vec<String>], read: &Reader<'_>) -> Result<Map, String> {
        let mut m = Map { source: Template::parse(source), ..Map::default() };
        let mut entries = Vec::new();
        let mut all: Vec<Vec<String>> = Vec::new();
        for w in lines {
            match w.as_slice() {
                [k, f] if k == "include" => all.extend(read(f)?),
                _ => all.push(w.clone()),
            }
        }
        for w in &all {
            match w.as_slice() {
                [k] if k == "hostnames" => m.hostnames = true,
                [k] if k == "volatile" => m.volatile = true,
                [k, v] if k == "default" => {
                    if m.default.is_some() {
                        return Err("duplicate default map parameter".into());
                    }
                    m.default = Some(Template::parse(v));
                }
                [k, v] => entries.push((k.clone(), v.clone())),
                _ => return Err(format!("invalid number of the map parameters in \"{}\"", w.join(" "))),
            }
        }
        for (k, v) in entries {
            let value = Template::parse(&v);
            if let Some(re) = k.strip_prefix('~') {
                let (src, caseless) = match re.strip_prefix('*') {
                    Some(r) => (r, true),
                    None => (re, false),
                };
                let re = RegexBuilder::new(&plugin_api::http::pcre_compat(src)).case_insensitive(caseless).build().map_err(|e| format!("regex \"{src}\" is invalid: {}", e.to_string().lines().last().unwrap_or("")))?;
                m.regexes.push((re, value));
                continue;
            }
            let key = k.strip_prefix('\\').unwrap_or(&k).to_ascii_lowercase();
            if m.hostnames {
                if let Some(s) = key.strip_prefix("*.") {
                    m.prefix_masks.push((format!(".{s}"), false, value));
                    continue;
                }
                if key.starts_with('.') && key.len() > 1 {
                    m.prefix_masks.push((key, true, value));
                    continue;
                }
                if let Some(p) = key.strip_suffix(".*") {
                    m.suffix_masks.push((format!("{p}."), value));
                    continue;
                }
            }
            if m.exact.insert(key, value).is_some() {
                return Err(format!("conflicting parameter \"{k}\""));
            }
        }
        // Longest masks first.
        m.prefix_masks.sort_by_key(|(s, _, _)| std::cmp::Reverse(s.len()));
        m.suffix_masks.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(m)
    }

    /// The value for a request: computed once, unless volatile.
    fn value(&self, req: &mut Request<'_>) -> Option<String> {
        if self.volatile {
            return self.compute(req);
        }
        if let Some(v) = req.var(&self.cache) {
            return Some(v.to_string());
        }
        let v = self.compute(req)?;
        let _ = req.set_var(&self.cache, &v);
        Some(v)
    }

    fn compute(&self, req: &mut Request<'_>) -> Option<String> {
        let mut src = render(req, &self.source, None);
        if self.hostnames && src.ends_with('.') {
            src.pop();
        }
        let low = src.to_ascii_lowercase();
        if let Some(t) = self.exact.get(&low) {
            return Some(render(req, t, None));
        }
        if self.hostnames {
            for (suffix, bare, t) in &self.prefix_masks {
                if (low.ends_with(suffix.as_str()) && low.len() > suffix.len()) || (*bare && low == suffix[1..]) {
                    return Some(render(req, t, None));
                }
            }
            for (prefix, t) in &self.suffix_masks {
                if low.starts_with(prefix.as_str()) && low.len() > prefix.len() {
                    return Some(render(req, t, None));
                }
            }
        }
        for (re, t) in &self.regexes {
            if let Some(c) = re.captures(&src) {
                for name in re.capture_names().flatten() {
                    if let Some(m) = c.name(name) {
                        let _ = req.set_var(name, m.as_str());
                    }
                }
                return Some(render(req, t, Some((&src, &c))));
            }
        }
        Some(self.default.as_ref().map_or_else(String::new, |t| render(req, t, None)))
    }
}

/// Per-block configuration: the maps an `http` block defines (kept, boxed,
/// for the generation: the host reads them through the variables).
#[derive(Default)]
pub struct Conf {
    // Boxed: the host holds each one's address for the generation, so a
    // growing Vec must not move them.
    #[allow(clippy::vec_box)]
    maps: Vec<Box<VarDef<Map>>>,
}

/// The plugin.
pub struct MapPlugin;

fn set_map(c: &mut Conf, a: &[&str], cx: &ConfCx<'_>) -> Result<(), String> {
    let name = a[1].strip_prefix('$').filter(|n| !n.is_empty()).ok_or_else(|| format!("invalid variable name \"{}\"", a[1]))?;
    let read = |f: &str| {
        let path = cx.conf_path(f);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("open() \"{path}\" failed ({e})"))?;
        plugin_api::file_lines(&text).map_err(|e| format!("{e} in {path}"))
    };
    let mut map = Map::parse(a[0], &cx.block_children(), &read)?;
    map.cache = format!("map:{name}");
    let def = Box::new(VarDef { get: |m: &Map, req: &mut Request<'_>| m.value(req), data: map });
    // SAFETY: the box lives in this block's configuration, which lives (and
    // stays put) as long as the generation that reads the variable.
    unsafe { cx.define_variable_with(name, &def) }?;
    c.maps.push(def);
    Ok(())
}

impl Plugin for MapPlugin {
    const NAME: &'static str = "map";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("map", sys::CTX_HTTP, 2, 2, set_map).opaque_block(),
            DirectiveSpec::<Conf>::new("map_hash_max_size", sys::CTX_HTTP, 1, 1, |_, _, _| Ok(())),
            DirectiveSpec::<Conf>::new("map_hash_bucket_size", sys::CTX_HTTP, 1, 1, |_, _, _| Ok(())),
        ]
    }
}

export_plugin!(MapPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(src: &[&str]) -> Vec<Vec<String>> {
        src.iter().map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
    }

    fn parse(source: &str, l: &[Vec<String>]) -> Result<Map, String> {
        Map::parse(source, l, &|f| if f == "x.conf" { plugin_api::file_lines("inc 1; 'a b' \"c\";  # note\n") } else { Err(format!("no {f}")) })
    }

    #[test]
    fn included_files() {
        assert_eq!(plugin_api::file_lines("a 1;\n# c\nb 'x y'; \"q;\" 2;").unwrap(), vec![vec!["a", "1"], vec!["b", "x y"], vec!["q;", "2"]]);
        assert!(plugin_api::file_lines("a 1").is_err());
        let m = parse("$a", &lines(&["include x.conf", "z 9"])).unwrap();
        assert!(m.exact.contains_key("inc") && m.exact.contains_key("a b") && m.exact.contains_key("z"));
        assert!(parse("$a", &lines(&["include y.conf"])).unwrap_err().contains("no y.conf"));
    }

    #[test]
    fn parses_as_nginx() {
        let m = parse("$host", &lines(&["hostnames", "default d", "example.com e", "*.example.com w", ".example.org o", "mail.* m", "~^(?<sub>\\w+)\\.test$ r$1", "\\~x lit"])).unwrap();
        assert!(m.exact.contains_key("example.com") && m.exact.contains_key("~x"));
        assert_eq!(m.prefix_masks.len(), 2);
        assert_eq!(m.suffix_masks.len(), 1);
        assert_eq!(m.regexes.len(), 1);
        assert!(parse("$a", &lines(&["default 1", "default 2"])).is_err());
        assert!(parse("$a", &lines(&["a 1", "A 2"])).unwrap_err().contains("conflicting"));
                assert!(parse("$a", &lines(&["a b c"])).is_err());
        assert!(parse("$a", &lines(&["~( x"])).is_err());
    }
}
