//! One mirrored bucket: a cheap cloneable handle that serves reads from the mirror and sends
//! writes to NATS, and the actor task that owns the bucket's KV watcher and feeds the mirror.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::mirror::Mirror;
use super::watch::Watch;
use super::writes;
use crate::config::BucketConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::keys::{filter_matches, validate_filter, validate_key};
use crate::nats::open_bucket;
use crate::protocol::{BucketStatus, Consistency, Entry, Operation, ReadOptions, WriteOptions};

/// Room for updates a watch may fall behind by before it is ended with `slow_consumer`.
const WATCH_BUFFER: usize = 16 * 1024;

/// A handle to one mirrored bucket. Cloning is cheap; all clones share the mirror.
#[derive(Clone)]
pub struct Bucket {
    shared: Arc<Shared>,
}

struct Shared {
    config: BucketConfig,
    mirror: Mirror,
    js: jetstream::Context,
    client: async_nats::Client,
    /// Set once by the actor when the bucket is open.
    store: OnceLock<kv::Store>,
    /// Why the bucket is not (yet) serving, for `not_ready` answers.
    problem: Mutex<Option<String>>,
    default_timeout: Duration,
    /// The stream's latest revision as last learned from NATS.
    server_revision: AtomicU64,
    watcher_restarts: AtomicU64,
}

