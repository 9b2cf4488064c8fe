//! `access`: nginx's access module — `allow` and `deny` with an address,
//! a CIDR block, `unix:` or `all` (IPv4 and IPv6; an IPv4-mapped IPv6
//! client is checked against IPv4 rules, as nginx does).
//!
//! Rules run in the ACCESS phase in the order written; the first that
//! matches decides, and a deny answers 403 ("access forbidden by rule").
//! A block without rules inherits the enclosing block's whole list.

use plugin_api::net::Net;
use plugin_api::{export_plugin, log, sys, DirectiveSpec, Phase, Plugin, Request, Status};
use std::net::IpAddr;

/// One rule: allow or deny a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    allow: bool,
    net: Net,
}

/// Parses a rule's network; warns about meaningless low bits, as nginx.
pub fn parse_net(s: &str) -> Result<Net, String> {
    let (net, low_bits) = Net::parse(s)?;
    if low_bits {
        log(sys::LOG_WARN, &format!("low address bits of {s} are meaningless"));
    }
    Ok(net)
}

/// The first rule matching `ip` allows it (no rule matching: allowed).
pub fn allowed(rules: &[Rule], ip: IpAddr) -> bool {
    rules.iter().find(|r| r.net.contains(ip)).is_none_or(|r| r.allow)
}

/// Per-block configuration.
#[derive(Debug, Clone, Default)]
pub struct Conf {
    rules: Option<Vec<Rule>>,
}

/// The plugin.
pub struct Access;

const CTX: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION | sys::CTX_LIMIT_EXCEPT;

fn rule(c: &mut Conf, a: &[&str], allow: bool) -> Result<(), String> {
    let net = parse_net(a[0])?;
    c.rules.get_or_insert_with(Vec::new).push(Rule { allow, net });
    Ok(())
}

impl Plugin for Access {
    const NAME: &'static str = "access";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("allow", CTX, 1, 1, |c, a, _| rule(c, a, true)),
            DirectiveSpec::<Conf>::new("deny", CTX, 1, 1, |c, a, _| rule(c, a, false)),
        ]
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.rules.is_none() {
            child.rules = parent.rules.clone();
        }
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Access]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let Some(rules) = conf.rules.as_deref() else { return Status::Declined };
        let Some(ip) = req.var("remote_addr").and_then(|a| a.parse::<IpAddr>().ok()) else {
            // A unix-socket client: "all" and "unix:" rules apply.
            return match rules.iter().find(|r| r.net.contains_unix()) {
                Some(r) if r.allow => Status::Ok,
                Some(_) => forbidden(),
                None => Status::Declined,
            };
        };
        // An allow rule grants access (nginx's NGX_OK: `satisfy any` takes
        // it); no rule matching says nothing.
        match rules.iter().find(|r| r.net.contains(ip)) {
            Some(r) if r.allow => Status::Ok,
            Some(_) => forbidden(),
            None => Status::Declined,
        }
    }
}

fn forbidden() -> Status {
    log(sys::LOG_ERR, "access forbidden by rule");
    Status::Http(403)
}

export_plugin!(Access);

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(bool, &str)]) -> Vec<Rule> {
        list.iter().map(|&(allow, n)| Rule { allow, net: parse_net(n).unwrap() }).collect()
    }

    #[test]
    fn first_match_decides() {
        let r = rules(&[(false, "192.168.1.1"), (true, "192.168.1.0/24"), (true, "10.1.1.0/16"), (true, "2001:db8::/32"), (false, "all")]);
        let ok = |s: &str| allowed(&r, s.parse().unwrap());
        assert!(!ok("192.168.1.1"));
        assert!(ok("192.168.1.2"));
        assert!(ok("10.1.200.3"), "low bits of 10.1.1.0/16 ignored");
        assert!(!ok("10.2.0.1"));
        assert!(ok("2001:db8::1"));
        assert!(!ok("2001:db9::1"));
        assert!(ok("::ffff:192.168.1.7"), "IPv4-mapped is IPv4");
        assert!(!ok("::ffff:192.168.1.1"));
        assert!(allowed(&[], "1.2.3.4".parse().unwrap()), "no rules: allowed");
        assert!(allowed(&rules(&[(false, "0.0.0.0/0")]), "::1".parse().unwrap()), "an IPv4 rule says nothing of IPv6");
    }

    #[test]
    fn bad_rules_are_refused() {
        assert_eq!(parse_net("unix:"), Ok(Net::Unix));
        for bad in ["1.2.3.4/33", "::1/129", "nowhere", "1.2.3.4/x", "unix:/x"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}
