//! A local TCP forwarder: every accepted connection becomes one tunnel. Without `vlessId` the
//! tunnel is raw and the server's inbound (Xray `tunnel`/`dokodemo-door`) decides where the
//! bytes go; with `vlessId` it is a VLESS TCP tunnel to a fixed destination.

use super::relay::{Flow, IdleTimeouts, relay};
use super::vless::{self, Target};
use crate::error::{Error, Result};
use crate::tunnel::Dialer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

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
    super::accept::run(listener, shutdown, "forward", move |tcp, peer, _token| {
        let (dialer, to) = (dialer.clone(), to.clone());
        async move {
            let open = async {
                match &to {
                    Some(t) => Flow::open(&dialer, vless::Command::Tcp, t).await,
                    None => Flow::open_raw(&dialer).await,
                }
            };
            let flow = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return log::debug!("forward: {peer}: opening the tunnel: {e}"),
                Err(_) => return log::debug!("forward: {peer}: opening the tunnel timed out"),
            };
            if let Err(e) = relay(tcp, &flow, &[], IdleTimeouts::XRAY).await {
                log::debug!("forward: {peer}: {e}");
            }
            flow.close();
        }
    })
    .await
}
