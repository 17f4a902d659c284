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
//! The map is listed when the watch is read, not when it starts, one shard of the table at a time
//! (a large shard on the blocking pool): a watch holds one shard's values at most, not a copy of
//! the whole mirror (ten watches of a million 100-byte values, unread, held 2.2 GB that way), and
//! listing a million entries holds up no other client.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::mirror::{
    live_entries_in_shard, walk_off_thread_if, Mirror, MirrorEvent, Table, SHARDS, WALKED_INLINE,
};
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
    /// The table whose live entries come first, and the next of its shards to list into
    /// `snapshot`; `None` once every shard is listed.
    unlisted: Option<(Arc<Table>, usize)>,
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
            unlisted: initial.then(|| (mirror.current_table(), 0)),
            snapshot: Vec::new().into_iter(),
            ahead: HashMap::new(),
            from,
            filter,
            synced_pending: initial,
            missed: 0,
        }
    }

    /// Whether the initial listing (ended by `Synced`) is not all taken yet.
    pub fn is_listing(&self) -> bool {
        self.unlisted.is_some() || self.snapshot.len() > 0 || self.synced_pending
    }

    /// Updates this watch missed because it fell behind (it then ends with `slow_consumer`).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The next item; `Err(slow_consumer)` when the watch fell too far behind to go on.
    pub async fn next(&mut self) -> Result<WatchItem, Error> {
        loop {
            if let Some(entry) = self.snapshot.next() {
                return Ok(WatchItem::Event(Arc::new(entry)));
            }
            let Some((table, shard)) = &self.unlisted else {
                break;
            };
            // Moved on only once listed, so that a `next` dropped meanwhile leaves the shard to
            // the next one.
            let entries = list(table.clone(), *shard, self.filter.clone()).await?;
            self.unlisted = match self.unlisted.take() {
                Some((table, shard)) if shard + 1 < SHARDS => Some((table, shard + 1)),
                _ => None,
            };
            for entry in &entries {
                if entry.revision > self.from {
                    self.ahead.insert(entry.key.clone(), entry.revision);
                }
            }
            self.snapshot = entries.into_iter();
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

/// The live entries of shard `shard` of `table` that `filter` matches: at once when the shard is
/// small, otherwise on the blocking pool, as one of the large walks (`LARGE_WALKS`).
async fn list(
    table: Arc<Table>,
    shard: usize,
    filter: Option<String>,
) -> Result<Vec<Entry>, Error> {
    let matches = move |key: &str| filter.as_deref().is_none_or(|f| filter_matches(f, key));
    let large = table.len() / SHARDS > WALKED_INLINE;
    let listed = move |table: Arc<Table>| live_entries_in_shard(&table, shard, matches);
    walk_off_thread_if(large, table, listed, "listing the watch's initial entries").await
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn put(mirror: &Mirror, key: &str, value: &str, revision: u64) {
        let entry = Entry {
            key: key.to_string(),
            value: Bytes::from(value.to_string()),
            revision,
            created: 1,
            operation: Operation::Put,
        };
        mirror.apply(entry, 0);
    }

    /// Listed a shard at a time, with changes applied between shards: every key comes once in
    /// the initial entries, then `Synced`, then only what is newer than what was listed, so each
    /// key's events stay in revision order without repeats.
    #[tokio::test(flavor = "current_thread")]
    async fn a_watch_lists_each_key_once_shard_by_shard_then_only_newer_changes() {
        let mirror = Mirror::new(4096);
        let keys = 2000u64;
        for n in 1..=keys {
            put(&mirror, &format!("k{n}"), "old", n);
        }
        let mut watch = Watch::start(&mirror, None, true);
        let mut listed = HashMap::new();
        let mut revision = keys;
        loop {
            match watch.next().await.unwrap() {
                WatchItem::Event(entry) => {
                    assert!(listed.insert(entry.key.clone(), entry.revision).is_none());
                    // Every key changes while the listing goes on: a key in a shard not yet
                    // listed is then listed with its new value, and its event is not repeated.
                    if listed.len() % 100 == 0 {
                        for n in 1..=keys {
                            if n % 50 == listed.len() as u64 / 100 {
                                revision += 1;
                                put(&mirror, &format!("k{n}"), "new", revision);
                            }
                        }
                    }
                }
                WatchItem::Synced => break,
                WatchItem::Expired(entry) => panic!("nothing expires here: {entry:?}"),
            }
        }
        assert_eq!(listed.len(), keys as usize, "every key once");
        revision += 1;
        put(&mirror, "k1", "last", revision);
        let mut later = 0;
        loop {
            let WatchItem::Event(entry) = watch.next().await.unwrap() else {
                panic!("only changes follow Synced");
            };
            let seen = listed.insert(entry.key.clone(), entry.revision);
            assert!(
                seen.is_some_and(|seen| seen < entry.revision),
                "{} at {} after {seen:?}",
                entry.key,
                entry.revision
            );
            later += 1;
            if entry.revision == revision {
                break;
            }
        }
        assert!(later >= 1);
    }
}
