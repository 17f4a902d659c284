//! The bucket actor: the only writer of a bucket's mirror. It opens the bucket, loads a snapshot,
//! applies every later change in revision order, expires values on time, and reloads the
//! snapshot when the stream lost history the mirror had not seen or was recreated.
//!
//! Beside it runs the stream checker (`checker.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::feed::{Feed, FeedError, Start, Update};
use super::link::{reconnected, Link};
use super::mirror::{unix_nanos, Applied, ExpiryKey, Staging};
use super::recovery::{
    catch_up, poll_slot, replacement_feed, request_limit, stream_info, CatchUp, CatchingUp,
    FeedEnd, NoReplacement, Replacement,
};
use super::saved::{self, SavedError};
use super::state::State;
use crate::backoff::Backoff;
use crate::nats::open_bucket;
use crate::protocol::{Entry, Operation};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an initial sync logs its progress.
const SYNC_PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Snapshot messages taken in a row while they are already received (see `load_snapshot`).
const SNAPSHOT_BURST: u32 = 256;
/// Errors in a row after which a feed is recreated instead of left to recover by itself.
const FEED_ERROR_LIMIT: u32 = 3;

pub(super) struct Actor {
    state: Arc<State>,
    shutdown: CancellationToken,
    /// Values that expire, by expiry time (Unix ns) and revision. A value replaced since stays
    /// listed until due, and is then skipped because its revision no longer matches.
    expiring: BTreeMap<ExpiryKey, String>,
    /// Why the mirror must be reloaded from a fresh snapshot; kept until a reload succeeds, so
    /// that a feed lost halfway through one does not forget it.
    resync: Option<String>,
    /// A feed was created since the last loss: the next loss retries at once, not after a backoff
    /// grown by earlier losses.
    feed_started: bool,
    /// Attempts to recreate the feed that failed in a row (see `request_limit`).
    failed_attempts: u32,
    /// The mirror holds a saved one, restored at start and not yet caught up (a warm start).
    restored: Option<Restored>,
}

/// A warm start under way.
struct Restored {
    started: Instant,
    /// The lowest revision of a value in the saved mirror, found as it was read (the
    /// history check needs it, and a walk of a big table to find it would slow the start).
    lowest_revision: Option<u64>,
    /// The bucket's `max_age` the saved expiries were computed with.
    max_age: Option<Duration>,
}

/// Tracks the expiry of a value just applied, and forgets the one of the value it replaced.
fn track_expiry(
    expiring: &mut BTreeMap<ExpiryKey, String>,
    applied: Applied,
    tracked: Option<(ExpiryKey, String)>,
) {
    let Applied::Done { replaced } = applied else {
        return;
    };
    if let Some(replaced) = replaced {
        expiring.remove(&replaced);
    }
    if let Some((expiry, key)) = tracked {
        expiring.insert(expiry, key);
    }
}

impl Actor {
    pub(super) fn new(state: Arc<State>, shutdown: CancellationToken) -> Actor {
        Actor {
            state,
            shutdown,
            expiring: BTreeMap::new(),
            resync: None,
            feed_started: false,
            failed_attempts: 0,
            restored: None,
        }
    }

    fn set_problem(&self, problem: Option<String>) {
        self.state.set_problem(problem);
    }