impl Bucket {
    /// Creates the handle and spawns the actor that keeps its mirror.
    pub(crate) fn spawn(
        config: BucketConfig,
        client: async_nats::Client,
        js: jetstream::Context,
        default_timeout: Duration,
        shutdown: CancellationToken,
    ) -> (Bucket, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            config,
            mirror: Mirror::new(WATCH_BUFFER),
            js,
            client,
            store: OnceLock::new(),
            problem: Mutex::new(Some("the bucket is being opened".to_string())),
            default_timeout,
            server_revision: AtomicU64::new(0),
            watcher_restarts: AtomicU64::new(0),
        });
        let actor = Actor {
            shared: shared.clone(),
            shutdown,
            sync_target: None,
        };
        let span = tracing::info_span!("bucket", bucket = %shared.config.name);
        let task = tokio::spawn(tracing::Instrument::instrument(actor.run(), span));
        (Bucket { shared }, task)
    }

    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    pub fn mirror(&self) -> &Mirror {
        &self.shared.mirror
    }

    fn timeout(&self, timeout_ms: Option<u64>) -> Duration {
        timeout_ms.map_or(self.shared.default_timeout, Duration::from_millis)
    }

    fn not_ready(&self) -> Error {
        let problem = self
            .shared
            .problem
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
            .unwrap_or_else(|| "the initial sync is in progress".to_string());
        Error::new(
            ErrorCode::NotReady,
            format!(
                "bucket `{}` is not synced yet: {problem}; retry shortly",
                self.shared.config.name
            ),
        )
    }

    fn check_synced(&self) -> Result<()> {
        if self.shared.mirror.is_synced() {
            Ok(())
        } else {
            Err(self.not_ready())
        }
    }

    fn check_readable_key(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let filter = &self.shared.config.filter;
        if filter_matches(filter, key) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "key `{key}` is outside the filter `{filter}` this sidecar mirrors bucket `{}` with",
                    self.shared.config.name
                ),
            ))
        }
    }

    /// The key's value from the mirror, now. `None` when it is absent or deleted.
    pub fn get_cached(&self, key: &str) -> Result<Option<Entry>> {
        self.check_readable_key(key)?;
        self.check_synced()?;
        Ok(self.shared.mirror.get(key))
    }

    /// Calls `f` with the key's entry as the mirror holds it now, borrowed rather than copied:
    /// the read path of the socket server.
    pub fn read_cached<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<crate::protocol::types::EntryRef<'_>>) -> R,
    ) -> Result<R> {
        self.check_cached_reads(&[key])?;
        Ok(self.shared.mirror.read(key, f))
    }

    /// The checks of a read from the mirror, for each key: a valid key inside the filter, and a
    /// synced mirror. After they pass, [`Mirror::read`] answers each key without failing.
    pub fn check_cached_reads(&self, keys: &[&str]) -> Result<()> {
        for key in keys {
            self.check_readable_key(key)?;
            self.check_synced()?;
        }
        Ok(())
    }

    /// The key's value, after waiting for the freshness `read` asks for.
    pub async fn get(&self, key: &str, read: ReadOptions) -> Result<Option<Entry>> {
        self.check_readable_key(key)?;
        self.prepare_read(&[key], read).await?;
        Ok(self.shared.mirror.get(key))
    }

    pub async fn mget(&self, keys: &[&str], read: ReadOptions) -> Result<Vec<Option<Entry>>> {
        for key in keys {
            self.check_readable_key(key)?;
        }
        self.prepare_read(keys, read).await?;
        Ok(keys.iter().map(|key| self.shared.mirror.get(key)).collect())
    }

    /// Whether a read with these options can be answered from the mirror without waiting.
    pub fn is_immediate(read: &ReadOptions) -> bool {
        read.min_revision.is_none() && read.consistency == Consistency::Cached
    }

    async fn prepare_read(&self, keys: &[&str], read: ReadOptions) -> Result<()> {
        let timeout = self.timeout(read.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(min) = read.min_revision {
            self.shared.mirror.wait_for(min, timeout).await?;
        }
        if read.consistency == Consistency::Strong {
            let target = tokio::time::timeout_at(deadline, self.strong_target(keys))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorCode::Timeout,
                        "NATS did not report the bucket's latest revision in time for a strong read",
                    )
                })??;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.shared.mirror.wait_for(target, left).await?;
        }
        self.check_synced()
    }

    /// The revision the mirror must reach to reflect every write acknowledged so far: the stream's
    /// last sequence (asked of the stream leader), or for a filtered mirror, which never sees
    /// revisions outside its filter, the latest revision of each key read.
    async fn strong_target(&self, keys: &[&str]) -> Result<u64> {
        let store = self.store()?;
        let unavailable = |err: &dyn std::fmt::Display| {
            Error::new(
                ErrorCode::Unavailable,
                format!("a strong read needs NATS, which did not answer: {err}"),
            )
        };
        if self.shared.config.filter == ">" {
            let info = store.stream.get_info().await.map_err(|e| unavailable(&e))?;
            return Ok(info.state.last_sequence);
        }
        let mut target = 0;
        for key in keys {
            let subject = format!("{}{}", store.prefix, key);
            match store.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => target = target.max(message.sequence),
                Err(err)
                    if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                }
                Err(err) => return Err(unavailable(&err)),
            }
        }
        Ok(target)
    }

    /// Live keys matching `filter` (default: all), sorted.
    pub fn keys(&self, filter: Option<&str>) -> Result<Vec<String>> {
        if let Some(filter) = filter {
            validate_filter(filter)?;
        }
        self.check_synced()?;
        Ok(self
            .shared
            .mirror
            .keys(|key| filter.is_none_or(|f| filter_matches(f, key))))
    }

    pub fn status(&self) -> BucketStatus {
        let mirror = &self.shared.mirror;
        let revision = mirror.applied();
        let server_revision = self
            .shared
            .server_revision
            .load(Ordering::Relaxed)
            .max(revision);
        BucketStatus {
            bucket: self.shared.config.name.clone(),
            synced: mirror.is_synced(),
            connected: self.shared.client.connection_state()
                == async_nats::connection::State::Connected,
            keys: mirror.len() as u64,
            bytes: mirror.bytes(),
            revision,
            server_revision,
            lag: server_revision - revision,
            last_update: mirror.last_update(),
        }
    }

    /// Whether the bucket should receive traffic: synced, and connected to NATS.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.shared.mirror.is_synced() {
            return Err(self.not_ready().message);
        }
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(
                "the NATS connection is down; reads are served from the last known state"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// Times the bucket's KV watcher was recreated after a loss.
    pub fn watcher_restarts(&self) -> u64 {
        self.shared.watcher_restarts.load(Ordering::Relaxed)
    }

    /// Waits until the initial snapshot is applied, for embedders that want to start serving only then.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.mirror.is_synced() {
            if tokio::time::Instant::now() >= deadline {
                return Err(self.not_ready());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn store(&self) -> Result<&kv::Store> {
        self.shared.store.get().ok_or_else(|| self.not_ready())
    }

    pub async fn put(&self, key: &str, value: Bytes, write: WriteOptions) -> Result<u64> {
        validate_key(key)?;
        self.check_value_size(key, value.len())?;
        self.write(key, Operation::Put, value, write).await
    }

    pub async fn delete(&self, key: &str, write: WriteOptions) -> Result<u64> {
        validate_key(key)?;
        self.write(key, Operation::Delete, Bytes::new(), write)
            .await
    }

    pub async fn purge(&self, key: &str, write: WriteOptions) -> Result<u64> {
        validate_key(key)?;
        self.write(key, Operation::Purge, Bytes::new(), write).await
    }

    fn check_value_size(&self, key: &str, len: usize) -> Result<()> {
        let store = self.store()?;
        let bucket_limit = store.stream.cached_info().config.max_message_size;
        let server_limit = self.shared.client.server_info().max_payload;
        let too_large = |limit: usize, what: &str| {
            Error::new(
                ErrorCode::ValueTooLarge,
                format!("the value for `{key}` is {len} bytes; {what} allows at most {limit}"),
            )
        };
        if bucket_limit > 0 && len > bucket_limit as usize {
            return Err(too_large(
                bucket_limit as usize,
                &format!("bucket `{}`'s max_value_size", self.shared.config.name),
            ));
        }
        // Leave room for the subject and headers that travel with the value.
        if server_limit > 0 && len + key.len() + 256 > server_limit {
            return Err(too_large(
                server_limit.saturating_sub(key.len() + 256),
                "the NATS server's max_payload",
            ));
        }
        Ok(())
    }

    /// Sends the write, then waits until this sidecar's mirror has applied its revision, so that
    /// every later read through this sidecar sees it.
    async fn write(
        &self,
        key: &str,
        operation: Operation,
        value: Bytes,
        write: WriteOptions,
    ) -> Result<u64> {
        let timeout = self.timeout(write.timeout_ms);
        let store = self.store()?;
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "not connected to NATS; the write was not sent: retry when NATS is reachable",
            ));
        }
        let revision = writes::write(
            &self.shared.js,
            store,
            key,
            operation,
            value,
            write.expect_revision,
        )
        .await?;
        if filter_matches(&self.shared.config.filter, key) {
            self.shared
                .mirror
                .wait_for(revision, timeout)
                .await
                .map_err(|mut err| {
                    err.message = format!(
                        "the write was stored at revision {revision}, but {}",
                        err.message
                    );
                    err.revision = Some(revision);
                    err
                })?;
        }
        Ok(revision)
    }

    /// Streams the bucket's changes for keys matching `filter`: with `initial`, first every live
    /// entry, then a `Synced` marker; then each put, delete and purge as it is applied.
    pub fn watch(&self, filter: Option<&str>, initial: bool) -> Result<Watch> {
        if let Some(filter) = filter {
            validate_filter(filter)?;
        }
        self.check_synced()?;
        Ok(Watch::start(
            &self.shared.mirror,
            filter.map(str::to_string),
            initial,
        ))
    }
}

