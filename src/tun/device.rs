//! Where packets come from and go to: a TUN file descriptor (Linux, Android), or the app's
//! own packet flow (iOS: packets handed in by [`super::Tun::input`], handed out through a
//! callback).
//!
//! Guarantees this module owns: the caller's fd is never closed (the TUN reads and writes a
//! duplicate it closes itself); the packet callback runs on a thread of its own, so a
//! callback that blocks delays only its own packets (dropped and counted once its queue is
//! full), never the runtime.

use super::stats::{Counters, add};
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Packets queued each way for a packet callback (iOS): about 1.5 MB at 1500 bytes.
pub const PACKET_QUEUE: usize = 1024;

/// The packet callback: one IP packet per call, valid only during the call.
pub type PacketOut = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The batch callback: the packets queued for the app when it is called (at most
/// [`OUT_BATCH`]), in order. For callers whose every call costs (a JVM callback through JNA
/// attaches the thread each time): one call per burst instead of one per packet.
pub type BatchOut = Box<dyn Fn(Vec<Vec<u8>>) + Send + Sync>;

/// The most packets handed to a [`BatchOut`] at once (about 96 KB at 1500 bytes).
pub const OUT_BATCH: usize = 64;

/// How the app hands the TUN its packets.
pub enum PacketIo {
    /// A TUN device's fd, opened by the caller, who keeps it: the TUN duplicates it and
    /// closes only the duplicate (so the device stays up until the TUN stops). The open file
    /// is switched to non-blocking mode.
    Fd(RawFd),
    /// Packets given to [`super::Tun::input`]; packets for the app are passed to the
    /// callback, on a thread of the TUN's own.
    Callback(PacketOut),
    /// As `Callback`, with the packets for the app passed in batches: whatever is queued when
    /// the thread takes the next one, never waiting to fill a batch.
    Batches(BatchOut),
}

/// The reading and writing ends the TUN's tasks use.
pub enum Device {
    Fd(Arc<AsyncFd<OwnedFd>>),
    Callback {
        input: mpsc::Receiver<Vec<u8>>,
        output: std_mpsc::SyncSender<Vec<u8>>,
    },
}

/// For callback input: where [`super::Tun::input`] queues.
pub type InputQueue = mpsc::Sender<Vec<u8>>;

/// The thread that calls the packet callback.
pub struct OutThread {
    id: std::thread::ThreadId,
    // In a mutex so that a `Tun` may be shared between threads (the receiver is not `Sync`).
    done: std::sync::Mutex<std_mpsc::Receiver<()>>,
}

impl OutThread {
    /// Waits up to `limit` for the thread to end (it ends once the TUN's task has dropped
    /// the queue and any callback running has returned). Not from the thread itself (a
    /// callback stopping its own TUN): that would wait for itself.
    pub fn wait(&self, limit: std::time::Duration) {
        if std::thread::current().id() != self.id {
            let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            let _ = done.recv_timeout(limit);
        }
    }
}

impl Device {
    /// Must run inside the runtime (the fd is registered with its reactor). Once `stop` is
    /// cancelled the packet callback is not called again.
    pub fn open(
        io: PacketIo,
        stop: CancellationToken,
    ) -> Result<(Device, Option<InputQueue>, Option<OutThread>)> {
        match io {
            PacketIo::Fd(fd) => {
                let fail = |what: &str, e: std::io::Error| {
                    Error::Other(format!("TUN fd {fd}: {what}: {e}"))
                };
                if fd < 0 {
                    return Err(Error::config(
                        "fd",
                        format!("{fd} is not a file descriptor"),
                    ));
                }
                // SAFETY: `dup` only reads `fd`; the result, when valid, is ours to own.
                let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(fail("duplicating it", std::io::Error::last_os_error()));
                }
                // SAFETY: `dup` is a fresh descriptor nothing else owns.
                let owned = unsafe { OwnedFd::from_raw_fd(dup) };
                set_nonblocking(owned.as_raw_fd()).map_err(|e| fail("non-blocking", e))?;
                // SAFETY: the AsyncFd owns `owned`, which stays open (and the same file)
                // until the AsyncFd is dropped.
                let afd = unsafe { AsyncFd::register(owned) }
                    .map_err(|e| fail("registering it", std::io::Error::other(e.to_string())))?;
                Ok((Device::Fd(Arc::new(afd)), None, None))
            }
            PacketIo::Callback(out) => {
                let stopped = stop.clone();
                Self::callback(
                    Box::new(move |batch| {
                        for p in batch {
                            if stopped.is_cancelled() {
                                return;
                            }
                            out(&p);
                        }
                    }),
                    stop,
                )
            }
            PacketIo::Batches(out) => Self::callback(out, stop),
        }
    }

    /// The queues and the thread of a packet callback.
    fn callback(
        out: BatchOut,
        stop: CancellationToken,
    ) -> Result<(Device, Option<InputQueue>, Option<OutThread>)> {
        let (in_tx, in_rx) = mpsc::channel(PACKET_QUEUE);
        let (out_tx, out_rx) = std_mpsc::sync_channel::<Vec<u8>>(PACKET_QUEUE);
        let (done_tx, done_rx) = std_mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("xh-tun-out".into())
            .spawn(move || {
                // Dropped when the thread ends: what `OutThread::wait` waits for.
                let _done = done_tx;
                // Ends when the TUN drops its sender; packets still queued then are not
                // handed out once the TUN is stopped.
                while let Ok(first) = out_rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(out_rx.try_iter().take(OUT_BATCH - 1));
                    if stop.is_cancelled() {
                        break;
                    }
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| out(batch)))
                        .is_err()
                    {
                        log::error!("tun: the packet callback panicked; packets dropped");
                    }
                }
            })
            .map_err(|e| Error::Other(format!("TUN output thread: {e}")))?;
        Ok((
            Device::Callback {
                input: in_rx,
                output: out_tx,
            },
            Some(in_tx),
            Some(OutThread {
                id: thread.thread().id(),
                done: std::sync::Mutex::new(done_rx),
            }),
        ))
    }

    /// The two ends, for the input and output tasks.
    pub fn split(self) -> (Reader, Writer) {
        match self {
            Device::Fd(afd) => (Reader::Fd(afd.clone()), Writer::Fd(afd)),
            Device::Callback { input, output } => (Reader::Queue(input), Writer::Callback(output)),
        }
    }
}

