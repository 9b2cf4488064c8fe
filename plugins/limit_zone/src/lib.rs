//! What `limit_req` and `limit_conn` share: a shared zone holding a table
//! of fixed-size slots, addressed by a keyed hash of the request's key,
//! and their common directives' values.

use plugin_api::template::Template;
use plugin_api::{sys, ConfCx, DirectiveSpec, Request, Shm};
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

/// What both limits configure per block: `*_status` (503), `*_log_level`
/// (error) and `*_dry_run` (off), inherited from the enclosing block.
#[derive(Clone, Copy, Default, Debug)]
pub struct Common {
    pub status: Option<u16>,
    pub log_level: Option<u32>,
    pub dry_run: Option<bool>,
}

impl Common {
    /// Takes what this block does not set from `parent`.
    pub fn merge(&mut self, parent: &Common) {
        self.status = self.status.or(parent.status);
        self.log_level = self.log_level.or(parent.log_level);
        self.dry_run = self.dry_run.or(parent.dry_run);
    }

    /// The status a refused request gets.
    pub fn status(&self) -> u16 {
        self.status.unwrap_or(503)
    }

    /// The level refusals are logged at.
    pub fn log_level(&self) -> u32 {
        self.log_level.unwrap_or(sys::LOG_ERR)
    }

    /// `*_dry_run on`.
    pub fn dry_run(&self) -> bool {
        self.dry_run == Some(true)
    }
}

/// A limit plugin's configuration holds a [`Common`].
pub trait HasCommon {
    /// "limit_req" or "limit_conn" (for error messages).
    const KIND: &'static str;
    /// Its common settings.
    fn common(&mut self) -> &mut Common;
}

/// The three common directives, named `names` (`*_status`,
/// `*_log_level`, `*_dry_run`), in `contexts`.
pub fn directives<C: HasCommon + 'static>(names: [&'static str; 3], contexts: u32) -> Vec<DirectiveSpec<C>> {
    vec![
        DirectiveSpec::<C>::new(names[0], contexts, 1, 1, |c, a, _| {
            c.common().status = Some(status(a[0])?);
            Ok(())
        }),
        DirectiveSpec::<C>::new(names[1], contexts, 1, 1, |c, a, _| {
            c.common().log_level = Some(log_level(a[0], &format!("{}_log_level", C::KIND))?);
            Ok(())
        }),
        DirectiveSpec::<C>::new(names[2], contexts, 1, 1, |c, a, cx| {
            c.common().dry_run = Some(cx.flag(a[0])?);
            Ok(())
        }),
    ]
}
