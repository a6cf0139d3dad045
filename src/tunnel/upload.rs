//! The queue between `write` and a tunnel's upload task, bounded in bytes (not messages):
//! packet-up batches what is queued into POSTs of up to `scMaxEachPostBytes`, so the queue
//! must be able to hold one POST's worth whatever the app's write sizes are, and no more.

use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};

pub(crate) use mpsc::error::TryRecvError;

pub(crate) struct UpTx {
    tx: mpsc::UnboundedSender<Bytes>,
    budget: Arc<Semaphore>,
}

pub(crate) struct UpRx {
    rx: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<Semaphore>,
}

/// A queue holding at most `bytes` bytes; every piece sent must be at most that large.
pub(crate) fn queue(bytes: usize) -> (UpTx, UpRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(bytes));
    (
        UpTx {
            tx,
            budget: budget.clone(),
        },
        UpRx { rx, budget },
    )
}

impl UpTx {
    /// Waits for room, then queues `b`. Err when the upload task is gone. Cancel-safe: a
    /// cancelled wait takes no room.
    pub(crate) async fn send(&self, b: Bytes) -> Result<(), ()> {
        let n = u32::try_from(b.len()).map_err(|_| ())?;
        self.budget.acquire_many(n).await.map_err(|_| ())?.forget();
        self.tx.send(b).map_err(|_| ())
    }
}

impl UpRx {
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        let b = self.rx.recv().await?;
        self.budget.add_permits(b.len());
        Some(b)
    }

    pub(crate) fn try_recv(&mut self) -> Result<Bytes, TryRecvError> {
        let b = self.rx.try_recv()?;
        self.budget.add_permits(b.len());
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
