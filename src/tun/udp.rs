//! The app's UDP: each app socket (source address) is one flow and one full-cone
//! [`UdpSession`] (XUDP): it may send to any destination, and a reply from any source reaches
//! it with that source. DNS to the virtual DNS address goes to the DNS server and its replies
//! come back from the address the app asked.
//!
//! Backpressure: UDP may drop, and here it drops rather than waits: each flow queues a few
//! datagrams; when a slow tunnel lets the queue fill, further datagrams of that flow are
//! dropped and counted, and no other flow waits.

use super::Ctx;
use super::dns::reply_source;
use super::flows::{Flow, FlowKey};
use super::stats::add;
use crate::proxy::udp::{UdpOptions, UdpSession};
use crate::proxy::vless::Target;
use futures_util::{SinkExt, StreamExt};
use netstack_smoltcp::UdpSocket;
use netstack_smoltcp::udp::UdpMsg;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Datagrams a flow queues towards its session before it drops.
const FLOW_QUEUE: usize = 64;
/// Replies queued towards the stack (all flows).
const REPLY_QUEUE: usize = 256;

type Datagram = (Vec<u8>, SocketAddr);

pub async fn run(ctx: Arc<Ctx>, socket: UdpSocket) {
    let (mut from_app, mut to_app) = socket.split();
    let (reply_tx, mut reply_rx) = mpsc::channel::<UdpMsg>(REPLY_QUEUE);
    let writer = async move {
        while let Some(m) = reply_rx.recv().await {
            if let Err(e) = to_app.send(m).await {
                log::warn!("tun: UDP reply not written: {e}");
                return;
            }
        }
    };
    let reader = async {
        let mut queues: HashMap<SocketAddr, mpsc::Sender<Datagram>> = HashMap::new();
        while let Some((data, src, dst)) = from_app.next().await {
            let live = queues.get(&src).filter(|q| !q.is_closed()).cloned();
            let q = match live {
                Some(q) => q,
                None => {
                    if queues.len() > 2 * ctx.opts.max_flows {
                        queues.retain(|_, q| !q.is_closed());
                    }
                    let (tx, rx) = mpsc::channel(FLOW_QUEUE);
                    let key = FlowKey::Udp { src };
                    let flow = ctx.admit(key);
                    tokio::spawn(carry(ctx.clone(), src, flow, rx, reply_tx.clone()));
                    queues.insert(src, tx.clone());
                    tx
                }
            };
            if q.try_send((data, dst)).is_err() {
                add(&ctx.counters.drop_udp, 1);
            }
        }
    };
    tokio::join!(reader, writer);
}

async fn carry(
    ctx: Arc<Ctx>,
    src: SocketAddr,
    flow: Arc<Flow>,
    mut datagrams: mpsc::Receiver<Datagram>,
    replies: mpsc::Sender<UdpMsg>,
) {
    let c = &ctx.counters;
    add(&c.udp_total, 1);
    let _active = super::Active::new(&c.udp_active);
    let key = FlowKey::Udp { src };
    let opts = UdpOptions {
        idle_timeout: ctx.opts.udp_idle,
    };
    // The source names the session as Xray's inbounds do: one GlobalID per app socket.
    let session = match UdpSession::new(
        ctx.dialer.clone(),
        &format!("tun:udp:{src}"),
        opts,
        flow.stop.child_token(),
    ) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("tun: UDP from {src}: {e}");
            ctx.forget(&key, &flow);
            return;
        }
    };
    let dns = ctx.opts.dns.as_ref();
    // The virtual DNS address this socket last asked (replies from the server carry it).
    let mut asked: Option<SocketAddr> = None;
    let idle = ctx.opts.udp_idle;
    loop {
        let quiet = Duration::from_millis(ctx.now_ms().saturating_sub(flow.last()));
        tokio::select! {
            _ = flow.stop.cancelled() => break,
            d = datagrams.recv() => {
                let Some((data, dst)) = d else { break };
                flow.touch(ctx.now_ms());
                let target = match dns.and_then(|d| d.redirect(dst)) {
                    Some(server) => {
                        add(&c.dns_total, 1);
                        asked = Some(dst);
                        server.clone()
                    }
                    None => Target::from(dst),
                };
                add(&c.bytes_up, data.len() as u64);
                if let Err(e) = session.send_to(&target, &data).await {
                    add(&c.drop_udp, 1);
                    log::debug!("tun: UDP {src} -> {target}: {e}");
                }
            }
            r = session.recv_from() => {
                let Ok((data, from)) = r else { break };
                flow.touch(ctx.now_ms());
                let Some(from) = reply_source(&from, dns.zip(asked), src) else {
                    add(&c.drop_udp, 1);
                    continue;
                };
                add(&c.bytes_down, data.len() as u64);
                if replies.send((data.to_vec(), from, src)).await.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(idle.saturating_sub(quiet)) => {
                if Duration::from_millis(ctx.now_ms().saturating_sub(flow.last())) >= idle {
                    log::debug!("tun: UDP {src}: quiet for {idle:?}, ending its session");
                    break;
                }
            }
        }
    }
    session.close();
    ctx.forget(&key, &flow);
}
