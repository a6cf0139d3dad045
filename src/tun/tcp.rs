//! The app's TCP connections: each one the stack accepts becomes a VLESS TCP flow to its
//! destination (or to the DNS server, for TCP to the virtual DNS address), relayed with the
//! inbounds' own relay and policy timeouts.
//!
//! Backpressure: the relay reads from the stack only as fast as the tunnel takes bytes, so a
//! slow server fills the stack's receive buffer and the app's TCP window closes; bytes from
//! the server wait in the tunnel's bounded queue until the stack has room.

use super::Ctx;
use super::flows::{Flow, FlowKey};
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

pub async fn accept(ctx: Arc<Ctx>, mut listener: TcpListener) {
    while let Some((stream, src, dst)) = listener.next().await {
        let flow = ctx.admit(FlowKey::Tcp { src, dst });
        tokio::spawn(carry(ctx.clone(), stream, src, dst, flow));
    }
}

async fn carry(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    flow: Arc<Flow>,
) {
    let c = &ctx.counters;
    add(&c.tcp_total, 1);
    let _active = super::Active::new(&c.tcp_active);
    let key = FlowKey::Tcp { src, dst };
    let target = match ctx.opts.dns.as_ref().and_then(|d| d.redirect(dst)) {
        Some(server) => {
            add(&c.dns_total, 1);
            server.clone()
        }
        None => Target::from(dst),
    };
    let who = format!("tun: TCP {target}");
    let policy = ctx.dialer.config().policy;
    tokio::select! {
        _ = flow.stop.cancelled() => {}
        _ = async {
            let open = crate::proxy::relay::Flow::open(&ctx.dialer, Command::Tcp, &target);
            let tunnel = match open_within(policy.open_timeout, open).await {
                Ok(t) => t,
                Err(e) => {
                    add(&c.open_failed, 1);
                    relay::log_open_failure(&who, &e);
                    return;
                }
            };
            let app = Counted { inner: stream, ctx: &ctx, flow: &flow };
            let (rd, wr) = tokio::io::split(app);
            let r = relay::relay(rd, wr, &tunnel, &[], policy.idle).await;
            tunnel.close();
            relay::log_relay_end(&who, &r);
        } => {}
    }
    ctx.forget(&key, &flow);
}

/// The app's side of a flow, counting bytes and marking the flow active as they move.
struct Counted<'a> {
    inner: TcpStream,
    ctx: &'a Ctx,
    flow: &'a Flow,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
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
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            add(&self.ctx.counters.bytes_down, n as u64);
            self.flow.touch(self.ctx.now_ms());
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
