//! `auth_basic`: nginx's HTTP Basic authentication.
//!
//! - `auth_basic "realm" | off;` (http, server, location; realm may hold
//!   variables)
//! - `auth_basic_user_file path;` (may hold variables): htpasswd lines
//!   `name:password[:comment]`; `#` comments.
//!
//! As nginx: checked in the access phase; a request without valid
//! credentials gets 401 with `WWW-Authenticate: Basic realm="…"`; the file
//! is read for each request (changes apply at once). Passwords as nginx
//! takes them: `{PLAIN}`, `{SHA}`, `{SSHA}`, `$apr1$` (Apache MD5) and
//! `$1$` (MD5-crypt) computed here, anything else (`$5$`, `$6$`,
//! `$2y$`, DES…) by the system's crypt(3), loaded from libcrypt at run
//! time.

use base64::Engine;
use md5::{Digest as _, Md5};
use plugin_api::{export_plugin, log, sys, template::Template, DirectiveSpec, Phase, Plugin, Request, Status};
use sha1::Sha1;
use std::rc::Rc;

/// Per-block configuration.
#[derive(Clone, Default)]
pub struct Conf {
    /// None: inherit; Some(None): off.
    realm: Option<Option<Rc<Template>>>,
    /// The file (with variables), and the configuration's directory a
    /// relative one is under.
    file: Option<Rc<(Template, String)>>,
}

/// The plugin.
pub struct AuthBasic;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION | sys::CTX_LIMIT_EXCEPT;
const B64: &base64::engine::GeneralPurpose = &base64::engine::general_purpose::STANDARD;
const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// MD5-crypt (`$1$`) and Apache's variant (`$apr1$`), as nginx's
/// `ngx_crypt_apr1`: `salt` is what follows the magic, up to `$`.
pub fn md5_crypt(pw: &[u8], magic: &str, salt: &str) -> String {
    let salt = salt.split('$').next().unwrap_or("");
    let salt = &salt.as_bytes()[..salt.len().min(8)];
    let alt = Md5::new().chain_update(pw).chain_update(salt).chain_update(pw).finalize();
    let mut ctx = Md5::new().chain_update(pw).chain_update(magic.as_bytes()).chain_update(salt);
    let mut n = pw.len();
    while n > 0 {
        ctx.update(&alt[..n.min(16)]);
        n = n.saturating_sub(16);
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 != 0 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut f = ctx.finalize();
    for i in 0..1000 {
        let mut c = Md5::new();
        if i & 1 != 0 {
            c.update(pw);
        } else {
            c.update(f);
        }
        if i % 3 != 0 {
            c.update(salt);
        }
        if i % 7 != 0 {
            c.update(pw);
        }
        if i & 1 != 0 {
            c.update(f);
        } else {
            c.update(pw);
        }
        f = c.finalize();
    }
    let mut out = format!("{magic}{}$", String::from_utf8_lossy(salt));
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64(u32::from(f[a]) << 16 | u32::from(f[b]) << 8 | u32::from(f[c]), 4);
    }
    to64(u32::from(f[11]), 2);
    out
}

/// crypt(3) from the system's libcrypt (loaded once, at run time: no
/// build dependency). None when it is not there or refuses the hash.
fn system_crypt(pw: &[u8], hash: &str) -> Option<String> {
    type CryptFn = unsafe extern "C" fn(*const libc::c_char, *const libc::c_char) -> *mut libc::c_char;
    thread_local!(static CRYPT: Option<CryptFn> = {
        // SAFETY: dlopen/dlsym with NUL-terminated names; the library stays
        // loaded (never dlclosed) while the pointer is in use.
        unsafe {
            let lib = ["libcrypt.so.1\0", "libcrypt.so.2\0", "libcrypt.so\0"].iter().map(|n| libc::dlopen(n.as_ptr().cast(), libc::RTLD_NOW | libc::RTLD_LOCAL)).find(|h| !h.is_null())?;
            let f = libc::dlsym(lib, c"crypt".as_ptr());
            (!f.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, CryptFn>(f))
        }
    });
    let key = std::ffi::CString::new(pw).ok()?;
    let salt = std::ffi::CString::new(hash).ok()?;
    CRYPT.with(|f| {
        let f = (*f)?;
        // SAFETY: NUL-terminated strings; crypt's static result is copied
        // before anything else on this thread calls it (workers are single
        // threaded).
        let r = unsafe { f(key.as_ptr(), salt.as_ptr()) };
        (!r.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(r) }.to_string_lossy().into_owned())
    })
}

/// Whether `pw` matches an htpasswd password field, as nginx checks it.
pub fn password_ok(pw: &[u8], stored: &str) -> bool {
    if let Some(p) = stored.strip_prefix("{PLAIN}") {
        return p.as_bytes() == pw;
    }
    if let Some(h) = stored.strip_prefix("{SHA}") {
        return B64.encode(Sha1::digest(pw)) == h;
    }
    if let Some(h) = stored.strip_prefix("{SSHA}") {
        let Ok(raw) = B64.decode(h) else { return false };
        if raw.len() < 20 {
            return false;
        }
        let (digest, salt) = raw.split_at(20);
        return Sha1::new().chain_update(pw).chain_update(salt).finalize().as_slice() == digest;
    }
    if let Some(rest) = stored.strip_prefix("$apr1$") {
        return md5_crypt(pw, "$apr1$", rest) == stored;
    }
    if let Some(rest) = stored.strip_prefix("$1$") {
        return md5_crypt(pw, "$1$", rest) == stored;
    }
    system_crypt(pw, stored).is_some_and(|h| h == stored)
}

