//! The PROXY protocol (HAProxy's, versions 1 and 2), for `listen …
//! proxy_protocol`: a load balancer in front says who the client is
//! before the connection's own bytes. nginx's `$proxy_protocol_addr`,
//! `_port`, `_server_addr`, `_server_port` and `_tlv_*` come from here,
//! and realip's `real_ip_header proxy_protocol`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The v2 signature.
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The most a header may take (v1 is at most 107 bytes; v2 headers with
/// TLVs are bounded here).
pub const MAX: usize = 4096;

/// What a PROXY header said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Info {
    /// The client's address and port (None: UNKNOWN, or a LOCAL command).
    pub src: Option<(IpAddr, u16)>,
    /// The address and port the client connected to.
    pub dst: Option<(IpAddr, u16)>,
    /// v2 TLVs: (type, value).
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

impl Info {
    /// `$proxy_protocol_tlv_<name>`: a TLV by nginx's name (`alpn`,
    /// `authority`, `unique_id`, `netns`…) or `0x<hex>`; `ssl_<name>` and
    /// `ssl_0x<hex>` look inside the SSL TLV, whose `ssl_verify` is its
    /// verify result (a number).
    pub fn tlv(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        if let Some(sub) = name.strip_prefix("ssl_") {
            // client (1 byte), verify (4 bytes), then TLVs of its own.
            let ssl = self.raw_tlv(0x20)?;
            let verify = ssl.get(1..5)?;
            if sub == "verify" {
                let v = u32::from_be_bytes([verify[0], verify[1], verify[2], verify[3]]);
                return Some(std::borrow::Cow::Owned(v.to_string().into_bytes()));
            }
            let kind = match sub {
                "version" => 0x21,
                "cn" => 0x22,
                "cipher" => 0x23,
                "sig_alg" => 0x24,
                "key_alg" => 0x25,
                n => hex_kind(n)?,
            };
            let inner = split_tlvs(&ssl[5..]).ok()?;
            return inner.into_iter().find(|(t, _)| *t == kind).map(|(_, v)| std::borrow::Cow::Owned(v));
        }
        let kind = match name {
            "alpn" => 0x01,
            "authority" => 0x02,
            "crc32c" => 0x03,
            "noop" => 0x04,
            "unique_id" => 0x05,
            "ssl" => 0x20,
            "netns" => 0x30,
            n => hex_kind(n)?,
        };
        self.raw_tlv(kind).map(std::borrow::Cow::Borrowed)
    }

    fn raw_tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs.iter().find(|(t, _)| *t == kind).map(|(_, v)| v.as_slice())
    }
}

/// `0x<hex>` as a TLV type.
fn hex_kind(n: &str) -> Option<u8> {
    u8::from_str_radix(n.strip_prefix("0x").or_else(|| n.strip_prefix("0X"))?, 16).ok()
}

/// A run of TLVs.
fn split_tlvs(mut tlv: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, &'static str> {
    let mut out = Vec::new();
    while !tlv.is_empty() {
        if tlv.len() < 3 {
            return Err("a broken v2 TLV");
        }
        let n = usize::from(u16::from_be_bytes([tlv[1], tlv[2]]));
        if tlv.len() < 3 + n {
            return Err("a broken v2 TLV");
        }
        out.push((tlv[0], tlv[3..3 + n].to_vec()));
        tlv = &tlv[3 + n..];
    }
    Ok(out)
}

/// Parses a header at the start of `buf`: Ok(None) when more bytes are
/// needed, Ok((info, length)) once whole; Err says why it is broken.
pub fn parse(buf: &[u8]) -> Result<Option<(Info, usize)>, &'static str> {
    match buf.first() {
        None => Ok(None),
        // v1 is text ("PROXY …"); v2 starts with its binary signature.
        Some(b'\r') if SIG.starts_with(&buf[..buf.len().min(SIG.len())]) => v2(buf),
        Some(b'\r') => Err("no PROXY protocol header"),
        Some(_) => v1(buf),
    }
}

