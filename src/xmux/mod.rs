//! XMUX: which QUIC connection each tunnel's requests ride on (protocol doc §5).

pub mod pool;
pub mod settings;
pub mod state;

pub use pool::{ConnInfo, Pool, PoolStats, Slot};
pub use settings::XmuxSettings;
pub use state::{Choice, ConnId, ConnStats, MAX_OVERFLOW, XmuxState};
