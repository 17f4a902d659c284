//! The stream checker beside each bucket actor: it asks NATS about the stream every
//! `check_every`. Its answers confirm the mirror current (the `age_ms` of reads) and reveal what
//! no feed message shows: the bucket deleted and created again, or its messages purged out of
//! band, for which it asks the actor to reload the mirror, and a feed that stopped delivering
//! without a sign, which the actor then replaces.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

use super::state::State;
use super::strong::last_revision;

/// Asks NATS about the stream every `check_every` (every fifth time while the feed itself keeps
/// confirming the mirror): confirms the mirror current once it holds everything the stream held
/// when asked, keeps `server_revision` and `max_age` current, requests a resync when the bucket
/// was recreated, went backwards, or lost messages the mirror still serves, and reports the feed
/// stalled when the stream moved on while the mirror applied nothing.
/// Failures (NATS away) are simply retried next time: the mirror keeps serving what it has.
pub(crate) async fn check_stream(state: Arc<State>, store: kv::Store, shutdown: CancellationToken) {
    /// A mirror its feed keeps confirming is still checked every this many intervals, for the
    /// purges and recreations no feed message shows.
    const FULL_CHECK_EVERY: u32 = 5;
    let every = state.check_every();
    let mut ticks = tokio::time::interval(every);
    let mut since_check = 0;
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let filtered = state.config().filter != ">";
    let subject = format!("{}{}", store.prefix, state.config().filter);
    // Seen once already: act on a count mismatch only when it holds on two checks in a row.
    let mut fewer_messages_than_keys = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mirror = state.mirror();
        since_check += 1;
        // Recent enough that it cannot be this checker's own confirmation of one interval ago.
        let confirmed_by_feed = mirror.age().is_some_and(|age| age < every / 2);
        if confirmed_by_feed && since_check < FULL_CHECK_EVERY {
            continue;
        }
        since_check = 0;
        let applied_before = mirror.applied();
        let sent = Instant::now();
        let Ok(info) = store.stream.get_info().await else {
            continue;
        };
        state.learn(&info);
        if !mirror.is_synced() || state.is_resyncing() {
            continue;
        }
        let stream = &info.state;
        let created = info.created.unix_timestamp_nanos();
        if state.stream_created().is_some_and(|known| known != created) {
            state.request_resync("the bucket was deleted and created again".to_string());
            continue;
        }
        if stream.last_sequence < applied_before {
            state.request_resync(format!(
                "the stream ends at revision {} but the mirror applied {applied_before}",
                stream.last_sequence
            ));
            continue;
        }
        // Every live key has a message in the stream; fewer messages means some were removed
        // without a marker (a stream purge). Only meaningful while no update arrives in between.
        let keys = mirror.len() as u64;
        let quiet = mirror.applied() == applied_before;
        if !filtered && quiet && stream.messages < keys {
            if fewer_messages_than_keys {
                fewer_messages_than_keys = false;
                state.request_resync(format!(
                    "the stream holds {} messages but the mirror {keys} keys: messages were removed \
                     without a marker",
                    stream.messages
                ));
                continue;
            }
            fewer_messages_than_keys = true;
        } else {
            fewer_messages_than_keys = false;
        }
        let mut latest = stream.last_sequence;
        if filtered && latest > mirror.applied() {
            let Ok(filter_latest) = last_revision(&store, &subject).await else {
                continue;
            };
            latest = filter_latest;
        }
        // The stream ended at `latest` or before when the check was sent: once the mirror has
        // applied it, the mirror was current then, even if writes kept coming meanwhile.
        let reached = tokio::select! {
            _ = shutdown.cancelled() => return,
            reached = mirror.wait_for(latest, every / 2) => reached.is_ok(),
        };
        if reached {
            mirror.confirm(sent);
        } else if mirror.applied() == applied_before {
            state.report_stall();
        }
    }
}
