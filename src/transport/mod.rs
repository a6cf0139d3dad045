//! QUIC + HTTP/3 connections: TLS, transport parameters, the h3 driver.

mod conn;
pub mod tls;

pub use conn::{H3Conn, QuicOptions, RequestStream};
