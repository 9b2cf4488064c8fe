//! Shared memory zones: named regions created in the master at config
//! time, inherited by every worker through fork, and kept across reload
//! when the same plugin asks for the same name, size and layout version.
//!
//! A zone is an anonymous `MAP_SHARED` mapping. Its first 64 bytes are the
//! host's header (the cross-process lock); plugins see the rest. The lock is
//! a spin-then-yield lock on an atomic word holding the owner's pid; a
//! waiter that finds the owner dead takes the lock over, so a crashed worker
//! cannot wedge the zone.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};

const HEADER: usize = 64;

/// One mapped zone.
pub struct Zone {
    /// (plugin, zone name, size, layout version): the identity kept across reload.
    pub key: (String, String, u64, u32),
    base: *mut u8,
    total: usize,
    /// Created by the generation being configured (not inherited).
    pub is_new: Cell<bool>,
    used_gen: Cell<u64>,
}

impl Zone {
    /// The plugin-visible memory.
    pub fn user(&self) -> (*mut u8, u64) {
        // SAFETY: base..base+total is our mapping; HEADER < total.
        (unsafe { self.base.add(HEADER) }, (self.total - HEADER) as u64)
    }

    fn lock_word(&self) -> &AtomicI32 {
        // SAFETY: the header starts with a 4-byte-aligned i32 (page-aligned
        // mapping) that only this module touches, always atomically.
        unsafe { &*(self.base as *const AtomicI32) }
    }

    /// Takes the cross-process lock.
    pub fn lock(&self) {
        let me = crate::sys::pid();
        let w = self.lock_word();
        let mut spins = 0u32;
        loop {
            let cur = w.load(Ordering::Relaxed);
            if (cur == 0 || (spins > 1000 && !owner_alive(cur)))
                && w.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Releases the lock (only if this process holds it).
    pub fn unlock(&self) {
        let _ = self.lock_word().compare_exchange(crate::sys::pid(), 0, Ordering::Release, Ordering::Relaxed);
    }
}

fn owner_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
}

impl Drop for Zone {
    fn drop(&mut self) {
        // SAFETY: base/total describe our own mapping, unmapped once.
        unsafe {
            libc::munmap(self.base.cast(), self.total);
        }
    }
}

thread_local! {
    static ZONES: RefCell<Vec<Rc<Zone>>> = const { RefCell::new(Vec::new()) };
    static GEN: Cell<u64> = const { Cell::new(0) };
}

/// Starts configuring a new generation.
pub fn begin_generation() -> u64 {
    GEN.with(|g| {
        g.set(g.get() + 1);
        g.get()
    })
}

/// After a generation was accepted: unmap zones it no longer uses (old
/// workers keep their own inherited mappings until they exit).
pub fn retain_generation(gen: u64) {
    ZONES.with(|z| z.borrow_mut().retain(|zone| zone.used_gen.get() == gen));
}

/// Finds or creates a zone for the generation being configured.
pub fn zone(plugin: &str, name: &str, size: u64, version: u32) -> Result<Rc<Zone>, String> {
    if !(4096..=(1 << 40)).contains(&size) {
        return Err(format!("zone \"{name}\" is too small or too large ({size} bytes; at least 4k)"));
    }
    let gen = GEN.with(Cell::get);
    let key = (plugin.to_string(), name.to_string(), size, version);
    if let Some(z) = ZONES.with(|z| z.borrow().iter().find(|x| x.key == key).cloned()) {
        if z.used_gen.get() == gen {
            return Err(format!("zone \"{name}\" is already declared"));
        }
        z.is_new.set(false);
        z.used_gen.set(gen);
        return Ok(z);
    }
    let total = size as usize + HEADER;
    // SAFETY: an anonymous shared mapping with no address hint; checked below.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), total, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap(MAP_ANON|MAP_SHARED, {total}) failed ({})", std::io::Error::last_os_error()));
    }
    let z = Rc::new(Zone { key, base: p.cast(), total, is_new: Cell::new(true), used_gen: Cell::new(gen) });
    ZONES.with(|zs| zs.borrow_mut().push(z.clone()));
    Ok(z)
}
