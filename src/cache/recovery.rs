//! How a bucket actor recovers a lost feed without stopping reads: the stream checks before a
//! feed resumes, a replacement feed created in the background, and the messages read straight
//! from the stream meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use super::feed::{read_from, Feed, Start, Update};
use super::link::Link;
use super::state::State;
use super::strong::last_revision;

/// How a feed ended, and so what the actor does next.
pub(super) enum FeedEnd {
    Shutdown,
    /// The feed broke; resume after the last applied revision.
    Lost(String),
    /// The NATS connection was re-established (on another node, perhaps): the feed's consumer
    /// may have died with the old one. Resume after the last applied revision, at once.
    Reconnected,
    /// The mirror must be reloaded from a fresh snapshot.
    Resync(String),
}

/// The stream's info, taken in (see [`State::learn`]); how the feed ends if it cannot be had.
/// `limit` bounds the request below NATS's own timeout while the feed is being recovered.
pub(super) async fn stream_info(
    state: &State,
    shutdown: &CancellationToken,
    limit: Duration,
) -> Result<jetstream::stream::Info, FeedEnd> {
    let Some(store) = state.store() else {
        return Err(FeedEnd::Lost("the bucket is not open".to_string()));
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err(FeedEnd::Shutdown),
        info = tokio::time::timeout(limit, store.stream.get_info()) => match info {
            Ok(Ok(info)) => {
                state.learn(&info);
                Ok(info)
            }
            Ok(Err(err)) => Err(FeedEnd::Lost(format!("cannot read the bucket's stream: {err}"))),
            Err(_) => Err(FeedEnd::Lost(format!(
                "no answer about the bucket's stream within {} ms",
                limit.as_millis()
            ))),
        },
    }
}

/// 250 ms, doubling with each failed attempt, up to `cap`.
pub(super) fn request_limit(failed_attempts: u32, cap: Duration) -> Duration {
    let first = Duration::from_millis(250);
    first
        .saturating_mul(1 << failed_attempts.min(8))
        .min(cap.max(first))
}

/// Why a replacement feed could not take over.
pub(super) enum NoReplacement {
    /// Try again; the current feed goes on meanwhile.
    Failed(String),
    Resync(String),
    Shutdown,
}

pub(super) type Replacement =
    Pin<Box<dyn Future<Output = Result<(Feed, u64), NoReplacement>> + Send>>;

/// A new feed from the mirror's next revision, on the current connection (after a short pause
/// that grows with the failed `attempts`), with the connection count it was created at. The
/// stream is checked first, as for a resumed feed.
pub(super) fn replacement_feed(
    state: Arc<State>,
    shutdown: CancellationToken,
    attempts: u32,
) -> Replacement {
    Box::pin(async move {
        if attempts > 0 {
            let delay = Duration::from_millis(100).saturating_mul(attempts.min(20));
            tokio::select! {
                _ = shutdown.cancelled() => return Err(NoReplacement::Shutdown),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let limit = request_limit(attempts, state.default_timeout());
        let info = match stream_info(&state, &shutdown, limit).await {
            Ok(info) => info,
            Err(FeedEnd::Shutdown) => return Err(NoReplacement::Shutdown),
            Err(FeedEnd::Lost(reason)) => return Err(NoReplacement::Failed(reason)),
            Err(_) => return Err(NoReplacement::Failed("the stream check failed".to_string())),
        };
        if let Some(reason) = state.history_lost(&info).await {
            return Err(NoReplacement::Resync(reason));
        }
        let Some(store) = state.store() else {
            return Err(NoReplacement::Failed("the bucket is not open".to_string()));
        };
        let connects = Link::of(state.client()).connects;
        let start = Start::From(state.mirror().applied() + 1);
        let filter = state.config().filter.as_str();
        match tokio::time::timeout(limit, Feed::start(state.client(), store, filter, start)).await {
            Ok(Ok(feed)) => Ok((feed, connects)),
            Ok(Err(err)) => Err(NoReplacement::Failed(err.to_string())),
            Err(_) => Err(NoReplacement::Failed(format!(
                "no answer to creating the bucket's consumer within {} ms",
                limit.as_millis()
            ))),
        }
    })
}

/// One round of catching up without a consumer: the messages the mirror lacked, and the stream's
/// last revision as NATS reported it after `asked`. Once the mirror has applied that revision, it
/// held at `asked` everything the stream did: it was current then.
pub(super) struct CatchUp {
    pub(super) updates: Vec<Update>,
    pub(super) asked: Instant,
    pub(super) latest: Option<u64>,
}

pub(super) type CatchingUp = Pin<Box<dyn Future<Output = CatchUp> + Send>>;

/// How long one catch-up request may take before the round is tried again.
const CATCH_UP_WITHIN: Duration = Duration::from_millis(500);

/// While the feed is being replaced or recreates its consumer: a round of reading what the mirror
/// lacks straight from the stream, so that the mirror keeps up (and this sidecar's writes are
/// answered) even when the old consumer died and a new one must wait for the cluster. The
/// stream's last revision is asked for at the same time, so that the mirror is confirmed current
/// even while writes keep coming (a read that finds nothing new would rarely happen then).
/// `pause` first when the previous round found nothing, so that an idle stream is not polled
/// in a tight loop.
pub(super) fn catch_up(state: Arc<State>, pause: bool) -> CatchingUp {
    Box::pin(async move {
        let Some(store) = state.store() else {
            return std::future::pending().await;
        };
        let filter = state.config().filter.as_str();
        let subject = format!("{}{filter}", store.prefix);
        if pause {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        loop {
            let asked = Instant::now();
            let next = state.mirror().applied() + 1;
            let (latest, read) = tokio::join!(
                tokio::time::timeout(CATCH_UP_WITHIN, last_revision(store, &subject)),
                tokio::time::timeout(
                    CATCH_UP_WITHIN,
                    read_from(state.client(), store, filter, next)
                ),
            );
            let latest = latest.ok().and_then(Result::ok);
            let updates = match read {
                Ok(Ok(updates)) => updates,
                _ => Vec::new(),
            };
            if latest.is_some() || !updates.is_empty() {
                return CatchUp {
                    updates,
                    asked,
                    latest,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// The future in `slot`, awaited in place (a `select!` that drops this poll keeps the future),
/// or never if there is none.
pub(super) async fn poll_slot<T>(slot: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
