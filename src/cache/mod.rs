//! The embeddable cache: one mirrored bucket per configured bucket, each kept by its own actor.
//!
//! Usable in any Rust process without the socket server:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use nearkv::config::{BucketConfig, NatsConfig};
//! let cache = nearkv::Cache::connect(&NatsConfig::default(), vec![BucketConfig::named("shop_orders")]).await?;
//! let orders = cache.bucket("shop_orders")?;
//! orders.wait_synced(std::time::Duration::from_secs(10)).await?;
//! let entry = orders.get_cached("order-1")?;
//! # Ok(()) }
//! ```

mod actor;
mod bucket;
mod checker;
pub(crate) mod error;
mod feed;
mod link;
mod memory;
mod mirror;
mod recovery;
mod saved;
mod slot;
mod state;
mod strong;
mod watch;
mod writes;

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use bucket::mget_too_large;
pub use bucket::{Bucket, SaveStats, SentWrite, MAX_MGET_BYTES};
pub use error::{Error, ErrorKind, Result};
pub use memory::map_large_allocations;
pub use mirror::Mirror;
pub use watch::{Watch, WatchItem};

use crate::config::{BucketConfig, CacheConfig, NatsConfig};
use crate::nats::{connect, ConnectError, Connected};

pub struct Cache {
    buckets: HashMap<String, Bucket, ahash::RandomState>,
    /// The same handles, in configuration order.
    order: Vec<Bucket>,
    client: async_nats::Client,
    shutdown: CancellationToken,
    /// Every background task of every bucket: actors, stream checkers, strong-read fetches.
    tasks: TaskTracker,
}

impl Cache {
    /// Connects to NATS and starts mirroring `buckets`. Returns at once; each bucket serves reads
    /// once its initial sync is done (see [`Bucket::wait_synced`]).
    pub async fn connect(
        nats: &NatsConfig,
        buckets: Vec<BucketConfig>,
    ) -> Result<Cache, ConnectError> {
        Ok(Cache::start(
            connect(nats, None).await?,
            buckets,
            &CacheConfig::default(),
            nats.request_timeout,
            nats.request_timeout,
        ))
    }

    /// Starts mirroring `buckets` over an existing NATS connection (an `async_nats::Client`, or
    /// what [`crate::nats::connect`] made), saving the mirrors for warm starts as `saving` says.
    /// `nats_timeout` bounds each NATS request; `default_timeout` bounds reads and writes that do
    /// not carry their own.
    pub fn start(
        nats: impl Into<Connected>,
        buckets: Vec<BucketConfig>,
        saving: &CacheConfig,
        nats_timeout: Duration,
        default_timeout: Duration,
    ) -> Cache {
        let Connected { client, events } = nats.into();
        let shutdown = CancellationToken::new();
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(nats_timeout);
        let mut map = HashMap::default();
        let mut order = Vec::new();
        let tasks = TaskTracker::new();
        let (link, link_receiver) = tokio::sync::watch::channel(link::Link::of(&client));
        tasks.spawn(link::monitor(
            client.clone(),
            link,
            events,
            shutdown.clone(),
        ));
        for config in buckets {
            let name = config.name.clone();
            let bucket = Bucket::spawn(state::Origin {
                config,
                client: client.clone(),
                js: js.clone(),
                default_timeout,
                saving: saving.clone(),
                link: link_receiver.clone(),
                tasks: tasks.clone(),
                shutdown: shutdown.child_token(),
            });
            order.push(bucket.clone());
            map.insert(name, bucket);
        }
        Cache {
            buckets: map,
            order,
            client,
            shutdown,
            tasks,
        }
    }

    pub fn bucket(&self, name: &str) -> Result<&Bucket> {
        self.buckets
            .get(name)
            .ok_or_else(|| Error::unknown_bucket(name))
    }

    /// The buckets in configuration order.
    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.order.iter()
    }

    pub fn nats_client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Stops every bucket's actor, stream checker and strong-read fetches, saves the mirrors
    /// (with a `state_dir`), and waits for all of it.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
