//! The flow table: which TCP connections and UDP sockets of the app are being carried, and
//! which one gives way when the table is full.
//!
//! Guarantees this module owns: the table never holds more than its cap; the flow ended to
//! make room is the least recently active one; a flow that ends removes only itself (a newer
//! flow that took its key stays).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// A TCP connection is its 4-tuple; UDP is per app socket (full cone: one socket talks to
/// any number of destinations through one session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowKey {
    Tcp { src: SocketAddr, dst: SocketAddr },
    Udp { src: SocketAddr },
}

/// One flow as its task and the table share it.
#[derive(Debug)]
pub struct Flow {
    id: u64,
    /// Milliseconds since the TUN started, of the last byte either way.
    last: AtomicU64,
    /// Cancelled to end the flow (eviction, stop).
    pub stop: CancellationToken,
}

impl Flow {
    pub fn touch(&self, now_ms: u64) {
        self.last.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

pub struct FlowTable {
    cap: usize,
    next_id: u64,
    flows: HashMap<FlowKey, Arc<Flow>>,
}

impl FlowTable {
    pub fn new(cap: usize) -> FlowTable {
        FlowTable {
            cap: cap.max(1),
            next_id: 0,
            flows: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    #[cfg(test)]
    pub fn get(&self, key: &FlowKey) -> Option<&Arc<Flow>> {
        self.flows.get(key)
    }

    /// Adds a flow for `key` (its stop token a child of `parent`) and returns it with the
    /// flows that had to give way: one that held the same key, and, when the table was
    /// full, the least recently active. The caller cancels what is returned.
    pub fn insert(
        &mut self,
        key: FlowKey,
        parent: &CancellationToken,
        now_ms: u64,
    ) -> (Arc<Flow>, Vec<Arc<Flow>>) {
        let mut out: Vec<Arc<Flow>> = self.flows.remove(&key).into_iter().collect();
        while self.flows.len() >= self.cap {
            let Some(k) = least_recent(self.flows.iter().map(|(k, f)| (*k, f.last()))) else {
                break;
            };
            out.extend(self.flows.remove(&k));
        }
        self.next_id += 1;
        let flow = Arc::new(Flow {
            id: self.next_id,
            last: AtomicU64::new(now_ms),
            stop: parent.child_token(),
        });
        self.flows.insert(key, flow.clone());
        (flow, out)
    }

    /// Removes `flow` if it still holds `key`.
    pub fn remove(&mut self, key: &FlowKey, flow: &Flow) {
        if self.flows.get(key).is_some_and(|f| f.id == flow.id) {
            self.flows.remove(key);
        }
    }

    /// A newer flow holds `key` (the app reused the connection's addresses): what is known
    /// under the key is that flow's now.
    pub fn superseded(&self, key: &FlowKey, flow: &Flow) -> bool {
        self.flows.get(key).is_some_and(|f| f.id != flow.id)
    }

    /// Every flow, emptying the table (on stop).
    pub fn drain(&mut self) -> Vec<Arc<Flow>> {
        self.flows.drain().map(|(_, f)| f).collect()
    }
}

/// The key quiet the longest (ties: any of them).
fn least_recent(flows: impl Iterator<Item = (FlowKey, u64)>) -> Option<FlowKey> {
    flows.min_by_key(|(_, last)| *last).map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(n: u16) -> FlowKey {
        FlowKey::Tcp {
            src: SocketAddr::from(([10, 0, 0, 2], n)),
            dst: SocketAddr::from(([10, 9, 0, 1], 80)),
        }
    }

    #[test]
    fn a_full_table_ends_the_least_recently_active_flow() {
        let root = CancellationToken::new();
        let mut t = FlowTable::new(3);
        let (a, _) = t.insert(tcp(1), &root, 0);
        let (b, _) = t.insert(tcp(2), &root, 10);
        let (c, out) = t.insert(tcp(3), &root, 20);
        assert!(out.is_empty());
        // `a` was opened first but moved bytes last: `b` is now the quietest.
        a.touch(30);
        c.touch(25);
        let (_d, out) = t.insert(FlowKey::Udp { src: tcp(9).src() }, &root, 40);
        assert_eq!(out.len(), 1);
        assert!(Arc::ptr_eq(&out[0], &b));
        assert_eq!(t.len(), 3);
        assert!(t.get(&tcp(2)).is_none() && t.get(&tcp(1)).is_some());
        // The table never grows past its cap.
        for n in 100..200 {
            t.insert(tcp(n), &root, 50 + n as u64);
            assert!(t.len() <= 3);
        }
    }

    #[test]
    fn a_flow_removes_only_itself_and_a_same_key_flow_replaces_the_old() {
        let root = CancellationToken::new();
        let mut t = FlowTable::new(8);
        let (old, _) = t.insert(tcp(1), &root, 0);
        let (new, out) = t.insert(tcp(1), &root, 5);
        assert_eq!(out.len(), 1);
        assert!(Arc::ptr_eq(&out[0], &old));
        // The old flow's task ends later: it must not remove the new one.
        assert!(t.superseded(&tcp(1), &old) && !t.superseded(&tcp(1), &new));
        t.remove(&tcp(1), &old);
        assert!(Arc::ptr_eq(t.get(&tcp(1)).unwrap(), &new));
        t.remove(&tcp(1), &new);
        assert!(t.is_empty());
        // An evicted flow (removed, not replaced) is not superseded.
        assert!(!t.superseded(&tcp(1), &new));
        // Stop tokens are children of the TUN's.
        let (f, _) = t.insert(tcp(2), &root, 0);
        root.cancel();
        assert!(f.stop.is_cancelled());
        assert_eq!(t.drain().len(), 1);
    }

    impl FlowKey {
        fn src(&self) -> SocketAddr {
            match self {
                FlowKey::Tcp { src, .. } | FlowKey::Udp { src } => *src,
            }
        }
    }
}
