//! Sessions (protocol doc §3.5) and the per-session upload queue (§3.4): a bounded channel
//! (the back-pressure on packet-up POSTs) feeding a min-heap that restores seq order.

use super::events::{Event, Outcome, Recorder};
use super::signal::Signal;
use bytes::Bytes;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// One piece of a streaming body, or how the body failed. The channel closing after the last
/// `Ok` means the body finished cleanly.
pub(crate) type StreamMsg = Result<Bytes, Outcome>;

/// What upload requests push into a session.
pub(crate) enum QueueItem {
    Packet {
        seq: u64,
        payload: Bytes,
    },
    /// A stream-up body; once seen, it serves all further reads.
    Stream(mpsc::Receiver<StreamMsg>),
}

/// A packet waiting for its turn; ordered so that `BinaryHeap` pops the smallest seq.
struct Waiting {
    seq: u64,
    payload: Bytes,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        other.seq.cmp(&self.seq)
    }
}

/// Why reading the upload failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UploadError {
    /// More than `scMaxBufferedPosts` packets waited for a missing seq.
    TooLarge,
    /// The streaming body failed.
    Stream(Outcome),
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadError::TooLarge => write!(f, "packet queue is too large"),
            UploadError::Stream(o) => write!(f, "upload {o}"),
        }
    }
}

/// The reading end of a session's upload: packets in seq order from 0, or a stream-up body.
pub(crate) struct UploadQueue {
    rx: mpsc::Receiver<QueueItem>,
    heap: BinaryHeap<Waiting>,
    next_seq: u64,
    max_waiting: usize,
    stream: Option<mpsc::Receiver<StreamMsg>>,
}

/// A queue whose channel holds `max_buffered` items (at least one).
pub(crate) fn upload_queue(max_buffered: usize) -> (mpsc::Sender<QueueItem>, UploadQueue) {
    let (tx, rx) = mpsc::channel(max_buffered.max(1));
    let q = UploadQueue {
        rx,
        heap: BinaryHeap::new(),
        next_seq: 0,
        max_waiting: max_buffered,
        stream: None,
    };
    (tx, q)
}

async fn stream_next(rx: &mut mpsc::Receiver<StreamMsg>) -> Result<Option<Bytes>, UploadError> {
    match rx.recv().await {
        Some(Ok(b)) => Ok(Some(b)),
        Some(Err(o)) => Err(UploadError::Stream(o)),
        None => Ok(None),
    }
}

fn stream_drain(rx: &mut mpsc::Receiver<StreamMsg>, out: &mut Vec<Bytes>) {
    while let Ok(Ok(b)) = rx.try_recv() {
        out.push(b);
    }
}

impl UploadQueue {
    /// The next bytes in order; `Ok(None)` once the session's queue is closed (or the stream-up
    /// body finished). Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, UploadError> {
        loop {
            if let Some(s) = self.stream.as_mut() {
                return stream_next(s).await;
            }
            if let Some(b) = self.pop_ready() {
                return Ok(Some(b));
            }
            if self.heap.len() > self.max_waiting {
                return Err(UploadError::TooLarge);
            }
            match self.rx.recv().await {
                Some(item) => self.accept(item),
                None => return Ok(None),
            }
        }
    }

    fn accept(&mut self, item: QueueItem) {
        match item {
            QueueItem::Packet { seq, payload } => self.heap.push(Waiting { seq, payload }),
            QueueItem::Stream(rx) => {
                if self.stream.is_none() {
                    self.stream = Some(rx);
                }
            }
        }
    }

    /// Pops the packet with the next seq, dropping duplicates of delivered ones.
    fn pop_ready(&mut self) -> Option<Bytes> {
        while let Some(top) = self.heap.peek() {
            if top.seq > self.next_seq {
                break;
            }
            let w = self.heap.pop()?;
            if w.seq < self.next_seq {
                continue;
            }
            self.next_seq += 1;
            if !w.payload.is_empty() {
                return Some(w.payload);
            }
        }
        None
    }

    /// Everything deliverable in order right now, without waiting.
    pub(crate) fn drain_ready(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            self.accept(item);
        }
        while let Some(b) = self.pop_ready() {
            out.push(b);
        }
        if let Some(s) = self.stream.as_mut() {
            stream_drain(s, &mut out);
        }
        out
    }
}