pub enum Reader {
    Fd(Arc<AsyncFd<OwnedFd>>),
    Queue(mpsc::Receiver<Vec<u8>>),
}

impl Reader {
    /// The next packet, or `None` once the device is gone (fd error, queue closed).
    pub async fn next(&mut self, buf: &mut [u8]) -> Option<Vec<u8>> {
        match self {
            Reader::Queue(rx) => rx.recv().await,
            Reader::Fd(afd) => loop {
                let mut guard = match afd.readable().await {
                    Ok(g) => g,
                    Err(e) => {
                        log::warn!("tun: device read: {e}");
                        return None;
                    }
                };
                match guard.try_io(|fd| read(fd.as_raw_fd(), buf)) {
                    Ok(Ok(0)) => {
                        log::warn!("tun: the device reported end of file");
                        return None;
                    }
                    Ok(Ok(n)) => return Some(buf[..n].to_vec()),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => {
                        log::warn!("tun: device read: {e}");
                        return None;
                    }
                    Err(_would_block) => {}
                }
            },
        }
    }
}

#[derive(Clone)]
pub enum Writer {
    Fd(Arc<AsyncFd<OwnedFd>>),
    Callback(std_mpsc::SyncSender<Vec<u8>>),
}

impl Writer {
    /// Writes one packet for the app. `false` once the device is gone.
    pub async fn send(&self, p: Vec<u8>, counters: &Counters) -> bool {
        match self {
            Writer::Callback(tx) => match tx.try_send(p) {
                Ok(()) => true,
                Err(std_mpsc::TrySendError::Full(_)) => {
                    add(&counters.drop_output_full, 1);
                    true
                }
                Err(std_mpsc::TrySendError::Disconnected(_)) => false,
            },
            Writer::Fd(afd) => loop {
                let mut guard = match afd.writable().await {
                    Ok(g) => g,
                    Err(e) => {
                        log::warn!("tun: device write: {e}");
                        return false;
                    }
                };
                match guard.try_io(|fd| write(fd.as_raw_fd(), &p)) {
                    Ok(Ok(_)) => return true,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // A packet the device refuses (e.g. larger than its MTU) is lost like
                    // any other; the device itself is still there.
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                        add(&counters.drop_output_full, 1);
                        return true;
                    }
                    Ok(Err(e)) => {
                        log::warn!("tun: device write: {e}");
                        return false;
                    }
                    Err(_would_block) => {}
                }
            },
        }
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn read(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write(fd: RawFd, p: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `p` is valid for `p.len()` bytes of reads.
    let n = unsafe { libc::write(fd, p.as_ptr().cast(), p.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Packets queued while the batch callback is busy come out together, in order, at most
    /// OUT_BATCH at a time; none after the stop.
    #[tokio::test]
    async fn batches_in_order_and_bounded() {
        let got = Arc::new(Mutex::new(Vec::<Vec<Vec<u8>>>::new()));
        let (busy_tx, busy_rx) = std_mpsc::channel::<()>();
        let busy_rx = Mutex::new(busy_rx);
        let seen = got.clone();
        let out: BatchOut = Box::new(move |b| {
            seen.lock().unwrap().push(b);
            // The first call holds the thread until the test has queued everything.
            let _ = busy_rx.lock().unwrap().recv();
        });
        let stop = CancellationToken::new();
        let (device, _input, thread) = Device::open(PacketIo::Batches(out), stop.clone()).unwrap();
        let (_reader, writer) = device.split();
        let counters = Counters::default();
        let n = 2 * OUT_BATCH + 5;
        for i in 0..n {
            assert!(writer.send(vec![(i % 256) as u8; 1 + i], &counters).await);
        }
        for _ in 0..n {
            let _ = busy_tx.send(());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.lock().unwrap().iter().map(Vec::len).sum::<usize>() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "not every packet came out"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let batches = got.lock().unwrap().clone();
        let flat: Vec<Vec<u8>> = batches.iter().flatten().cloned().collect();
        let want: Vec<Vec<u8>> = (0..n).map(|i| vec![(i % 256) as u8; 1 + i]).collect();
        assert_eq!(flat, want, "in order, none lost or repeated");
        assert!(
            batches
                .iter()
                .all(|b| !b.is_empty() && b.len() <= OUT_BATCH)
        );
        assert_eq!(
            batches[1].len(),
            OUT_BATCH,
            "queued packets come out together"
        );
        assert_eq!(
            counters
                .drop_output_full
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );

        stop.cancel();
        assert!(writer.send(vec![1], &counters).await);
        drop(writer);
        thread.unwrap().wait(std::time::Duration::from_secs(5));
        assert_eq!(
            got.lock().unwrap().len(),
            batches.len(),
            "nothing after the stop"
        );
    }
}
