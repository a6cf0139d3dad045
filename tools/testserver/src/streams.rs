//! The long-lived requests: stream-down GETs and stream-one (§3.1), stream-up POSTs (§3.2),
//! and requests held by `Fault::StallResponse`. Each request's receive half is owned by one
//! future and dropped to cancel it (never stopped after a cancelled read).

use super::Shared;
use super::download::Download;
use super::events::{Event, Outcome, RequestKind};
use super::exchange::Exchange;
use super::quic::{self, Stop, StopWatch, read_outcome, write_outcome};
use super::run_end::RunEnd;
use super::session::{Attach, Session, StreamMsg, Upload, UploadError};
use super::target::Runner;
use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::RequestStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use xhttp_mobile::config::XhttpSettings;

type RequestRecv = RequestStream<quic::RecvHalf, Bytes>;

/// Chunks in flight from a streaming request body to its reader.
const STREAM_BUFFER: usize = 16;

/// How long a streaming body is still read after its reader went away, so that a client's
/// reset arriving together with the end of the download is recorded as such.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

fn stream_down_headers(s: &XhttpSettings, gzip: bool) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("x-accel-buffering", "no"), ("cache-control", "no-store")];
    if !s.no_sse_header {
        v.push(("content-type", "text/event-stream"));
    }
    if gzip {
        v.push(("content-encoding", "gzip"));
    }
    v
}

fn stop_outcome(s: Stop) -> Outcome {
    match s {
        Stop::Stopped(code) => Outcome::Stopped(code),
        Stop::Lost(e) => Outcome::Error(e),
    }
}

fn to_bytes(mut b: impl Buf) -> Bytes {
    b.copy_to_bytes(b.remaining())
}

/// Resolves only if the request body fails (a GET's reset); a clean end waits forever.
async fn body_failure(recv: RequestRecv) -> Outcome {
    let mut recv = recv;
    loop {
        match recv.recv_data().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return read_outcome(&e),
        }
    }
    std::future::pending().await
}

/// Reads a body to its end, discarding it.
async fn drain(recv: &mut RequestRecv, shared: &Shared) -> Outcome {
    loop {
        match recv.recv_data().await {
            Ok(Some(b)) => shared.rec.uploaded(b.remaining()),
            Ok(None) => return Outcome::Finished,
            Err(e) => return read_outcome(&e),
        }
    }
}

