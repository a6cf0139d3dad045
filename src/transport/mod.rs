//! QUIC + HTTP/3 connections: TLS, transport parameters, the h3 driver, the UDP sockets.

mod conn;
mod frame_guard;
mod guarded;
mod limits;
pub mod socket;
pub mod surface;
pub mod tls;

pub use conn::{H3Conn, QuicOptions, RecvHalf, Refused, RequestStream, SendHalf};
pub use socket::{Protect, RawSocket, SocketHooks};
pub use surface::Congestion;
