//! A watch on a mirror: the live entries at the moment it starts, then every later change.
//!
//! It subscribes to the mirror's broadcast first and reads the applied revision A second (the
//! mirror publishes in the opposite order), so every revision after A arrives as an event and
//! every revision up to A is already in the map. The map is read without stopping the actor, so
//! an entry in the snapshot may be newer than A; its older events are then skipped, keeping each
//! key's events in revision order with no duplicates.
//!
//! Values that leave the mirror without a revision (expiry, a rebuild) pass the revision check;
//! after a rebuild, whose revisions may restart lower, the watch starts over at revision 0.
//!
//! The map is listed when the watch is first read, not when it starts, and a large one on the
//! blocking pool: listing a million entries must not hold up the thread that serves every client.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::mirror::{live_entries, walk_off_thread_if, Mirror, MirrorEvent, Table, WALKED_INLINE};
use crate::cache::error::{Error, ErrorKind};
use crate::keys::filter_matches;
use crate::protocol::{Entry, Operation};

/// What a watch yields.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// A live entry of the initial snapshot, or a put, delete or purge applied later.
    Event(Arc<Entry>),
    /// A value that expired (its TTL or the bucket's `max_age`), as a `purge` entry at the
    /// value's own revision.
    Expired(Arc<Entry>),
    /// The initial snapshot is complete.
    Synced,
}

pub struct Watch {
    events: broadcast::Receiver<MirrorEvent>,
    /// The table whose live entries come first, until they are listed into `snapshot`.
    unlisted: Option<Arc<Table>>,
    snapshot: std::vec::IntoIter<Entry>,
    /// Keys whose snapshot entry is newer than `from`, with that entry's revision.
    ahead: HashMap<String, u64>,
    from: u64,
    filter: Option<String>,
    synced_pending: bool,
    missed: u64,
}

impl Watch {
    pub(crate) fn start(mirror: &Mirror, filter: Option<String>, initial: bool) -> Watch {
        let events = mirror.subscribe();
        let from = mirror.applied();
        Watch {
            events,
            unlisted: initial.then(|| mirror.current_table()),
            snapshot: Vec::new().into_iter(),
            ahead: HashMap::new(),
            from,
            filter,
            synced_pending: initial,
            missed: 0,
        }
    }

    /// Updates this watch missed because it fell behind (it then ends with `slow_consumer`).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The next item; `Err(slow_consumer)` when the watch fell too far behind to go on.
    pub async fn next(&mut self) -> Result<WatchItem, Error> {
        if let Some(table) = &self.unlisted {
            // Taken only once listed, so that a `next` dropped meanwhile leaves it to the next one.
            let entries = list(table.clone(), self.filter.clone()).await?;
            self.unlisted = None;
            for entry in &entries {
                if entry.revision > self.from {
                    self.ahead.insert(entry.key.clone(), entry.revision);
                }
            }
            self.snapshot = entries.into_iter();
        }
        if let Some(entry) = self.snapshot.next() {
            return Ok(WatchItem::Event(Arc::new(entry)));
        }
        if self.synced_pending {
            self.synced_pending = false;
            return Ok(WatchItem::Synced);
        }
        loop {
            let (entry, removed) = match self.events.recv().await {
                Ok(MirrorEvent::Applied(entry)) => (entry, false),
                Ok(MirrorEvent::Removed(entry)) => (entry, true),
                Ok(MirrorEvent::Rebuilt) => {
                    self.from = 0;
                    self.ahead.clear();
                    continue;
                }
                Err(RecvError::Lagged(missed)) => {
                    self.missed += missed;
                    return Err(Error::new(
                        ErrorKind::SlowConsumer,
                        format!(
                            "the watch fell {missed} updates behind and was ended; read faster, or \
                             watch again to resume from a fresh snapshot"
                        ),
                    ));
                }
                Err(RecvError::Closed) => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "the bucket was shut down",
                    ))
                }
            };
            if !removed && entry.revision <= self.from {
                continue;
            }
            if let Some(f) = &self.filter {
                if !filter_matches(f, &entry.key) {
                    continue;
                }
            }
            if let Some(&seen) = self.ahead.get(&entry.key) {
                if !removed && entry.revision <= seen {
                    continue;
                }
                self.ahead.remove(&entry.key);
            }
            if removed && entry.operation == Operation::Purge {
                return Ok(WatchItem::Expired(entry));
            }
            return Ok(WatchItem::Event(entry));
        }
    }
}

/// The live entries of `table` that `filter` matches: at once when the table is small, otherwise
/// on the blocking pool, as one of the large walks (`LARGE_WALKS`).
async fn list(table: Arc<Table>, filter: Option<String>) -> Result<Vec<Entry>, Error> {
    let matches = move |key: &str| filter.as_deref().is_none_or(|f| filter_matches(f, key));
    let large = table.len() > WALKED_INLINE;
    let listed = move |table: Arc<Table>| live_entries(&table, matches);
    walk_off_thread_if(large, table, listed, "listing the watch's initial entries").await
}
