//! `realip`: nginx's realip module — behind a trusted proxy or load
//! balancer, the client address is the one it reports.
//!
//! - `set_real_ip_from address | CIDR | unix:;` (http, server, location;
//!   several): the proxies trusted to report it;
//! - `real_ip_header X-Real-IP | X-Forwarded-For | proxy_protocol | name;`
//!   (default X-Real-IP; `proxy_protocol`: the address a PROXY protocol
//!   header gave, on a `listen … proxy_protocol`);
//! - `real_ip_recursive on|off;` (off).
//!
//! As nginx: only a connection from a trusted address is believed. With
//! X-Forwarded-For (or any list header), the address is the last one in
//! the list, or with `real_ip_recursive on` the last one that is not
//! itself trusted. It becomes `$remote_addr` (seen by access, limit_req,
//! logs, proxy) for the request; `$realip_remote_addr` keeps the
//! connection's.

use plugin_api::net::Net;
use plugin_api::{export_plugin, sys, DirectiveSpec, Phase, Plugin, Request, Status};
use std::net::IpAddr;
use std::rc::Rc;

fn parse_net(s: &str) -> Result<Net, String> {
    match Net::parse(s)? {
        (Net::All, _) => Err(format!("invalid parameter \"{s}\"")),
        (net, _) => Ok(net),
    }
}

/// The address a header reports, as nginx's `ngx_http_get_forwarded_addr`:
/// the last address of the list, or (recursive) the last one not trusted
/// (the first of the list if all are). None when it holds no address.
fn forwarded(value: &str, trusted: &[Net], recursive: bool) -> Option<IpAddr> {
    let mut chosen = None;
    for item in value.rsplit(',') {
        let ip: IpAddr = item.trim().parse().ok()?;
        chosen = Some(ip);
        if !recursive || !trusted.iter().any(|n| n.contains(ip)) {
            break;
        }
    }
    chosen
}

/// Per-block configuration.
#[derive(Debug, Clone, Default)]
pub struct Conf {
    from: Option<Rc<Vec<Net>>>,
    header: Option<String>,
    recursive: Option<bool>,
}

/// The plugin.
pub struct RealIp;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

impl Plugin for RealIp {
    const NAME: &'static str = "realip";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("set_real_ip_from", H, 1, 1, |c, a, _| {
                let net = parse_net(a[0])?;
                let mut list = c.from.as_deref().cloned().unwrap_or_default();
                list.push(net);
                c.from = Some(Rc::new(list));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("real_ip_header", H, 1, 1, |c, a, _| {
                c.header = Some(a[0].to_string());
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("real_ip_recursive", H, 1, 1, |c, a, cx| {
                c.recursive = Some(cx.flag(a[0])?);
                Ok(())
            }),
        ]
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.from.is_none() {
            child.from = parent.from.clone();
        }
        if child.header.is_none() {
            child.header = parent.header.clone();
        }
        child.recursive = child.recursive.or(parent.recursive);
    }

    fn phases() -> &'static [Phase] {
        // Post-read for server-level settings (before the location is
        // known), pre-access for location ones, as nginx.
        &[Phase::PostRead, Phase::Preaccess]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let Some(from) = conf.from.as_deref() else { return Status::Declined };
        // Once per request: the connection's address decides.
        let own = req.var("realip_remote_addr").unwrap_or("").to_string();
        if req.var("remote_addr") != Some(own.as_str()) {
            return Status::Declined;
        }
        let Ok(peer) = own.parse::<IpAddr>() else { return Status::Declined };
        if !from.iter().any(|n| n.contains(peer)) {
            return Status::Declined;
        }
        let name = conf.header.as_deref().unwrap_or("X-Real-IP");
        // The address a PROXY protocol header gave, or a header's (several
        // lines read as one list: $http_*, joined).
        let var = if name == "proxy_protocol" { "proxy_protocol_addr".to_string() } else { format!("http_{}", name.to_ascii_lowercase().replace('-', "_")) };
        let Some(value) = req.var(&var).map(str::to_string) else { return Status::Declined };
        let recursive = conf.recursive == Some(true);
        let list = name.eq_ignore_ascii_case("x-forwarded-for") || value.contains(',');
        let addr = if list { forwarded(&value, from, recursive) } else { value.trim().parse().ok() };
        if let Some(ip) = addr {
            let _ = req.set_var("remote_addr", &ip.to_string());
            // A PROXY protocol header gives the port too.
            if name == "proxy_protocol" {
                if let Some(port) = req.var("proxy_protocol_port").map(str::to_string) {
                    let _ = req.set_var("remote_port", &port);
                }
            }
        }
        Status::Declined
    }
}

export_plugin!(RealIp);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_as_nginx() {
        let trusted = [parse_net("10.0.0.0/8").unwrap(), parse_net("192.168.1.1").unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(forwarded("1.1.1.1, 10.0.0.2", &trusted, false), ip("10.0.0.2"));
        assert_eq!(forwarded("1.1.1.1, 10.0.0.2", &trusted, true), ip("1.1.1.1"));
        assert_eq!(forwarded("2.2.2.2, 1.1.1.1, 192.168.1.1", &trusted, true), ip("1.1.1.1"));
        assert_eq!(forwarded("10.0.0.5, 10.0.0.6", &trusted, true), ip("10.0.0.5"), "all trusted: the first");
        assert_eq!(forwarded("junk", &trusted, true), None);
        assert_eq!(forwarded("2001:db8::1", &trusted, false), ip("2001:db8::1"));
    }
}
