//! `geo` and `split_clients`: nginx's variables made from the client's
//! address and from a hash of any text.
//!
//! `geo [$address] $name { … }` (http): `$name` is the value of the most
//! specific network holding the address (`$remote_addr`, or the first
//! argument's value; one that is not an address counts as
//! 255.255.255.255, as nginx). Lines: `default value`, `network value`
//! (`192.0.2.0/24`, `2001:db8::/32`, or one address), `delete network`,
//! `include file` (relative to the configuration's directory),
//! `proxy network` (for a client in one of these, the address comes from
//! X-Forwarded-For: its last entry, or with `proxy_recursive` the last
//! one not itself a proxy), `ranges` (then keys are IPv4
//! `first-last` ranges; the later range wins where they overlap) and
//! `volatile` (accepted: values are computed each time anyway). An
//! IPv4-mapped IPv6 address is looked up as IPv4.
//!
//! `split_clients "text" $name { 0.5% one; 20% two; * other; }` (http):
//! the text (with variables) is hashed with MurmurHash2, as nginx does, and
//! `$name` is the value whose share of the hash range holds it (`*`: the
//! rest; empty when no share does). Percentages take two decimals and add
//! up to at most 100%.

use plugin_api::{export_plugin, sys, template::Template, ConfCx, DirectiveSpec, Plugin, Request, VarDef};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

/// A network: address bits and prefix length (IPv4 in a u32's, IPv6 in a
/// u128's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// An address as nginx looks it up: IPv4-mapped IPv6 as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Net {
    /// `192.0.2.0/24`, `2001:db8::/32` or one address; host bits are
    /// dropped (nginx warns about them and does the same).
    pub fn parse(s: &str) -> Option<Net> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        match canonical(addr.parse::<IpAddr>().ok()?) {
            IpAddr::V4(a) => {
                let len = len.unwrap_or(32);
                (len <= 32).then(|| Net::V4(u32::from(a) & mask4(len), len))
            }
            IpAddr::V6(a) => {
                let len = len.unwrap_or(128);
                (len <= 128).then(|| Net::V6(u128::from(a) & mask6(len), len))
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, canonical(ip)) {
            (Net::V4(n, l), IpAddr::V4(a)) => u32::from(a) & mask4(l) == n,
            (Net::V6(n, l), IpAddr::V6(a)) => u128::from(a) & mask6(l) == n,
            _ => false,
        }
    }
}

/// One `geo` block.
#[derive(Debug, Default)]
pub struct Geo {
    source: Option<Template>,
    /// Per prefix length (longest first): network → value.
    v4: Vec<(u8, HashMap<u32, String>)>,
    v6: Vec<(u8, HashMap<u128, String>)>,
    /// `ranges`: (first, last, value), later ones winning.
    ranges: Option<Vec<(u32, u32, String)>>,
    default: String,
    proxies: Vec<Net>,
    proxy_recursive: bool,
    volatile: bool,
    /// Where a request keeps the value once computed (a request variable
    /// no configuration can name), unless `volatile`.
    cache: String,
}

/// Reads an included file's lines (each line's words).
pub type Reader<'a> = dyn Fn(&str) -> Result<Vec<Vec<String>>, String> + 'a;

fn parse_range(k: &str) -> Option<(u32, u32)> {
    let (a, b) = k.split_once('-')?;
    let (a, b) = (u32::from(a.parse::<Ipv4Addr>().ok()?), u32::from(b.parse::<Ipv4Addr>().ok()?));
    (a <= b).then_some((a, b))
}

