//! The revision a strong read must wait for, fetched from NATS once for many reads.
//!
//! A strong read must reflect every write NATS acknowledged before the read began, so the revision
//! it waits for must come from a request sent after it began. A fetch already in flight may have
//! been sent earlier; a read that arrives meanwhile joins the next fetch instead, which starts as
//! soon as the current one answers and serves every read queued by then. Under load this costs one
//! NATS round trip per round trip, however many strong reads arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::error::{Error, ErrorKind, Result};

type Reply = oneshot::Sender<Result<Fetched>>;

/// A fetched target, and when its request was sent.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub revision: u64,
    pub sent: Instant,
}

#[derive(Default)]
pub struct StrongReads {
    queue: Mutex<Queue>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct Queue {
    fetching: bool,
    waiting: Vec<Reply>,
}

impl StrongReads {
    /// NATS requests made for strong reads so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The latest revision of the keys `filter` matches, from a fetch sent after this call.
    pub async fn target(
        self: &Arc<Self>,
        store: &kv::Store,
        filter: &str,
        tasks: &TaskTracker,
        runtime: &Handle,
        shutdown: &CancellationToken,
    ) -> Result<Fetched> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().map_err(|_| poisoned())?;
            queue.waiting.push(reply);
            !std::mem::replace(&mut queue.fetching, true)
        };
        if start {
            // A task of its own, so a read that gives up cannot strand the reads queued behind it.
            tasks.spawn_on(
                self.clone().fetch_while_waited_for(
                    store.clone(),
                    format!("{}{}", store.prefix, filter),
                    shutdown.clone(),
                ),
                runtime,
            );
        }
        answer.await.map_err(|_| poisoned())?
    }

    async fn fetch_while_waited_for(
        self: Arc<Self>,
        store: kv::Store,
        subject: String,
        shutdown: CancellationToken,
    ) {
        loop {
            let batch = match self.queue.lock() {
                Ok(mut queue) if queue.waiting.is_empty() => {
                    queue.fetching = false;
                    return;
                }
                Ok(mut queue) => std::mem::take(&mut queue.waiting),
                Err(_) => return,
            };
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            let result = tokio::select! {
                _ = shutdown.cancelled() => Err(Error::new(
                    ErrorKind::Unavailable,
                    "the sidecar is shutting down; retry the read against its successor",
                )),
                revision = last_revision(&store, &subject) => {
                    revision.map(|revision| Fetched { revision, sent })
                }
            };
            for reply in batch {
                let _ = reply.send(result.clone());
            }
        }
    }
}

/// The latest revision among the subjects `subject` matches, asked of the stream leader: the
/// stream's last sequence for the whole bucket; for a filter, the last message on it (a filtered
/// mirror never sees the revisions outside its filter, so it must not wait for them).
pub(crate) async fn last_revision(store: &kv::Store, subject: &str) -> Result<u64> {
    let unavailable = |err: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "a strong read needs the bucket's latest revision from NATS, which failed: {err}"
            ),
        )
    };
    if subject.strip_prefix(store.prefix.as_str()) == Some(">") {
        let info = store.stream.get_info().await.map_err(|e| unavailable(&e))?;
        return Ok(info.state.last_sequence);
    }
    match store.stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(err) if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(0)
        }
        Err(err) => Err(unavailable(&err)),
    }
}

fn poisoned() -> Error {
    Error::new(
        ErrorKind::Internal,
        "the strong-read queue was abandoned; retry the read",
    )
}
