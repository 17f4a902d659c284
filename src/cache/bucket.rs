//! One mirrored bucket: a cheap cloneable handle that serves reads from the mirror and sends
//! writes to NATS. The actor that feeds the mirror is in `actor.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;

use super::actor::Actor;
use super::mirror::{unix_nanos, walk_off_thread_if, Mirror, SHARDS, WALKED_INLINE};
use super::state::{Origin, State};
use super::watch::Watch;
use super::writes;
use crate::cache::error::{Error, ErrorKind, Result};
use crate::keys::{filter_matches, max_key_length, quote, validate_filter, validate_key};
use crate::protocol::{
    BucketStatus, Consistency, Entry, Freshness, Operation, ReadOptions, WriteOptions,
};

/// Whether a bucket should receive traffic, and its state in words for `/readyz`.
pub struct Readiness {
    pub ready: bool,
    pub text: String,
}

/// The most bytes of values one `mget` (or Redis `MGET`) answers with: a request of a few
/// kilobytes that names a large value thousands of times must not build gigabytes (3,000 names
/// of a 1 MB value held 2.9 GB).
pub const MAX_MGET_BYTES: usize = 64 * 1024 * 1024;

/// The error of an `mget` whose values exceed [`MAX_MGET_BYTES`].
pub(crate) fn mget_too_large(bytes: usize, keys: usize) -> Error {
    Error::new(
        ErrorKind::ValueTooLarge,
        format!(
            "the values of these {keys} keys hold {bytes} bytes, more than one mget answers with \
             ({MAX_MGET_BYTES} bytes): ask for fewer keys at a time"
        ),
    )
}

/// A handle to one mirrored bucket. Cloning is cheap; all clones share the mirror.
#[derive(Clone)]
pub struct Bucket {
    state: Arc<State>,
}

impl Bucket {
    /// Creates the handle and spawns the actor that keeps its mirror.
    pub(super) fn spawn(origin: Origin) -> Bucket {
        let tasks = origin.tasks.clone();
        let shutdown = origin.shutdown.clone();
        let state = Arc::new(State::new(origin));
        let span = tracing::info_span!("bucket", bucket = %state.name());
        let actor = Actor::new(state.clone(), shutdown);
        tasks.spawn(tracing::Instrument::instrument(actor.run(), span));
        Bucket { state }
    }

    pub fn name(&self) -> &str {
        &self.state.config().name
    }

    pub fn mirror(&self) -> &Mirror {
        self.state.mirror()
    }

    fn timeout(&self, timeout_ms: Option<u64>) -> Duration {
        timeout_ms.map_or(self.state.default_timeout(), Duration::from_millis)
    }

    fn not_ready(&self) -> Error {
        let problem = self
            .state
            .problem()
            .unwrap_or_else(|| "the initial sync is in progress".to_string());
        Error::new(
            ErrorKind::NotReady,
            format!(
                "bucket `{}` is not synced yet: {problem}; retry shortly",
                &self.state.config().name
            ),
        )
    }

    fn check_synced(&self) -> Result<()> {
        if self.state.mirror().is_synced() {
            Ok(())
        } else {
            Err(self.not_ready())
        }
    }

