//! nearkv: microsecond reads of NATS JetStream KV buckets from an in-memory mirror.
//!
//! - [`cache`]: the embeddable part: one actor per bucket keeps a mirror fed by a KV watcher;
//!   reads come from memory, writes go to NATS and return once the mirror shows them.
//! - [`serve`]: the sidecar: the cache served over a Unix socket (protocol v1, docs/PROTOCOL.md),
//!   with metrics and probes over HTTP.
//! - [`client`]: the Rust client of that protocol; the `nearkv` command is built on it.
//! - [`protocol`]: protocol v1's frames, requests and responses, shared by server and client.

mod backoff;
pub mod cache;
pub mod client;
mod cmd;
pub mod config;
pub mod error;
mod http;
pub mod keys;
mod metrics;
pub mod nats;
pub mod protocol;
mod server;

use std::sync::Arc;

pub use cache::{Bucket, Cache};
pub use client::Client;
pub use error::{Error, ErrorCode};
pub use server::BindError;

/// Entry points for the fuzz targets (fuzz/): not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::server::parse_resp_stream;
}

use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error(transparent)]
    Connect(#[from] nats::ConnectError),
}

/// Runs the sidecar until `shutdown` is cancelled: binds the socket, connects to NATS, mirrors
/// the configured buckets and serves clients; then shuts down cleanly.
///
/// Everything runs on the caller's runtime: the clients' connections, the NATS connection and
/// the bucket actors. The `nearkv` binary gives it `socket.threads` threads, one by default:
/// measured on two cores, a write that hops between threads (client's connection, NATS's, the
/// mirror's feed) costs more in wakeups than the hop saves (docs/BENCHMARKS.md).
pub async fn serve(config: config::Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    config.validate()?;
    warn_if_the_health_probe_is_refused(&config.socket);
    let mode = config.socket.mode_bits()?;
    // The socket is what applications depend on; an HTTP port taken by another process (a
    // second sidecar on the same host, say) disables the endpoint loudly rather than the sidecar.
    let http_listener = match config.http.address()? {
        Some(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::error!(
                    %address,
                    error = %err,
                    "HTTP endpoint (/metrics, /healthz, /readyz) disabled: cannot listen; set --http-listen or [http] listen"
                );
                None
            }
        },
        None => None,
    };
    let server = server::Server::bind(&config.socket, mode, config.socket.group_id()?).await?;
    let bucket_names: Vec<&str> = config.buckets.iter().map(|b| b.name.as_str()).collect();
    let metrics = metrics::Metrics::new(&bucket_names);
    let nats = nats::connect(&config.nats, Some(metrics.nats_reconnects.clone())).await?;
    let cache = Arc::new(Cache::start(
        nats,
        config.buckets.clone(),
        &config.cache,
        config.nats.request_timeout,
        config.socket.request_timeout,
    ));
    metrics.watch_cache(cache.clone());
    let http = http_listener.map(|listener| {
        tracing::info!(address = %config.http.listen, "HTTP endpoint: /metrics /healthz /readyz");
        tokio::spawn(http::serve(
            listener,
            cache.clone(),
            metrics.clone(),
            server.path().to_path_buf(),
            shutdown.clone(),
        ))
    });
    tracing::info!(
        socket = %server.path().display(),
        buckets = ?config.buckets.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        "nearkv serving"
    );
    let requests = server::RequestBudgets::new(config.socket.max_buffered_bytes);
    let (arriving, waiting) = (requests.arriving.clone(), requests.waiting.clone());
    metrics.gauge_at_scrape(
        "nearkv_buffered_request_bytes",
        "Bytes of clients' requests held against socket.max_buffered_bytes, each part at most half \
         of it: arriving (requests still arriving, past their first 64 KiB), waiting (frames of \
         protocol v1 requests waiting for NATS or the mirror, and pipelined Redis SETs and DELs).",
        "part",
        vec![
            ("arriving", Box::new(move || arriving.held_bytes())),
            ("waiting", Box::new(move || waiting.held_bytes())),
        ],
    );
    let ctx = Arc::new(server::Context {
        cache: cache.clone(),
        metrics,
        requests,
    });
    server.run(ctx, shutdown).await;
    let grace = config.socket.shutdown_grace;
    if tokio::time::timeout(grace, cache.shutdown()).await.is_err() {
        tracing::warn!(
            ?grace,
            "bucket tasks did not stop within the shutdown grace period"
        );
    }
    if let Some(http) = http {
        let _ = http.await;
    }
    tracing::info!("nearkv stopped");
    Ok(())
}

/// `/healthz` pings the socket as the sidecar's own user: peer checks that leave it out make the
/// probe fail, which operators should learn at start rather than from a restarting pod.
fn warn_if_the_health_probe_is_refused(socket: &config::SocketConfig) {
    use std::os::unix::fs::MetadataExt;
    if socket.allow_uids.is_empty() && socket.allow_gids.is_empty() {
        return;
    }
    if let Ok(me) = std::fs::metadata("/proc/self") {
        if !socket.allow_uids.contains(&me.uid()) && !socket.allow_gids.contains(&me.gid()) {
            tracing::warn!(
                uid = me.uid(),
                gid = me.gid(),
                "socket.allow_uids / allow_gids leave out the sidecar's own user, so /healthz (which \
                 pings the socket as that user) will answer 503: add the uid or gid"
            );
        }
    }
}
