//! Address matching as nginx's `allow`, `set_real_ip_from`, `geo` write
//! it: an address, a CIDR block, `unix:` or `all`.

use std::net::IpAddr;

/// A network (or every client, or unix-socket clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// `all`.
    All,
    /// `unix:`: clients on a unix-domain socket.
    Unix,
    /// An IPv4 network and its mask.
    V4(u32, u32),
    /// An IPv6 network and its mask.
    V6(u128, u128),
}

impl Net {
    /// Parses `all`, `unix:`, an address or `address/bits`. The second
    /// value is true when the address had bits below the mask (nginx warns
    /// "low address bits of … are meaningless"; they are dropped).
    pub fn parse(s: &str) -> Result<(Net, bool), String> {
        match s {
            "all" => return Ok((Net::All, false)),
            "unix:" => return Ok((Net::Unix, false)),
            _ => {}
        }
        let bad = || format!("invalid parameter \"{s}\"");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        Ok(match addr.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(a) => {
                let b = bits.unwrap_or(32);
                let mask = u32::MAX.checked_shl(32 - b.min(32)).unwrap_or(0);
                if b > 32 {
                    return Err(bad());
                }
                let a = u32::from(a);
                (Net::V4(a & mask, mask), a & !mask != 0)
            }
            IpAddr::V6(a) => {
                let b = bits.unwrap_or(128);
                let mask = u128::MAX.checked_shl(128 - b.min(128)).unwrap_or(0);
                if b > 128 {
                    return Err(bad());
                }
                let a = u128::from(a);
                (Net::V6(a & mask, mask), a & !mask != 0)
            }
        })
    }

    /// True when `ip` is in this network (`all` holds every address; an
    /// IPv4-mapped IPv6 address is taken as IPv4, as nginx does).
    pub fn contains(self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self, ip) {
            (Net::All, _) => true,
            (Net::V4(n, m), IpAddr::V4(a)) => u32::from(a) & m == n,
            (Net::V6(n, m), IpAddr::V6(a)) => u128::from(a) & m == n,
            _ => false,
        }
    }

    /// True for a unix-socket client.
    pub fn contains_unix(self) -> bool {
        matches!(self, Net::All | Net::Unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let n = |s: &str| Net::parse(s).unwrap().0;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(n("10.1.1.0/16").contains(ip("10.1.200.3")));
        assert!(Net::parse("10.1.1.0/16").unwrap().1, "low bits reported");
        assert!(!n("10.1.0.0/16").contains(ip("10.2.0.1")));
        assert!(n("0.0.0.0/0").contains(ip("1.2.3.4")) && !n("0.0.0.0/0").contains(ip("::1")));
        assert!(n("2001:db8::/32").contains(ip("2001:db8::1")));
        assert!(n("192.168.1.0/24").contains(ip("::ffff:192.168.1.7")), "IPv4-mapped is IPv4");
        assert!(n("all").contains(ip("::1")) && n("unix:").contains_unix() && !n("1.2.3.4").contains_unix());
        for bad in ["1.2.3.4/33", "::1/129", "nowhere", "1.2.3.4/x", "unix:/x"] {
            assert!(Net::parse(bad).is_err(), "{bad}");
        }
    }
}