/// Owns the bucket's KV watcher: opens the bucket, applies every update to the mirror in revision
/// order, and recreates the watcher from the last applied revision when it is lost.
struct Actor {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// The stream's last sequence when the first watcher was created: the mirror is synced once
    /// it has applied it.
    sync_target: Option<u64>,
}

enum WatchEnd {
    Shutdown,
    Lost(String),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an initial sync logs its progress, and how often the stream's revision is polled.
const SYNC_PROGRESS_EVERY: Duration = Duration::from_secs(2);
const STREAM_POLL_EVERY: Duration = Duration::from_secs(5);
/// Errors in a row after which a watcher is recreated instead of left to recover by itself.
const WATCHER_ERROR_LIMIT: u32 = 3;

impl Actor {
    fn set_problem(&self, problem: Option<String>) {
        if let Ok(mut slot) = self.shared.problem.lock() {
            *slot = problem;
        }
    }

    /// Sleeps for the backoff (with jitter), or returns false on shutdown.
    async fn backoff(&self, attempt: &mut u32) -> bool {
        let base = BACKOFF_MIN
            .saturating_mul(1 << (*attempt).min(6))
            .min(BACKOFF_MAX);
        let jitter = Duration::from_millis(u64::from(std::process::id() ^ *attempt) % 100);
        *attempt += 1;
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(base + jitter) => true,
        }
    }

