//! A bucket's in-memory copy: the live entries, the highest revision applied, and a way to wait
//! for a revision.
//!
//! Only the bucket actor writes; any number of request handlers read concurrently, straight from
//! the `DashMap`, never through the actor. The actor applies an update in this order: the map,
//! then `applied`, then the revision notification and the event broadcast. A watch that
//! subscribes to the broadcast and then reads `applied` therefore finds every revision up to
//! `applied` in the map and receives every later one as an event (see `watch.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;
use dashmap::DashMap;
use tokio::sync::{broadcast, oneshot};

use crate::error::{Error, ErrorCode, Result};
use crate::protocol::types::EntryRef;
use crate::protocol::{Entry, Operation};

/// A live value in the mirror. The key is the map's key.
#[derive(Debug, Clone)]
pub struct MirrorValue {
    pub value: Bytes,
    pub revision: u64,
    pub created: i64,
}

pub struct Mirror {
    /// Keys up to 24 bytes are stored inline in the table, so a lookup compares them without
    /// following a pointer (a cache miss per read with boxed keys). aHash: several times faster
    /// than SipHash on short keys, and still seeded per process against chosen collisions.
    entries: DashMap<CompactString, MirrorValue, ahash::RandomState>,
    applied: AtomicU64,
    synced: AtomicBool,
    bytes: AtomicU64,
    last_update: AtomicI64,
    /// Tasks waiting for a revision, by revision. Only the waiters whose revision an update
    /// reaches are woken (a watch channel would wake every waiter on every update).
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
    /// How many senders `waiters` holds, so that applying an update takes no lock when nobody waits.
    waiting: AtomicUsize,
    events: broadcast::Sender<Arc<Entry>>,
}

impl Mirror {
    pub fn new(event_buffer: usize) -> Self {
        Mirror {
            entries: DashMap::with_hasher(ahash::RandomState::new()),
            applied: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            last_update: AtomicI64::new(0),
            waiters: Mutex::new(BTreeMap::new()),
            waiting: AtomicUsize::new(0),
            events: broadcast::Sender::new(event_buffer),
        }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.get(key).map(|v| Entry {
            key: key.to_string(),
            value: v.value.clone(),
            revision: v.revision,
            created: v.created,
            operation: Operation::Put,
        })
    }