    fn check_readable_key(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let filter = &self.state.config().filter;
        if filter_matches(filter, key) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::BadRequest,
                format!(
                    "key `{}` is outside the filter `{filter}` this sidecar mirrors bucket `{}` with",
                    quote(key),
                    &self.state.config().name
                ),
            ))
        }
    }

    /// Fails with `stale` when the bucket has a `max_staleness` and NATS last confirmed the
    /// mirror current longer ago than that, unless the caller accepts stale data.
    fn check_fresh(&self, allow_stale: bool) -> Result<()> {
        let (Some(max), false) = (self.state.config().max_staleness, allow_stale) else {
            return Ok(());
        };
        match self.state.mirror().age() {
            Some(age) if age <= max => Ok(()),
            age => Err(Error::new(
                ErrorKind::Stale,
                format!(
                    "bucket `{}`'s mirror was last confirmed current by NATS {}, more than its \
                     max_staleness of {} ms; NATS may be unreachable. Retry later, or send \
                     allow_stale: true to accept the cached value",
                    self.state.config().name,
                    age.map_or("never".to_string(), |a| format!("{} ms ago", a.as_millis())),
                    max.as_millis()
                ),
            )),
        }
    }

    /// Whether the mirror exceeds the bucket's `max_staleness`.
    pub fn is_stale(&self) -> bool {
        self.state.mirror().is_synced() && self.check_fresh(false).is_err()
    }

    /// The mirror's freshness for a read now: synced, and fresh enough unless `allow_stale`.
    /// Read before the entries, so that each entry answered reflects every update up to
    /// `revision`.
    pub fn freshness(&self, allow_stale: bool) -> Result<Freshness> {
        self.check_synced()?;
        self.check_fresh(allow_stale)?;
        let mirror = &self.state.mirror();
        Ok(Freshness {
            revision: mirror.applied(),
            age_ms: mirror.age().map_or(u64::MAX, |age| age.as_millis() as u64),
        })
    }

    /// The key's value from the mirror, now. `None` when it is absent or deleted.
    pub fn get_cached(&self, key: &str) -> Result<Option<Entry>> {
        self.check_readable_key(key)?;
        self.freshness(false)?;
        Ok(self.state.mirror().get(key))
    }

    /// How long the key's value lives on, from the mirror now: `None` when the key has no value,
    /// `Some(None)` when it never expires.
    pub fn time_to_live(&self, key: &str) -> Result<Option<Option<Duration>>> {
        self.check_readable_key(key)?;
        self.freshness(false)?;
        Ok(self.state.mirror().expiry(key).map(|expires| {
            (expires != 0)
                .then(|| Duration::from_nanos(expires.saturating_sub(unix_nanos()).max(0) as u64))
        }))
    }

    /// The checks of a read from the mirror without waiting: valid keys inside the filter, a
    /// synced mirror, fresh enough. After they pass, [`Mirror::read`] answers each key.
    pub fn check_cached_reads<K: AsRef<str>>(
        &self,
        keys: &[K],
        allow_stale: bool,
    ) -> Result<Freshness> {
        for key in keys {
            self.check_readable_key(key.as_ref())?;
        }
        self.freshness(allow_stale)
    }

    /// The key's value, after waiting for the freshness `read` asks for.
    pub async fn get(&self, key: &str, read: ReadOptions) -> Result<(Option<Entry>, Freshness)> {
        self.check_readable_key(key)?;
        let freshness = self.prepare_read(read).await?;
        Ok((self.state.mirror().get(key), freshness))
    }

    pub async fn mget(
        &self,
        keys: &[&str],
        read: ReadOptions,
    ) -> Result<(Vec<Option<Entry>>, Freshness)> {
        for key in keys {
            self.check_readable_key(key)?;
        }
        let freshness = self.prepare_read(read).await?;
        let entries = self
            .state
            .mirror()
            .get_many(keys, MAX_MGET_BYTES)
            .map_err(|bytes| mget_too_large(bytes, keys.len()))?;
        Ok((entries, freshness))
    }

    /// Whether a read with these options can be answered from the mirror without waiting.
    pub fn is_immediate(read: &ReadOptions) -> bool {
        read.min_revision.is_none() && read.consistency == Consistency::Cached
    }

    /// Waits until the mirror can answer a read of `keys` as `read` asks (a revision, a strong
    /// read), so that the answer itself can then be made at once from the mirror.
    pub async fn wait_to_read<K: AsRef<str>>(&self, keys: &[K], read: ReadOptions) -> Result<()> {
        for key in keys {
            self.check_readable_key(key.as_ref())?;
        }
        self.prepare_read(read).await.map(|_| ())
    }

    async fn prepare_read(&self, read: ReadOptions) -> Result<Freshness> {
        let timeout = self.timeout(read.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        self.check_synced()?;
        if let Some(min) = read.min_revision {
            self.state.mirror().wait_for(min, timeout).await?;
        }
        if read.consistency == Consistency::Strong {
            self.wait_strong(deadline).await?;
        }
        self.freshness(read.allow_stale)
    }

    /// Waits until the mirror reflects every write NATS acknowledged before this call: it fetches
    /// the latest revision (state with the strong reads waiting at the same moment), then waits
    /// for the mirror to apply it. Never answers from a mirror that did not get there in time.
    async fn wait_strong(&self, deadline: tokio::time::Instant) -> Result<()> {
        let store = self.store()?;
        if !self.state.is_connected() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "not connected to NATS, so a strong read cannot learn the bucket's latest revision; \
                 retry when NATS is reachable, or read with consistency \"cached\"",
            ));
        }
        let fetched = tokio::time::timeout_at(
            deadline,
            self.state.strong().target(
                store,
                &self.state.config().filter,
                self.state.tasks(),
                self.state.runtime(),
                self.state.shutdown(),
            ),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                "NATS did not report the bucket's latest revision in time for a strong read; \
                 retry later or raise timeout_ms",
            )
        })??;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.state.mirror().wait_for(fetched.revision, left).await?;
        // The mirror held everything NATS had when the fetch was sent.
        self.state.mirror().confirm(fetched.sent);
        Ok(())
    }

    /// Live keys matching `filter` (NATS wildcards; default: all), sorted.
    pub async fn keys(&self, filter: Option<&str>, allow_stale: bool) -> Result<Vec<String>> {
        self.keys_with(filter, allow_stale, |keys| keys).await
    }

    /// [`Bucket::keys`], given to `finish` where they were listed (see [`Bucket::keys_then`]).
    pub async fn keys_with<R: Send + 'static>(
        &self,
        filter: Option<&str>,
        allow_stale: bool,
        finish: impl FnOnce(Vec<String>) -> R + Send + 'static,
    ) -> Result<R> {
        if let Some(filter) = filter {
            validate_filter(filter)?;
        }
        let filter = filter.map(str::to_string);
        let matches = move |key: &str| filter.as_deref().is_none_or(|f| filter_matches(f, key));
        self.keys_then(allow_stale, matches, finish).await
    }

    /// Live keys for which `matches` holds, sorted, given to `finish` where they were listed:
    /// for a large bucket on the blocking pool, so that encoding a reply of a million keys there
    /// holds up no other client either.
    pub async fn keys_then<R: Send + 'static>(
        &self,
        allow_stale: bool,
        matches: impl Fn(&str) -> bool + Send + 'static,
        finish: impl FnOnce(Vec<String>) -> R + Send + 'static,
    ) -> Result<R> {
        self.freshness(allow_stale)?;
        let walked = self.state.mirror().len();
        self.walk(walked, move |mirror| finish(mirror.keys(matches)))
            .await
    }

    /// A page of a scan of the live keys: see [`Mirror::scan`].
    pub async fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        self.freshness(false)?;
        // A page walks the shards its keys are in: at least one, and enough for `count` keys.
        let walked = (self.state.mirror().len() / SHARDS).max(count);
        self.walk(walked, move |mirror| mirror.scan(cursor, count))
            .await
    }

    /// Runs `walk` over the mirror, off this thread when it visits more than `WALKED_INLINE`
    /// entries, about `walked` (see [`walk_off_thread_if`]).
    async fn walk<R: Send + 'static>(
        &self,
        walked: usize,
        walk: impl FnOnce(&Mirror) -> R + Send + 'static,
    ) -> Result<R> {
        let large = walked > WALKED_INLINE;
        let what = format!("listing the keys of `{}`", self.name());
        walk_off_thread_if(
            large,
            self.state.clone(),
            move |state| walk(state.mirror()),
            &what,
        )
        .await
    }

    pub fn status(&self) -> BucketStatus {
        let mirror = self.state.mirror();
        let revision = mirror.applied();
        let server_revision = self.state.server_revision();
        BucketStatus {
            bucket: self.state.config().name.clone(),
            synced: mirror.is_synced(),
            connected: self.state.is_connected(),
            keys: mirror.len() as u64,
            bytes: mirror.bytes(),
            revision,
            server_revision,
            lag: server_revision - revision,
            last_update: mirror.last_update(),
            age_ms: mirror.age().map(|age| age.as_millis() as u64),
            stale: self.is_stale(),
            rebuilds: mirror.rebuilds(),
        }
    }

    /// Whether the bucket should receive traffic: once its initial sync is done, for as long as
    /// reads are served, i.e. unless it is `stale`. The NATS connection is reported, not judged:
    /// a mirror serves its last state while NATS is away (fail-static).
    pub fn readiness(&self) -> Readiness {
        if !self.state.mirror().is_synced() {
            return Readiness {
                ready: false,
                text: format!("not ready: {}", self.not_ready().message),
            };
        }
        if let Err(err) = self.check_fresh(false) {
            return Readiness {
                ready: false,
                text: format!("not ready: {}", err.message),
            };
        }
        let connected = self.state.is_connected();
        Readiness {
            ready: true,
            text: if connected {
                "ready".to_string()
            } else {
                "ready (NATS is not connected; reads are served from the last known state, writes \
                 fail unavailable)"
                    .to_string()
            },
        }
    }

    /// What saving the mirror for warm starts has done so far.
    pub fn save_stats(&self) -> SaveStats {
        let counters = self.state.save_counters();
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        SaveStats {
            saves: load(&counters.saves),
            save_failures: load(&counters.save_failures),
            warm_starts: load(&counters.warm_starts),
            rejected: load(&counters.rejected),
        }
    }

    /// Times the bucket's KV watcher was recreated after a loss.
    pub fn watcher_restarts(&self) -> u64 {
        self.state.watcher_restarts()
    }

    /// Revisions the mirror never saw because NATS discarded them first (unfiltered mirrors only):
    /// superseded values a watch therefore did not see either.
    pub fn skipped_revisions(&self) -> u64 {
        self.state.skipped_revisions()
    }

    /// Times the mirror was reloaded from a fresh snapshot after its initial sync.
    pub fn rebuilds(&self) -> u64 {
        self.state.mirror().rebuilds()
    }

    /// NATS requests made for strong reads (several strong reads at once share one).
    pub fn strong_read_fetches(&self) -> u64 {
        self.state.strong().fetches()
    }

    /// Waits until the initial snapshot is applied, for embedders that want to start serving only then.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.state.mirror().is_synced() {
            if tokio::time::Instant::now() >= deadline {
                return Err(self.not_ready());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn store(&self) -> Result<&kv::Store> {
        self.state.store().ok_or_else(|| self.not_ready())
    }

    pub async fn put(&self, key: &str, value: Bytes, write: WriteOptions) -> Result<u64> {
        self.send(key, Operation::Put, value, write)
            .await?
            .stored()
            .await
    }

    pub async fn delete(&self, key: &str, write: WriteOptions) -> Result<u64> {
        self.send(key, Operation::Delete, Bytes::new(), write)
            .await?
            .stored()
            .await
    }

    pub async fn purge(&self, key: &str, write: WriteOptions) -> Result<u64> {
        self.send(key, Operation::Purge, Bytes::new(), write)
            .await?
            .stored()
            .await
    }

    /// Sends a put, delete or purge and returns once it is handed to the NATS connection;
    /// [`SentWrite::stored`] then waits for it as [`Bucket::put`] does. Writes sent one after
    /// another (each `send` awaited before the next starts, in any buckets) are stored, or
    /// refused for their expected revision, in that order, so a client's pipelined writes can be
    /// in flight together and still land as if run one by one, if each is awaited with
    /// [`SentWrite::stored_in_order`].
    pub async fn send<'a>(
        &'a self,
        key: &'a str,
        operation: Operation,
        value: Bytes,
        write: WriteOptions,
    ) -> Result<SentWrite<'a>> {
        let store = self.check_write(key, operation, value.len(), write.ttl_ms)?;
        let sent_at = tokio::time::Instant::now();
        let deadline = sent_at + self.timeout(write.timeout_ms);
        let destination = self.destination(store)?;
        let sent = writes::send(destination, key, operation, value, write).await?;
        Ok(SentWrite {
            bucket: self,
            key,
            sent,
            sent_at,
            deadline,
        })
    }

    /// What a write is refused for before anything is sent (a read-only bucket, an invalid key, a
    /// value too large, a TTL too short, no connection yet): a face that plans several writes asks
    /// it first, so that a later write of the batch does not count on a value never stored.
    pub fn check_write(
        &self,
        key: &str,
        operation: Operation,
        len: usize,
        ttl_ms: Option<u64>,
    ) -> Result<&kv::Store> {
        let store = self.check_writable(key)?;
        if operation != Operation::Put {
            return Ok(store);
        }
        self.check_value_size(store, key, len)?;
        if ttl_ms.is_some_and(|ms| ms < 1000) {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "ttl_ms must be at least 1000: NATS keeps values for whole seconds at least",
            ));
        }
        Ok(store)
    }

    /// The longest key a write to this bucket may carry: its subject (`$KV.<bucket>.<key>`) must
    /// leave room in NATS's control line for the reply subject and sizes. A longer one would
    /// make the server close the sidecar's state connection, failing every client's writes.
    pub fn max_key_length(&self) -> usize {
        let prefix_len = match self.state.store() {
            Some(store) => store
                .put_prefix
                .as_deref()
                .unwrap_or(&store.prefix)
                .len()
                .max(store.prefix.len()),
            None => "$KV.".len() + self.state.config().name.len() + 1,
        };
        max_key_length(prefix_len)
    }

    /// The checks every write passes before anything is sent, in the order a client can act on:
    /// may it write here at all, is the key valid, is the bucket open.
    fn check_writable(&self, key: &str) -> Result<&kv::Store> {
        if self.state.config().read_only {
            return Err(Error::new(
                ErrorKind::Forbidden,
                format!(
                    "bucket `{}` is read-only through this sidecar (read_only = true); write \
                     through a sidecar that allows it, or with a NATS client",
                    &self.state.config().name
                ),
            ));
        }
        validate_key(key)?;
        let store = self.store()?;
        let max = self.max_key_length();
        if key.len() > max {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "key `{}` is too long for a write: bucket `{}` takes keys of at most {max} bytes \
                     (NATS's control line limit); use a shorter key",
                    quote(key),
                    &self.state.config().name
                ),
            ));
        }
        Ok(store)
    }

    fn check_value_size(&self, store: &kv::Store, key: &str, len: usize) -> Result<()> {
        // The server's max_payload is checked exactly, headers included, where the message is built.
        let bucket_limit = store.stream.cached_info().config.max_message_size;
        if bucket_limit > 0 && len > bucket_limit as usize {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "the value for `{}` is {len} bytes; bucket `{}`'s max_value_size allows at most \
                     {bucket_limit}",
                    quote(key),
                    &self.state.config().name
                ),
            ));
        }
        Ok(())
    }

    /// Where writes go; refused at once while NATS is not connected.
    fn destination<'a>(&'a self, store: &'a kv::Store) -> Result<writes::Destination<'a>> {
        if !self.state.is_connected() {
            return Err(Error::write_failed(
                ErrorKind::Unavailable,
                false,
                "not connected to NATS; the write was not sent: retry when NATS is reachable",
            ));
        }
        Ok(writes::Destination {
            client: self.state.client(),
            js: self.state.js(),
            store,
            link: self.state.link(),
        })
    }

    /// Waits until the mirror has applied `revision`, the write of `key` sent at `sent_at` (not
    /// for a key outside the mirror's filter, which it never shows); returns the revision.
    ///
    /// NATS stored the write after every message the stream held at `sent_at`, so a mirror that
    /// applied it held all of them: NATS confirmed it current at `sent_at`, as a feed message with
    /// nothing pending would. Writes so keep the mirror confirmed while a consumer cannot be
    /// created (a JetStream cluster without a meta leader still stores and serves messages).
    async fn wait_applied(
        &self,
        key: &str,
        revision: u64,
        sent_at: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Result<u64> {
        if filter_matches(&self.state.config().filter, key) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mirror = self.state.mirror();
            mirror.wait_for(revision, left).await.map_err(|mut err| {
                err.message = format!(
                    "the write was stored at revision {revision}, but {}",
                    err.message
                );
                err.revision = Some(revision);
                err.sent = Some(true);
                err
            })?;
            mirror.confirm(sent_at.into_std());
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
            self.state.mirror(),
            filter.map(str::to_string),
            initial,
        ))
    }
}