fn v1(buf: &[u8]) -> Result<Option<(Info, usize)>, &'static str> {
    const PREFIX: &[u8] = b"PROXY ";
    if !buf.starts_with(&PREFIX[..buf.len().min(PREFIX.len())]) {
        return Err("no PROXY protocol header");
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= 107 { Err("the v1 header is too long") } else { Ok(None) };
    };
    if end + 2 > 107 {
        return Err("the v1 header is too long");
    }
    let line = std::str::from_utf8(&buf[PREFIX.len()..end]).map_err(|_| "the v1 header is not text")?;
    let words: Vec<&str> = line.split(' ').collect();
    let info = match words.as_slice() {
        ["UNKNOWN", ..] => Info::default(),
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, &'static str> {
                let ip: IpAddr = s.parse().map_err(|_| "a bad address")?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err("an address of the other family");
                }
                Ok(ip)
            };
            let port = |s: &str| s.parse::<u16>().map_err(|_| "a bad port");
            Info { src: Some((ip(src)?, port(sport)?)), dst: Some((ip(dst)?, port(dport)?)), tlvs: Vec::new() }
        }
        _ => return Err("a malformed v1 header"),
    };
    Ok(Some((info, end + 2)))
}

fn v2(buf: &[u8]) -> Result<Option<(Info, usize)>, &'static str> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err("an unknown v2 version");
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > MAX {
        return Err("the v2 header is too long");
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let mut info = Info::default();
    // LOCAL (health checks), a transport other than a stream, a family
    // other than IPv4 and IPv6: the connection's own addresses stand, and
    // the rest of the header is skipped, as nginx does.
    let addr_len = match fam >> 4 {
        1 => 12,
        2 => 36,
        _ => 0,
    };
    if ver_cmd & 0x0f != 1 || fam & 0x0f != 1 || addr_len == 0 {
        return Ok(Some((info, 16 + len)));
    }
    if body.len() < addr_len {
        return Err("a v2 header shorter than its addresses");
    }
    let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
    if fam >> 4 == 1 {
        let a = |i: usize| IpAddr::V4(Ipv4Addr::new(body[i], body[i + 1], body[i + 2], body[i + 3]));
        (info.src, info.dst) = (Some((a(0), port(8))), Some((a(4), port(10))));
    } else {
        let a = |i: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&body[i..i + 16]).unwrap_or([0; 16])));
        (info.src, info.dst) = (Some((a(0), port(32))), Some((a(16), port(34))));
    }
    info.tlvs = split_tlvs(&body[addr_len..])?;
    Ok(Some((info, 16 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let (info, n) = parse(h).unwrap().unwrap();
        assert_eq!(n, 45);
        assert_eq!(info.src, Some(("192.0.2.1".parse().unwrap(), 56324)));
        assert_eq!(info.dst, Some(("198.51.100.2".parse().unwrap(), 443)));
        assert_eq!(parse(b"PROXY TCP6 ::1 ::2 1 2\r\n").unwrap().unwrap().0.src, Some(("::1".parse().unwrap(), 1)));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0, Info::default());
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        assert_eq!(parse(b"PRO").unwrap(), None);
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n").is_err());
    }

    #[test]
    fn version_2() {
        let mut h = SIG.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        let tlv = [0x02u8, 0, 3, b'a', b'.', b'b'];
        h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb]);
        h.extend_from_slice(&tlv);
        let full = h.len();
        h.extend_from_slice(b"GET /");
        assert_eq!(parse(&h[..10]).unwrap(), None);
        assert_eq!(parse(&h[..full - 1]).unwrap(), None);
        let (info, n) = parse(&h).unwrap().unwrap();
        assert_eq!((n, info.src, info.dst), (full, Some(("10.0.0.1".parse().unwrap(), 8080)), Some(("10.0.0.2".parse().unwrap(), 443))));
        assert_eq!(info.tlv("authority").as_deref(), Some(&b"a.b"[..]));
        assert_eq!(info.tlv("0x02").as_deref(), Some(&b"a.b"[..]));
        assert_eq!(info.tlv("alpn"), None);
    }
}
