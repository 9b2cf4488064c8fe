//! A fast hash (FxHash: a word at a time, multiply and rotate) for maps
//! whose keys are configuration or paths of files that exist (MIME types
//! by extension, an open-file cache), where SipHash's resistance to
//! chosen-key flooding buys nothing and costs ~2x on every lookup. Not for
//! keys a client chooses.

use std::hash::{BuildHasherDefault, Hasher};

/// The hasher.
#[derive(Default)]
pub struct Fx(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Fx {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        let mut tail = 0u64;
        for (i, &b) in chunks.remainder().iter().enumerate() {
            tail |= u64::from(b) << (8 * i);
        }
        self.add(tail ^ (bytes.len() as u64) << 56);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`Fx`].
pub type Map<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<Fx>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_hash_apart() {
        let h = |s: &str| {
            let mut f = Fx::default();
            f.write(s.as_bytes());
            f.finish()
        };
        // Lengths and tails that differ, including zero bytes.
        let keys = ["", "a", "a\0", "ab", "/html/13b.txt", "/html/13b.txu", "/html/13b.txt\0", "12345678", "123456789"];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(h(a), h(b), "{a:?} {b:?}");
            }
        }
        let mut m: Map<String, u32> = Map::default();
        m.insert("/a".into(), 1);
        assert_eq!(m.get("/a"), Some(&1));
    }
}
