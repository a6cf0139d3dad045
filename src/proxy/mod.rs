//! Proxy protocols carried inside tunnels: VLESS framing, Mux.Cool and XUDP, the full-cone
//! UDP session, and the local inbounds (SOCKS5, TCP forwarder) that turn app connections
//! into tunnels.

mod accept;
pub mod forward;
pub mod mux;
pub mod policy;
pub mod relay;
pub mod socks;
pub mod udp;
pub mod vless;
pub mod xudp;
