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

/// Alive means the socket answers a `ping`, the way an application would use it.
async fn healthz(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    match tokio::time::timeout(Duration::from_secs(2), ping(&endpoint.socket)).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the socket {} does not answer: {err}\n",
                endpoint.socket.display()
            ),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the socket {} did not answer a ping within 2 s\n",
                endpoint.socket.display()
            ),
        ),
    }
}

async fn ping(socket: &std::path::Path) -> std::io::Result<()> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    let mut frame = Vec::new();
    encode(1, &Request::Ping, &mut frame);
    stream.write_all(&frame).await?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let mut body = vec![0u8; u32::from_be_bytes(len).min(4096) as usize];
    stream.read_exact(&mut body).await?;
    Ok(())
}

/// Ready means every bucket has completed its initial sync and NATS is connected; the body
/// names each bucket that is not, and why.
async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    let mut body = String::new();
    let mut ready = true;
    for bucket in endpoint.cache.buckets() {
        match bucket.readiness() {
            Ok(()) => body.push_str(&format!("{}: ready\n", bucket.name())),
            Err(reason) => {
                ready = false;
                body.push_str(&format!("{}: not ready: {reason}\n", bucket.name()));
            }
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
