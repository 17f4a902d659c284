//! A bucket's state, shared by its handles, its actor and its stream checker. Fields are
//! private: the mirror is changed only through [`State::mirror_mut`], which only the actor
//! and its feed recovery call, and the rest through the few methods below.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::link::Link;
use super::mirror::Mirror;
use super::strong::StrongReads;
use crate::config::{BucketConfig, CacheConfig};

/// Room for updates a watch may fall behind by before it is ended with `slow_consumer`.
const WATCH_BUFFER: usize = 16 * 1024;

pub(super) struct State {
    config: BucketConfig,
    mirror: Mirror,
    js: jetstream::Context,
    client: async_nats::Client,
    /// Set once by the actor when the bucket is open.
    store: OnceLock<kv::Store>,
    /// Why the bucket is not (yet) serving, for `not_ready` answers.
    problem: Mutex<Option<String>>,
    /// Deadline of reads and writes without their own; also bounds the actor's NATS requests.
    default_timeout: Duration,
    /// The stream's latest revision as last learned from NATS.
    server_revision: AtomicU64,
    watcher_restarts: AtomicU64,
    /// Revisions an unfiltered mirror never saw: NATS discarded them before the feed read them.
    skipped_revisions: AtomicU64,
    /// The bucket's `max_age` in nanoseconds as last read from its stream; 0: none.
    max_age: AtomicU64,
    /// The actor is loading a snapshot; the checker holds its findings meanwhile.
    resyncing: AtomicBool,
    /// Why the mirror must be reloaded, set by the checker for the actor.
    resync_reason: Mutex<Option<String>>,
    resync_requested: Notify,
    /// The checker saw the stream move on while the mirror applied nothing.
    feed_stalled: Notify,
    strong: Arc<StrongReads>,
    /// Where the mirror is saved for a warm start, if anywhere, and how often.
    saving: CacheConfig,
    save_counters: SaveCounters,
    /// The NATS connection: up or not, and how often it has been established.
    link: watch::Receiver<Link>,
    /// The cache's tracker of background tasks, the runtime they run on (the one the bucket was
    /// started on, whichever runtime asks for them), and the token that stops them.
    tasks: TaskTracker,
    runtime: Handle,
    shutdown: CancellationToken,
}

/// What saving the mirror and warm starts did, for the metrics.
#[derive(Debug, Default)]
pub(super) struct SaveCounters {
    pub saves: AtomicU64,
    pub save_failures: AtomicU64,
    pub warm_starts: AtomicU64,
    pub rejected: AtomicU64,
}

