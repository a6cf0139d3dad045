//! Proxy protocols carried inside tunnels: VLESS framing, and the local SOCKS5 inbound.

pub mod vless;