/// What a download reads: a session's queue, or a stream-one body.
pub(crate) enum Upload {
    Queue(UploadQueue),
    Stream(mpsc::Receiver<StreamMsg>),
}

impl Upload {
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, UploadError> {
        match self {
            Upload::Queue(q) => q.next().await,
            Upload::Stream(rx) => stream_next(rx).await,
        }
    }

    pub(crate) fn drain_ready(&mut self) -> Vec<Bytes> {
        match self {
            Upload::Queue(q) => q.drain_ready(),
            Upload::Stream(rx) => {
                let mut out = Vec::new();
                stream_drain(rx, &mut out);
                out
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a push into a session failed (both answered with 500 / 409).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The session was reaped or its download ended.
    Closed,
    /// A stream-up body already owns the session.
    StreamOwned,
}

/// The result of a GET claiming the session's queue.
pub(crate) enum Attach {
    Attached(UploadQueue),
    /// Reaped or ended just before: look the session up again.
    Closed,
    /// Another GET already reads this session.
    Taken,
}

pub(crate) struct Session {
    pub(crate) id: String,
    tx: mpsc::Sender<QueueItem>,
    /// The reading end until a GET takes it; dropping it fails every pending and later push.
    queue: Mutex<Option<UploadQueue>>,
    stream_claimed: AtomicBool,
    connected: Signal,
    pub(crate) closed: Signal,
}

impl Session {
    fn new(id: &str, max_buffered: usize) -> Session {
        let (tx, q) = upload_queue(max_buffered);
        Session {
            id: id.to_string(),
            tx,
            queue: Mutex::new(Some(q)),
            stream_claimed: AtomicBool::new(false),
            connected: Signal::default(),
            closed: Signal::default(),
        }
    }

    /// The GET arrived: stop the reaper and hand over the queue.
    pub(crate) fn attach(&self) -> Attach {
        let mut q = lock(&self.queue);
        if self.closed.is_fired() {
            return Attach::Closed;
        }
        self.connected.fire();
        match q.take() {
            Some(q) => Attach::Attached(q),
            None => Attach::Taken,
        }
    }

    /// Closes the session unless a GET got there first; true if it was reaped.
    fn reap(&self) -> bool {
        let mut q = lock(&self.queue);
        if self.connected.is_fired() || self.closed.is_fired() {
            return false;
        }
        self.closed.fire();
        q.take();
        true
    }

    /// Ends the session: uploads waiting or arriving later fail.
    pub(crate) fn close(&self) {
        let mut q = lock(&self.queue);
        self.closed.fire();
        q.take();
    }

    /// Queues one packet; waits while the queue is full (back-pressure).
    pub(crate) async fn push_packet(&self, seq: u64, payload: Bytes) -> Result<(), PushError> {
        if self.stream_claimed.load(AtomicOrdering::SeqCst) {
            return Err(PushError::StreamOwned);
        }
        self.tx
            .send(QueueItem::Packet { seq, payload })
            .await
            .map_err(|_| PushError::Closed)
    }

    /// Makes a stream-up body the session's upload; fails if one already is, or if closed.
    pub(crate) async fn claim_stream(
        &self,
        rx: mpsc::Receiver<StreamMsg>,
    ) -> Result<(), PushError> {
        if self.closed.is_fired() {
            return Err(PushError::Closed);
        }
        if self.stream_claimed.swap(true, AtomicOrdering::SeqCst) {
            return Err(PushError::StreamOwned);
        }
        self.tx
            .send(QueueItem::Stream(rx))
            .await
            .map_err(|_| PushError::Closed)
    }
}

/// All live sessions by id.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    max_buffered: usize,
    timeout: Duration,
    rec: Arc<Recorder>,
    shutdown: Signal,
}

impl Sessions {
    pub(crate) fn new(
        max_buffered: usize,
        timeout: Duration,
        rec: Arc<Recorder>,
        shutdown: Signal,
    ) -> Arc<Sessions> {
        Arc::new(Sessions {
            map: Mutex::new(HashMap::new()),
            max_buffered,
            timeout,
            rec,
            shutdown,
        })
    }

    /// The session `id`, created (with its reaper) if absent.
    pub(crate) fn upsert(self: &Arc<Self>, id: &str) -> Arc<Session> {
        let mut map = lock(&self.map);
        if let Some(s) = map.get(id) {
            return s.clone();
        }
        let s = Arc::new(Session::new(id, self.max_buffered));
        map.insert(id.to_string(), s.clone());
        drop(map);
        let (sessions, session) = (self.clone(), s.clone());
        tokio::spawn(async move { sessions.reaper(session).await });
        s
    }

    async fn reaper(self: Arc<Self>, s: Arc<Session>) {
        tokio::select! {
            _ = tokio::time::sleep(self.timeout) => {}
            _ = s.connected.fired() => return,
            _ = s.closed.fired() => return,
            _ = self.shutdown.fired() => return,
        }
        if s.reap() {
            self.remove(&s);
            self.rec.push(Event::SessionReaped {
                session: s.id.clone(),
            });
        }
    }

    /// Sessions not yet ended.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Forgets `s` (only if it is still the session under its id).
    pub(crate) fn remove(&self, s: &Arc<Session>) {
        let mut map = lock(&self.map);
        if map.get(&s.id).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            map.remove(&s.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u64, data: &str) -> QueueItem {
        QueueItem::Packet {
            seq,
            payload: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    async fn collect(q: &mut UploadQueue, n: usize) -> String {
        let mut s = String::new();
        for _ in 0..n {
            let b = q.next().await.unwrap().unwrap();
            s.push_str(std::str::from_utf8(&b).unwrap());
        }
        s
    }

    #[tokio::test]
    async fn delivers_in_order() {
        let (tx, mut q) = upload_queue(4);
        for (i, d) in ["a", "b", "c"].iter().enumerate() {
            tx.send(pkt(i as u64, d)).await.unwrap();
        }
        assert_eq!(collect(&mut q, 3).await, "abc");
        drop(tx);
        assert_eq!(q.next().await, Ok(None));
    }

    #[tokio::test]
    async fn reorders_and_drops_duplicates() {
        let (tx, mut q) = upload_queue(8);
        for (seq, d) in [(2, "c"), (0, "a"), (3, "d"), (1, "b"), (1, "B")] {
            tx.send(pkt(seq, d)).await.unwrap();
        }
        assert_eq!(collect(&mut q, 4).await, "abcd");
        // The duplicate seq 1 is dropped; an empty payload is skipped.
        tx.send(pkt(4, "")).await.unwrap();
        tx.send(pkt(5, "e")).await.unwrap();
        assert_eq!(collect(&mut q, 1).await, "e");
    }

    #[tokio::test]
    async fn too_many_waiting_fails() {
        let (tx, mut q) = upload_queue(3);
        let feeder = tokio::spawn(async move {
            // seq 0 never comes: 4 packets wait, more than the 3 allowed.
            for seq in 1..=4 {
                if tx.send(pkt(seq, "x")).await.is_err() {
                    break;
                }
            }
            tx
        });
        assert_eq!(q.next().await, Err(UploadError::TooLarge));
        drop(q);
        let _ = feeder.await;
    }

    #[tokio::test]
    async fn exactly_max_waiting_is_fine() {
        let (tx, mut q) = upload_queue(3);
        let feeder = tokio::spawn(async move {
            for seq in [1, 2, 3, 0] {
                tx.send(pkt(seq, if seq == 0 { "0" } else { "x" }))
                    .await
                    .unwrap();
            }
        });
        assert_eq!(collect(&mut q, 4).await, "0xxx");
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn full_channel_blocks_until_read() {
        let (tx, mut q) = upload_queue(1);
        tx.send(pkt(0, "a")).await.unwrap();
        let blocked = tx.send(pkt(1, "b"));
        tokio::pin!(blocked);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), blocked.as_mut())
                .await
                .is_err()
        );
        assert_eq!(collect(&mut q, 1).await, "a");
        blocked.await.unwrap();
        assert_eq!(collect(&mut q, 1).await, "b");
    }

    #[tokio::test]
    async fn stream_takes_over() {
        let (tx, mut q) = upload_queue(4);
        let (stx, srx) = mpsc::channel(4);
        tx.send(pkt(0, "p")).await.unwrap();
        tx.send(QueueItem::Stream(srx)).await.unwrap();
        stx.send(Ok(Bytes::from_static(b"s1"))).await.unwrap();
        stx.send(Err(Outcome::Reset(0x10c))).await.unwrap();
        assert_eq!(collect(&mut q, 2).await, "ps1");
        assert_eq!(
            q.next().await,
            Err(UploadError::Stream(Outcome::Reset(0x10c)))
        );
    }

    #[tokio::test]
    async fn drain_ready_takes_only_what_is_in_order() {
        let (tx, mut q) = upload_queue(8);
        for (seq, d) in [(0, "a"), (2, "c"), (1, "b"), (4, "e")] {
            tx.send(pkt(seq, d)).await.unwrap();
        }
        let got: Vec<Bytes> = q.drain_ready();
        assert_eq!(got.concat(), b"abc");
    }

    #[tokio::test]
    async fn sessions_reap_without_get_and_fail_pushes() {
        let rec = Arc::new(Recorder::default());
        let sessions = Sessions::new(1, Duration::from_millis(50), rec.clone(), Signal::default());
        let s = sessions.upsert("s1");
        assert!(Arc::ptr_eq(&s, &sessions.upsert("s1")));
        s.push_packet(0, Bytes::from_static(b"a")).await.unwrap();
        // The channel (capacity 1) is full: this push waits until the reaper closes the queue.
        assert_eq!(
            s.push_packet(1, Bytes::from_static(b"b")).await,
            Err(PushError::Closed)
        );
        let e = rec
            .wait_for(
                |e| matches!(e, Event::SessionReaped { .. }),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(
            e,
            Some(Event::SessionReaped {
                session: "s1".into()
            })
        );
        assert!(!Arc::ptr_eq(&s, &sessions.upsert("s1")));
    }

    #[tokio::test]
    async fn attached_session_is_not_reaped() {
        let rec = Arc::new(Recorder::default());
        let sessions = Sessions::new(4, Duration::from_millis(20), rec.clone(), Signal::default());
        let s = sessions.upsert("s2");
        let Attach::Attached(_q) = s.attach() else {
            panic!("not attached")
        };
        assert!(matches!(s.attach(), Attach::Taken));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(rec.events().is_empty());
        s.push_packet(0, Bytes::from_static(b"x")).await.unwrap();
        s.close();
        assert!(matches!(s.attach(), Attach::Closed));
    }

    #[tokio::test]
    async fn stream_claim_is_exclusive() {
        let rec = Arc::new(Recorder::default());
        let sessions = Sessions::new(4, Duration::from_secs(30), rec, Signal::default());
        let s = sessions.upsert("s3");
        let (_t1, r1) = mpsc::channel(1);
        let (_t2, r2) = mpsc::channel(1);
        assert_eq!(s.claim_stream(r1).await, Ok(()));
        assert_eq!(s.claim_stream(r2).await, Err(PushError::StreamOwned));
        assert_eq!(
            s.push_packet(0, Bytes::new()).await,
            Err(PushError::StreamOwned)
        );
        s.close();
    }
}