/// `Authorization: Basic …` decoded into (user, password).
fn credentials(v: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = B64.decode(rest.trim()).ok()?;
    let i = raw.iter().position(|&b| b == b':')?;
    Some((String::from_utf8_lossy(&raw[..i]).into_owned(), raw[i + 1..].to_vec()))
}

fn render(req: &Request<'_>, t: &Template) -> String {
    let mut out = Vec::new();
    t.render(&mut out, |v, o| o.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
    String::from_utf8_lossy(&out).into_owned()
}

fn challenge(req: &mut Request<'_>, realm: &str) -> Status {
    let realm = realm.replace('\\', "\\\\").replace('"', "\\\"");
    req.set_header("WWW-Authenticate", &format!("Basic realm=\"{realm}\""));
    Status::Http(401)
}

impl Plugin for AuthBasic {
    const NAME: &'static str = "auth_basic";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("auth_basic", H, 1, 1, |c, a, _| {
                c.realm = Some((a[0] != "off").then(|| Rc::new(Template::parse(a[0]))));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("auth_basic_user_file", H, 1, 1, |c, a, cx| {
                // Relative to the configuration's directory, as nginx (also
                // when the name comes from variables).
                let dir = cx.conf_path("x");
                let dir = dir.strip_suffix('x').unwrap_or(&dir).to_string();
                c.file = Some(Rc::new((Template::parse(a[0]), dir)));
                Ok(())
            }),
        ]
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.realm.is_none() {
            child.realm = parent.realm.clone();
        }
        if child.file.is_none() {
            child.file = parent.file.clone();
        }
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Access]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let (Some(Some(realm)), Some(file)) = (&conf.realm, &conf.file) else { return Status::Declined };
        let realm = render(req, realm);
        let Some((user, pw)) = req.header("Authorization").and_then(credentials) else {
            return challenge(req, &realm);
        };
        let mut path = render(req, &file.0);
        if path.is_empty() {
            log(sys::LOG_ERR, "auth_basic_user_file is empty");
            return Status::Http(500);
        }
        if !path.starts_with('/') {
            path.insert_str(0, &file.1);
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                log(sys::LOG_ERR, &format!("open() \"{path}\" failed ({e})"));
                return Status::Http(if e.kind() == std::io::ErrorKind::PermissionDenied { 403 } else { 500 });
            }
        };
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.starts_with('#') {
                continue;
            }
            let mut f = line.splitn(3, ':');
            let (Some(name), Some(stored)) = (f.next(), f.next()) else { continue };
            if name == user {
                if password_ok(&pw, stored) {
                    // Granted (`satisfy any` takes it).
                    return Status::Ok;
                }
                log(sys::LOG_ERR, &format!("user \"{user}\": password mismatch"));
                return challenge(req, &realm);
            }
        }
        log(sys::LOG_ERR, &format!("user \"{user}\" was not found in \"{path}\""));
        challenge(req, &realm)
    }
}

export_plugin!(AuthBasic);

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl passwd` and `openssl dgst -sha1` for "secret".
    #[test]
    fn password_formats() {
        assert!(password_ok(b"secret", "{PLAIN}secret"));
        assert!(password_ok(b"secret", "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="));
        assert!(password_ok(b"secret", "{SSHA}8bX4JQDfZqtTfvnQ4ssDmWb17/FTQUxU"));
        assert!(password_ok(b"secret", "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/"));
        assert!(password_ok(b"secret", "$1$abcdefgh$cHJi5PXp/ki/ktXzqlk6I1"));
        for stored in ["{PLAIN}secret", "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/", "$1$abcdefgh$cHJi5PXp/ki/ktXzqlk6I1"] {
            assert!(!password_ok(b"Secret", stored), "{stored}");
        }
    }

    #[test]
    fn system_crypt_formats() {
        // libcrypt is part of every Debian system (libcrypt1 is essential).
        assert!(system_crypt(b"x", "$6$abc").is_some(), "libcrypt not found");
        assert!(password_ok(b"secret", "$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM."));
        assert!(password_ok(b"secret", "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."));
        assert!(password_ok(b"secret", "abNANd1rDfiNc"));
        assert!(!password_ok(b"other", "abNANd1rDfiNc"));
    }

    #[test]
    fn authorization_header() {
        assert_eq!(credentials("Basic dXNlcjpwYTpzcw=="), Some(("user".into(), b"pa:ss".to_vec())));
        assert_eq!(credentials("basic dXNlcjo="), Some(("user".into(), Vec::new())));
        assert_eq!(credentials("Bearer abc"), None);
        assert_eq!(credentials("Basic !!!"), None);
    }
}