/// Counts of the mirror's saves and warm starts (`[cache] state_dir`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveStats {
    /// Files written.
    pub saves: u64,
    /// Saves that failed (the directory is not writable, the disk is full, ...).
    pub save_failures: u64,
    /// Starts that restored the saved mirror and caught up from it.
    pub warm_starts: u64,
    /// Saved mirrors not used: damaged, foreign, from a recreated bucket or older than the
    /// stream's history.
    pub rejected: u64,
}

/// A write handed to NATS by [`Bucket::send`].
pub struct SentWrite<'a> {
    bucket: &'a Bucket,
    key: &'a str,
    sent: writes::Sent<'a>,
    sent_at: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

impl SentWrite<'_> {
    /// Waits for NATS's acknowledgement, then for the mirror to apply it; the revision stored.
    /// A conditional write refused for a reason other than its revision (the key has it when
    /// read after the refusal), or a create refused for a marker, is sent again.
    pub async fn stored(self) -> Result<u64> {
        self.settled(true).await
    }

    /// [`SentWrite::stored`], but a refused write is never sent again, so that it keeps its place
    /// among the writes sent after it: for a pipeline's writes, which never include a create.
    pub async fn stored_in_order(self) -> Result<u64> {
        self.settled(false).await
    }

    async fn settled(self, resend: bool) -> Result<u64> {
        let revision = self.sent.settled(self.deadline, resend).await?;
        self.bucket
            .wait_applied(self.key, revision, self.sent_at, self.deadline)
            .await
    }
}
