//! A local TCP forwarder: every accepted connection becomes one tunnel. Without `vlessId` the
//! tunnel is raw and the server's inbound (Xray `tunnel`/`dokodemo-door`) decides where the
//! bytes go; with `vlessId` it is a VLESS TCP tunnel to a fixed destination.

use super::relay::{Flow, log_open_failure, log_relay_end, open_within, relay};
use super::vless::{self, Target};
use crate::error::{Error, Result};
use crate::tunnel::Dialer;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Checks that `to` fits the config: VLESS needs a destination, a raw tunnel cannot carry one.
pub fn check_destination(dialer: &Dialer, to: Option<&Target>) -> Result<()> {
    match (&dialer.config().vless, to) {
        (Some(_), None) => Err(Error::Other(
            "forward: the config has vlessId, so a destination (host:port) is needed".into(),
        )),
        (None, Some(t)) => Err(Error::Other(format!(
            "forward: destination {t} given but the config has no vlessId; a raw tunnel \
             cannot carry a destination (the server's inbound picks it)"
        ))),
        _ => Ok(()),
    }
}

/// Forwards connections accepted on `listener` until `shutdown` is cancelled, then closes
/// the listener and every connection and tunnel. Call [`check_destination`] first.
pub async fn serve(
    listener: TcpListener,
    dialer: Arc<Dialer>,
    to: Option<Target>,
    shutdown: CancellationToken,
) {
    let policy = dialer.config().policy;
    super::accept::run(listener, shutdown, "forward", move |tcp, peer, _token| {
        let (dialer, to) = (dialer.clone(), to.clone());
        async move {
            let mut tcp = tcp;
            let open = async {
                match &to {
                    Some(t) => Flow::open(&dialer, vless::Command::Tcp, t).await,
                    None => Flow::open_raw(&dialer).await,
                }
            };
            let who = format!("forward: {peer}");
            let flow = match open_within(policy.open_timeout, open).await {
                Ok(f) => f,
                Err(e) => return log_open_failure(&who, &e),
            };
            let (rd, wr) = tcp.split();
            log_relay_end(&who, &relay(rd, wr, &flow, &[], policy.idle).await);
            flow.close();
        }
    })
    .await
}
