//! The handle registry: what an `xh_client *` or `xh_tunnel *` really is.
//!
//! A handle is a pointer-sized integer, never an address: the library never dereferences
//! it. It packs, from the low bit up:
//!
//! | bits | meaning |
//! |---|---|
//! | 1 | always 1 (so a handle is never NULL and never an aligned pointer) |
//! | 2 | kind tag: 1 = client, 2 = tunnel |
//! | `INDEX_BITS` | slot index in that kind's registry |
//! | the rest | the slot's generation when the handle was issued |
//!
//! A slot's generation changes every time its value is removed, so a freed handle (and any
//! copy of it) stops resolving even after the slot is reused; a handle of the other kind,
//! a forged integer or a real pointer fail the tag, index or generation check. On 64-bit
//! targets a generation would need 2^37 reuses of one slot to repeat; on 32-bit targets
//! (4096 live handles per kind) 2^17.
//!
//! Slots hold `Arc`s: a call looks its value up, clones the `Arc` and lets the lock go
//! before doing anything, so a free on another thread never pulls a value out from under a
//! running call (that call keeps its own reference and sees the closed state instead).

use std::sync::{Arc, Mutex, MutexGuard};

const MARK_BITS: u32 = 1;
const TAG_BITS: u32 = 2;
const INDEX_BITS: u32 = if usize::BITS >= 64 { 24 } else { 12 };
const GEN_BITS: u32 = usize::BITS - MARK_BITS - TAG_BITS - INDEX_BITS;
const INDEX_SHIFT: u32 = MARK_BITS + TAG_BITS;
const GEN_SHIFT: u32 = INDEX_SHIFT + INDEX_BITS;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
const GEN_MASK: usize = (1 << GEN_BITS) - 1;
const TAG_MASK: usize = (1 << TAG_BITS) - 1;

/// The kind of object a handle names (its tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Client = 1,
    Tunnel = 2,
}

impl Kind {
    fn from_tag(tag: usize) -> Option<Kind> {
        match tag {
            1 => Some(Kind::Client),
            2 => Some(Kind::Tunnel),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Tunnel => "tunnel",
        }
    }
}

/// Why a handle did not resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadHandle {
    /// The pointer was NULL.
    Null,
    /// A valid handle of the other kind (a tunnel passed as a client, or the reverse).
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
    free: Vec<usize>,
}

/// One kind's registry. Lives in a `static`.
pub(crate) struct Registry<T> {
    kind: Kind,
    inner: Mutex<Slots<T>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(kind: Kind) -> Registry<T> {
        Registry {
            kind,
            inner: Mutex::new(Slots {
                slots: Vec::new(),
                free: Vec::new(),
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
        let index = match s.free.pop() {
            Some(i) => i,
            None => {
                let i = s.slots.len();
                if i > INDEX_MASK {
                    return None;
                }
                s.slots.push(Slot {
                    generation: 1,
                    value: None,
                });
                i
            }
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
                // Never hand out generation 0 again after a wrap; 0 is as good as any other,
                // but skipping it keeps "never issued" and "wrapped" apart when debugging.
                slot.generation = match (slot.generation + 1) & GEN_MASK {
                    0 => 1,
                    g => g,
                };
                slot.value.take()
            }
            _ => None,
        };
        match value {
            Some(v) => {
                s.free.push(index);
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
    fn generations_wrap_without_reviving_old_handles() {
        let r: Registry<u32> = Registry::new(Kind::Tunnel);
        let first = r.insert(Arc::new(0)).unwrap();
        r.remove(first).unwrap();
        for i in 1..1000 {
            let h = r.insert(Arc::new(i)).unwrap();
            assert_eq!(r.get(first), Err(BadHandle::Unknown));
            r.remove(h).unwrap();
        }
        assert_eq!(r.len(), 0);
    }
}
