//! The operators' HTTP endpoint: `/metrics` for Prometheus, `/healthz` for liveness and
//! `/readyz` for readiness.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::protocol::request::{encode, Request};
use crate::protocol::response::Head;

#[derive(Clone)]
struct Endpoint {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    socket: PathBuf,
}

/// Connections the endpoint holds at once. Probes and scrapes need a handful; the cap bounds what
/// a client that opens many connections can take (about 16 KiB and a descriptor each).
const MAX_CONNECTIONS: usize = 256;

/// How long a connection may take to send a request's headers, and may stay idle between
/// requests. Without it, a client that opens connections and never finishes a request would hold
/// each one (and its descriptor) for ever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for requests in progress: longer than the slowest (`/healthz` waits up
/// to 2 s for the socket's answer).
const REQUESTS_FINISH_WITHIN: Duration = Duration::from_secs(3);

/// Serves the endpoint on `listener` until `shutdown` is cancelled, then lets requests in
/// progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    socket: PathBuf,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoint {
            cache,
            metrics,
            socket,
        });
    let open = Arc::new(OpenConnections::default());
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, or a connection reset before it was accepted: the listener
                // itself is fine. A pause keeps a lack of descriptors from spinning the loop.
                tracing::warn!(error = %err, "HTTP endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (id, evicted) = open.admit();
        let service = TowerToHyperService::new(app.clone());
        let (shutdown, open) = (shutdown.clone(), open.clone());
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = evicted.cancelled() => Ok(()),
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            open.close(id);
            if let Err(err) = served {
                tracing::debug!(error = %err, "HTTP endpoint: connection ended");
            }
        });
    }
    connections.close();
    // Requests in progress finish; a client still sending its headers is not waited for.
    let _ = tokio::time::timeout(REQUESTS_FINISH_WITHIN, connections.wait()).await;
}

/// The endpoint's open connections, oldest first. When [`MAX_CONNECTIONS`] are open, a new one
/// closes the oldest rather than being refused: a probe's connection lives for milliseconds, so
/// a client holding many connections open cannot keep the kubelet's probes out, only churn its
/// own connections.
#[derive(Default)]
struct OpenConnections {
    by_age: Mutex<BTreeMap<u64, CancellationToken>>,
    next_id: AtomicU64,
}

impl OpenConnections {
    /// Registers a new connection; returns its id and the token that closes it if it is evicted.
    fn admit(&self) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut by_age = self.by_age.lock().unwrap_or_else(PoisonError::into_inner);
        if by_age.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest)) = by_age.pop_first() {
                tracing::debug!(
                    limit = MAX_CONNECTIONS,
                    "HTTP endpoint: too many connections, the oldest closed"
                );
                oldest.cancel();
            }
        }
        by_age.insert(id, token.clone());
        (id, token)
    }

    fn close(&self, id: u64) {
        self.by_age
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

async fn metrics_text(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        endpoint.metrics.render(),
    )
}

/// Alive means the socket answers a `ping` with `ok`, the way an application would use it. The
/// probe's own connection comes from this process, which the socket exempts from its peer and
/// connection limits: a full or restricted socket does not make a working sidecar look dead.
async fn healthz(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    let socket = endpoint.socket.display();
    match tokio::time::timeout(Duration::from_secs(2), ping(&endpoint.socket)).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the socket {socket} does not answer a ping: {err}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the socket {socket} did not answer a ping within 2 s\n"),
        ),
    }
}

async fn ping(socket: &std::path::Path) -> std::io::Result<()> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    let mut frame = Vec::new();
    encode(1, &Request::Ping, &mut frame);
    // A socket that refuses this connection says why and closes it, perhaps before the ping is
    // written: read its answer even when the write failed.
    let written = stream.write_all(&frame).await;
    let mut len = [0u8; 4];
    if let Err(err) = stream.read_exact(&mut len).await {
        return Err(written.err().unwrap_or(err));
    }
    let mut body = vec![0u8; u32::from_be_bytes(len).min(64 * 1024) as usize];
    stream.read_exact(&mut body).await?;
    let head: Head = rmp_serde::from_slice(&body)
        .map_err(|err| std::io::Error::other(format!("an undecodable answer: {err}")))?;
    match (head.id, head.ok, head.error) {
        (1, Some(true), _) => Ok(()),
        (_, _, Some(error)) => Err(std::io::Error::other(format!(
            "it answered {}: {}",
            error.code, error.message
        ))),
        (id, ok, None) => Err(std::io::Error::other(format!(
            "it answered id {id} with ok {ok:?} instead of ok to ping 1"
        ))),
    }
}

/// Ready latches once every bucket has completed its initial sync, as a local cache should:
/// after that the mirror serves reads whether or not NATS is reachable (fail-static), so a
/// NATS outage must not take every application pod out of its Service. It fails again only while
/// a bucket is `stale` (its `max_staleness` exceeded), exactly when reads would fail. The body
/// names each bucket's state, NATS connection included.
async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    let mut body = String::new();
    let mut ready = true;
    for bucket in endpoint.cache.buckets() {
        let readiness = bucket.readiness();
        ready &= readiness.ready;
        body.push_str(&format!("{}: {}\n", bucket.name(), readiness.text));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
