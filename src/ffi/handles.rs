//! The handle registry: what an `xh_client *`, `xh_tunnel *`, `xh_udp *` or `xh_socks *`
//! really is.
//!
//! A handle is a pointer-sized integer, never an address: the library never dereferences
//! it. It packs, from the low bit up:
//!
//! | bits | meaning |
//! |---|---|
//! | 1 | always 1 (so a handle is never NULL and never an aligned pointer) |
//! | 3 | kind tag: 1 = client, 2 = tunnel, 3 = UDP session, 4 = SOCKS server |
//! | `INDEX_BITS` | slot index in that kind's registry |
//! | the rest | the slot's generation when the handle was issued |
//!
//! A slot's generation changes every time its value is removed, so a freed handle (and any
//! copy of it) stops resolving even after the slot is reused; a handle of another kind,
//! a forged integer or a real pointer fail the tag, index or generation check.
//!
//! Freed slots are reused oldest first, and only once `QUARANTINE` of them wait, so an
//! app that opens and frees one tunnel at a time spreads its handles over many slots
//! instead of wearing out one. A slot's generation wraps after its whole space (2^36 uses
//! on 64-bit targets, 2^16 on 32-bit ones, which have 4096 indices per kind): a stale
//! handle could only alias a new one after the app opened and freed some 2.6×10^8 handles
//! (32-bit; 10^18 on 64-bit) while holding on to it. Retiring spent slots instead would
//! make that impossible but would run a 32-bit VPN out of handles after as many.
//!
//! When the last live handle of a kind is freed, its registry lets go of all its memory
//! (an idle library holds no heap, so unloading it leaves none behind); slots made later
//! start at a generation no handle of their index ever had, so old handles stay dead.
//!
//! Slots hold `Arc`s: a call looks its value up, clones the `Arc` and lets the lock go
//! before doing anything, so a free on another thread never pulls a value out from under a
//! running call (that call keeps its own reference and sees the closed state instead).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

const MARK_BITS: u32 = 1;
const TAG_BITS: u32 = 3;
const INDEX_BITS: u32 = if usize::BITS >= 64 { 24 } else { 12 };
const GEN_BITS: u32 = usize::BITS - MARK_BITS - TAG_BITS - INDEX_BITS;
const INDEX_SHIFT: u32 = MARK_BITS + TAG_BITS;
const GEN_SHIFT: u32 = INDEX_SHIFT + INDEX_BITS;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
const GEN_MASK: usize = (1 << GEN_BITS) - 1;
const TAG_MASK: usize = (1 << TAG_BITS) - 1;
/// Freed slots that wait before one is reused (see the module comment).
const QUARANTINE: usize = if usize::BITS >= 64 { 1024 } else { 256 };

/// The kind of object a handle names (its tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Client = 1,
    Tunnel = 2,
    Udp = 3,
    Socks = 4,
    Tun = 5,
}

impl Kind {
    fn from_tag(tag: usize) -> Option<Kind> {
        match tag {
            1 => Some(Kind::Client),
            2 => Some(Kind::Tunnel),
            3 => Some(Kind::Udp),
            4 => Some(Kind::Socks),
            5 => Some(Kind::Tun),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Tunnel => "tunnel",
            Kind::Udp => "UDP session",
            Kind::Socks => "SOCKS server",
            Kind::Tun => "TUN",
        }
    }
}

/// Why a handle did not resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadHandle {
    /// The pointer was NULL.
    Null,
    /// A valid handle of another kind (a tunnel passed as a client, …).
    WrongKind(Kind),
    /// Not a handle this library issued, or one already freed.
    Unknown,
}

struct Slot<T> {
    generation: usize,
    value: Option<Arc<T>>,
}

struct Slots<T> {
    slots: Vec<Slot<T>>,
    /// Freed slots, oldest first.
    free: VecDeque<usize>,
    /// The generation a new slot starts at (above every one issued before an emptying).
    first_generation: usize,
}

/// One kind's registry. Lives in a `static`.
pub(crate) struct Registry<T> {
    kind: Kind,
    /// The last generation a slot may carry, and the free slots kept back before reuse
    /// (constants outside tests).
    last_generation: usize,
    quarantine: usize,
    inner: Mutex<Slots<T>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(kind: Kind) -> Registry<T> {
        Registry::with_limits(kind, GEN_MASK, QUARANTINE)
    }

