//! nearkv: microsecond reads of NATS JetStream KV buckets from an in-memory mirror.
//!
//! - [`cache`]: the embeddable part: one actor per bucket keeps a mirror fed by a KV watcher;
//!   reads come from memory, writes go to NATS and return once the mirror shows them.
//! - [`server`]: serves the cache over a Unix socket (protocol v1, docs/PROTOCOL.md).
//! - [`client`]: the Rust client of that protocol; the CLI is built on it.

pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod keys;
pub mod nats;
pub mod protocol;
pub mod server;

use std::sync::Arc;

pub use cache::{Bucket, Cache};
pub use client::Client;
pub use error::{Error, ErrorCode};

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
pub async fn serve(config: config::Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    config.validate()?;
    let mode = config.socket.mode_bits()?;
    let server = server::Server::bind(&config.socket, mode).await?;
    let client = nats::connect(&config.nats).await?;
    let cache = Cache::start(
        client,
        config.buckets.clone(),
        config.nats.request_timeout,
        config.socket.request_timeout,
    );
    tracing::info!(
        socket = %server.path().display(),
        buckets = ?config.buckets.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        "nearkv serving"
    );
    let cache = Arc::new(cache);
    server.run(cache.clone(), shutdown).await;
    if let Ok(cache) = Arc::try_unwrap(cache) {
        cache.shutdown().await;
    }
    tracing::info!("nearkv stopped");
    Ok(())
}
