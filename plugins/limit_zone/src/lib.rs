//! What `limit_req` and `limit_conn` share: a shared zone holding a table
//! of fixed-size slots, addressed by a keyed hash of the request's key,
//! and their common directives' values.

use plugin_api::template::Template;
use plugin_api::{sys, ConfCx, Request, Shm};
use std::hash::{BuildHasher, Hasher};

/// Bytes before the first slot: the zone's hash key lives at 8..24.
pub const HEADER: usize = 32;

/// A native-endian u64 at `at`.
pub fn rd(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Writes a native-endian u64 at `at`.
pub fn wr(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `zone=name:size` of a `*_zone` directive: declares (or finds again,
/// across reload) the shared zone `kind:name` and, when new, clears it and
/// draws its hash key. Returns the name and the zone.
pub fn declare(cx: &ConfCx<'_>, kind: &str, param: &str, layout: u32) -> Result<(String, Shm), String> {
    let z = param.strip_prefix("zone=").ok_or_else(|| format!("invalid parameter \"{param}\""))?;
    let (name, size) = z.split_once(':').ok_or_else(|| format!("invalid zone size \"{z}\""))?;
    if name.is_empty() {
        return Err(format!("invalid zone name \"{z}\""));
    }
    let size = cx.size(size).map_err(|_| format!("invalid zone size \"{z}\""))?;
    if size < 8 * 4096 {
        return Err(format!("zone \"{name}\" is too small"));
    }
    let shm = cx.shm_zone(&format!("{kind}:{name}"), size, layout)?;
    if shm.is_new() {
        let seed = std::collections::hash_map::RandomState::new();
        let (k0, k1) = (seed.hash_one(1u8), seed.hash_one(2u8));
        shm.with(|m| {
            m.fill(0);
            wr(m, 8, k0);
            wr(m, 16, k1);
        })
        .map_err(|rc| format!("zone \"{name}\" is not usable (rc {rc})"))?;
    }
    Ok((name.to_string(), shm))
}

/// The request's key: `key` rendered, `$binary_remote_addr` (nginx's
/// address in binary) read as the client address, the same identity.
pub fn key(req: &Request<'_>, key: &Template) -> Vec<u8> {
    let mut out = Vec::new();
    key.render(&mut out, |v, o| {
        let v = if v == "binary_remote_addr" { "remote_addr" } else { v };
        o.extend_from_slice(req.var_bytes(v).unwrap_or(b""));
    });
    out
}

/// SipHash of `key` under the zone's own random key, so a client cannot
/// aim its keys at one neighbourhood of slots. Never 0 (an empty slot).
pub fn hash(shm: &Shm, key: &[u8]) -> u64 {
    let (k0, k1) = shm.with(|m| (rd(m, 8), rd(m, 16))).unwrap_or((0, 0));
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
    h.write(key);
    h.finish().max(1)
}

/// `*_status code`: 400 to 599.
pub fn status(v: &str) -> Result<u16, String> {
    v.parse::<u16>().ok().filter(|s| (400..600).contains(s)).ok_or_else(|| "value must be between 400 and 599".to_string())
}

/// `*_log_level info|notice|warn|error`.
pub fn log_level(v: &str, directive: &str) -> Result<u32, String> {
    Ok(match v {
        "info" => sys::LOG_INFO,
        "notice" => sys::LOG_NOTICE,
        "warn" => sys::LOG_WARN,
        "error" => sys::LOG_ERR,
        v => return Err(format!("invalid value \"{v}\" in \"{directive}\" directive, it must be \"info\", \"notice\", \"warn\" or \"error\"")),
    })
}
