//! The app's TCP connections: each one the stack accepts becomes a VLESS TCP flow to its
//! destination (or to the DNS server, for TCP to the virtual DNS address), relayed with the
//! inbounds' own relay and policy timeouts.
//!
//! A flow that cannot be opened, is refused by its destination, breaks, or is evicted ends
//! for the app with a RST (see [`reset`]); one the server ends normally, with a FIN.
//!
//! Backpressure: the relay reads from the stack only as fast as the tunnel takes bytes, so a
//! slow server fills the stack's receive buffer and the app's TCP window closes; bytes from
//! the server wait in the tunnel's bounded queue until the stack has room.

use super::Ctx;
use super::flows::{Flow, FlowKey};
use super::reset::{self, Conn};
use super::stats::add;
use crate::proxy::relay::{self, open_within};
use crate::proxy::vless::{Command, Target};
use futures_util::StreamExt;
use netstack_smoltcp::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

pub async fn accept(ctx: Arc<Ctx>, mut listener: TcpListener) {
    while let Some((stream, src, dst)) = listener.next().await {
        let flow = ctx.admit(FlowKey::Tcp { src, dst });
        tokio::spawn(carry(ctx.clone(), stream, src, dst, flow));
    }
}

/// How a carried connection ends for the app.
enum Ending {
    /// A FIN: the server ended the flow (or the app's side failed: nothing to tell it).
    Fin,
    /// A RST: the flow could not be opened, was refused, broke, or was evicted.
    Reset,
}

async fn carry(
    ctx: Arc<Ctx>,
    mut stream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    flow: Arc<Flow>,
) {
    let c = &ctx.counters;
    add(&c.tcp_total, 1);
    let _active = super::Active::new(&c.tcp_active);
    let target = match ctx.opts.dns.as_ref().and_then(|d| d.redirect(dst)) {
        Some(server) => {
            add(&c.dns_total, 1);
            server.clone()
        }
        None => Target::from(dst),
    };
    let who = format!("tun: TCP {target}");
    let refused = CancellationToken::new();
    let ending = tokio::select! {
        // Evicted, or the TUN stopping (then `reset` sends nothing).
        _ = flow.stop.cancelled() => Ending::Reset,
        e = carry_open(&ctx, &who, &target, &mut stream, &flow, &refused) => e,
    };
    let ending = if refused.is_cancelled() {
        add(&c.open_failed, 1);
        log::info!("{who}: the server ended the flow without a byte: refused (reset)");
        Ending::Reset
    } else {
        ending
    };
    let conn = Conn {
        app: src,
        remote: dst,
    };
    let key = FlowKey::Tcp { src, dst };
    // A newer connection on the same addresses owns the numbers now: leave it alone.
    if ctx.table().superseded(&key, &flow) {
        drop(stream);
    } else {
        match ending {
            Ending::Reset => ctx.reset(conn, stream).await,
            Ending::Fin => ctx.seqs().forget(&conn),
        }
    }
    ctx.forget(&key, &flow);
}

/// Opens the flow's tunnel and relays until the flow ends (or `refused` is cancelled).
async fn carry_open(
    ctx: &Ctx,
    who: &str,
    target: &Target,
    stream: &mut TcpStream,
    flow: &Flow,
    refused: &CancellationToken,
) -> Ending {
    let policy = ctx.dialer.config().policy;
    let open = relay::Flow::open(&ctx.dialer, Command::Tcp, target);
    let tunnel = match open_within(policy.open_timeout, open).await {
        Ok(t) => t,
        Err(e) => {
            add(&ctx.counters.open_failed, 1);
            relay::log_open_failure(who, &e);
            return Ending::Reset;
        }
    };
    let app = Counted {
        inner: stream,
        ctx,
        flow,
        down: 0,
        app_finished: false,
        refused,
    };
    let (rd, wr) = tokio::io::split(app);
    let r = tokio::select! {
        r = relay::relay(rd, wr, &tunnel, &[], policy.idle) => r,
        // The relay would go on waiting for the app; the flow is over.
        _ = refused.cancelled() => Ok(()),
    };
    tunnel.close();
    relay::log_relay_end(who, &r);
    match r {
        // A download cut short must not look complete to the app.
        Err(relay::RelayError::Tunnel(_)) => Ending::Reset,
        Ok(()) | Err(relay::RelayError::App(_)) => Ending::Fin,
    }
}

/// The app's side of a flow, counting bytes and marking the flow active as they move, and
/// telling a refusal (see [`reset::server_refused`]) from a normal end when the relay
/// passes the server's end on.
struct Counted<'a> {
    inner: &'a mut TcpStream,
    ctx: &'a Ctx,
    flow: &'a Flow,
    /// Bytes written to the app.
    down: u64,
    /// The app has ended its sending (EOF read).
    app_finished: bool,
    refused: &'a CancellationToken,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n == 0 && room && matches!(r, Poll::Ready(Ok(()))) {
            self.app_finished = true;
        }
        if n > 0 {
            add(&self.ctx.counters.bytes_up, n as u64);
            self.flow.touch(self.ctx.now_ms());
        }
        r
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.down += n as u64;
            add(&self.ctx.counters.bytes_down, n as u64);
            self.flow.touch(self.ctx.now_ms());
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    /// The server ended the flow: a FIN to the app, unless that end is a refusal, which
    /// must reach the app as a reset (so no FIN may go first).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if reset::server_refused(self.down, self.app_finished) {
            self.refused.cancel();
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionRefused.into()));
        }
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
