//! xhttp-mobile: an XHTTP (Xray SplitHTTP) client over HTTP/3 for mobile VPN apps.
//!
//! Layers, top to bottom: [`api`] (blocking facade on the library's runtime thread),
//! [`tunnel`] (the three modes, async), [`transport`] (QUIC + HTTP/3 + TLS),
//! [`xhttp`] (pure protocol decisions), [`config`] (typed, validated settings).

pub mod api;
pub mod config;
pub mod error;
pub mod ffi;
pub mod mobile;
pub mod platform_log;
pub mod proxy;
pub mod runtime;
pub mod transport;
pub mod tun;
pub mod tunnel;
pub mod xhttp;
pub mod xmux;

pub use api::{Client, Inbound, Tunnel};
pub use config::Config;
pub use error::{Error, Result};

uniffi::setup_scaffolding!();