/// Where a bucket's state comes from: its config and the cache's connection and tasks.
pub(super) struct Origin {
    pub config: BucketConfig,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub default_timeout: Duration,
    pub saving: CacheConfig,
    pub link: watch::Receiver<Link>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl State {
    pub(super) fn new(origin: Origin) -> State {
        State {
            config: origin.config,
            mirror: Mirror::new(WATCH_BUFFER),
            js: origin.js,
            client: origin.client,
            store: OnceLock::new(),
            problem: Mutex::new(Some("the bucket is being opened".to_string())),
            default_timeout: origin.default_timeout,
            server_revision: AtomicU64::new(0),
            watcher_restarts: AtomicU64::new(0),
            skipped_revisions: AtomicU64::new(0),
            max_age: AtomicU64::new(0),
            resyncing: AtomicBool::new(false),
            resync_reason: Mutex::new(None),
            resync_requested: Notify::new(),
            feed_stalled: Notify::new(),
            strong: Arc::new(StrongReads::default()),
            saving: origin.saving,
            save_counters: SaveCounters::default(),
            link: origin.link,
            tasks: origin.tasks,
            runtime: Handle::current(),
            shutdown: origin.shutdown,
        }
    }

    pub(super) fn config(&self) -> &BucketConfig {
        &self.config
    }

    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    /// The mirror, to read.
    pub(super) fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub(super) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    pub(super) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub(super) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The open bucket; `None` until the actor has opened it.
    pub(super) fn store(&self) -> Option<&kv::Store> {
        self.store.get()
    }

    /// Records the bucket the actor opened; later calls keep the first.
    pub(super) fn opened(&self, store: kv::Store) {
        let _ = self.store.set(store);
    }

    /// Why the bucket is not serving, if the actor said so.
    pub(super) fn problem(&self) -> Option<String> {
        self.problem.lock().ok().and_then(|p| p.clone())
    }

    pub(super) fn set_problem(&self, problem: Option<String>) {
        if let Ok(mut slot) = self.problem.lock() {
            *slot = problem;
        }
    }

    pub(super) fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    /// The stream's latest revision as last learned, never behind the mirror.
    pub(super) fn server_revision(&self) -> u64 {
        self.server_revision
            .load(Ordering::Relaxed)
            .max(self.mirror.applied())
    }

    pub(super) fn count_watcher_restart(&self) {
        self.watcher_restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn watcher_restarts(&self) -> u64 {
        self.watcher_restarts.load(Ordering::Relaxed)
    }

    pub(super) fn count_skipped_revisions(&self, count: u64) {
        self.skipped_revisions.fetch_add(count, Ordering::Relaxed);
    }

    pub(super) fn skipped_revisions(&self) -> u64 {
        self.skipped_revisions.load(Ordering::Relaxed)
    }

    /// The bucket's `max_age`, when it has one.
    pub(super) fn max_age(&self) -> Option<Duration> {
        match self.max_age.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Takes in what a stream info says about the bucket.
    pub(super) fn learn(&self, info: &jetstream::stream::Info) {
        self.server_revision
            .fetch_max(info.state.last_sequence, Ordering::Relaxed);
        self.max_age.store(
            info.config.max_age.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// When the stream the mirror was loaded from was created (Unix ns), to notice a new one.
    pub(super) fn stream_created(&self) -> Option<i128> {
        self.mirror.stream_created()
    }

    pub(super) fn is_resyncing(&self) -> bool {
        self.resyncing.load(Ordering::Relaxed)
    }

    pub(super) fn set_resyncing(&self, resyncing: bool) {
        self.resyncing.store(resyncing, Ordering::Relaxed);
    }

    pub(super) fn request_resync(&self, reason: String) {
        if let Ok(mut slot) = self.resync_reason.lock() {
            slot.get_or_insert(reason);
        }
        self.resync_requested.notify_one();
    }

    pub(super) fn take_resync(&self) -> Option<String> {
        self.resync_reason.lock().ok().and_then(|mut r| r.take())
    }

    /// Resolves when the checker asks for a resync.
    pub(super) async fn resync_requested(&self) {
        self.resync_requested.notified().await
    }

    pub(super) fn report_stall(&self) {
        self.feed_stalled.notify_one();
    }

    /// Resolves when the checker finds the feed stalled: a consumer can stop delivering without
    /// a sign (a flow-control answer lost in a reconnect, a consumer created during a leader
    /// election), and its missed heartbeats would tell only seconds later.
    pub(super) async fn stall_reported(&self) {
        self.feed_stalled.notified().await
    }

    /// Where the mirror is saved for a warm start, if anywhere, and how often.
    pub(super) fn saving(&self) -> &CacheConfig {
        &self.saving
    }

    pub(super) fn save_counters(&self) -> &SaveCounters {
        &self.save_counters
    }

    pub(super) fn strong(&self) -> &Arc<StrongReads> {
        &self.strong
    }

    pub(super) fn link(&self) -> &watch::Receiver<Link> {
        &self.link
    }

    pub(super) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub(super) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    pub(super) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// How often the checker may ask NATS about the stream: `check_interval`, or four times per
    /// `max_staleness` when that is shorter, so that a healthy mirror never reads as stale.
    pub(super) fn check_every(&self) -> Duration {
        let every = self.config.check_interval;
        match self.config.max_staleness {
            Some(max) => every.min(max / 4).max(Duration::from_millis(50)),
            None => every,
        }
    }

    /// Why the mirror (synced, or restored from a saved one) cannot resume from its last applied
    /// revision, if it cannot.
    pub(crate) async fn history_lost(&self, info: &jetstream::stream::Info) -> Option<String> {
        self.history_lost_below(info, self.mirror.lowest_revision().await)
            .await
    }

    /// As [`State::history_lost`], given the lowest revision of a value in the mirror (or one
    /// below it), which takes a walk of the whole table to find.
    pub(crate) async fn history_lost_below(
        &self,
        info: &jetstream::stream::Info,
        oldest: Option<u64>,
    ) -> Option<String> {
        let mirror = &self.mirror;
        let applied = mirror.applied();
        let state = &info.state;
        if self.stream_created() != Some(info.created.unix_timestamp_nanos()) {
            return Some("the bucket was deleted and created again".to_string());
        }
        if state.last_sequence < applied {
            return Some(format!(
                "the stream ends at revision {} but the mirror applied {applied}",
                state.last_sequence
            ));
        }
        if oldest.is_some_and(|oldest| state.first_sequence > oldest) {
            // Messages of values the mirror holds are gone. Harmless when each was superseded by
            // a later message of its key, which the feed still delivers; not when a key the
            // mirror holds has no message left at all (a purge, or a limit the mirror did not see).
            return self.keys_without_messages().await;
        }
        None
    }

    /// A reason to reload, if some live key of the mirror has no message left in the stream.
    async fn keys_without_messages(&self) -> Option<String> {
        let store = self.store.get()?;
        let filter = format!("{}{}", store.prefix, self.config.filter);
        let mut stored = std::collections::HashSet::new();
        let mut subjects = match store.stream.info_with_subjects(filter).await {
            Ok(subjects) => subjects,
            Err(err) => return Some(format!("cannot list the stream's keys after a gap: {err}")),
        };
        while let Some(subject) = subjects.next().await {
            match subject {
                Ok((subject, _)) => {
                    stored.insert(subject.strip_prefix(store.prefix.as_str())?.to_string());
                }
                Err(err) => {
                    return Some(format!("cannot list the stream's keys after a gap: {err}"))
                }
            }
        }
        let missing = match self.mirror.live_keys_missing_from(stored).await {
            Ok(missing) => missing,
            Err(err) => {
                return Some(format!(
                    "cannot compare the mirror's keys with the stream's: {err}"
                ))
            }
        };
        (missing > 0).then(|| {
            format!(
                "{missing} keys of the mirror have no message left in the stream: they were removed \
                 while the mirror was not following"
            )
        })
    }
}
