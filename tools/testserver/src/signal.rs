//! A sticky one-shot flag many tasks can await ("the session closed", "the server shut down").

use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub(crate) struct Signal(Arc<watch::Sender<bool>>);

impl Default for Signal {
    fn default() -> Self {
        Signal(Arc::new(watch::channel(false).0))
    }
}

impl Signal {
    pub(crate) fn fire(&self) {
        self.0.send_replace(true);
    }

    pub(crate) fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns at once if already fired.
    pub(crate) async fn fired(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this only returns once fired.
        let _ = rx.wait_for(|v| *v).await;
    }
}