    /// Calls `f` with the key's live entry, borrowed from the map (no copy, no allocation); the
    /// key's shard stays read-locked while `f` runs, so `f` must be quick.
    pub fn read<R>(&self, key: &str, f: impl FnOnce(Option<EntryRef<'_>>) -> R) -> R {
        match self.entries.get(key) {
            Some(v) => f(Some(EntryRef {
                key,
                value: &v.value,
                revision: v.revision,
                created: v.created,
                operation: Operation::Put,
            })),
            None => f(None),
        }
    }

    /// Live keys matching `matches`, sorted.
    pub fn keys(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let mut keys: Vec<String> = self
            .entries
            .iter()
            .filter(|e| matches(e.key()))
            .map(|e| e.key().to_string())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Every live entry matching `matches`, in no particular order.
    pub fn snapshot(&self, matches: impl Fn(&str) -> bool) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|e| matches(e.key()))
            .map(|e| Entry {
                key: e.key().to_string(),
                value: e.value.clone(),
                revision: e.revision,
                created: e.created,
                operation: Operation::Put,
            })
            .collect()
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// When NATS stored the last update applied, in Unix nanoseconds; 0 if none.
    pub fn last_update(&self) -> i64 {
        self.last_update.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.events.subscribe()
    }

    /// Applies one update from the watcher. Returns false (and changes nothing) for a revision
    /// already applied, which a recreated watcher may deliver again.
    pub fn apply(&self, entry: Entry) -> bool {
        if entry.revision <= self.applied() {
            return false;
        }
        let Entry {
            key,
            value,
            revision,
            created,
            operation,
        } = entry;
        let size = |key: &str, value: &Bytes| (key.len() + value.len()) as u64;
        match operation {
            Operation::Put => {
                let added = size(&key, &value);
                let old = self.entries.insert(
                    CompactString::from(key.as_str()),
                    MirrorValue {
                        value,
                        revision,
                        created,
                    },
                );
                let removed = old.map_or(0, |old| size(&key, &old.value));
                self.bytes.fetch_add(added, Ordering::Relaxed);
                self.bytes.fetch_sub(removed, Ordering::Relaxed);
            }
            Operation::Delete | Operation::Purge => {
                if let Some((key, old)) = self.entries.remove(key.as_str()) {
                    self.bytes
                        .fetch_sub(size(&key, &old.value), Ordering::Relaxed);
                }
            }
        }
        self.last_update.store(created, Ordering::Relaxed);
        self.advance(revision);
        // Only after `advance`: a watch that subscribes later reads an `applied` that covers this
        // update. Building the event costs an allocation, so it is skipped when nobody watches.
        if self.events.receiver_count() > 0 {
            let value = match operation {
                Operation::Put => self.entries.get(key.as_str()).map(|v| v.value.clone()),
                Operation::Delete | Operation::Purge => None,
            };
            let _ = self.events.send(Arc::new(Entry {
                key,
                value: value.unwrap_or_default(),
                revision,
                created,
                operation,
            }));
        }
        true
    }

    /// Records that every revision up to `revision` has been applied (also used when a filtered
    /// mirror learns that revisions outside its filter exist).
    pub(crate) fn advance(&self, revision: u64) {
        if revision > self.applied() {
            self.applied.store(revision, Ordering::SeqCst);
            // SeqCst pairs with `wait_for`: a waiter that this load misses re-reads `applied`
            // after registering, and so sees `revision`.
            if self.waiting.load(Ordering::SeqCst) > 0 {
                self.wake(revision);
            }
        }
    }

    fn wake(&self, revision: u64) {
        let ready = match self.waiters.lock() {
            Ok(mut waiters) => {
                let later = waiters.split_off(&(revision + 1));
                std::mem::replace(&mut *waiters, later)
            }
            Err(_) => return,
        };
        let woken: usize = ready.values().map(Vec::len).sum();
        self.waiting.fetch_sub(woken, Ordering::SeqCst);
        for sender in ready.into_values().flatten() {
            let _ = sender.send(());
        }
    }

    /// Drops the senders of waiters that gave up on `revision`.
    fn forget_closed(&self, revision: u64) {
        if let Ok(mut waiters) = self.waiters.lock() {
            if let Some(list) = waiters.get_mut(&revision) {
                let before = list.len();
                list.retain(|sender| !sender.is_closed());
                self.waiting
                    .fetch_sub(before - list.len(), Ordering::SeqCst);
                if list.is_empty() {
                    waiters.remove(&revision);
                }
            }
        }
    }

    pub(crate) fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Waits until the mirror has applied `revision`, by notification rather than polling.
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> Result<()> {
        if self.applied() >= revision {
            return Ok(());
        }
        let (sender, receiver) = oneshot::channel();
        {
            let Ok(mut waiters) = self.waiters.lock() else {
                return Err(Error::new(
                    ErrorCode::Internal,
                    "the mirror's waiter list is poisoned",
                ));
            };
            // Count first, then re-check: see `advance`.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if self.applied.load(Ordering::SeqCst) >= revision {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return Ok(());
            }
            waiters.entry(revision).or_default().push(sender);
        }
        let outcome = tokio::time::timeout(timeout, receiver).await;
        if outcome.is_err() {
            self.forget_closed(revision);
        }
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::new(ErrorCode::Internal, "the bucket's mirror was shut down")),
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "the mirror had applied revision {} and did not reach revision {revision} within {} ms; \
                     NATS may be unreachable, retry later or raise timeout_ms",
                    self.applied(),
                    timeout.as_millis()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, revision: u64, operation: Operation) -> Entry {
        Entry {
            key: key.to_string(),
            value: Bytes::from(value.to_string()),
            revision,
            created: 1,
            operation,
        }
    }

    #[test]
    fn applies_in_revision_order_and_ignores_replays() {
        let mirror = Mirror::new(16);
        assert!(mirror.apply(entry("a", "1", 1, Operation::Put)));
        assert!(mirror.apply(entry("b", "22", 2, Operation::Put)));
        assert!(!mirror.apply(entry("a", "stale", 1, Operation::Put)));
        assert_eq!(mirror.get("a").unwrap().value, Bytes::from("1"));
        assert_eq!(mirror.bytes(), 2 + 3);
        assert!(mirror.apply(entry("a", "", 3, Operation::Delete)));
        assert!(mirror.get("a").is_none());
        assert_eq!(mirror.applied(), 3);
        assert_eq!(mirror.bytes(), 3);
        assert!(mirror.apply(entry("b", "", 4, Operation::Purge)));
        assert!(mirror.is_empty());
        assert_eq!(mirror.bytes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_wake_exactly_when_their_revision_is_applied() {
        let mirror = Arc::new(Mirror::new(16));
        let waiters: Vec<_> = (1..=200u64)
            .map(|rev| {
                let mirror = mirror.clone();
                tokio::spawn(async move {
                    mirror.wait_for(rev, Duration::from_secs(30)).await?;
                    // Woken only once the revision is applied.
                    assert!(mirror.applied() >= rev);
                    Ok::<(), Error>(())
                })
            })
            .collect();
        for rev in 1..=200u64 {
            mirror.apply(entry("k", "v", rev, Operation::Put));
            tokio::task::yield_now().await;
        }
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        assert_eq!(mirror.waiting.load(Ordering::SeqCst), 0);
        // A waiter that times out leaves nothing behind.
        let err = mirror
            .wait_for(500, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout);
        assert_eq!(mirror.waiting.load(Ordering::SeqCst), 0);
        assert!(mirror.waiters.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn wait_for_wakes_on_apply_and_times_out_otherwise() {
        let mirror = Arc::new(Mirror::new(16));
        let err = mirror
            .wait_for(1, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout);
        let waiter = {
            let mirror = mirror.clone();
            tokio::spawn(async move { mirror.wait_for(2, Duration::from_secs(30)).await })
        };
        mirror.apply(entry("a", "1", 1, Operation::Put));
        mirror.apply(entry("a", "2", 2, Operation::Put));
        waiter.await.unwrap().unwrap();
    }
}