    async fn run(mut self) {
        let mut attempt = 0;
        let store = loop {
            let opened = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                opened = open_bucket(&self.shared.js, &self.shared.config) => opened,
            };
            match opened {
                Ok(store) => break store,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot open bucket; retrying");
                    self.set_problem(Some(err.to_string()));
                    if !self.backoff(&mut attempt).await {
                        return;
                    }
                }
            }
        };
        let _ = self.shared.store.set(store.clone());
        self.set_problem(None);
        tokio::spawn(poll_stream_revision(
            self.shared.clone(),
            store.stream.clone(),
            self.shutdown.clone(),
        ));
        attempt = 0;
        loop {
            match self.watch(&store).await {
                WatchEnd::Shutdown => return,
                WatchEnd::Lost(reason) => {
                    self.shared.watcher_restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        %reason,
                        applied = self.shared.mirror.applied(),
                        "bucket watcher lost; recreating it from the last applied revision"
                    );
                    if !self.shared.mirror.is_synced() {
                        self.set_problem(Some(reason));
                    }
                    if !self.backoff(&mut attempt).await {
                        return;
                    }
                }
            }
        }
    }

    /// Runs one watcher until it is lost or the sidecar shuts down.
    async fn watch(&mut self, store: &kv::Store) -> WatchEnd {
        let mirror = &self.shared.mirror;
        let filter = self.shared.config.filter.as_str();
        let filtered = filter != ">";
        let mut watcher = tokio::select! {
            _ = self.shutdown.cancelled() => return WatchEnd::Shutdown,
            created = create_watcher(&self.shared, store, filter) => match created {
                Ok((watcher, target)) => {
                    if target.is_some() {
                        self.sync_target = target;
                    }
                    watcher
                }
                Err(err) => return WatchEnd::Lost(format!("cannot create watcher: {err}")),
            },
        };
        let mut errors = 0;
        let mut progress_logged = tokio::time::Instant::now();
        loop {
            let item = tokio::select! {
                _ = self.shutdown.cancelled() => return WatchEnd::Shutdown,
                item = watcher.next() => item,
            };
            let entry = match item {
                None => return WatchEnd::Lost("the watcher ended".to_string()),
                Some(Err(err)) => {
                    // The ordered consumer usually recovers by itself after an error item.
                    errors += 1;
                    tracing::debug!(error = %err, errors, "watcher error");
                    if errors >= WATCHER_ERROR_LIMIT {
                        return WatchEnd::Lost(format!(
                            "watcher failed {errors} times in a row: {err}"
                        ));
                    }
                    continue;
                }
                Some(Ok(entry)) => entry,
            };
            errors = 0;
            let revision = entry.revision;
            let seen_current = entry.seen_current;
            mirror.apply(Entry {
                key: entry.key,
                // A copy, so the mirror does not pin the connection's larger read buffer.
                value: Bytes::copy_from_slice(&entry.value),
                revision,
                created: (entry.created.unix_timestamp_nanos()).clamp(0, i64::MAX as i128) as i64,
                operation: match entry.operation {
                    kv::Operation::Put => Operation::Put,
                    kv::Operation::Delete => Operation::Delete,
                    kv::Operation::Purge => Operation::Purge,
                },
            });
            if !mirror.is_synced() && progress_logged.elapsed() >= SYNC_PROGRESS_EVERY {
                progress_logged = tokio::time::Instant::now();
                tracing::info!(
                    keys_loaded = mirror.len(),
                    revision,
                    target_revision = self.sync_target.unwrap_or(0),
                    "initial sync in progress"
                );
            }
            if !mirror.is_synced() {
                if let Some(target) = self.sync_target {
                    if revision >= target || (filtered && seen_current) {
                        mirror.advance(target);
                        mirror.mark_synced();
                        tracing::info!(
                            keys = mirror.len(),
                            revision = mirror.applied(),
                            "mirror synced"
                        );
                    }
                }
            }
        }
    }
}

/// Creates the watcher: the first one delivers each key's latest value and then live changes
/// (and reports the revision the mirror is synced at); later ones resume after the last applied
/// revision, so no change is lost or applied twice.
async fn create_watcher(
    shared: &Shared,
    store: &kv::Store,
    filter: &str,
) -> Result<(kv::Watch, Option<u64>), String> {
    let mirror = &shared.mirror;
    let mut target = None;
    if mirror.applied() == 0 && !mirror.is_synced() {
        let last = initial_sync_target(mirror, store, filter).await?;
        shared.server_revision.fetch_max(last, Ordering::Relaxed);
        target = Some(last);
        if !mirror.is_synced() {
            let watcher = store
                .watch_with_history(filter)
                .await
                .map_err(|e| e.to_string())?;
            return Ok((watcher, target));
        }
    }
    let watcher = store
        .watch_from_revision(filter, mirror.applied() + 1)
        .await
        .map_err(|e| e.to_string())?;
    Ok((watcher, target))
}

/// Reads where the stream ends before the first watcher starts; an empty bucket (or filter)
/// is synced at once, since its watcher would deliver nothing to say so.
async fn initial_sync_target(
    mirror: &Mirror,
    store: &kv::Store,
    filter: &str,
) -> Result<u64, String> {
    let info = store
        .stream
        .get_info()
        .await
        .map_err(|e| format!("cannot read the bucket's stream info: {e}"))?;
    let last = info.state.last_sequence;
    let mut empty = info.state.messages == 0;
    if !empty && filter != ">" {
        let subject = format!("{}{}", store.prefix, filter);
        let mut subjects = store
            .stream
            .info_with_subjects(subject)
            .await
            .map_err(|e| format!("cannot list the bucket's keys: {e}"))?;
        empty = subjects.next().await.is_none();
    }
    if empty {
        mirror.advance(last);
        mirror.mark_synced();
        tracing::info!(revision = last, "mirror synced (no keys)");
    }
    Ok(last)
}

/// Keeps the bucket's `server_revision` current, so lag can be reported even when no update
/// reaches the watcher. Stops on shutdown; failures (NATS away) are simply retried next time.
async fn poll_stream_revision(
    shared: Arc<Shared>,
    stream: jetstream::stream::Stream,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(STREAM_POLL_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Ok(info) = stream.get_info().await {
            shared
                .server_revision
                .fetch_max(info.state.last_sequence, Ordering::Relaxed);
        }
    }
}
