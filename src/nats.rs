//! The NATS side: connecting with the configured credentials, and opening (or creating) buckets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, kv, stream::StorageType};
use async_nats::{ConnectOptions, Event};
use tokio::sync::Notify;

use crate::config::{BucketConfig, NatsConfig, Storage};

/// Messages a subscription may hold before async-nats drops them as a slow consumer. A feed's
/// snapshot arrives as fast as the server sends it, in flow-control windows bigger than async-nats'
/// default of 65,536 messages: with that default a million-key snapshot dropped thousands of
/// messages (each drop makes the ordered consumer start over from the gap), with 2^17 a few
/// hundred, with 2^18 none in the runs measured. The queue grows only as far as it is used, and
/// it bounds what a feed that cannot keep up may hold (2^18 small messages: under 100 MiB).
const SUBSCRIPTION_CAPACITY: usize = 1 << 18;

/// A NATS client, and word of its connection's changes when its event callback is ours.
pub struct Connected {
    pub client: async_nats::Client,
    pub(crate) events: Option<ConnectionEvents>,
}

/// A client connected elsewhere (by an embedder): nothing reports its connection's changes, so
/// they are found by reading its state often.
impl From<async_nats::Client> for Connected {
    fn from(client: async_nats::Client) -> Self {
        Connected {
            client,
            events: None,
        }
    }
}

/// Signalled by the client's event callback on every event (a connect, a disconnect, ...), so
/// that whoever follows the connection's state need not poll it often to notice a change soon.
#[derive(Clone, Default)]
pub(crate) struct ConnectionEvents(Arc<Notify>);

impl ConnectionEvents {
    pub(crate) fn signal(&self) {
        // Kept as a permit if nobody waits: an event is never missed.
        self.0.notify_one();
    }

    pub(crate) async fn heard(&self) {
        self.0.notified().await;
    }
}

/// Connects to NATS. The connection is established in the background and re-established forever
/// after a loss, so the sidecar can start before NATS and outlive an outage.
///
/// `reconnects` counts every connection after the first.
pub async fn connect(
    config: &NatsConfig,
    reconnects: Option<prometheus::IntCounter>,
) -> Result<Connected, ConnectError> {
    let events = ConnectionEvents::default();
    let connected_before = Arc::new(AtomicBool::new(false));
    let mut options = match &config.credentials_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.display().to_string(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_string());
    }
    if let Some(path) = &config.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::Credentials {
            path: path.display().to_string(),
            source,
        })?;
        options = options.nkey(seed.trim().to_string());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required || config.tls_ca_file.is_some() || config.tls_cert_file.is_some() {
        options = options.require_tls(true);
    }
    if config.retain_servers_order {
        options = options.retain_servers_order();
    }
    options = options
        .name(&config.connection_name)
        .request_timeout(Some(config.request_timeout))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback({
            let events = events.clone();
            move |event| {
                events.signal();
                let connected_before = connected_before.clone();
                let reconnects = reconnects.clone();
                async move {
                    match event {
                        Event::Connected => {
                            if connected_before.swap(true, Ordering::Relaxed) {
                                if let Some(counter) = &reconnects {
                                    counter.inc();
                                }
                                tracing::info!("reconnected to NATS");
                            } else {
                                tracing::info!("connected to NATS");
                            }
                        }
                        Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; reconnecting")
                        }
                        other => tracing::warn!(event = %other, "NATS connection event"),
                    }
                }
            }
        });
    let client = async_nats::connect_with_options(config.servers.as_slice(), options)
        .await
        .map_err(ConnectError::Connect)?;
    Ok(Connected {
        client,
        events: Some(events),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials or key file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
}

/// Why a bucket could not be opened; the actor retries, and `not_ready` answers carry this text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error(
        "bucket `{0}` does not exist in NATS: create it (`nats kv add {0}`) or set `create = true` for it in the config"
    )]
    Missing(String),
    #[error("cannot open bucket `{bucket}`: {message}")]
    Failed { bucket: String, message: String },
}

/// Opens the bucket, creating it with the configured settings when it is missing and `create` is set.
pub async fn open_bucket(
    js: &jetstream::Context,
    config: &BucketConfig,
) -> Result<kv::Store, OpenError> {
    let failed = |message: String| OpenError::Failed {
        bucket: config.name.clone(),
        message,
    };
    match js.get_stream(format!("KV_{}", config.name)).await {
        Ok(_) => {}
        Err(err) => {
            let missing = matches!(
                err.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            if !missing {
                return Err(failed(err.to_string()));
            }
            if !config.create {
                return Err(OpenError::Missing(config.name.clone()));
            }
            tracing::info!(bucket = %config.name, "creating bucket");
            return js
                .create_key_value(kv::Config {
                    bucket: config.name.clone(),
                    history: config.history,
                    max_age: config.max_age,
                    max_value_size: config.max_value_size,
                    storage: match config.storage {
                        Storage::File => StorageType::File,
                        Storage::Memory => StorageType::Memory,
                    },
                    num_replicas: config.replicas,
                    limit_markers: (!config.limit_markers.is_zero())
                        .then_some(config.limit_markers),
                    ..Default::default()
                })
                .await
                .map_err(|err| failed(format!("create failed: {err}")));
        }
    }
    js.get_key_value(&config.name)
        .await
        .map_err(|err| failed(err.to_string()))
}