/// Forwards a streaming request body (stream-up, stream-one) to its reader and records how
/// the body ended.
async fn pump_body(
    shared: &Shared,
    mut recv: RequestRecv,
    tx: mpsc::Sender<StreamMsg>,
    kind: RequestKind,
    session: Option<String>,
) {
    let record = |outcome: Outcome| {
        shared.rec.push(Event::UploadEnded {
            kind,
            session: session.clone(),
            outcome,
        })
    };
    loop {
        tokio::select! {
            r = recv.recv_data() => match r {
                Ok(Some(buf)) => {
                    let b = to_bytes(buf);
                    shared.rec.uploaded(b.len());
                    // Waits while the reader is behind: flow control then reaches the client.
                    if !b.is_empty() && tx.send(Ok(b)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    record(Outcome::Finished);
                    // Dropping `tx` tells the reader the body ended cleanly.
                    return;
                }
                Err(e) => {
                    let o = read_outcome(&e);
                    record(o.clone());
                    let _ = tx.send(Err(o)).await;
                    return;
                }
            },
            _ = tx.closed() => break,
        }
    }
    // The reader (download side / session) went away first.
    let outcome = match tokio::time::timeout(DRAIN_GRACE, drain(&mut recv, shared)).await {
        Ok(o) => o,
        Err(_) => {
            recv.stop_sending(Code::H3_NO_ERROR);
            Outcome::Closed("the session ended".into())
        }
    };
    record(outcome);
}

/// Runs the target between an upload and a response body until one side ends.
/// `same_stream`: the upload is this request's own body (stream-one).
async fn run_download(
    shared: &Shared,
    send: &mut Download,
    request_body: Option<RequestRecv>,
    stop: &mut StopWatch,
    mut upload: Upload,
    session: Option<String>,
    same_stream: bool,
) -> Outcome {
    enum End {
        Run(RunEnd),
        Stop(Stop),
        BodyFailed(Outcome),
        Shutdown,
    }
    let mut runner = Runner::new(shared.target);
    let body = async {
        match request_body {
            Some(recv) => body_failure(recv).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        r = runner.run(&mut upload, send, &shared.rec) => End::Run(r),
        s = stop.wait() => End::Stop(s),
        o = body => End::BodyFailed(o),
        _ = shared.shutdown.fired() => End::Shutdown,
    };
    if let End::Run(RunEnd::TargetFailed(why)) = &end {
        shared.rec.push(Event::TargetFailed {
            session: session.clone(),
            reason: why.clone(),
        });
    }
    runner.finish(&mut upload, &shared.rec, session);
    match end {
        End::Run(RunEnd::UploadDone | RunEnd::TargetDone) => match send.finish().await {
            Ok(()) => Outcome::Finished,
            Err(e) => write_outcome(&e),
        },
        // Like Xray: the tunnelled connection closes, so the response ends normally.
        End::Run(RunEnd::UploadFailed(e)) => {
            let _ = send.finish().await;
            match e {
                UploadError::Stream(o) if same_stream => o,
                e => Outcome::Closed(e.to_string()),
            }
        }
        End::Run(RunEnd::WriteFailed(o)) => o,
        End::Run(RunEnd::TargetFailed(why)) => {
            let _ = send.finish().await;
            Outcome::Closed(why)
        }
        End::Stop(s) => stop_outcome(s),
        End::BodyFailed(o) => {
            send.stop_stream(Code::H3_REQUEST_CANCELLED);
            o
        }
        End::Shutdown => {
            send.stop_stream(Code::H3_NO_ERROR);
            Outcome::Closed("server shut down".into())
        }
    }
}

/// §3.1 with a session: the GET that carries the download.
pub(crate) async fn stream_down(mut ex: Exchange, session: Arc<Session>) {
    let shared = ex.shared.clone();
    let mut session = session;
    let mut queue = None;
    // A session reaped between the lookup and here is looked up (created) again.
    for _ in 0..3 {
        match session.attach() {
            Attach::Attached(q) => {
                queue = Some(q);
                break;
            }
            Attach::Taken => return ex.reply(409).await,
            Attach::Closed => session = shared.sessions.upsert(&session.id),
        }
    }
    let Some(queue) = queue else {
        return ex.reply(500).await;
    };
    let gzip = shared.gzip_download && ex.accepts_gzip;
    let outcome = match ex
        .send_head(200, &stream_down_headers(&shared.settings, gzip))
        .await
    {
        Err(e) => write_outcome(&e),
        Ok(()) => {
            let mut stop = ex.stop;
            let (send, recv) = ex.stream.split();
            let mut send = Download::new(send, gzip, shared.rec.clone());
            let id = Some(session.id.clone());
            run_download(
                &shared,
                &mut send,
                Some(recv),
                &mut stop,
                Upload::Queue(queue),
                id,
                false,
            )
            .await
        }
    };
    shared.sessions.remove(&session);
    session.close();
    shared.rec.push(Event::DownloadEnded {
        session: Some(session.id.clone()),
        outcome,
    });
}

/// §3.1 without a session: request body up, response body down.
pub(crate) async fn stream_one(mut ex: Exchange) {
    let shared = ex.shared.clone();
    let gzip = shared.gzip_download && ex.accepts_gzip;
    if let Err(e) = ex
        .send_head(200, &stream_down_headers(&shared.settings, gzip))
        .await
    {
        shared.rec.push(Event::DownloadEnded {
            session: None,
            outcome: write_outcome(&e),
        });
        return;
    }
    let mut stop = ex.stop;
    let (send, recv) = ex.stream.split();
    let mut send = Download::new(send, gzip, shared.rec.clone());
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let pump = pump_body(&shared, recv, tx, RequestKind::StreamOne, None);
    let down = run_download(
        &shared,
        &mut send,
        None,
        &mut stop,
        Upload::Stream(rx),
        None,
        true,
    );
    let ((), outcome) = tokio::join!(pump, down);
    shared.rec.push(Event::DownloadEnded {
        session: None,
        outcome,
    });
}

/// §3.2: the POST whose body is the session's upload. `keepalive`: the request had a Referer
/// or accepted obfs padding, so padding is written into the response body.
pub(crate) async fn stream_up(mut ex: Exchange, session: Arc<Session>, keepalive: bool) {
    let shared = ex.shared.clone();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    if session.claim_stream(rx).await.is_err() {
        return ex.reply(409).await;
    }
    let headers = [("x-accel-buffering", "no"), ("cache-control", "no-store")];
    if let Err(e) = ex.send_head(200, &headers).await {
        let o = write_outcome(&e);
        shared.rec.push(Event::UploadEnded {
            kind: RequestKind::StreamUp,
            session: Some(session.id.clone()),
            outcome: o.clone(),
        });
        let _ = tx.try_send(Err(o));
        return;
    }
    let mut stop = ex.stop;
    let (mut send, recv) = ex.stream.split();
    let pump = pump_body(
        &shared,
        recv,
        tx,
        RequestKind::StreamUp,
        Some(session.id.clone()),
    );
    let response = async {
        let s = &shared.settings;
        let padding = keepalive && s.sc_stream_up_server_secs.to > 0;
        loop {
            let (n, secs) = {
                let mut rng = rand::rng();
                (
                    s.padding.bytes.draw(&mut rng),
                    s.sc_stream_up_server_secs.draw(&mut rng),
                )
            };
            if padding
                && n > 0
                && send
                    .send_data(Bytes::from(vec![b'X'; n as usize]))
                    .await
                    .is_err()
            {
                return;
            }
            let tick = async {
                if padding {
                    tokio::time::sleep(Duration::from_secs(secs.max(1) as u64)).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = tick => {}
                _ = session.closed.fired() => break,
                _ = shared.shutdown.fired() => break,
                _ = stop.wait() => return,
            }
        }
        let _ = send.finish().await;
    };
    tokio::join!(pump, response);
}

/// `Fault::StallResponse`: no answer; wait until the client goes away.
pub(crate) async fn stall(ex: Exchange) {
    ex.record_request(0);
    let shared = ex.shared.clone();
    let kind = ex.kind.unwrap_or(RequestKind::Any);
    let mut stop = ex.stop;
    let (mut send, recv) = ex.stream.split();
    let outcome = tokio::select! {
        s = stop.wait() => stop_outcome(s),
        o = body_failure(recv) => o,
        _ = shared.shutdown.fired() => Outcome::Closed("server shut down".into()),
    };
    send.stop_stream(Code::H3_REQUEST_CANCELLED);
    shared.rec.push(Event::StallEnded { kind, outcome });
}
