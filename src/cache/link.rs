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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::nats::ConnectionEvents;

/// How often the connection's state is read when nothing reports its changes: a client an
/// embedder connected, whose event callback nearkv does not own.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How often it is read while the client's event callback reports changes and has been quiet for
/// [`STEADY_AFTER`]. Reading every 20 ms for nothing woke an idle sidecar 68 times a second (4.4
/// ms of CPU a second); now it wakes about 5 times a second.
const POLL_STEADY: Duration = Duration::from_secs(1);
/// After an event, the state is read every [`POLL_EVERY`] this long: async-nats reports an event
/// just before it records the new state, and the callback may run on another thread.
const STEADY_AFTER: Duration = Duration::from_secs(2);

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

/// Publishes the client's [`Link`] whenever it changes, until `shutdown`. With `events`, the
/// client's event callback wakes it on every change, and it reads the state often only around one.
pub async fn monitor(
    client: async_nats::Client,
    link: watch::Sender<Link>,
    events: Option<ConnectionEvents>,
    shutdown: CancellationToken,
) {
    follow(|| Link::of(&client), link, events, shutdown).await;
}

async fn follow(
    current: impl Fn() -> Link,
    link: watch::Sender<Link>,
    events: Option<ConnectionEvents>,
    shutdown: CancellationToken,
) {
    // As if an event had just come: the first connection may still be on its way.
    let mut last_event = Instant::now();
    loop {
        let every = match events {
            Some(_) if last_event.elapsed() >= STEADY_AFTER => POLL_STEADY,
            _ => POLL_EVERY,
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = heard(events.as_ref()) => last_event = Instant::now(),
            () = tokio::time::sleep(every) => {}
        }
        let now = current();
        link.send_if_modified(|seen| std::mem::replace(seen, now) != now);
    }
}

/// The next event of the client's connection; never, without `events`.
async fn heard(events: Option<&ConnectionEvents>) {
    match events {
        Some(events) => events.heard().await,
        None => std::future::pending().await,
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
    use std::sync::{Arc, Mutex};

    use super::*;

    const UP: Link = Link {
        up: true,
        connects: 1,
    };
    const DOWN: Link = Link {
        up: false,
        connects: 1,
    };

    /// Follows a state the test sets; returns the setter, the published link and the shutdown.
    fn follow_state(
        events: Option<ConnectionEvents>,
    ) -> (Arc<Mutex<Link>>, watch::Receiver<Link>, CancellationToken) {
        let state = Arc::new(Mutex::new(UP));
        let (publish, link) = watch::channel(UP);
        let shutdown = CancellationToken::new();
        let read = state.clone();
        tokio::spawn(follow(
            move || *read.lock().unwrap(),
            publish,
            events,
            shutdown.clone(),
        ));
        (state, link, shutdown)
    }

    #[tokio::test(start_paused = true)]
    async fn with_events_a_steady_connection_is_read_seldom_and_a_change_at_its_event() {
        let events = ConnectionEvents::default();
        let (state, mut link, shutdown) = follow_state(Some(events.clone()));
        tokio::time::sleep(STEADY_AFTER + POLL_EVERY).await;

        *state.lock().unwrap() = DOWN;
        let fast_polls = tokio::time::timeout(POLL_EVERY * 10, link.changed()).await;
        assert!(
            fast_polls.is_err(),
            "a steady connection was read every 20 ms"
        );
        tokio::time::timeout(POLL_STEADY, link.changed())
            .await
            .expect("read once a second even without an event")
            .unwrap();
        assert_eq!(*link.borrow_and_update(), DOWN);

        let back = Link {
            up: true,
            connects: 2,
        };
        *state.lock().unwrap() = back;
        let signalled = Instant::now();
        events.signal();
        link.changed().await.unwrap();
        assert_eq!(
            signalled.elapsed(),
            Duration::ZERO,
            "an event is read at once"
        );
        assert_eq!(*link.borrow_and_update(), back);

        // Right after an event the state is read often: the event may come before the state.
        *state.lock().unwrap() = DOWN;
        tokio::time::timeout(POLL_EVERY * 2, link.changed())
            .await
            .expect("read often after an event")
            .unwrap();
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn without_events_the_state_is_read_often() {
        let (state, mut link, shutdown) = follow_state(None);
        tokio::time::sleep(STEADY_AFTER * 3).await;
        *state.lock().unwrap() = DOWN;
        tokio::time::timeout(POLL_EVERY * 2, link.changed())
            .await
            .expect("read every 20 ms")
            .unwrap();
        assert_eq!(*link.borrow_and_update(), DOWN);
        shutdown.cancel();
    }

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
