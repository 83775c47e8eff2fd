//! Listener, TLS and HTTP/1.1 connections. TLS handshakes, header reads and (in routes) body
//! reads are time-limited (slow clients cannot pin connections), connections are counted per
//! address and in all (`limits`: no client can fill the descriptor table), header buffers are
//! bounded, and shutting down closes every open connection, which is how `system.lockdown`
//! makes the agent unreachable, as the conductor expects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::limits::{self, Slots};
use super::routes::{handle, ApiState, Resp};

/// Longest TLS handshake: a real client finishes in milliseconds; an idle one holds a slot.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Largest request head (line and headers) read into memory.
const MAX_HEAD: usize = 64 << 10;

pub struct Server {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stop accepting, close every connection, and wait for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub async fn start(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<ApiState>,
) -> std::io::Result<Server> {
    let listener = bind(addr)?;
    let local_addr = listener.local_addr()?;
    let (stop, mut stop_rx) = watch::channel(false);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let total = limits::total_for(crate::system::fdlimit::nofile());
    let slots = Slots::new(total, limits::PER_PEER);
    tracing::debug!(total, per_peer = limits::PER_PEER, "API connection limits");
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let mut last_refusal_logged: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let slot = match slots.take(peer.ip()) {
                        Ok(s) => s,
                        Err(why) => {
                            // Closed at once: the listener keeps accepting, so the conductor's
                            // connection never waits behind these in the backlog.
                            drop(stream);
                            if last_refusal_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                last_refusal_logged = Some(tokio::time::Instant::now());
                                tracing::warn!(%peer, reason = %why, open = slots.open(), "connections refused (logged every 10 s at most)");
                            }
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    let acceptor = acceptor.clone();
                    let limit = state.client_timeout.min(HANDSHAKE_LIMIT);
                    conns.spawn(async move {
                        let _slot = slot;
                        match acceptor {
                            Some(acc) => match tokio::time::timeout(limit, acc.accept(stream)).await {
                                Ok(Ok(tls)) => serve(TokioIo::new(tls), state).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            },
                            None => serve(TokioIo::new(stream), state).await,
                        }
                    });
                }
            }
        }
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        tracing::info!("agent API stopped");
    });
    Ok(Server {
        local_addr,
        stop,
        task,
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted agent must be able to rebind at once.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}

async fn handle_or_500(req: hyper::Request<hyper::body::Incoming>, state: Arc<ApiState>) -> Resp {
    or_500(handle(req, state)).await
}

/// A request whose handling panics (a bug) gets a 500 with a `faultstring`, like any other
/// error, instead of a dropped connection; the agent serves on.
async fn or_500(work: impl std::future::Future<Output = Resp>) -> Resp {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            super::routes::error_response(&crate::error::ApiError::new(
                500,
                "Internal error in the agent (a bug; please report it)",
            ))
        })
}

async fn serve<I>(io: TokioIo<I>, state: Arc<ApiState>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limit = state.client_timeout;
    let svc = service_fn(move |req| {
        let st = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle_or_500(req, st).await) }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limit)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true)
        .serve_connection(io, svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_request_is_a_500_with_a_faultstring() {
        use http_body_util::BodyExt as _;
        let resp = or_500(async { panic!("a bug") }).await;
        assert_eq!(resp.status().as_u16(), 500);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["faultstring"]
            .as_str()
            .unwrap()
            .contains("Internal error"));
        // and the runtime that ran it goes on
        let ok = or_500(async {
            super::super::routes::error_response(&crate::error::ApiError::new(404, "x"))
        })
        .await;
        assert_eq!(ok.status().as_u16(), 404);
    }
}