    const fn with_limits(kind: Kind, last_generation: usize, quarantine: usize) -> Registry<T> {
        Registry {
            kind,
            last_generation,
            quarantine,
            inner: Mutex::new(Slots {
                slots: Vec::new(),
                free: VecDeque::new(),
                first_generation: 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        // Nothing panics while holding this lock; recover anyway rather than poison the ABI.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn encode(&self, index: usize, generation: usize) -> usize {
        1 | ((self.kind as usize) << MARK_BITS)
            | (index << INDEX_SHIFT)
            | ((generation & GEN_MASK) << GEN_SHIFT)
    }

    /// Checks everything a handle can say without the lock; returns its index and generation.
    fn decode(&self, handle: usize) -> Result<(usize, usize), BadHandle> {
        if handle == 0 {
            return Err(BadHandle::Null);
        }
        if handle & 1 == 0 {
            return Err(BadHandle::Unknown);
        }
        match Kind::from_tag((handle >> MARK_BITS) & TAG_MASK) {
            Some(k) if k == self.kind => {}
            Some(k) => return Err(BadHandle::WrongKind(k)),
            None => return Err(BadHandle::Unknown),
        }
        Ok(((handle >> INDEX_SHIFT) & INDEX_MASK, handle >> GEN_SHIFT))
    }

    /// Stores `value` and returns its new handle, or `None` when every index is in use.
    pub(crate) fn insert(&self, value: Arc<T>) -> Option<usize> {
        let mut s = self.lock();
        let room = s.slots.len() <= INDEX_MASK;
        let index = if room && s.free.len() <= self.quarantine {
            let generation = s.first_generation;
            s.slots.push(Slot {
                generation,
                value: None,
            });
            s.slots.len() - 1
        } else {
            s.free.pop_front()?
        };
        let slot = &mut s.slots[index];
        slot.value = Some(value);
        Some(self.encode(index, slot.generation))
    }

    /// The value `handle` names, if it is a live handle of this registry's kind.
    pub(crate) fn get(&self, handle: usize) -> Result<Arc<T>, BadHandle> {
        let (index, generation) = self.decode(handle)?;
        let s = self.lock();
        match s.slots.get(index) {
            Some(Slot {
                generation: g,
                value: Some(v),
            }) if *g == generation => Ok(v.clone()),
            _ => Err(BadHandle::Unknown),
        }
    }

    /// Takes the value out: `handle` and every copy of it stop resolving. The caller drops
    /// the returned `Arc` after the lock is gone (dropping may close sockets or join threads).
    pub(crate) fn remove(&self, handle: usize) -> Result<Arc<T>, BadHandle> {
        let (index, generation) = self.decode(handle)?;
        let mut s = self.lock();
        let value = match s.slots.get_mut(index) {
            Some(slot) if slot.generation == generation && slot.value.is_some() => {
                // Wraps to 1, not 0: 0 is as good as any, but keeping it unissued tells
                // "never issued" and "wrapped" apart when debugging.
                slot.generation = if slot.generation >= self.last_generation {
                    1
                } else {
                    slot.generation + 1
                };
                slot.value.take()
            }
            _ => None,
        };
        match value {
            Some(v) => {
                s.free.push_back(index);
                if s.free.len() == s.slots.len() {
                    // Each slot's generation is already past the last one it issued.
                    s.first_generation = s.slots.iter().map(|x| x.generation).max().unwrap_or(1);
                    s.slots = Vec::new();
                    s.free = VecDeque::new();
                }
                Ok(v)
            }
            None => Err(BadHandle::Unknown),
        }
    }

    /// How many handles of this kind are live (for tests and leak checks).
    pub(crate) fn len(&self) -> usize {
        let s = self.lock();
        s.slots.len() - s.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_die_on_remove() {
        let r: Registry<u32> = Registry::new(Kind::Client);
        let h = r.insert(Arc::new(7)).unwrap();
        assert_eq!(h & 1, 1);
        assert_eq!(*r.get(h).unwrap(), 7);
        assert_eq!(*r.remove(h).unwrap(), 7);
        assert_eq!(r.get(h), Err(BadHandle::Unknown));
        assert_eq!(r.remove(h), Err(BadHandle::Unknown));
        // The slot is reused with a new generation: the old handle stays dead.
        let h2 = r.insert(Arc::new(8)).unwrap();
        assert_ne!(h, h2);
        assert_eq!(r.get(h), Err(BadHandle::Unknown));
        assert_eq!(*r.get(h2).unwrap(), 8);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn wrong_kind_null_and_forged_handles_are_refused() {
        let clients: Registry<u32> = Registry::new(Kind::Client);
        let tunnels: Registry<u32> = Registry::new(Kind::Tunnel);
        let t = tunnels.insert(Arc::new(1)).unwrap();
        assert_eq!(clients.get(t), Err(BadHandle::WrongKind(Kind::Tunnel)));
        assert_eq!(clients.remove(t), Err(BadHandle::WrongKind(Kind::Tunnel)));
        assert_eq!(clients.get(0), Err(BadHandle::Null));
        let on_stack = 5u64;
        assert_eq!(
            clients.get(&on_stack as *const u64 as usize),
            Err(BadHandle::Unknown)
        );
        for forged in [1usize, 3, 0x1234_5671, usize::MAX] {
            assert!(clients.get(forged).is_err(), "{forged:#x}");
        }
        assert_eq!(*tunnels.get(t).unwrap(), 1);
    }

    #[test]
    fn old_handles_stay_dead_through_many_reuses() {
        let r: Registry<u32> = Registry::new(Kind::Tunnel);
        let first = r.insert(Arc::new(0)).unwrap();
        r.remove(first).unwrap();
        let mut seen = std::collections::HashSet::from([first]);
        for i in 1..5000 {
            let h = r.insert(Arc::new(i)).unwrap();
            assert!(seen.insert(h), "handle {h:#x} issued twice");
            assert_eq!(r.get(first), Err(BadHandle::Unknown));
            r.remove(h).unwrap();
        }
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn freed_slots_wait_in_quarantine_and_are_reused_oldest_first() {
        let r: Registry<u32> = Registry::with_limits(Kind::Tunnel, GEN_MASK, 2);
        let index = |h: usize| (h >> INDEX_SHIFT) & INDEX_MASK;
        // One handle stays live throughout, so the registry never empties.
        let _keep = r.insert(Arc::new(100)).unwrap();
        let hs: Vec<usize> = (0..4).map(|i| r.insert(Arc::new(i)).unwrap()).collect();
        for &h in &hs {
            r.remove(h).unwrap();
        }
        // Four wait, more than the quarantine of two: reuse starts with the oldest.
        assert_eq!(index(r.insert(Arc::new(9)).unwrap()), index(hs[0]));
        assert_eq!(index(r.insert(Arc::new(9)).unwrap()), index(hs[1]));
        // Now only two wait: a new slot is cheaper than shortening the quarantine.
        assert_eq!(index(r.insert(Arc::new(9)).unwrap()), 5);
    }

    #[test]
    fn an_emptied_registry_holds_no_memory_and_old_handles_stay_dead() {
        let r: Registry<u32> = Registry::new(Kind::Client);
        let old: Vec<usize> = (0..3000).map(|i| r.insert(Arc::new(i)).unwrap()).collect();
        for &h in &old[1..] {
            r.remove(h).unwrap();
        }
        assert!(r.lock().slots.capacity() >= 3000);
        r.remove(old[0]).unwrap();
        {
            let s = r.lock();
            assert_eq!((s.slots.capacity(), s.free.capacity()), (0, 0));
        }
        let new: Vec<usize> = (0..3000).map(|i| r.insert(Arc::new(i)).unwrap()).collect();
        for &h in &old {
            assert_eq!(r.get(h), Err(BadHandle::Unknown));
            assert!(!new.contains(&h), "handle {h:#x} issued again");
        }
        assert_eq!(r.len(), 3000);
    }

    #[test]
    fn a_slot_wraps_its_generation_only_after_its_whole_space() {
        // Three generations per slot, no quarantine: slot 0 serves handles with
        // generations 1, 2, 3, then 1 again, and never runs out.
        let r: Registry<u32> = Registry::with_limits(Kind::Client, 3, 0);
        let mut issued = Vec::new();
        for i in 0..7 {
            let h = r.insert(Arc::new(i)).unwrap();
            issued.push(h);
            r.remove(h).unwrap();
        }
        let index = |h: usize| (h >> INDEX_SHIFT) & INDEX_MASK;
        let generation = |h: usize| h >> GEN_SHIFT;
        assert!(issued.iter().all(|&h| index(h) == 0));
        let gens: Vec<usize> = issued.iter().map(|&h| generation(h)).collect();
        assert_eq!(gens, [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(r.len(), 0);
    }
}