    /// Sleeps for the backoff's next wait, or returns false on shutdown.
    async fn back_off(&self, backoff: &mut Backoff) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(backoff.next_wait()) => true,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let store = loop {
            let opened = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                opened = open_bucket(self.state.js(), self.state.config()) => opened,
            };
            match opened {
                Ok(store) => break store,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot open bucket; retrying");
                    self.set_problem(Some(err.to_string()));
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                }
            }
        };
        self.state.opened(store.clone());
        self.set_problem(None);
        backoff.reset();
        self.state.tasks().spawn(super::checker::check_stream(
            self.state.clone(),
            store.clone(),
            self.shutdown.clone(),
        ));
        if let Some(dir) = self.state.saving().state_dir.clone() {
            self.restore(&dir).await;
            self.state.tasks().spawn(saved::keep_saved(
                self.state.clone(),
                dir,
                self.state.saving().save_interval,
                self.shutdown.clone(),
            ));
        }
        loop {
            match self.run_feed(&store).await {
                FeedEnd::Shutdown => return,
                FeedEnd::Resync(reason) => {
                    tracing::warn!(%reason, applied = self.state.mirror().applied(), "reloading the mirror from a fresh snapshot");
                    self.resync = Some(reason);
                }
                FeedEnd::Reconnected => {
                    self.state.count_watcher_restart();
                    backoff.reset();
                    tracing::info!(
                        applied = self.state.mirror().applied(),
                        "NATS connection re-established; recreating the feed from the last applied revision"
                    );
                }
                FeedEnd::Lost(reason) => {
                    self.failed_attempts += 1;
                    if std::mem::take(&mut self.feed_started) {
                        backoff.reset();
                    }
                    self.state.count_watcher_restart();
                    tracing::warn!(
                        %reason,
                        applied = self.state.mirror().applied(),
                        "bucket feed lost; recreating it from the last applied revision"
                    );
                    if !self.state.mirror().is_synced() {
                        self.set_problem(Some(reason));
                    }
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Restores the mirror saved in `dir`, if there is a usable one: the feed then resumes from
    /// its next revision (after the stream checks of any resumed feed) instead of a snapshot.
    async fn restore(&mut self, dir: &std::path::Path) {
        let started = Instant::now();
        let (dir, name, filter) = (
            dir.to_path_buf(),
            self.state.name().to_string(),
            self.state.config().filter.clone(),
        );
        let file = saved::path(&dir, &name);
        let read = tokio::task::spawn_blocking(move || {
            saved::remove_leftovers(&dir, &name);
            saved::read(&dir, &name, &filter)
        })
        .await;
        let saved = match read {
            Ok(Ok(saved)) => saved,
            Ok(Err(SavedError::Missing)) => {
                tracing::info!(file = %file.display(), "no saved mirror: a cold start");
                return;
            }
            Ok(Err(err)) => {
                self.state
                    .save_counters()
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, file = %file.display(), "saved mirror ignored: a cold start");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "the saved mirror's read task failed: a cold start");
                return;
            }
        };
        let revision = saved.position.applied;
        self.state.mirror().restore(saved.staging);
        self.expiring = saved.expiring.into_iter().collect();
        self.restored = Some(Restored {
            started,
            lowest_revision: saved.lowest_revision,
            max_age: saved.max_age,
        });
        self.set_problem(Some(format!(
            "catching up from the saved mirror at revision {revision}"
        )));
        tracing::info!(
            values = saved.values,
            revision,
            took_ms = started.elapsed().as_millis() as u64,
            "saved mirror loaded; catching up from its next revision"
        );
    }

    /// The restored mirror has caught up with the stream: it serves from now on.
    fn finish_restore(&mut self) {
        let Some(Restored { started, .. }) = self.restored.take() else {
            return;
        };
        let mirror = self.state.mirror();
        mirror.mark_synced();
        mirror.confirm(Instant::now());
        super::memory::release_free_memory();
        self.set_problem(None);
        self.state
            .save_counters()
            .warm_starts
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            keys = mirror.len(),
            revision = mirror.applied(),
            took_ms = started.elapsed().as_millis() as u64,
            "mirror synced by a warm start"
        );
    }

    /// How long a request that recreates the feed may take. A request sent while the cluster
    /// elects a stream or meta leader is never answered, so waiting out NATS's whole request timeout
    /// would add seconds to every recovery: the first attempts give up early and retry (250 ms,
    /// then doubling), up to the request timeout, so a slow but healthy server is still waited for.
    fn request_limit(&self) -> Duration {
        request_limit(self.failed_attempts, self.state.default_timeout())
    }

    /// Runs one feed until it is lost, a resync is needed or the sidecar shuts down.
    async fn run_feed(&mut self, store: &kv::Store) -> FeedEnd {
        let limit = self.request_limit();
        let info = match stream_info(&self.state, &self.shutdown, limit).await {
            Ok(info) => info,
            Err(end) => return end,
        };
        let resumable = self.state.mirror().is_synced() || self.restored.is_some();
        if self.resync.is_none() && resumable {
            self.resync = match &self.restored {
                Some(restored) if restored.max_age != self.state.max_age() => Some(format!(
                    "the bucket's max_age changed since the mirror was saved ({:?}, now {:?}), \
                     so the saved values' expiry times are not the stream's",
                    restored.max_age,
                    self.state.max_age()
                )),
                Some(restored) => {
                    let oldest = restored.lowest_revision;
                    self.state.history_lost_below(&info, oldest).await
                }
                None => self.state.history_lost(&info).await,
            };
        }
        let filter = self.state.config().filter.as_str();
        let start = if self.resync.is_some() || !resumable {
            Start::Snapshot
        } else {
            Start::From(self.state.mirror().applied() + 1)
        };
        // The connection the feed is created on: a newer one means the feed must be recreated.
        let mut link = self.state.link().clone();
        let connects = Link::of(self.state.client()).connects;
        let created = tokio::select! {
            _ = self.shutdown.cancelled() => return FeedEnd::Shutdown,
            created = tokio::time::timeout(limit, Feed::start(self.state.client(), store, filter, start)) => created,
        };
        let mut feed = match created {
            Ok(Ok(feed)) => feed,
            Ok(Err(err)) => return FeedEnd::Lost(err.to_string()),
            Err(_) => {
                return FeedEnd::Lost(format!(
                    "no answer to creating the bucket's consumer within {} ms",
                    limit.as_millis()
                ))
            }
        };
        self.feed_started = true;
        self.failed_attempts = 0;
        if let Start::Snapshot = start {
            self.state.set_resyncing(true);
            let loaded = self
                .load_snapshot(&mut feed, &info, &mut link, connects)
                .await;
            self.state.set_resyncing(false);
            if let Some(end) = loaded {
                return end;
            }
        } else if feed.caught_up() {
            self.finish_restore();
        }
        self.follow(&mut feed, &mut link, connects).await
    }

    /// Loads the feed's snapshot into a staging table while the current one keeps serving, then
    /// swaps it in. Returns how the feed ended if it ended before that.
    async fn load_snapshot(
        &mut self,
        feed: &mut Feed,
        info: &jetstream::stream::Info,
        link: &mut watch::Receiver<Link>,
        connects: u64,
    ) -> Option<FeedEnd> {
        let target = info.state.last_sequence;
        let filtered = self.state.config().filter != ">";
        // Sized for the stream's keys, so the table never rehashes while the snapshot loads (a
        // filtered mirror holds an unknown part of them).
        let keys = if filtered {
            0
        } else {
            usize::try_from(info.state.subjects_count).unwrap_or(0)
        };
        let mut staging = Staging::of_stream(info.created.unix_timestamp_nanos(), keys);
        let mut expiring = BTreeMap::new();
        let mut errors = 0;
        let mut progress_logged = tokio::time::Instant::now();
        let mut loaded: u64 = 0;
        // Nothing to deliver: an empty bucket (or filter) yields no message to say it is done.
        let mut done = feed.caught_up();
        while !done {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return Some(FeedEnd::Shutdown),
                () = reconnected(link, connects) => return Some(FeedEnd::Reconnected),
                item = feed.next() => item,
            };
            // Messages already received are taken without a `select!` each (its futures take a
            // lock and register a waker per message), up to a burst between two looks at
            // shutdown and the connection.
            let mut item = Some(first);
            let mut burst = 0;
            while let Some(next) = item.take() {
                let update = match self.check_item(next, &mut errors) {
                    Ok(Some(update)) => update,
                    Ok(None) => break,
                    Err(end) => return Some(end),
                };
                let (revision, pending) = (update.revision, update.pending);
                let (mut entry, mut expires) = self.entry(update);
                if expires != 0 && expires <= unix_nanos() {
                    // Expired while NATS still held it: the old mirror swept it already (and told
                    // its watches), so the snapshot must not bring it back for a moment.
                    entry.operation = Operation::Purge;
                    entry.value = bytes::Bytes::new();
                    expires = 0;
                }
                let tracked = (expires != 0).then(|| ((expires, revision), entry.key.clone()));
                if staging.apply(entry, expires) {
                    if let Some((expiry, key)) = tracked {
                        expiring.insert(expiry, key);
                    }
                }
                done = revision >= target || (filtered && pending == 0);
                loaded += 1;
                // The clock is read once per thousand messages, not per message.
                if !done
                    && loaded.is_multiple_of(1024)
                    && progress_logged.elapsed() >= SYNC_PROGRESS_EVERY
                {
                    progress_logged = tokio::time::Instant::now();
                    tracing::info!(
                        messages_loaded = loaded,
                        revision,
                        target_revision = target,
                        "snapshot loading"
                    );
                }
                burst += 1;
                if !done && burst < SNAPSHOT_BURST {
                    item = feed.next().now_or_never();
                }
            }
        }
        for replaced in staging.flush() {
            expiring.remove(&replaced);
        }
        staging.advance(target);
        let keys = staging.len();
        if let Some(rebuild) = self.state.mirror().install(staging) {
            rebuild.announce().await;
        }
        self.state.mirror().confirm(Instant::now());
        super::memory::release_free_memory();
        self.expiring = expiring;
        let revision = self.state.mirror().applied();
        let reason = self.resync.take();
        match (self.restored.take(), reason) {
            (Some(_), Some(reason)) => {
                self.state
                    .save_counters()
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
                self.set_problem(None);
                tracing::warn!(keys, revision, %reason, "the saved mirror could not resume; synced by a cold snapshot instead")
            }
            (None, Some(reason)) => tracing::warn!(keys, revision, %reason, "mirror rebuilt"),
            (_, None) => tracing::info!(keys, revision, "mirror synced"),
        }
        None
    }

    /// Applies the feed's changes as they come, sweeps expired values, and stops for a resync.
    ///
    /// When the NATS connection is re-established, the feed's consumer may have died with the old
    /// connection's node, or may live on elsewhere (then the feed goes on over the new
    /// connection). So a replacement feed is created from the mirror's next revision while the
    /// current one keeps being applied, and takes over once it exists: no wait for missed
    /// heartbeats when the consumer is gone, no gap when creating a consumer must wait for the
    /// cluster (its meta leader) while the old one still delivers. A feed that fails is replaced
    /// the same way. Until a working feed delivers again, the mirror catches up by reading the
    /// stream directly. Revisions already applied are skipped, so the overlap loses and repeats
    /// nothing.
    async fn follow(
        &mut self,
        feed: &mut Feed,
        link: &mut watch::Receiver<Link>,
        connects: u64,
    ) -> FeedEnd {
        let state = self.state.clone();
        let mirror = &state.mirror();
        let mut errors = 0;
        let mut connects = connects;
        let mut replacement: Option<Replacement> = None;
        let mut replacement_attempts = 0;
        // The feed failed for good; only its replacement delivers again.
        let mut feed_failed = false;
        let mut catching_up: Option<CatchingUp> = None;
        let mut found_nothing = false;
        loop {
            if replacement.is_some() || feed.is_recreating() {
                if catching_up.is_none() {
                    catching_up = Some(catch_up(state.clone(), found_nothing));
                }
            } else {
                catching_up = None;
            }
            let next_expiry = self.expiring.keys().next().map(|&(at, _)| {
                tokio::time::Instant::now()
                    + Duration::from_nanos(at.saturating_sub(unix_nanos()).max(0) as u64)
            });
            let item = tokio::select! {
                _ = self.shutdown.cancelled() => return FeedEnd::Shutdown,
                () = reconnected(link, connects), if replacement.is_none() => {
                    tracing::info!("NATS connection re-established; creating a replacement feed");
                    replacement_attempts = 0;
                    replacement = Some(replacement_feed(state.clone(), self.shutdown.clone(), 0));
                    continue;
                }
                done = poll_slot(&mut replacement), if replacement.is_some() => {
                    replacement = None;
                    match done {
                        Ok((new_feed, new_connects)) => {
                            *feed = new_feed;
                            connects = new_connects;
                            errors = 0;
                            feed_failed = false;
                            state.count_watcher_restart();
                            tracing::info!(applied = mirror.applied(), "the replacement feed took over");
                        }
                        Err(NoReplacement::Failed(reason)) => {
                            replacement_attempts += 1;
                            tracing::debug!(%reason, "no replacement feed yet; retrying");
                            replacement = Some(replacement_feed(
                                state.clone(),
                                self.shutdown.clone(),
                                replacement_attempts,
                            ));
                        }
                        Err(NoReplacement::Resync(reason)) => return FeedEnd::Resync(reason),
                        Err(NoReplacement::Shutdown) => return FeedEnd::Shutdown,
                    }
                    continue;
                }
                _ = state.stall_reported(), if replacement.is_none() => {
                    tracing::warn!(
                        applied = mirror.applied(),
                        "the stream moved on while the feed delivered nothing; replacing it"
                    );
                    replacement_attempts = 0;
                    replacement = Some(replacement_feed(state.clone(), self.shutdown.clone(), 0));
                    continue;
                }
                _ = state.resync_requested() => {
                    match state.take_resync() {
                        Some(reason) => return FeedEnd::Resync(reason),
                        None => continue,
                    }
                }
                _ = sleep_until(next_expiry) => {
                    self.sweep();
                    continue;
                }
                round = poll_slot(&mut catching_up), if catching_up.is_some() => {
                    catching_up = None;
                    found_nothing = round.updates.is_empty();
                    self.apply_catch_up(round);
                    continue;
                }
                item = feed.next(), if !feed_failed => item,
            };
            let update = match self.check_item(item, &mut errors) {
                Ok(Some(update)) => update,
                Ok(None) => continue,
                Err(FeedEnd::Lost(reason)) => {
                    tracing::warn!(
                        %reason,
                        applied = mirror.applied(),
                        "bucket feed lost; replacing it from the last applied revision"
                    );
                    feed_failed = true;
                    if replacement.is_none() {
                        replacement_attempts = 0;
                        replacement =
                            Some(replacement_feed(state.clone(), self.shutdown.clone(), 0));
                    }
                    continue;
                }
                Err(end) => return end,
            };
            if update.resumed && replacement.is_some() {
                // A replacement is on its way, and it checks the stream itself. Checking it here
                // would hold up the catch-up that keeps the mirror current meanwhile, for as long
                // as NATS takes to answer: up to the request timeout while a JetStream cluster
                // elects a meta leader, and then the whole feed was dropped and started over.
                tracing::info!(
                    revision = update.revision,
                    "the old feed's consumer was recreated; waiting for the replacement instead"
                );
                feed_failed = true;
                continue;
            }
            if update.resumed {
                // The consumer was lost (deleted, or NATS restarted) and recreated from the last
                // delivered revision. Check the stream before applying anything from it: if the
                // bucket was recreated, its messages must not mix into this mirror.
                state.count_watcher_restart();
                tracing::info!(
                    revision = update.revision,
                    "the feed's consumer was recreated after a loss; resuming"
                );
                match stream_info(&state, &self.shutdown, state.default_timeout()).await {
                    Ok(info) => {
                        if let Some(reason) = state.history_lost(&info).await {
                            return FeedEnd::Resync(reason);
                        }
                    }
                    Err(end) => return end,
                }
            }
            let caught_up = update.pending == 0;
            self.apply(update);
            if caught_up {
                mirror.confirm(Instant::now());
                self.finish_restore();
            }
        }
    }

    /// Applies one update the stream holds, in revision order (an older one is skipped).
    fn apply(&mut self, update: Update) {
        let mirror = self.state.mirror();
        let revision = update.revision;
        let applied_before = mirror.applied();
        if self.state.config().filter == ">" && revision > applied_before + 1 {
            self.state
                .count_skipped_revisions(revision - applied_before - 1);
        }
        let (entry, expires) = self.entry(update);
        let tracked = (expires != 0).then(|| ((expires, revision), entry.key.clone()));
        let applied = mirror.apply(entry, expires);
        track_expiry(&mut self.expiring, applied, tracked);
    }

    /// Applies a catch-up round, and confirms the mirror current if it reached the stream's end.
    fn apply_catch_up(&mut self, round: CatchUp) {
        for update in round.updates {
            self.apply(update);
        }
        if round
            .latest
            .is_some_and(|latest| latest <= self.state.mirror().applied())
        {
            self.state.mirror().confirm(round.asked);
            self.finish_restore();
        }
    }

    /// Sorts out a feed item: an update, an error to tolerate (`None`), or the end of the feed.
    fn check_item(
        &self,
        item: Option<Result<Update, FeedError>>,
        errors: &mut u32,
    ) -> Result<Option<Update>, FeedEnd> {
        match item {
            None => Err(FeedEnd::Lost("the feed ended".to_string())),
            Some(Err(err)) => {
                // The ordered consumer usually recovers by itself after an error item.
                *errors += 1;
                tracing::debug!(error = %err, errors, "feed error");
                if *errors >= FEED_ERROR_LIMIT {
                    return Err(FeedEnd::Lost(format!(
                        "the feed failed {errors} times in a row: {err}"
                    )));
                }
                Ok(None)
            }
            Some(Ok(update)) => {
                *errors = 0;
                Ok(Some(update))
            }
        }
    }

    /// The mirror's form of an update, and when its value expires (Unix ns; 0: never): its own
    /// TTL if it has one, else the bucket's `max_age`.
    fn entry(&self, update: Update) -> (Entry, i64) {
        let lifetime = match update.ttl {
            Some(ttl) => Some(ttl),
            None => self.state.max_age(),
        };
        let expires = match (update.operation, lifetime) {
            (Operation::Put, Some(lifetime)) if lifetime != Duration::MAX => update
                .created
                .saturating_add(lifetime.as_nanos().min(i64::MAX as u128) as i64),
            _ => 0,
        };
        let entry = Entry {
            key: update.key,
            value: update.value,
            revision: update.revision,
            created: update.created,
            operation: update.operation,
        };
        (entry, expires)
    }

    /// Removes every value whose time has come, whether or not NATS sends a marker for it.
    fn sweep(&mut self) {
        let now = unix_nanos();
        while let Some(entry) = self.expiring.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, revision), key) = entry.remove_entry();
            self.state.mirror().expire(&key, revision);
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
