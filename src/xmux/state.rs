//! XMUX selection and accounting as a pure state machine (protocol doc §5.2–§5.4): no
//! sockets and no clock of its own, so every rule is unit-tested exactly.
//!
//! Exactness by construction: a running slot is taken under the same borrow that picks the
//! connection, and released through [`XmuxState::release`] only (the async layer's slot
//! guard calls it exactly once). A connection that must not be picked again is *retired*;
//! a retired connection is handed back for closing the moment nothing runs on it.
//!
//! One deliberate difference from Xray: when `maxConnections` caps the pool and every
//! connection is out of request streams (the server's MAX_STREAMS, 100 on quic-go), Xray's
//! client waits for a stream, so a VPN stalls past about 300 flows. Here the pool dials an
//! *overflow* connection instead (at most [`MAX_OVERFLOW`] of them), picked only while the
//! capped ones are full and closed as soon as nothing runs on it, so at rest the pool holds
//! `maxConnections` again.

use super::settings::XmuxSettings;
use rand::Rng;
use std::time::{Duration, Instant};

pub type ConnId = u64;

/// Overflow connections a capped pool may hold beyond `maxConnections`: with quic-go's 100
/// streams each, room for about 1,900 streams at the default cap of 3, and a bound on what a
/// server with a tiny stream limit can make the client dial.
pub const MAX_OVERFLOW: usize = 16;

#[derive(Clone, Debug)]
struct Entry {
    id: ConnId,
    /// Picks left; -1 = unlimited. The creating pick already counted.
    left_usage: i64,
    /// Requests left; `i64::MAX` = unlimited.
    left_requests: i64,
    unreusable_at: Option<Instant>,
    running: u32,
    charged: u64,
    broken: bool,
    retired: bool,
    /// A request had to wait for a stream: the server's stream limit (MAX_STREAMS) is
    /// reached. Cleared when a request gets a stream at once or a tunnel that had its
    /// streams ends (not when an open that found none gives up: that frees nothing).
    saturated: bool,
    /// Dialled past `maxConnections` because every capped connection was out of streams:
    /// picked only while those are, closed once nothing runs on it.
    overflow: bool,
}

impl Entry {
    fn spent(&self, now: Instant) -> bool {
        self.broken
            || self.left_usage == 0
            || self.left_requests <= 0
            || self.unreusable_at.is_some_and(|t| now > t)
    }
}

/// What `acquire` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Use this existing connection.
    Reuse(ConnId),
    /// Dial a new connection for this (already registered) id.
    Create(ConnId),
}

impl Choice {
    pub fn id(self) -> ConnId {
        match self {
            Choice::Reuse(id) | Choice::Create(id) => id,
        }
    }
}

/// One connection as seen from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnStats {
    pub id: ConnId,
    pub running: u32,
    pub requests: u64,
    pub retired: bool,
    /// Dialled past `maxConnections` (see the module doc).
    pub overflow: bool,
}

#[derive(Debug)]
pub struct XmuxState {
    settings: XmuxSettings,
    max_concurrency: i64,
    max_connections: i64,
    entries: Vec<Entry>,
    next_id: ConnId,
    /// The last `acquire` could only pick a connection out of streams.
    picked_saturated: bool,
}

impl XmuxState {
    /// `maxConcurrency` and `maxConnections` are drawn once per pool, like Xray.
    pub fn new<R: Rng + ?Sized>(settings: XmuxSettings, rng: &mut R) -> Self {
        XmuxState {
            max_concurrency: settings.max_concurrency.draw(rng),
            max_connections: settings.max_connections.draw(rng),
            settings,
            entries: Vec::new(),
            next_id: 1,
            picked_saturated: false,
        }
    }

