//! Proxy protocols carried inside tunnels: VLESS framing, and the local inbounds (SOCKS5,
//! TCP forwarder) that turn app connections into tunnels.

mod accept;
pub mod forward;
pub mod policy;
pub mod relay;
pub mod socks;
pub mod vless;
