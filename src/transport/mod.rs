//! QUIC + HTTP/3 connections: TLS, transport parameters, the h3 driver, the UDP sockets.

mod conn;
mod limits;
pub mod socket;
pub mod surface;
pub mod tls;

pub use conn::{H3Conn, QuicOptions, Refused, RequestStream};
pub use socket::{Protect, RawSocket, SocketHooks};
pub use surface::Congestion;