impl Geo {
    /// Builds a geo from its block's lines (`include`d files read with
    /// `read`).
    pub fn parse(source: Option<&str>, lines: &[Vec<String>], read: &Reader<'_>) -> Result<Geo, String> {
        let mut g = Geo { source: source.map(Template::parse), ..Geo::default() };
        let mut all: Vec<Vec<String>> = Vec::new();
        for l in lines {
            match l.as_slice() {
                [k, f] if k == "include" => all.extend(read(f)?),
                _ => all.push(l.clone()),
            }
        }
        let mut v4: HashMap<u8, HashMap<u32, String>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, String>> = HashMap::new();
        for l in &all {
            match l.as_slice() {
                [w] if w == "ranges" => g.ranges = Some(Vec::new()),
                [w] if w == "proxy_recursive" => g.proxy_recursive = true,
                [w] if w == "volatile" => g.volatile = true,
                [w, v] if w == "default" => g.default = v.clone(),
                [w, n] if w == "proxy" => g.proxies.push(Net::parse(n).ok_or_else(|| format!("invalid network \"{n}\""))?),
                [w, n] if w == "delete" => match (&mut g.ranges, parse_range(n)) {
                    (Some(r), Some((a, b))) => cut(r, a, b),
                    (Some(_), None) => return Err(format!("invalid range \"{n}\"")),
                    (None, _) => match Net::parse(n).ok_or_else(|| format!("invalid network \"{n}\""))? {
                        Net::V4(a, len) => {
                            v4.entry(len).or_default().remove(&a);
                        }
                        Net::V6(a, len) => {
                            v6.entry(len).or_default().remove(&a);
                        }
                    },
                },
                [k, v] => match &mut g.ranges {
                    Some(r) => {
                        let (a, b) = parse_range(k).ok_or_else(|| format!("invalid range \"{k}\""))?;
                        r.push((a, b, v.clone()));
                    }
                    None => match Net::parse(k).ok_or_else(|| format!("invalid network \"{k}\""))? {
                        Net::V4(a, len) => {
                            v4.entry(len).or_default().insert(a, v.clone());
                        }
                        Net::V6(a, len) => {
                            v6.entry(len).or_default().insert(a, v.clone());
                        }
                    },
                },
                other => return Err(format!("invalid number of the geo parameters in \"{}\"", other.join(" "))),
            }
        }
        g.v4 = v4.into_iter().filter(|(_, m)| !m.is_empty()).collect();
        g.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        g.v6 = v6.into_iter().filter(|(_, m)| !m.is_empty()).collect();
        g.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(g)
    }

    /// The value for `ip`.
    pub fn lookup(&self, ip: IpAddr) -> &str {
        match canonical(ip) {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                if let Some(r) = &self.ranges {
                    return r.iter().rev().find(|(x, y, _)| (*x..=*y).contains(&a)).map_or(&self.default, |(_, _, v)| v);
                }
                self.v4.iter().find_map(|(len, m)| m.get(&(a & mask4(*len)))).unwrap_or(&self.default)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| m.get(&(a & mask6(*len)))).unwrap_or(&self.default)
            }
        }
    }

    /// The value for this request: computed once and kept for the rest
    /// of it (internal redirects included), unless `volatile`.
    fn value(&self, req: &mut Request<'_>) -> String {
        if !self.volatile {
            if let Some(v) = req.var(&self.cache) {
                return v.to_string();
            }
        }
        let v = self.lookup(self.address(req)).to_string();
        if !self.volatile {
            let _ = req.set_var(&self.cache, &v);
        }
        v
    }

    /// The address to look up for `req`.
    fn address(&self, req: &Request<'_>) -> IpAddr {
        let none = IpAddr::V4(Ipv4Addr::BROADCAST);
        let text = match &self.source {
            None => req.var("remote_addr").unwrap_or("").to_string(),
            Some(t) => {
                let mut out = Vec::new();
                t.render(&mut out, |v, out| out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
                String::from_utf8_lossy(&out).into_owned()
            }
        };
        let ip = text.trim().parse::<IpAddr>().unwrap_or(none);
        if self.proxies.is_empty() || !self.proxies.iter().any(|p| p.contains(ip)) {
            return ip;
        }
        forwarded(req.header("x-forwarded-for").unwrap_or(""), ip, &self.proxies, self.proxy_recursive)
    }
}

/// Removes the addresses `a..=b` from the ranges (splitting those that
/// hold them only in part).
fn cut(r: &mut Vec<(u32, u32, String)>, a: u32, b: u32) {
    let mut out = Vec::with_capacity(r.len() + 1);
    for (x, y, v) in r.drain(..) {
        if y < a || x > b {
            out.push((x, y, v));
            continue;
        }
        if x < a {
            out.push((x, a - 1, v.clone()));
        }
        if y > b {
            out.push((b + 1, y, v));
        }
    }
    *r = out;
}

/// The client behind trusted `proxies` per X-Forwarded-For (nginx's
/// rule): its last address, or with `recursive` the last one that is not
/// itself a proxy (the first one if all are).
pub fn forwarded(xff: &str, ip: IpAddr, proxies: &[Net], recursive: bool) -> IpAddr {
    let list: Vec<IpAddr> = xff.split(',').filter_map(|a| a.trim().parse().ok()).collect();
    if !recursive {
        return list.last().copied().unwrap_or(ip);
    }
    let mut found = ip;
    for a in list.iter().rev() {
        found = *a;
        if !proxies.iter().any(|p| p.contains(*a)) {
            break;
        }
    }
    found
}

