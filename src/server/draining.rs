//! How a connection learns that the server has begun to shut down, cheaply enough to ask each
//! time it wakes.
//!
//! A connection waits on its socket and on the shutdown at once, so it polls the shutdown's
//! future once or twice per request. `CancellationToken::cancelled()` takes two mutexes per poll
//! (the token's state, then its `Notify`'s list of waiters): with 50 Redis clients each sending
//! one GET at a time, that and the per-connection guard that closes connections after the grace
//! period took about a tenth of the sidecar's user time. [`Begun`] registers its task once and
//! afterwards reads an atomic flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Set once, when the server stops accepting connections; never cleared.
#[derive(Default)]
pub struct Draining {
    begun: AtomicBool,
    notify: Notify,
}

impl Draining {
    /// Tells every connection: each finishes what it is doing and closes.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Completes once [`Draining::begin`] is called (at once if it was). Made once per
    /// connection and polled on every turn of its loop.
    pub fn begun(&self) -> Begun<'_> {
        Begun {
            draining: self,
            // Made now, it completes for a `begin` from now on, even one before its first poll.
            notified: Box::pin(self.notify.notified()),
            registered: None,
        }
    }
}

pub struct Begun<'a> {
    draining: &'a Draining,
    notified: Pin<Box<Notified<'a>>>,
    /// The waker `notified` holds: while the task polling is the same, polling `notified` again
    /// would only take its lock to store the same waker.
    registered: Option<Waker>,
}

impl Future for Begun<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.draining.has_begun() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if self.notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered = Some(cx.waker().clone());
        // A `begin` between the first look and the registration is seen here.
        if self.draining.has_begun() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(begun: &mut Pin<&mut Begun<'_>>, waker: &Arc<CountingWaker>) -> Poll<()> {
        let waker = Waker::from(waker.clone());
        begun.as_mut().poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_begin_wakes_the_task_that_polled_and_completes_its_future() {
        let draining = Draining::default();
        let begun = draining.begun();
        tokio::pin!(begun);
        let waker = Arc::new(CountingWaker::default());
        assert!(poll(&mut begun, &waker).is_pending());
        assert!(poll(&mut begun, &waker).is_pending());
        assert_eq!(waker.0.load(Ordering::SeqCst), 0);
        draining.begin();
        assert_eq!(
            waker.0.load(Ordering::SeqCst),
            1,
            "the registered task is woken once"
        );
        assert!(poll(&mut begun, &waker).is_ready());
    }

    #[test]
    fn a_begin_before_the_first_poll_completes_the_future() {
        let draining = Draining::default();
        let made_before = draining.begun();
        tokio::pin!(made_before);
        draining.begin();
        let made_after = draining.begun();
        tokio::pin!(made_after);
        let waker = Arc::new(CountingWaker::default());
        assert!(poll(&mut made_before, &waker).is_ready());
        assert!(poll(&mut made_after, &waker).is_ready());
        assert!(draining.has_begun());
    }

    #[test]
    fn a_new_waker_is_registered_and_is_the_one_woken() {
        let draining = Draining::default();
        let begun = draining.begun();
        tokio::pin!(begun);
        let first = Arc::new(CountingWaker::default());
        let second = Arc::new(CountingWaker::default());
        assert!(poll(&mut begun, &first).is_pending());
        assert!(poll(&mut begun, &second).is_pending());
        draining.begin();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }
}
