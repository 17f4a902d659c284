//! The NATS connection as the bucket actors and writes see it: whether it is up, and how many
//! times it has been established.
//!
//! async-nats knows at once when its connection drops and when it is back (on another node of
//! the cluster, say), but a feed's ordered consumer notices that its server-side consumer died
//! with a node only after missed heartbeats, 7.5 to 15 s later. Watching the connection lets the
//! actor recreate its feed as soon as the connection is back, and lets a write in flight fail at
//! once when the connection it was sent on drops.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::connection::State;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the connection's state is read. async-nats offers no notification an embedder's
/// client could share, and two atomic loads cost nothing at this rate.
const POLL_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    /// Connections established so far, the first included: a change means a reconnect.
    pub connects: u64,
}

impl Link {
    pub fn of(client: &async_nats::Client) -> Link {
        Link {
            up: client.connection_state() == State::Connected,
            connects: client.statistics().connects.load(Ordering::Relaxed),
        }
    }
}

/// Publishes the client's [`Link`] whenever it changes, until `shutdown`.
pub async fn monitor(
    client: async_nats::Client,
    link: watch::Sender<Link>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Link::of(&client);
        link.send_if_modified(|seen| std::mem::replace(seen, now) != now);
    }
}

/// Resolves once the connection described by `sent_on` (read from the client itself when the
/// write went out) has dropped: it is down, or a newer one replaced it; never, if nobody publishes
/// links any more. Each published link only wakes the wait: the decision reads the client's own
/// state (`current`), since the monitor polls and its last link may be older than `sent_on`.
/// async-nats counts a connection before it reports it connected, so a link polled in between
/// says "down" with the very count `sent_on` has; taken as a loss, it failed the first write
/// after a start or a reconnect as `unavailable`, though its connection was fine.
pub async fn lost(link: &mut watch::Receiver<Link>, current: impl Fn() -> Link, sent_on: Link) {
    loop {
        link.borrow_and_update();
        let now = current();
        if now.connects > sent_on.connects || (now.connects == sent_on.connects && !now.up) {
            return;
        }
        if link.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves once a connection newer than the one that had made `connects` connections is up;
/// never, if nobody publishes links any more.
pub async fn reconnected(link: &mut watch::Receiver<Link>, connects: u64) {
    loop {
        let now = *link.borrow_and_update();
        if now.up && now.connects > connects {
            return;
        }
        if link.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_published_link_older_than_the_write_is_not_taken_for_a_loss() {
        let counted_not_yet_up = Link {
            up: false,
            connects: 1,
        };
        let up = Link {
            up: true,
            connects: 1,
        };
        let (publish, mut link) = watch::channel(counted_not_yet_up);
        let client = Cell::new(up);
        let wait = lost(&mut link, || client.get(), up);
        tokio::pin!(wait);
        let waited = tokio::time::timeout(Duration::from_secs(1), wait.as_mut()).await;
        assert!(waited.is_err(), "a stale link ended the wait");

        publish.send_replace(up);
        client.set(counted_not_yet_up);
        publish.send_replace(counted_not_yet_up);
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("the connection went down: the wait ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_connection_is_a_loss_even_once_it_is_up() {
        let first = Link {
            up: true,
            connects: 1,
        };
        let second = Link {
            up: true,
            connects: 2,
        };
        let (publish, mut link) = watch::channel(first);
        let client = Cell::new(first);
        let wait = lost(&mut link, || client.get(), first);
        tokio::pin!(wait);
        assert!(tokio::time::timeout(Duration::from_secs(1), wait.as_mut())
            .await
            .is_err());
        client.set(second);
        publish.send_replace(second);
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("a reconnect ends the wait");
    }
}