/// MurmurHash2 (32 bits, seed 0), as nginx's split_clients hashes.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in chunks.by_ref() {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// One `split_clients` block: thresholds over the hash range (0: `*`).
#[derive(Debug, Default)]
pub struct Split {
    source: Template,
    parts: Vec<(u32, String)>,
}

/// "12.5%" as hundredths of a percent (two decimals at most).
fn percent(s: &str) -> Option<u32> {
    let n = s.strip_suffix('%')?;
    let (int, frac) = n.split_once('.').unwrap_or((n, ""));
    if int.is_empty() || frac.len() > 2 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v = int.parse::<u32>().ok()?.checked_mul(100)? + format!("{frac:0<2}").parse::<u32>().ok()?;
    (v > 0).then_some(v)
}

impl Split {
    pub fn parse(source: &str, lines: &[Vec<String>]) -> Result<Split, String> {
        let mut parts = Vec::new();
        let (mut sum, mut last) = (0u32, 0u64);
        for l in lines {
            let [p, v] = l.as_slice() else { return Err(format!("invalid number of the split_clients parameters in \"{}\"", l.join(" "))) };
            if p == "*" {
                sum = 10_000;
                parts.push((0, v.clone()));
                continue;
            }
            let n = percent(p).ok_or_else(|| format!("invalid percent value \"{p}\""))?;
            sum += n;
            if sum > 10_000 {
                return Err("percent total is greater than 100%".into());
            }
            last += u64::from(n) * u64::from(u32::MAX) / 10_000;
            parts.push((last as u32, v.clone()));
        }
        Ok(Split { source: Template::parse(source), parts })
    }

    /// The value for a hash.
    pub fn pick(&self, hash: u32) -> &str {
        self.parts.iter().find(|(p, _)| hash < *p || *p == 0).map_or("", |(_, v)| v)
    }