    /// Picks the connection for a new tunnel (or a packet-up switch) and takes a running
    /// slot on it. Also returns connections retired by this call that are idle: close them.
    pub fn acquire<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> (Choice, Vec<ConnId>) {
        let to_close = self.sweep(now);
        let active: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !self.entries[i].retired)
            .collect();
        let capped = self.max_connections > 0;
        let overflows = active.iter().filter(|&&i| self.entries[i].overflow).count();
        let base = active.len() - overflows;
        let create = active.is_empty() || (capped && (base as i64) < self.max_connections);
        let candidates: Vec<usize> = if self.max_concurrency > 0 {
            active
                .into_iter()
                .filter(|&i| (self.entries[i].running as i64) < self.max_concurrency)
                .collect()
        } else {
            active
        };
        // Connections out of streams are skipped. The capped ones come first; overflow ones
        // only take what those cannot, so they drain and close.
        let fresh: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| !self.entries[i].saturated)
            .collect();
        let fresh_base: Vec<usize> = fresh
            .iter()
            .copied()
            .filter(|&i| !self.entries[i].overflow)
            .collect();
        let overflow_room = overflows < MAX_OVERFLOW;
        self.picked_saturated = false;
        let choice = if create || candidates.is_empty() || (fresh.is_empty() && !capped) {
            Choice::Create(self.create(now, rng, false))
        } else if fresh.is_empty() && overflow_room {
            Choice::Create(self.create(now, rng, true))
        } else {
            // With every allowed connection out of streams, the tunnel waits on one of them.
            let pool = [&fresh_base, &fresh]
                .into_iter()
                .find(|p| !p.is_empty())
                .unwrap_or(&candidates);
            let i = pool[rng.random_range(0..pool.len())];
            self.picked_saturated = fresh.is_empty();
            let e = &mut self.entries[i];
            if e.left_usage > 0 {
                e.left_usage -= 1;
            }
            e.running += 1;
            Choice::Reuse(e.id)
        };
        (choice, to_close)
    }

    fn create<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R, overflow: bool) -> ConnId {
        let s = &self.settings;
        let reuse = s.c_max_reuse_times.draw(rng);
        let requests = s.h_max_request_times.draw(rng);
        let secs = s.h_max_reusable_secs.draw(rng);
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push(Entry {
            id,
            left_usage: if reuse > 0 { reuse - 1 } else { -1 },
            left_requests: if requests > 0 { requests } else { i64::MAX },
            // No representable instant that far ahead means "never".
            unreusable_at: (secs > 0)
                .then(|| now.checked_add(Duration::from_secs(secs as u64)))
                .flatten(),
            running: 1,
            charged: 0,
            broken: false,
            retired: false,
            saturated: false,
            overflow,
        });
        id
    }

    /// Retires every spent connection; returns the retired ones that are idle, removed.
    pub fn sweep(&mut self, now: Instant) -> Vec<ConnId> {
        for e in &mut self.entries {
            if e.spent(now) {
                e.retired = true;
            }
        }
        let (closing, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.retired && e.running == 0);
        self.entries = keep;
        closing.into_iter().map(|e| e.id).collect()
    }

    /// Gives back one running slot. Returns the id if the connection is now retired and
    /// idle, i.e. must be closed. Unknown ids (already closed) are ignored.
    pub fn release(&mut self, id: ConnId, now: Instant) -> Option<ConnId> {
        let e = self.entries.iter_mut().find(|e| e.id == id)?;
        e.running = e.running.saturating_sub(1);
        if e.running == 0 && (e.retired || e.overflow || e.spent(now)) {
            self.entries.retain(|e| e.id != id);
            return Some(id);
        }
        None
    }

    /// Whether a request on `id` had to wait for a stream (`true`) or got one at once.
    pub fn set_saturated(&mut self, id: ConnId, saturated: bool) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.saturated = saturated;
        }
    }

    /// Whether the last [`acquire`](Self::acquire) had only connections out of streams to
    /// pick from (and no rule allowing another): the tunnel must wait for a stream there.
    pub fn picked_saturated(&self) -> bool {
        self.picked_saturated
    }

    /// Charges one HTTP request to the connection that carries it.
    pub fn charge(&mut self, id: ConnId) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.left_requests = e.left_requests.saturating_sub(1);
            e.charged += 1;
        }
    }

    /// Whether a packet-up upload on `id` must move before its next POST: the request
    /// budget is used up, the reusable time is over, or the connection broke.
    pub fn needs_switch(&self, id: ConnId, now: Instant) -> bool {
        self.entries.iter().find(|e| e.id == id).is_none_or(|e| {
            e.broken || e.left_requests <= 0 || e.unreusable_at.is_some_and(|t| now > t)
        })
    }

    /// A transport failure (or a failed dial): never pick it again. Returns the id if it is
    /// idle and must be closed now.
    pub fn mark_broken(&mut self, id: ConnId) -> Option<ConnId> {
        let e = self.entries.iter_mut().find(|e| e.id == id)?;
        e.broken = true;
        e.retired = true;
        if e.running == 0 {
            self.entries.retain(|e| e.id != id);
            return Some(id);
        }
        None
    }

    /// Every connection the pool still tracks (active and draining).
    pub fn stats(&self) -> Vec<ConnStats> {
        self.entries
            .iter()
            .map(|e| ConnStats {
                id: e.id,
                running: e.running,
                requests: e.charged,
                retired: e.retired,
                overflow: e.overflow,
            })
            .collect()
    }

    /// Total running slots (zero once every tunnel has ended).
    pub fn running(&self) -> u64 {
        self.entries.iter().map(|e| e.running as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xhttp::range::Range;

    fn state(s: XmuxSettings) -> XmuxState {
        XmuxState::new(s, &mut rand::rng())
    }

    fn pick(st: &mut XmuxState, now: Instant) -> Choice {
        st.acquire(now, &mut rand::rng()).0
    }

    #[test]
    fn unlimited_pool_reuses_one_connection() {
        let mut st = state(XmuxSettings::default());
        let now = Instant::now();
        let a = pick(&mut st, now);
        assert!(matches!(a, Choice::Create(_)));
        for _ in 0..50 {
            assert_eq!(pick(&mut st, now), Choice::Reuse(a.id()));
        }
        assert_eq!(st.running(), 51);
    }

    #[test]
    fn max_concurrency_opens_a_connection_per_n_tunnels() {
        let mut st = state(XmuxSettings {
            max_concurrency: Range::fixed(2),
            ..Default::default()
        });
        let now = Instant::now();
        let ids: Vec<ConnId> = (0..10).map(|_| pick(&mut st, now).id()).collect();
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 5);
        assert!(st.stats().iter().all(|c| c.running == 2));
        // A freed slot is reused before any new connection.
        assert_eq!(st.release(ids[0], now), None);
        assert_eq!(pick(&mut st, now), Choice::Reuse(ids[0]));
    }

    #[test]
    fn max_connections_fills_then_reuses() {
        let mut st = state(XmuxSettings {
            max_connections: Range::fixed(3),
            ..Default::default()
        });
        let now = Instant::now();
        let picks: Vec<Choice> = (0..30).map(|_| pick(&mut st, now)).collect();
        assert_eq!(
            picks
                .iter()
                .filter(|c| matches!(c, Choice::Create(_)))
                .count(),
            3
        );
        assert!(picks[..3].iter().all(|c| matches!(c, Choice::Create(_))));
        assert_eq!(st.stats().len(), 3);
        assert_eq!(st.running(), 30);
    }

    #[test]
    fn c_max_reuse_times_counts_the_creating_pick() {
        let mut st = state(XmuxSettings {
            c_max_reuse_times: Range::fixed(2),
            ..Default::default()
        });
        let now = Instant::now();
        let a = pick(&mut st, now);
        assert_eq!(pick(&mut st, now), Choice::Reuse(a.id()));
        let c = pick(&mut st, now);
        assert!(matches!(c, Choice::Create(id) if id != a.id()), "{c:?}");
        // The spent connection drains, then is handed back for closing.
        assert!(st.stats().iter().any(|s| s.id == a.id() && s.retired));
        assert_eq!(st.release(a.id(), now), None);
        assert_eq!(st.release(a.id(), now), Some(a.id()));
        assert!(st.stats().iter().all(|s| s.id != a.id()));
    }

    #[test]
    fn request_budget_retires_and_switch_is_signalled() {
        let mut st = state(XmuxSettings {
            h_max_request_times: Range::fixed(4),
            ..Default::default()
        });
        let now = Instant::now();
        let a = pick(&mut st, now).id();
        for _ in 0..3 {
            st.charge(a);
            assert!(!st.needs_switch(a, now));
        }
        st.charge(a);
        assert!(st.needs_switch(a, now));
        // The next pick retires it (still running, so not closed yet) and creates another.
        let (b, closed) = st.acquire(now, &mut rand::rng());
        assert!(matches!(b, Choice::Create(id) if id != a));
        assert!(closed.is_empty());
        st.charge(b.id());
        let stats = st.stats();
        assert_eq!(stats.iter().find(|s| s.id == a).unwrap().requests, 4);
        assert_eq!(stats.iter().find(|s| s.id == b.id()).unwrap().requests, 1);
        assert_eq!(st.release(a, now), Some(a));
    }

    #[test]
    fn reusable_time_stops_picks_and_closes_idle() {
        let mut st = state(XmuxSettings {
            h_max_reusable_secs: Range::fixed(2),
            ..Default::default()
        });
        let t0 = Instant::now();
        let a = pick(&mut st, t0).id();
        assert_eq!(pick(&mut st, t0 + Duration::from_secs(1)), Choice::Reuse(a));
        assert!(st.needs_switch(a, t0 + Duration::from_secs(3)));
        let later = t0 + Duration::from_secs(3);
        let b = pick(&mut st, later);
        assert!(matches!(b, Choice::Create(id) if id != a));
        assert_eq!(st.release(a, later), None);
        assert_eq!(st.release(a, later), Some(a));
        // An idle connection past its time is closed by a sweep, with no pick needed.
        assert_eq!(st.release(b.id(), later), None);
        assert_eq!(st.sweep(later + Duration::from_secs(5)), vec![b.id()]);
        assert!(st.stats().is_empty());
    }

    #[test]
    fn broken_connections_are_never_picked_again() {
        let mut st = state(XmuxSettings {
            max_connections: Range::fixed(1),
            ..Default::default()
        });
        let now = Instant::now();
        let a = pick(&mut st, now).id();
        assert_eq!(st.mark_broken(a), None, "still running: not closed yet");
        let b = pick(&mut st, now);
        assert!(matches!(b, Choice::Create(id) if id != a));
        assert_eq!(pick(&mut st, now), Choice::Reuse(b.id()));
        assert_eq!(st.release(a, now), Some(a));
        // Releasing an id that is gone is a no-op, never an underflow.
        assert_eq!(st.release(a, now), None);
        assert_eq!(st.running(), 2);
    }

    #[test]
    fn combined_fields_and_ranges() {
        // maxConcurrency drawn once per pool from [2, 4): every connection gets the same cap.
        let mut st = state(XmuxSettings {
            max_concurrency: Range::new(2, 4),
            c_max_reuse_times: Range::fixed(3),
            h_max_request_times: Range::new(10, 12),
            ..Default::default()
        });
        let cap = st.max_concurrency;
        assert!((2..4).contains(&cap));
        let now = Instant::now();
        let ids: Vec<ConnId> = (0..12).map(|_| pick(&mut st, now).id()).collect();
        // cMaxReuseTimes 3 with cap ≥ 2: at most min(cap, 3) tunnels per connection.
        for s in st.stats() {
            assert!(s.running as i64 <= cap.min(3));
        }
        for id in ids {
            st.release(id, now);
        }
        assert_eq!(st.running(), 0);
        // Connections picked 3 times are spent and closed on release; others stay idle.
        assert!(st.stats().iter().all(|s| !s.retired));
    }

    #[test]
    fn connections_out_of_streams_are_skipped_while_the_rules_allow_another() {
        let now = Instant::now();
        // No count cap (maxConcurrency only): a saturated connection gets a sibling.
        let mut st = state(XmuxSettings {
            max_concurrency: Range::fixed(50),
            ..Default::default()
        });
        let a = pick(&mut st, now).id();
        assert_eq!(pick(&mut st, now), Choice::Reuse(a));
        st.set_saturated(a, true);
        let b = pick(&mut st, now);
        assert!(matches!(b, Choice::Create(id) if id != a), "{b:?}");
        // New tunnels go to the one with streams left.
        for _ in 0..10 {
            assert_eq!(pick(&mut st, now), Choice::Reuse(b.id()));
        }
        // A tunnel on `a` ended: its streams came back, it is picked again.
        st.release(a, now);
        st.set_saturated(a, false);
        let picks: Vec<ConnId> = (0..40).map(|_| pick(&mut st, now).id()).collect();
        assert!(picks.contains(&a) && picks.contains(&b.id()));

        assert!(
            st.stats().iter().all(|c| !c.overflow),
            "no cap, no overflow"
        );
    }

    #[test]
    fn a_capped_pool_out_of_streams_dials_overflow_connections_that_close_when_idle() {
        let now = Instant::now();
        let mut st = state(XmuxSettings {
            max_connections: Range::fixed(2),
            ..Default::default()
        });
        let ids: Vec<ConnId> = (0..2).map(|_| pick(&mut st, now).id()).collect();
        st.set_saturated(ids[0], true);
        for _ in 0..10 {
            assert_eq!(pick(&mut st, now), Choice::Reuse(ids[1]));
        }
        assert!(!st.picked_saturated());
        // Both capped connections out of streams: one overflow connection, not a wait.
        st.set_saturated(ids[1], true);
        let o = pick(&mut st, now);
        assert!(
            matches!(o, Choice::Create(id) if !ids.contains(&id)),
            "{o:?}"
        );
        assert!(!st.picked_saturated());
        let overflow = |st: &XmuxState| -> Vec<ConnId> {
            st.stats()
                .iter()
                .filter(|c| c.overflow)
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(overflow(&st), vec![o.id()]);
        // It takes what the capped ones cannot...
        for _ in 0..5 {
            assert_eq!(pick(&mut st, now), Choice::Reuse(o.id()));
        }
        // ...and once one of them has streams again, it gets the new tunnels.
        st.set_saturated(ids[0], false);
        for _ in 0..10 {
            assert_eq!(pick(&mut st, now), Choice::Reuse(ids[0]));
        }
        // The overflow connection closes when its last tunnel ends (6 ran on it).
        for _ in 0..5 {
            assert_eq!(st.release(o.id(), now), None);
        }
        assert_eq!(st.release(o.id(), now), Some(o.id()));
        assert!(overflow(&st).is_empty());
        assert_eq!(st.stats().len(), 2);

        // Every connection out of streams: overflow connections up to the bound, then the
        // tunnel waits on one of them.
        st.set_saturated(ids[0], true);
        for n in 1..=MAX_OVERFLOW {
            let c = pick(&mut st, now);
            assert!(matches!(c, Choice::Create(_)), "overflow {n}: {c:?}");
            st.set_saturated(c.id(), true);
        }
        assert_eq!(overflow(&st).len(), MAX_OVERFLOW);
        for _ in 0..10 {
            assert!(matches!(pick(&mut st, now), Choice::Reuse(_)));
            assert!(st.picked_saturated());
        }
        assert_eq!(st.stats().len(), 2 + MAX_OVERFLOW);
        // A retired capped connection is replaced by a capped one, not counted against
        // the overflow ones.
        assert_eq!(st.mark_broken(ids[0]), None);
        let c = pick(&mut st, now);
        assert!(matches!(c, Choice::Create(_)));
        assert!(!overflow(&st).contains(&c.id()));
    }

    #[test]
    fn defaults_cap_three_connections() {
        let mut st = state(XmuxSettings::xray_defaults());
        let now = Instant::now();
        for _ in 0..100 {
            pick(&mut st, now);
        }
        assert_eq!(st.stats().len(), 3);
    }
}
