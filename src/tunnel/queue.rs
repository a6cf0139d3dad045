//! The queues between a tunnel's handle and its tasks, bounded in bytes (not messages).
//!
//! Upload: packet-up batches what is queued into POSTs of up to `scMaxEachPostBytes`, so the
//! queue must hold one POST's worth whatever the app's write sizes are, and no more.
//! Download: QUIC hands over packet-sized chunks, so a bound in chunks would be a bound of
//! a few KiB; a bound in bytes lets reads batch.

use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub(crate) use mpsc::error::TryRecvError;

/// Each item carries the room it took, so items pushed past the bound give back nothing.
type Item = (Bytes, u32);

pub(crate) struct QueueTx {
    tx: mpsc::UnboundedSender<Item>,
    budget: Arc<Semaphore>,
    capacity: usize,
}

/// Room for `n` bytes taken in the queue ahead of the bytes themselves; given back if
/// dropped unused.
pub struct Room {
    permit: OwnedSemaphorePermit,
    n: usize,
}

pub(crate) struct QueueRx {
    rx: mpsc::UnboundedReceiver<Item>,
    budget: Arc<Semaphore>,
}

/// A queue holding at most `bytes` bytes; every piece sent must be at most that large.
pub(crate) fn queue(bytes: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(bytes));
    (
        QueueTx {
            tx,
            budget: budget.clone(),
            capacity: bytes,
        },
        QueueRx { rx, budget },
    )
}

impl QueueTx {
    /// Waits for room, then queues `b`. Err when the upload task is gone. Cancel-safe: a
    /// cancelled wait takes no room.
    pub(crate) async fn send(&self, b: Bytes) -> Result<(), ()> {
        let n = u32::try_from(b.len()).map_err(|_| ())?;
        let room = self.budget.acquire_many(n).await.map_err(|_| ())?;
        self.tx.send((b, n)).map_err(|_| ())?;
        // Given back by the receiver when it takes the piece.
        room.forget();
        Ok(())
    }

    /// The most bytes the queue holds; no [`room`](Self::room) larger than this is ever
    /// granted.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits for room for `n` bytes (at most [`capacity`](Self::capacity)) and takes it.
    /// The future owns what it needs, so it can run as a task of its own. Cancel-safe: a
    /// cancelled wait takes no room. Err when the upload task is gone.
    pub(crate) fn room(&self, n: usize) -> impl Future<Output = Result<Room, ()>> + Send + 'static {
        let budget = self.budget.clone();
        let fits = n <= self.capacity;
        async move {
            let permits = u32::try_from(n).map_err(|_| ())?;
            if !fits {
                return Err(());
            }
            let permit = budget.acquire_many_owned(permits).await.map_err(|_| ())?;
            Ok(Room { permit, n })
        }
    }

    /// [`room`](Self::room) without waiting: `Ok(None)` when the queue has no room for `n`
    /// bytes now.
    pub(crate) fn try_room(&self, n: usize) -> Result<Option<Room>, ()> {
        let permits = u32::try_from(n).map_err(|_| ())?;
        if n > self.capacity {
            return Err(());
        }
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => Ok(Some(Room { permit, n })),
            Err(tokio::sync::TryAcquireError::NoPermits) => Ok(None),
            Err(tokio::sync::TryAcquireError::Closed) => Err(()),
        }
    }

    /// Queues `data` (exactly the size of `room`) in pieces of at most `piece` bytes, at
    /// once: the room is already taken. Err when the upload task is gone.
    pub(crate) fn commit(&self, room: Room, data: &[u8], piece: usize) -> Result<(), ()> {
        assert_eq!(
            room.n,
            data.len(),
            "a room is committed with the bytes it was taken for"
        );
        // Given back piece by piece by the receiver as it takes them.
        room.permit.forget();
        for p in data.chunks(piece.max(1)) {
            self.tx
                .send((Bytes::copy_from_slice(p), p.len() as u32))
                .map_err(|_| ())?;
        }
        Ok(())
    }

    /// Queues `b` without waiting for room. Only for bytes already held in memory
    /// elsewhere (a stream's receive buffer drained after a failure), so the total stays
    /// bounded by what that buffer could hold.
    pub(crate) fn push_now(&self, b: Bytes) -> Result<(), ()> {
        self.tx.send((b, 0)).map_err(|_| ())
    }
}

impl Drop for QueueRx {
    /// Wakes every sender waiting for room: nothing will make room any more.
    fn drop(&mut self) {
        self.budget.close();
    }
}

impl QueueRx {
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        let (b, n) = self.rx.recv().await?;
        self.budget.add_permits(n as usize);
        Some(b)
    }

    pub(crate) fn try_recv(&mut self) -> Result<Bytes, TryRecvError> {
        let (b, n) = self.rx.try_recv()?;
        self.budget.add_permits(n as usize);
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn bounded_in_bytes_not_messages() {
        let (tx, mut rx) = queue(100);
        for _ in 0..10 {
            tx.send(Bytes::from_static(&[1; 10])).await.unwrap();
        }
        // Full: one more byte must wait until the reader takes something.
        let more = tx.send(Bytes::from_static(&[2]));
        tokio::pin!(more);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut more)
                .await
                .is_err()
        );
        assert_eq!(rx.recv().await.unwrap().len(), 10);
        more.await.unwrap();
        let mut total = 0;
        while let Ok(b) = rx.try_recv() {
            total += b.len();
        }
        assert_eq!(total, 91);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        drop(rx);
        assert!(tx.send(Bytes::from_static(&[3])).await.is_err());
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_wakes_when_the_receiver_goes() {
        let (tx, rx) = queue(10);
        tx.send(Bytes::from_static(&[1; 10])).await.unwrap();
        let waiting = tokio::spawn(async move { tx.send(Bytes::from_static(&[2; 5])).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(rx);
        let r = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("the waiting sender woke")
            .unwrap();
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn room_is_taken_whole_and_given_back_when_dropped_or_read() {
        let (tx, mut rx) = queue(100);
        tx.send(Bytes::from_static(&[1; 60])).await.unwrap();
        // 50 bytes do not fit beside 60: the wait takes nothing while it waits.
        let mut waiting = Box::pin(tx.room(50));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        drop(waiting);
        // A room taken and dropped unused gives its bytes back.
        let room = tx.room(40).await.unwrap();
        drop(room);
        let room = tx.room(40).await.unwrap();
        tx.commit(room, &[2; 40], 16).unwrap();
        // Full: 60 + 40. The commit went in pieces of at most 16 bytes.
        assert!(tx.room(1).now_or_never().is_none());
        let mut sizes = Vec::new();
        while let Ok(b) = rx.try_recv() {
            sizes.push(b.len());
        }
        assert_eq!(sizes, [60, 16, 16, 8]);
        // Everything read: the whole queue is free again.
        assert!(tx.room(100).now_or_never().is_some());
        assert!(tx.room(101).await.is_err(), "larger than the queue");
    }

    #[tokio::test]
    async fn pushed_past_the_bound_gives_back_no_room() {
        let (tx, mut rx) = queue(10);
        tx.send(Bytes::from_static(&[1; 10])).await.unwrap();
        tx.push_now(Bytes::from_static(&[2; 50])).unwrap();
        assert_eq!(rx.recv().await.unwrap().len(), 10);
        assert_eq!(rx.recv().await.unwrap().len(), 50);
        // Only the 10 bytes taken by `send` came back: the bound is still 10.
        tx.send(Bytes::from_static(&[3; 10])).await.unwrap();
        let more = tx.send(Bytes::from_static(&[4]));
        tokio::pin!(more);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut more)
                .await
                .is_err()
        );
    }
}
