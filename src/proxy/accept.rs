//! The accept loop shared by the local inbounds: one task per connection, each with a
//! child of the shutdown token; a connection's failure (even a panic) stays in its task.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// After shutdown, how long connections get to drop their sockets and tunnels.
const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// Accepts until `shutdown` is cancelled, then cancels every connection, closes the
/// listener and waits (bounded) for the connection tasks to end. A connection task ends
/// when `handle` returns or its token is cancelled, whichever comes first.
pub(crate) async fn run<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    name: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = r {
                    log::warn!("{name}: connection task failed: {e}");
                }
            }
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let token = shutdown.child_token();
                    let work = handle(tcp, peer, token.clone());
                    tasks.spawn(async move {
                        // Anything the connection spawned (UDP flows) ends with it, even
                        // if it panicked.
                        let _cancel_on_exit = token.clone().drop_guard();
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = work => {}
                        }
                    });
                }
                Err(e) => {
                    // e.g. out of file descriptors: back off rather than spin.
                    log::warn!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_BOUND, drain).await.is_err() {
        log::warn!("{name}: connections still closing after {CLOSE_BOUND:?}; aborting them");
        tasks.abort_all();
    }
}
