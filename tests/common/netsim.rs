//! A user-space UDP relay standing in for a bad network (`tc netem` is not available):
//! the client dials the relay, the relay forwards to the server, dropping, delaying and
//! reordering datagrams by a seeded generator, and can turn into a black hole or move to a
//! new source address (a NAT rebinding, as a phone changing networks looks to the server).
//!
//! One client at a time: the relay answers whichever address last sent to it.

use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the path misbehaves, per direction alike.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Probability that a datagram is dropped, 0.0..=1.0.
    pub loss: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra random delay in 0..jitter per datagram, as a queue adds it: order is kept.
    pub jitter: Duration,
    /// Probability that a datagram is held back `reorder_by` longer, letting later ones
    /// overtake it (reordering on real paths is rare and this is how it looks).
    pub reorder: f64,
    pub reorder_by: Duration,
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_by: Duration::from_millis(20),
            seed: 1,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Up = 0,
    Down = 1,
}

/// A datagram waiting for its time; the heap pops the earliest first.
#[derive(PartialEq, Eq)]
struct Due {
    at: Instant,
    seq: u64,
    dir: Dir,
    data: Vec<u8>,
}

impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

struct State {
    front: UdpSocket,
    server: SocketAddr,
    upstream: Mutex<Arc<UdpSocket>>,
    client: Mutex<Option<SocketAddr>>,
    /// Every client address seen, and those whose datagrams are dropped (a network that
    /// went away under the client).
    clients: Mutex<Vec<SocketAddr>>,
    blocked: Mutex<Vec<SocketAddr>>,
    /// The impairment, the generator's state and the last due time per direction (up,
    /// down), so jitter never reorders.
    impairment: Mutex<(Impairment, u64, [Instant; 2])>,
    blackhole: AtomicBool,
    stop: AtomicBool,
    queue: Mutex<BinaryHeap<Due>>,
    wake: Condvar,
    seq: AtomicU64,
    dropped: AtomicU64,
    reordered: AtomicU64,
    forwarded: AtomicU64,
}

impl State {
    /// Drops or schedules one datagram.
    fn offer(&self, dir: Dir, data: Vec<u8>) {
        if self.blackhole.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at = {
            let mut g = self.impairment.lock().unwrap();
            let (imp, rng, last) = &mut *g;
            let imp = *imp;
            if unit(rng) < imp.loss {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let lane = &mut last[dir as usize];
            let at = (Instant::now() + imp.delay + imp.jitter.mul_f64(unit(rng))).max(*lane);
            if unit(rng) < imp.reorder {
                self.reordered.fetch_add(1, Ordering::Relaxed);
                at + imp.reorder_by
            } else {
                *lane = at;
                at
            }
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.queue.lock().unwrap().push(Due { at, seq, dir, data });
        self.wake.notify_one();
    }

    fn deliver(&self, d: Due) {
        let r = match d.dir {
            Dir::Up => {
                let up = self.upstream.lock().unwrap().clone();
                up.send_to(&d.data, self.server)
            }
            Dir::Down => match *self.client.lock().unwrap() {
                Some(c) => self.front.send_to(&d.data, c),
                None => return,
            },
        };
        if r.is_ok() {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// xorshift64*, mapped to 0.0..1.0: the same seed gives the same drop pattern.
pub fn unit(s: &mut u64) -> f64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

pub struct Relay {
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(20);

fn upstream_socket() -> Arc<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(POLL)).unwrap();
    Arc::new(s)
}

impl Relay {
    /// Starts a relay on loopback in front of `server`.
    pub fn start(server: SocketAddr, imp: Impairment) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        front.set_read_timeout(Some(POLL)).unwrap();
        let state = Arc::new(State {
            front,
            server,
            upstream: Mutex::new(upstream_socket()),
            client: Mutex::new(None),
            clients: Mutex::new(Vec::new()),
            blocked: Mutex::new(Vec::new()),
            impairment: Mutex::new((imp, imp.seed | 1, [Instant::now(); 2])),
            blackhole: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        // Client -> relay.
        let s = state.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.front.recv_from(&mut buf) {
                    {
                        let mut seen = s.clients.lock().unwrap();
                        if !seen.contains(&from) {
                            seen.push(from);
                        }
                    }
                    if s.blocked.lock().unwrap().contains(&from) {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    *s.client.lock().unwrap() = Some(from);
                    s.offer(Dir::Up, buf[..n].to_vec());
                }
            }
        }));
        // Server -> relay, on whichever upstream socket is current.
        let s = state.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.stop.load(Ordering::Relaxed) {
                let up = s.upstream.lock().unwrap().clone();
                if let Ok((n, from)) = up.recv_from(&mut buf)
                    && from == s.server
                {
                    s.offer(Dir::Down, buf[..n].to_vec());
                }
            }
        }));
        // The scheduler: sends each datagram when it is due.
        let s = state.clone();
        threads.push(std::thread::spawn(move || {
            let mut q = s.queue.lock().unwrap();
            while !s.stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                match q.peek().map(|d| d.at) {
                    Some(at) if at <= now => {
                        let d = q.pop().unwrap();
                        drop(q);
                        s.deliver(d);
                        q = s.queue.lock().unwrap();
                    }
                    Some(at) => q = s.wake.wait_timeout(q, (at - now).min(POLL)).unwrap().0,
                    None => q = s.wake.wait_timeout(q, POLL).unwrap().0,
                }
            }
        }));
        Relay { state, threads }
    }

    /// Where clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.state.front.local_addr().unwrap()
    }

    /// Drops everything from now on (`false`: the path heals).
    pub fn blackhole(&self, on: bool) {
        self.state.blackhole.store(on, Ordering::Relaxed);
    }

    pub fn set_impairment(&self, imp: Impairment) {
        *self.state.impairment.lock().unwrap() = (imp, imp.seed | 1, [Instant::now(); 2]);
    }

    /// Moves the relay's server-facing side to a new UDP port: the server sees the client
    /// come from a new address mid-connection. Datagrams the server still sends to the old
    /// address are lost, as behind a real NAT.
    pub fn rebind(&self) -> SocketAddr {
        let fresh = upstream_socket();
        let addr = fresh.local_addr().unwrap();
        *self.state.upstream.lock().unwrap() = fresh;
        addr
    }

    /// Drops everything from and to the client address `a` from now on.
    pub fn block_client(&self, a: SocketAddr) {
        self.state.blocked.lock().unwrap().push(a);
        let mut c = self.state.client.lock().unwrap();
        if *c == Some(a) {
            *c = None;
        }
    }

    /// Client addresses seen so far, in order.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.state.clients.lock().unwrap().clone()
    }

    /// The server-facing address in use now.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.state.upstream.lock().unwrap().local_addr().unwrap()
    }

    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams held back so that later ones overtook them.
    pub fn reordered(&self) -> u64 {
        self.state.reordered.load(Ordering::Relaxed)
    }

    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.state.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
