//! The XHTTP protocol as pure code: ranges, padding, session ids, request shapes, upload
//! batching. Nothing here touches a socket.

pub mod browser;
pub mod escape;
pub mod padding;
pub mod range;
pub mod request;
pub mod session;
pub mod upload;