    fn value(&self, req: &Request<'_>) -> String {
        let mut out = Vec::new();
        self.source.render(&mut out, |v, out| out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
        self.pick(murmur2(&out)).to_string()
    }
}

/// The blocks an `http` block defines (boxed: the host holds each one's
/// address for the generation).
#[derive(Default)]
#[allow(clippy::vec_box)]
pub struct Conf {
    geos: Vec<Box<VarDef<Geo>>>,
    splits: Vec<Box<VarDef<Split>>>,
}

fn var_name(s: &str) -> Result<&str, String> {
    s.strip_prefix('$').filter(|n| !n.is_empty()).ok_or_else(|| format!("invalid variable name \"{s}\""))
}

fn set_geo(c: &mut Conf, a: &[&str], cx: &ConfCx<'_>) -> Result<(), String> {
    let (source, name) = match a {
        [n] => (None, var_name(n)?),
        [s, n] => (Some(*s), var_name(n)?),
        _ => return Err("invalid number of arguments in \"geo\" directive".into()),
    };
    let read = |f: &str| {
        let path = cx.conf_path(f);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("open() \"{path}\" failed ({e})"))?;
        plugin_api::file_lines(&text).map_err(|e| format!("{e} in {path}"))
    };
    let mut geo = Geo::parse(source, &cx.block_children(), &read)?;
    geo.cache = format!("geo:{name}");
    let def = Box::new(VarDef { get: |g: &Geo, req: &mut Request<'_>| Some(g.value(req)), data: geo });
    // SAFETY: the box lives in this block's configuration, which lives (and
    // stays put) as long as the generation that reads the variable.
    unsafe { cx.define_variable_with(name, &def) }?;
    c.geos.push(def);
    Ok(())
}

fn set_split(c: &mut Conf, a: &[&str], cx: &ConfCx<'_>) -> Result<(), String> {
    let name = var_name(a[1])?;
    let split = Split::parse(a[0], &cx.block_children())?;
    let def = Box::new(VarDef { get: |s: &Split, req: &mut Request<'_>| Some(s.value(req)), data: split });
    // SAFETY: as in set_geo.
    unsafe { cx.define_variable_with(name, &def) }?;
    c.splits.push(def);
    Ok(())
}

/// The plugin.
pub struct GeoPlugin;

impl Plugin for GeoPlugin {
    const NAME: &'static str = "geo";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("geo", sys::CTX_HTTP, 1, 2, set_geo).opaque_block(),
            DirectiveSpec::<Conf>::new("split_clients", sys::CTX_HTTP, 2, 2, set_split).opaque_block(),
        ]
    }
}

export_plugin!(GeoPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(src: &[&str]) -> Vec<Vec<String>> {
        src.iter().map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn most_specific_network_wins() {
        let no_include = |f: &str| Err(format!("no {f}"));
        let g = Geo::parse(None, &lines(&["default world", "10.0.0.0/8 ten", "10.1.0.0/16 ten-one", "10.1.2.3 host", "2001:db8::/32 doc6", "delete 10.1.0.0/16"]), &no_include).unwrap();
        assert_eq!(g.lookup(ip("10.1.2.3")), "host");
        assert_eq!(g.lookup(ip("10.1.9.9")), "ten");
        assert_eq!(g.lookup(ip("11.0.0.1")), "world");
        assert_eq!(g.lookup(ip("::ffff:10.1.2.3")), "host");
        assert_eq!(g.lookup(ip("2001:db8:1::1")), "doc6");
        assert_eq!(g.lookup(ip("::1")), "world");
        assert_eq!(Net::parse("192.168.1.77/24"), Some(Net::V4(0xc0a8_0100, 24)));
        assert!(Geo::parse(None, &lines(&["300.0.0.0/8 x"]), &no_include).is_err());
    }

    #[test]
    fn ranges_and_includes() {
        let read = |f: &str| if f == "more.conf" { plugin_api::file_lines("10.0.0.5-10.0.0.6 inc;") } else { Err(format!("no {f}")) };
        let g = Geo::parse(Some("$arg_ip"), &lines(&["ranges", "default d", "10.0.0.0-10.0.0.255 a", "delete 10.0.0.0-10.0.0.255", "include more.conf"]), &read).unwrap();
        assert_eq!((g.lookup(ip("10.0.0.5")), g.lookup(ip("10.0.0.7"))), ("inc", "d"));
        // A delete cuts the ranges it overlaps.
        let g = Geo::parse(None, &lines(&["ranges", "10.0.0.0-10.0.0.255 a", "delete 10.0.0.10-10.0.0.19"]), &read).unwrap();
        assert_eq!((g.lookup(ip("10.0.0.9")), g.lookup(ip("10.0.0.10")), g.lookup(ip("10.0.0.19")), g.lookup(ip("10.0.0.20"))), ("a", "", "", "a"));
    }

    #[test]
    fn forwarded_for() {
        let proxies = [Net::parse("127.0.0.0/8").unwrap(), Net::parse("192.0.2.0/24").unwrap()];
        let me = ip("127.0.0.1");
        assert_eq!(forwarded("203.0.113.9, 192.0.2.4", me, &proxies, false), ip("192.0.2.4"));
        assert_eq!(forwarded("203.0.113.9, 192.0.2.4", me, &proxies, true), ip("203.0.113.9"));
        assert_eq!(forwarded("", me, &proxies, true), me);
    }

    #[test]
    fn murmur2_known_values() {
        // MurmurHash2 with seed 0 (values from an independent Python
        // implementation of the published algorithm).
        assert_eq!(murmur2(b""), 0);
        assert_eq!(murmur2(b"a"), 0x92685f5e);
        assert_eq!(murmur2(b"abcd"), 0x26873021);
        assert_eq!(murmur2(b"hello world"), 0x44a81419);
    }

    #[test]
    fn splits() {
        let s = Split::parse("$remote_addr", &lines(&["50% a", "25.5% b", "* c"])).unwrap();
        assert_eq!(s.pick(0), "a");
        assert_eq!(s.pick(u32::MAX / 2 - 1), "a");
        assert_eq!(s.pick(u32::MAX / 2 + 10), "b");
        assert_eq!(s.pick(u32::MAX - 1), "c");
        assert_eq!(Split::parse("x", &lines(&["50% a"])).unwrap().pick(u32::MAX - 1), "");
        assert!(Split::parse("x", &lines(&["60% a", "50% b"])).is_err());
        assert!(Split::parse("x", &lines(&["1.234% a"])).is_err());
        assert_eq!(percent("0.5%"), Some(50));
        assert_eq!(percent("12%"), Some(1200));
    }
}
