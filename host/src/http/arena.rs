//! Request-lifetime memory handed to plugins (`http_alloc`, values of
//! computed variables): bump allocation in 1 KiB chunks, as nginx's
//! request pool. Nothing moves until the request ends; the first chunk is
//! kept for the connection's next request, so a keepalive connection's
//! requests allocate nothing here in steady state.

#![allow(unsafe_code)]

/// Size of a bump chunk; larger requests get their own block.
const CHUNK: usize = 1024;
/// Alignment of every allocation (what malloc gives C plugins).
const ALIGN: usize = 16;

/// A request's bump allocator.
#[derive(Default)]
pub struct Arena {
    blocks: Vec<Box<[u8]>>,
    /// Index of the chunk being bumped.
    cur: Option<usize>,
    /// Bytes used in that chunk.
    used: usize,
}

impl Arena {
    /// `n` bytes, 16-aligned, valid until `reset`; zeroed when `zero`.
    pub fn alloc(&mut self, n: usize, zero: bool) -> *mut u8 {
        let n = n.max(1);
        if n + ALIGN > CHUNK / 4 {
            let mut b = vec![0u8; n + ALIGN].into_boxed_slice();
            let p = align(b.as_mut_ptr());
            self.blocks.push(b);
            return p;
        }
        if let Some(p) = self.bump(n) {
            if zero {
                // SAFETY: bump() returned n bytes inside a live chunk.
                unsafe { std::ptr::write_bytes(p, 0, n) };
            }
            return p;
        }
        self.blocks.push(vec![0u8; CHUNK].into_boxed_slice());
        self.cur = Some(self.blocks.len() - 1);
        self.used = 0;
        // A fresh chunk (zeroed) always has room for a small block.
        self.bump(n).unwrap_or(std::ptr::null_mut())
    }

    /// A copy of `v` (valid until `reset`).
    pub fn copy(&mut self, v: &[u8]) -> *const u8 {
        let p = self.alloc(v.len(), false);
        // SAFETY: p has room for v.len() bytes and does not overlap v.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len()) };
        p
    }

    fn bump(&mut self, n: usize) -> Option<*mut u8> {
        let c = self.blocks.get_mut(self.cur?)?;
        let base = c.as_mut_ptr() as usize;
        let start = (base + self.used).next_multiple_of(ALIGN) - base;
        if start + n > c.len() {
            return None;
        }
        self.used = start + n;
        // SAFETY: start + n <= len: inside the chunk.
        Some(unsafe { c.as_mut_ptr().add(start) })
    }

    /// Frees everything but the current chunk, which is reused.
    pub fn reset(&mut self) {
        if let Some(i) = self.cur.take() {
            let keep = self.blocks.swap_remove(i);
            self.blocks.clear();
            self.blocks.push(keep);
            self.cur = Some(0);
        } else {
            self.blocks.clear();
        }
        self.used = 0;
    }
}

fn align(p: *mut u8) -> *mut u8 {
    let off = (p as usize).next_multiple_of(ALIGN) - p as usize;
    // SAFETY: callers allocated ALIGN spare bytes.
    unsafe { p.add(off) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_distinct_and_survive_until_reset() {
        let mut a = Arena::default();
        let mut seen = Vec::new();
        for n in [1, 7, 16, 100, 300, 5000, 3, 900] {
            let p = a.alloc(n, true);
            assert_eq!(p as usize % ALIGN, 0);
            // SAFETY: n bytes at p belong to the arena until reset.
            let s = unsafe { std::slice::from_raw_parts_mut(p, n) };
            assert!(s.iter().all(|&b| b == 0));
            s.fill(n as u8);
            seen.push((p, n));
        }
        for &(p, n) in &seen {
            // SAFETY: as above; nothing was reset.
            let s = unsafe { std::slice::from_raw_parts(p, n) };
            assert!(s.iter().all(|&b| b == n as u8), "block of {n} overwritten");
        }
        let c = a.copy(b"hello");
        // SAFETY: 5 bytes copied at c.
        assert_eq!(unsafe { std::slice::from_raw_parts(c, 5) }, b"hello");
        a.reset();
        assert_eq!(a.blocks.len(), 1, "one chunk kept for the next request");
        let p = a.alloc(8, true);
        // SAFETY: 8 fresh bytes; a reused chunk must be zeroed again.
        assert!(unsafe { std::slice::from_raw_parts(p, 8) }.iter().all(|&b| b == 0));
    }
}
