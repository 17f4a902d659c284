//! The operators' HTTP endpoint: `/metrics` for Prometheus, `/healthz` for liveness and
//! `/readyz` for readiness.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

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

/// Serves the endpoint on `listener` until `shutdown` is cancelled.
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
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "HTTP endpoint failed");
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
