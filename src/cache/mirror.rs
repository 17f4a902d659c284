//! A bucket's in-memory copy: the live entries, the highest revision applied, how recently NATS
//! confirmed it current, and a way to wait for a revision.
//!
//! Only the bucket actor writes; any number of request handlers read concurrently, straight from
//! the table, never through the actor. The actor applies an update in this order: the table,
//! then `applied`, then the revision notification and the event broadcast. A watch that
//! subscribes to the broadcast and then reads `applied` therefore finds every revision up to
//! `applied` in the table and receives every later one as an event (see `watch.rs`).
//!
//! A snapshot (the initial sync, or a rebuild after the stream lost history or was recreated)
//! is loaded into a separate [`Staging`] table while the old one keeps serving, then swapped in
//! with one atomic store: a reader sees the old table or the new one, never a mix.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::{DashMap, SharedValue};
use tokio::sync::{broadcast, oneshot};

use super::slot::Slot;
use crate::cache::error::{Error, ErrorKind, Result};
use crate::protocol::types::EntryRef;
use crate::protocol::{Entry, Operation};

/// The mirror's table: a set of slots, each a key with its value (see `slot.rs`), looked up by
/// key bytes. aHash: several times faster than SipHash on short keys, and still seeded per
/// process against chosen collisions.
pub(super) type Table = DashMap<Slot, (), ahash::RandomState>;

/// The most entries a walk may visit on the task that needs it; a longer walk (or the freeing of a
/// larger table) runs on the blocking pool, off the thread that serves clients. A listing of
/// 9,500 keys took about 3 ms: walked inline, a client pipelining `KEYS *` on such a bucket
/// raised another client's GET p99 from 0.1 to 6.4 ms; off the thread, it stayed at 0.06 ms.
pub(super) const WALKED_INLINE: usize = 1_000;

/// Walks of large tables that run at once, across all buckets; the others wait their turn. A
/// client that pipelines a thousand listings of a million-key bucket would otherwise hold a
/// thousand copies of its keys and every core.
static LARGE_WALKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs `walk` on `input`: at once unless `large`, otherwise on the blocking pool as one of the
/// `LARGE_WALKS`, so that walking a million entries holds up no client served by the calling
/// thread. `what` names the walk in the error of one that failed.
pub(super) async fn walk_off_thread_if<T: Send + 'static, R: Send + 'static>(
    large: bool,
    input: T,
    walk: impl FnOnce(T) -> R + Send + 'static,
    what: &str,
) -> Result<R> {
    if !large {
        return Ok(walk(input));
    }
    let failed = |err: &dyn std::fmt::Display| {
        Error::new(ErrorKind::Internal, format!("{what} failed: {err}"))
    };
    let _turn = LARGE_WALKS.acquire().await.map_err(|err| failed(&err))?;
    tokio::task::spawn_blocking(move || walk(input))
        .await
        .map_err(|err| failed(&err))
}

/// Shards of a table. More than DashMap's default (4 per core): a walk of the table (saving it,
/// listing keys) read-locks one shard at a time, and the actor cannot apply an update to that
/// shard meanwhile. At a million keys and 8 shards a save held each for about 55 ms, and writes
/// (answered once their update is applied) waited that long. Not many more: with 256, the shard
/// locks' cache lines (32 KiB) crowd the L1 cache and pipelined reads lost 6 to 13%.
pub(super) const SHARDS: usize = 64;

/// The bits of a scan position below its shard's index (see [`Mirror::scan`]): positions stay
/// below 2^63, since some Redis clients read the cursor as a signed 64-bit integer.
const IN_SHARD_BITS: u32 = 63 - SHARDS.trailing_zeros();

/// A page of a scan holds at least the keys of 1/`PAGE_SHARE` of the shard it ends in, whatever
/// `COUNT` says, so that a whole scan walks each shard at most about this many times.
const PAGE_SHARE: usize = 8;

/// The hasher of every table, seeded at random once per process: a key hashes alike in every
/// table, so that it keeps its shard and its scan position when a rebuild replaces the table.
static TABLE_HASHER: std::sync::LazyLock<ahash::RandomState> =
    std::sync::LazyLock::new(ahash::RandomState::new);

/// A table with room for `capacity` slots: a snapshot of known size never rehashes while it loads.
fn new_table(capacity: usize) -> Table {
    DashMap::with_capacity_and_hasher_and_shard_amount(capacity, TABLE_HASHER.clone(), SHARDS)
}

impl Slot {
    /// Whether the value has not expired. The clock is read only for values that can expire.
    fn is_live(&self) -> bool {
        let expires = self.expires();
        expires == 0 || expires > unix_nanos()
    }

    fn entry(&self) -> Entry {
        Entry {
            key: self.key().to_string(),
            value: Bytes::copy_from_slice(self.value()),
            revision: self.revision(),
            created: self.created(),
            operation: Operation::Put,
        }
    }
}

/// Now, in Unix nanoseconds: the clock NATS timestamps are compared with.
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// The monotonic clock in milliseconds, as of the kernel's last tick: a few milliseconds coarse,
/// and a fraction of the cost of a precise read. Every read from the mirror asks its age (in
/// milliseconds, against a `max_staleness` of at least 200), and on a pipelined burst precise
/// clock reads were a tenth of the server's time.
fn coarse_millis() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only the timespec it is given.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } == 0 {
            return now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000;
        }
    }
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn read_table<R>(table: &Table, key: &str, f: impl FnOnce(Option<EntryRef<'_>>) -> R) -> R {
    let result = match table.get(key.as_bytes()) {
        Some(slot) if slot.key().is_live() => f(Some(slot.key().entry_ref(key))),
        _ => f(None),
    };
    result
}

/// Lends `f` the slots of shard `index` of `table`, and how many the shard holds, under the
/// shard's read lock; an index past the last shard lends none. The slots cannot outlive the call:
/// `f`'s result cannot borrow from them.
fn with_shard<R>(
    table: &Table,
    index: usize,
    f: impl FnOnce(usize, &mut dyn Iterator<Item = &Slot>) -> R,
) -> R {
    let Some(shard) = table.shards().get(index) else {
        return f(0, &mut std::iter::empty());
    };
    let shard = shard.read();
    // SAFETY: the slots are lent to `f` only while `shard` holds the shard's read lock, and `f`
    // cannot keep a reference to any of them.
    let mut slots = unsafe { shard.iter() }.map(|bucket| unsafe { &bucket.as_ref().0 });
    f(shard.len(), &mut slots)
}

/// The live entries of shard `index` of `table` whose keys `matches` accepts.
pub(super) fn live_entries_in_shard(
    table: &Table,
    index: usize,
    matches: impl Fn(&str) -> bool,
) -> Vec<Entry> {
    with_shard(table, index, |_, slots| {
        slots
            .filter(|slot| slot.is_live() && matches(slot.key()))
            .map(Slot::entry)
            .collect()
    })
}

/// A table swapped out, freed on the blocking pool when it is large: freeing a million values
/// takes tens of milliseconds that the thread serving clients should not spend.
struct Replaced(Arc<Table>);

impl std::ops::Deref for Replaced {
    type Target = Table;

    fn deref(&self) -> &Table {
        &self.0
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        if self.0.len() <= WALKED_INLINE {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let table = std::mem::take(&mut self.0);
            runtime.spawn_blocking(move || drop(table));
        }
    }
}

/// A rebuild's old and new tables, for telling the mirror's watches what changed.
pub(super) struct Rebuild {
    old: Replaced,
    new: Arc<Table>,
    /// The new table's revision and stream time, given to the deletes of vanished keys.
    applied: u64,
    last_update: i64,
    events: broadcast::Sender<MirrorEvent>,
}

impl Rebuild {
    /// Tells the watches that the table was replaced, then sends a `delete` for each key that
    /// vanished and a `put` for each key whose value changed. Compares both tables key by key,
    /// on the blocking pool when they are large: at a million keys that holds up no client. The
    /// caller (the bucket's actor) applies no update until this returns, so the watches get the
    /// difference before any later change.
    pub(super) async fn announce(self) {
        let large = self.old.len().max(self.new.len()) > WALKED_INLINE;
        let what = "telling watches what a rebuild changed";
        if let Err(err) = walk_off_thread_if(large, self, Rebuild::send, what).await {
            tracing::warn!(error = %err, "watches were not told what a rebuild changed");
        }
    }

    fn send(self) {
        let Rebuild {
            old,
            new,
            applied,
            last_update,
            events,
        } = self;
        let _ = events.send(MirrorEvent::Rebuilt);
        for gone in old
            .iter()
            .filter(|e| !new.contains_key(e.key().key_bytes()))
        {
            let _ = events.send(MirrorEvent::Removed(Arc::new(Entry {
                key: gone.key().key().to_string(),
                value: Bytes::new(),
                revision: applied,
                created: last_update,
                operation: Operation::Delete,
            })));
        }
        for slot in new.iter() {
            let slot = slot.key();
            let unchanged = old.get(slot.key_bytes()).is_some_and(|o| {
                o.key().revision() == slot.revision() && o.key().value() == slot.value()
            });
            // An expired value is no news: the watch saw it expire (or will, at its sweep).
            if !unchanged && slot.is_live() {
                let _ = events.send(MirrorEvent::Applied(Arc::new(slot.entry())));
            }
        }
    }
}

/// One table of a mirror, held for reading several keys (see [`Mirror::with_table`]).
pub struct TableView<'a>(&'a Table);

impl TableView<'_> {
    /// As [`Mirror::read`], from this table.
    pub fn read<R>(&self, key: &str, f: impl FnOnce(Option<EntryRef<'_>>) -> R) -> R {
        read_table(self.0, key, f)
    }

    /// The bytes of the live values of `keys` (a key listed twice counts twice).
    pub fn value_bytes<K: AsRef<str>>(&self, keys: &[K]) -> usize {
        keys.iter()
            .map(|key| self.read(key.as_ref(), |e| e.map_or(0, |e| e.value.len())))
            .sum()
    }
}

/// Where a walked table stood (see [`Mirror::walk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedPosition {
    /// Every revision up to this one is in the table.
    pub applied: u64,
    pub last_update: i64,
    pub stream_created: Option<i128>,
}

/// What a mirror tells its watches.
#[derive(Debug, Clone)]
pub enum MirrorEvent {
    /// A put, delete or purge applied at its revision.
    Applied(Arc<Entry>),
    /// A value that left the mirror without a revision of its own: it expired (`purge`), or it
    /// is missing from the snapshot of a rebuild (`delete`).
    Removed(Arc<Entry>),
    /// The table was replaced by a fresh snapshot; the revisions that follow may be lower than
    /// the ones before (a recreated bucket starts again at 1).
    Rebuilt,
}

/// When a value expires (Unix ns) and its revision: how the actor tracks a value's expiry.
pub type ExpiryKey = (i64, u64);

/// What applying an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The revision was applied before (a resumed feed may deliver it again); nothing changed.
    Again,
    /// Applied. `replaced`: the expiry of the value it replaced or removed, if that could expire.
    Done { replaced: Option<ExpiryKey> },
}

/// The size of the largest value ever put in a mirror; it never shrinks. It tells whether a read
/// of a number of values could exceed a limit without looking them up (see
/// [`Mirror::values_may_exceed`]).
#[derive(Debug, Default)]
struct LargestValue(AtomicUsize);

impl LargestValue {
    fn saw(&self, len: usize) {
        if len > self.0.load(Ordering::Relaxed) {
            self.0.fetch_max(len, Ordering::Relaxed);
        }
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Puts or removes the entry's key in `table` (a live table or a staged snapshot); returns how
/// many bytes of keys and values that added, and the expiry of the value it replaced.
fn write_table(
    table: &Table,
    largest: &LargestValue,
    entry: &Entry,
    expires: i64,
) -> (i64, Option<ExpiryKey>) {
    let (added, old) = match entry.operation {
        Operation::Put => {
            largest.saw(entry.value.len());
            let slot = Slot::new(
                &entry.key,
                &entry.value,
                entry.revision,
                entry.created,
                expires,
            );
            (slot.size() as i64, put_slot(table, slot))
        }
        Operation::Delete | Operation::Purge => {
            (0, table.remove(entry.key.as_bytes()).map(|(old, ())| old))
        }
    };
    let removed = old.as_ref().map_or(0, |old| old.size() as i64);
    let replaced = old
        .filter(|old| old.expires() != 0)
        .map(|old| (old.expires(), old.revision()));
    (added - removed, replaced)
}

/// Puts `slot` in place of its key's slot, in one step under the shard's lock (a reader never
/// finds the key missing meanwhile); returns the slot it replaced.
fn put_slot(table: &Table, slot: Slot) -> Option<Slot> {
    match table.entry(slot) {
        dashmap::Entry::Occupied(occupied) => Some(occupied.replace_entry(()).0),
        dashmap::Entry::Vacant(vacant) => {
            vacant.insert(());
            None
        }
    }
}

/// A snapshot being loaded while the mirror keeps serving its current table.
///
/// Its writes are put in the table only when the snapshot is complete ([`Staging::flush`]),
/// shard by shard in the order of their table positions. Put as they came, in random positions
/// of a table of a million slots, each cost two cache misses (its control bytes and its slot):
/// a sixth of the sidecar's CPU in a cold start. In position order the table is written front to
/// back, one shard at a time.
pub struct Staging {
    table: Table,
    /// Writes not yet in `table`, by shard, each shard's in the order they came.
    pending: ShardLists,
    largest: LargestValue,
    bytes: i64,
    applied: u64,
    last_update: i64,
    /// When the stream the snapshot comes from was created (Unix ns), to notice a new one.
    stream_created: Option<i128>,
}

/// Writes waiting to be put in a table, one list per shard of it.
pub(super) type ShardLists = Vec<Vec<PendingWrite>>;

/// A write of a snapshot waiting for [`Staging::flush`] (or a saved slot waiting for
/// [`Staging::put_saved`]), with its key's hash.
pub(super) struct PendingWrite {
    hash: u64,
    write: StagedWrite,
}

enum StagedWrite {
    Put(Slot),
    Remove(Box<str>),
}

impl Default for Staging {
    fn default() -> Self {
        Staging {
            table: new_table(0),
            pending: Vec::new(),
            largest: LargestValue::default(),
            bytes: 0,
            applied: 0,
            last_update: 0,
            stream_created: None,
        }
    }
}

impl Staging {
    /// An empty snapshot of the stream created at `stream_created` (Unix ns), with room for
    /// `keys` values.
    pub fn of_stream(stream_created: i128, keys: usize) -> Staging {
        let table = new_table(keys);
        // Room for a shard's share of the keys and some more: growing the lists as they fill
        // would copy them, at the end in steps of megabytes.
        let per_shard = keys / SHARDS + keys / SHARDS / 8;
        Staging {
            pending: (0..table.shards().len())
                .map(|_| Vec::with_capacity(per_shard))
                .collect(),
            table,
            stream_created: Some(stream_created),
            ..Staging::default()
        }
    }

    /// An empty snapshot with room for `keys` values, of a stream named later (a saved mirror
    /// says which in its last bytes, see [`Staging::set_saved_position`]).
    pub(super) fn with_room(keys: usize) -> Staging {
        Staging {
            table: new_table(keys),
            ..Staging::default()
        }
    }

    /// One empty list per shard of the table, for [`Staging::sort_saved`].
    pub(super) fn shard_lists(&self) -> ShardLists {
        (0..self.table.shards().len()).map(|_| Vec::new()).collect()
    }

    /// Adds a saved slot to the list of the shard that will hold it (`lists` from
    /// [`Staging::shard_lists`]); several threads may sort slots at once.
    pub(super) fn sort_saved(&self, slot: Slot, lists: &mut [Vec<PendingWrite>]) {
        self.largest.saw(slot.value().len());
        self.stage(StagedWrite::Put(slot), lists);
    }

    /// Adds `write` to the list (of `lists`, one per shard) of the shard that holds its key.
    fn stage(&self, write: StagedWrite, lists: &mut [Vec<PendingWrite>]) {
        let key = match &write {
            StagedWrite::Put(slot) => slot.key_bytes(),
            StagedWrite::Remove(key) => key.as_bytes(),
        };
        let hash = self.table.hash_usize(&key);
        if let Some(list) = lists.get_mut(self.table.determine_shard(hash)) {
            list.push(PendingWrite {
                hash: hash as u64,
                write,
            });
        }
    }

    /// Puts the saved slots of shard `index` in the table, in the order of their table positions
    /// (saved slots come in no revision order; several threads may put shards at once); returns
    /// the bytes they added.
    pub(super) fn put_saved(&self, index: usize, mut slots: Vec<PendingWrite>) -> i64 {
        self.write_shard(index, &mut slots, &mut Vec::new())
    }

    /// Records where a saved mirror stood, and the bytes its slots hold.
    pub(super) fn set_saved_position(&mut self, position: SavedPosition, bytes: i64) {
        self.applied = position.applied;
        self.last_update = position.last_update;
        self.stream_created = position.stream_created;
        self.bytes = bytes;
    }

    /// Takes the snapshot's next update; returns false if it had it already (a resumed feed may
    /// deliver a revision again). The table holds it after [`Staging::flush`].
    pub fn apply(&mut self, entry: Entry, expires: i64) -> bool {
        if entry.revision <= self.applied {
            return false;
        }
        self.applied = entry.revision;
        self.last_update = entry.created;
        let write = match entry.operation {
            Operation::Put => {
                self.largest.saw(entry.value.len());
                StagedWrite::Put(Slot::new(
                    &entry.key,
                    &entry.value,
                    entry.revision,
                    entry.created,
                    expires,
                ))
            }
            Operation::Delete | Operation::Purge => StagedWrite::Remove(entry.key.into_boxed_str()),
        };
        if self.pending.is_empty() {
            self.pending = self.shard_lists();
        }
        let mut pending = std::mem::take(&mut self.pending);
        self.stage(write, &mut pending);
        self.pending = pending;
        true
    }

    /// Puts the updates taken so far in the table; returns the expiry of each value they replaced
    /// or removed that could expire.
    pub fn flush(&mut self) -> Vec<ExpiryKey> {
        let mut replaced = Vec::new();
        let mut pending = std::mem::take(&mut self.pending);
        for (index, writes) in pending.iter_mut().enumerate() {
            self.bytes += self.write_shard(index, writes, &mut replaced);
        }
        replaced
    }

    /// Puts `writes`, all of them keys of shard `index`, in the table in the order of their
    /// table positions (see [`Staging`]), and empties `writes`; returns the bytes this added, and
    /// adds to `replaced` the expiry of each value replaced or removed that could expire.
    fn write_shard(
        &self,
        index: usize,
        writes: &mut Vec<PendingWrite>,
        replaced: &mut Vec<ExpiryKey>,
    ) -> i64 {
        let Some(shard) = self.table.shards().get(index) else {
            return 0;
        };
        let hasher = self.table.hasher();
        let rehash = |(slot, _): &(Slot, SharedValue<()>)| hasher.hash_one(slot);
        let mut shard = shard.write();
        shard.reserve(writes.len(), rehash);
        // A slot's first position is its hash's low bits. The sort is stable: a key's writes
        // stay in the order they came.
        let positions = shard.buckets() as u64 - 1;
        writes.sort_by_key(|pending| pending.hash & positions);
        let mut added = 0;
        for PendingWrite { hash, write } in writes.drain(..) {
            let old = match write {
                StagedWrite::Put(slot) => {
                    added += slot.size() as i64;
                    let same_key = |(old, _): &(Slot, SharedValue<()>)| *old == slot;
                    match shard.get_mut(hash, same_key) {
                        Some((old, _)) => Some(std::mem::replace(old, slot)),
                        None => {
                            shard.insert(hash, (slot, SharedValue::new(())), rehash);
                            None
                        }
                    }
                }
                StagedWrite::Remove(key) => shard
                    .remove_entry(hash, |(old, _)| old.key_bytes() == key.as_bytes())
                    .map(|(old, _)| old),
            };
            if let Some(old) = old {
                added -= old.size() as i64;
                if old.expires() != 0 {
                    replaced.push((old.expires(), old.revision()));
                }
            }
        }
        added
    }

    /// Records that the snapshot covers every revision up to `revision`.
    pub fn advance(&mut self, revision: u64) {
        self.applied = self.applied.max(revision);
    }

    /// Keys in the table: updates not yet flushed are not counted.
    pub fn len(&self) -> usize {
        self.table.len()
    }
}

pub struct Mirror {
    table: ArcSwap<Table>,
    largest: LargestValue,
    applied: AtomicU64,
    synced: AtomicBool,
    bytes: AtomicU64,
    last_update: AtomicI64,
    /// When NATS last confirmed that the mirror held everything, in [`coarse_millis`] plus one;
    /// 0: never.
    confirmed: AtomicU64,
    rebuilds: AtomicU64,
    /// Bumped before and after a table is swapped in (odd meanwhile), so that a walk of the
    /// table can tell that it read one table's revision and stream throughout.
    generation: AtomicU64,
    /// When the stream the table comes from was created (Unix ns); `None` before the first load.
    stream_created: Mutex<Option<i128>>,
    /// Tasks waiting for a revision, by revision. Only the waiters whose revision an update
    /// reaches are woken (a watch channel would wake every waiter on every update).
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
    /// How many senders `waiters` holds, so that applying an update takes no lock when nobody waits.
    waiting: AtomicUsize,
    events: broadcast::Sender<MirrorEvent>,
}

impl Mirror {
    /// A mirror holding `entries` (the latest of each key), fed by no actor: for benchmarks
    /// and tests of the read path. A bucket's own mirror changes only through its actor.
    pub fn loaded(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut staging = Staging::default();
        for entry in entries {
            staging.apply(entry, 0);
        }
        let mirror = Mirror::new(1);
        // A first load: nothing to announce.
        let _ = mirror.install(staging);
        mirror
    }

    pub(super) fn new(event_buffer: usize) -> Self {
        Mirror {
            table: ArcSwap::from_pointee(new_table(0)),
            largest: LargestValue::default(),
            applied: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            last_update: AtomicI64::new(0),
            confirmed: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            stream_created: Mutex::new(None),
            waiters: Mutex::new(BTreeMap::new()),
            waiting: AtomicUsize::new(0),
            events: broadcast::Sender::new(event_buffer),
        }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        let table = self.table.load();
        let slot = table.get(key.as_bytes())?;
        slot.key().is_live().then(|| slot.key().entry())
    }

    /// When the key's live value expires, in Unix nanoseconds (0: never); `None` when the key has
    /// no live value.
    pub fn expiry(&self, key: &str) -> Option<i64> {
        let table = self.table.load();
        let slot = table.get(key.as_bytes())?;
        slot.key().is_live().then(|| slot.key().expires())
    }

    /// Calls `f` with the key's live entry, borrowed from the table (no copy, no allocation); the
    /// key's shard stays read-locked while `f` runs, so `f` must be quick.
    pub fn read<R>(&self, key: &str, f: impl FnOnce(Option<EntryRef<'_>>) -> R) -> R {
        read_table(&self.table.load(), key, f)
    }

    /// Calls `f` with one table to read several keys from, so that a rebuild swapping in a new
    /// table cannot answer some keys from the old one and the rest from the new.
    pub fn with_table<R>(&self, f: impl FnOnce(&TableView<'_>) -> R) -> R {
        let table = self.table.load();
        f(&TableView(&table))
    }

    /// Live keys matching `matches`, sorted.
    pub fn keys(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let mut keys: Vec<String> = self
            .table
            .load()
            .iter()
            .filter(|e| e.key().is_live() && matches(e.key().key()))
            .map(|e| e.key().key().to_string())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// How many live keys of the table `stored` lacks: a walk of the whole table, on the
    /// blocking pool when it is large.
    pub(super) async fn live_keys_missing_from(
        &self,
        stored: std::collections::HashSet<String>,
    ) -> Result<usize> {
        let table = self.table.load_full();
        let large = table.len() > WALKED_INLINE;
        let count = |(table, stored): (Arc<Table>, std::collections::HashSet<String>)| {
            table
                .iter()
                .filter(|e| e.key().is_live() && !stored.contains(e.key().key()))
                .count()
        };
        let what = "comparing the mirror's keys with the stream's";
        walk_off_thread_if(large, (table, stored), count, what).await
    }

    /// A page of a scan of the live keys: those at the smallest scan positions at or after
    /// `cursor`, in scan order, and the cursor that continues after them (0: none are left).
    ///
    /// A key's position is the index of its table shard above the low bits of its hash. It never
    /// changes while the process runs, so a key present for a whole scan is listed exactly once
    /// whatever is added or removed meanwhile (a cursor that counted keys would skip some after a
    /// removal). And each shard's keys hold one range of positions, so a page walks only the
    /// shards its range covers, not the whole table. A page holds at least `count` keys (unless
    /// the scan ends), at least 1/[`PAGE_SHARE`] of the shard it ends in, and every key at its
    /// last key's position (a hash tie is never split over two pages).
    pub fn scan(&self, cursor: u64, count: usize) -> (u64, Vec<String>) {
        self.scan_by(cursor, count, |hash, _| hash)
    }

    /// As [`Mirror::scan`], with a key's place within its shard given by `in_shard(hash, key)`.
    fn scan_by(
        &self,
        cursor: u64,
        count: usize,
        in_shard: impl Fn(u64, &[u8]) -> u64,
    ) -> (u64, Vec<String>) {
        let table = self.table.load();
        let low_bits = (1u64 << IN_SHARD_BITS) - 1;
        let first = usize::try_from(cursor >> IN_SHARD_BITS).unwrap_or(usize::MAX);
        let mut page = Vec::new();
        for index in first..SHARDS {
            let start = (index as u64) << IN_SHARD_BITS;
            let from = cursor.max(start);
            let need = count.max(1) - page.len();
            let (keys, more_in_shard) = with_shard(&table, index, |len, slots| {
                let mut found: Vec<(u64, &Slot)> = slots
                    .filter(|slot| slot.is_live())
                    .map(|slot| {
                        let hash = table.hash_usize(&slot.key_bytes()) as u64;
                        (start | (in_shard(hash, slot.key_bytes()) & low_bits), slot)
                    })
                    .filter(|(at, _)| *at >= from)
                    .collect();
                found.sort_unstable_by_key(|(at, _)| *at);
                let take = need.max(len / PAGE_SHARE);
                let mut more = None;
                if take < found.len() {
                    let last = found[take - 1].0;
                    let ties = found.partition_point(|(at, _)| *at <= last);
                    if ties < found.len() {
                        found.truncate(ties);
                        more = Some(last + 1);
                    }
                }
                let keys: Vec<String> = found
                    .iter()
                    .map(|(_, slot)| slot.key().to_string())
                    .collect();
                (keys, more)
            });
            page.extend(keys);
            if let Some(next) = more_in_shard {
                return (next, page);
            }
            if page.len() >= count.max(1) {
                let next = if index + 1 < SHARDS {
                    start + (1 << IN_SHARD_BITS)
                } else {
                    0
                };
                return (next, page);
            }
        }
        (0, page)
    }

    /// Whether `keys` values could hold more than `max_bytes` together, judged by the largest
    /// value the mirror ever held: when not, a read of them needs no size check.
    pub fn values_may_exceed(&self, keys: usize, max_bytes: usize) -> bool {
        self.values_at_most(keys) > max_bytes
    }

    /// The most bytes `keys` values could hold together, judged by the largest value the mirror
    /// ever held.
    pub fn values_at_most(&self, keys: usize) -> usize {
        keys.saturating_mul(self.largest.get())
    }

    /// The live entries of `keys`, from one table (see [`Mirror::with_table`]); `Err` with their
    /// values' bytes, and no copy made, when those exceed `max_bytes`.
    pub fn get_many(&self, keys: &[&str], max_bytes: usize) -> Result<Vec<Option<Entry>>, usize> {
        let table = self.table.load();
        let bytes = TableView(&table).value_bytes(keys);
        if bytes > max_bytes {
            return Err(bytes);
        }
        Ok(keys
            .iter()
            .map(|&key| {
                let slot = table.get(key.as_bytes())?;
                slot.key().is_live().then(|| slot.key().entry())
            })
            .collect())
    }

    /// The lowest revision of a value in the table, expired or not; `None` when it is empty.
    pub(super) async fn lowest_revision(&self) -> Option<u64> {
        let table = self.table.load_full();
        let large = table.len() > WALKED_INLINE;
        let lowest = move || table.iter().map(|e| e.key().revision()).min();
        if !large {
            return lowest();
        }
        // Revision 0 if the walk failed: below any stream's first, so the caller checks further.
        tokio::task::spawn_blocking(lowest).await.unwrap_or(Some(0))
    }

    /// The table as it is now, to walk later: the one a rebuild would replace.
    pub(super) fn current_table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Entries in the table, including expired ones not yet swept (the actor sweeps on time).
    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// When NATS stored the last update applied, in Unix nanoseconds; 0 if none.
    pub fn last_update(&self) -> i64 {
        self.last_update.load(Ordering::Relaxed)
    }

    /// Times the table was replaced by a fresh snapshot after the initial sync.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Records that NATS confirmed, at `at`, that the mirror held everything: it delivered an
    /// update with nothing pending after it, or reported no revision beyond `applied`.
    pub(super) fn confirm(&self, at: Instant) {
        let ago = at.elapsed().as_millis() as u64;
        let ms = coarse_millis().saturating_sub(ago) + 1;
        self.confirmed.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long ago NATS last confirmed the mirror current, to within a few milliseconds;
    /// `None` if it never has.
    pub fn age(&self) -> Option<Duration> {
        match self.confirmed.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(
                coarse_millis().saturating_sub(ms - 1),
            )),
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<MirrorEvent> {
        self.events.subscribe()
    }

    /// Building an event costs an allocation, so it is skipped when nobody watches.
    fn publish(&self, event: impl FnOnce() -> MirrorEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event());
        }
    }

    /// Applies one update from the feed, whose value expires at `expires` (Unix ns; 0: never).
    pub(super) fn apply(&self, entry: Entry, expires: i64) -> Applied {
        if entry.revision <= self.applied() {
            return Applied::Again;
        }
        let (added, replaced) = write_table(&self.table.load(), &self.largest, &entry, expires);
        self.add_bytes(added);
        self.last_update.store(entry.created, Ordering::Relaxed);
        self.advance(entry.revision);
        // Only after `advance`: a watch that subscribes later reads an `applied` that covers this
        // update. The event owns a copy of the value: the feed's is a slice of NATS's read
        // buffer, which an event waiting in the buffer for a slow watch would otherwise pin.
        self.publish(|| {
            let mut entry = entry;
            entry.value = Bytes::copy_from_slice(&entry.value);
            MirrorEvent::Applied(Arc::new(entry))
        });
        Applied::Done { replaced }
    }

    fn add_bytes(&self, added: i64) {
        if added >= 0 {
            self.bytes.fetch_add(added as u64, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub(added.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Removes `key` if it still holds the value of `revision`, which has expired; tells watches.
    pub(super) fn expire(&self, key: &str, revision: u64) -> bool {
        let table = self.table.load();
        let Some((old, ())) =
            table.remove_if(key.as_bytes(), |slot, ()| slot.revision() == revision)
        else {
            return false;
        };
        self.add_bytes(-(old.size() as i64));
        self.publish(|| {
            MirrorEvent::Removed(Arc::new(Entry {
                key: key.to_string(),
                value: Bytes::new(),
                revision,
                created: old.expires(),
                operation: Operation::Purge,
            }))
        });
        true
    }

    /// Replaces the table with a loaded snapshot in one atomic store, and marks the mirror
    /// synced. When it replaces a served table (a rebuild) that watches follow, returns what they
    /// must be told (see [`Rebuild::announce`]).
    #[must_use = "a rebuild's watches learn of it only when it is announced"]
    pub(super) fn install(&self, staging: Staging) -> Option<Rebuild> {
        let rebuild = self.is_synced();
        let (old, applied, last_update) = self.swap_in(staging);
        self.mark_synced();
        if !rebuild {
            return None;
        }
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        (self.events.receiver_count() > 0).then(|| Rebuild {
            old,
            new: self.table.load_full(),
            applied,
            last_update,
            events: self.events.clone(),
        })
    }

    /// Puts a saved mirror in place of an empty one, not yet synced: the actor marks it synced
    /// once the feed from its next revision has caught up (a warm start).
    pub(super) fn restore(&self, staging: Staging) {
        self.swap_in(staging);
    }

    /// Swaps `staging`'s table in; returns the old table, and the revision and stream time of
    /// the new one.
    fn swap_in(&self, mut staging: Staging) -> (Replaced, u64, i64) {
        staging.flush();
        let Staging {
            table,
            pending: _,
            largest,
            bytes,
            applied,
            last_update,
            stream_created,
        } = staging;
        self.largest.saw(largest.get());
        self.generation.fetch_add(1, Ordering::SeqCst);
        let old = Replaced(self.table.swap(Arc::new(table)));
        if let Ok(mut slot) = self.stream_created.lock() {
            *slot = stream_created;
        }
        self.bytes.store(bytes.max(0) as u64, Ordering::Relaxed);
        self.last_update.store(last_update, Ordering::Relaxed);
        // A recreated bucket starts again at revision 1, so this may move backwards.
        self.applied.store(applied, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.wake(applied);
        }
        (old, applied, last_update)
    }

    /// When the stream the table was loaded from was created (Unix ns).
    pub(super) fn stream_created(&self) -> Option<i128> {
        self.stream_created.lock().ok().and_then(|c| *c)
    }

    /// Calls `save` with every value of the table, expired or not, for saving the mirror. The
    /// values are read while the actor goes on applying updates, so some may be newer than the
    /// returned position; replaying the stream from that position's next revision gives the same
    /// mirror, because every value up to it is in the table and later ones are applied again.
    /// `Ok(None)`: a new table was swapped in meanwhile, so what `save` saw is not one mirror.
    pub(super) fn walk<E>(
        &self,
        mut save: impl FnMut(&Slot) -> Result<(), E>,
    ) -> Result<Option<SavedPosition>, E> {
        let generation = self.generation.load(Ordering::SeqCst);
        if generation % 2 == 1 {
            return Ok(None);
        }
        let table = self.table.load_full();
        let position = SavedPosition {
            applied: self.applied(),
            last_update: self.last_update(),
            stream_created: self.stream_created(),
        };
        for entry in table.iter() {
            save(entry.key())?;
        }
        let unchanged = self.generation.load(Ordering::SeqCst) == generation;
        Ok(unchanged.then_some(position))
    }

    /// Records that every revision up to `revision` has been applied, and wakes its waiters.
    fn advance(&self, revision: u64) {
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

    pub(super) fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Waits until the mirror has applied `revision`, by notification rather than polling.
    pub(super) async fn wait_for(&self, revision: u64, timeout: Duration) -> Result<()> {
        if self.applied() >= revision {
            return Ok(());
        }
        let (sender, receiver) = oneshot::channel();
        {
            let Ok(mut waiters) = self.waiters.lock() else {
                return Err(Error::new(
                    ErrorKind::Internal,
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
            Ok(Err(_)) => Err(Error::new(ErrorKind::Internal, "the bucket's mirror was shut down")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
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

    /// Every page of a scan, from cursor 0 to the end.
    fn scan_all(
        mirror: &Mirror,
        count: usize,
        in_shard: impl Fn(u64, &[u8]) -> u64 + Copy,
        between_pages: &mut dyn FnMut(usize),
    ) -> Vec<String> {
        let (mut cursor, mut listed, mut pages) = (0, Vec::new(), 0);
        loop {
            let (next, keys) = mirror.scan_by(cursor, count, in_shard);
            listed.extend(keys);
            pages += 1;
            assert!(pages < 10_000, "the scan does not end");
            if next == 0 {
                return listed;
            }
            assert!(next > cursor, "a page must move the cursor on");
            cursor = next;
            between_pages(pages);
        }
    }

    fn by_hash(hash: u64, _: &[u8]) -> u64 {
        hash
    }

    fn sorted(mut keys: Vec<String>) -> Vec<String> {
        keys.sort();
        keys
    }

    #[test]
    fn a_scan_lists_every_key_once_in_pages_of_count() {
        let mirror = Mirror::new(16);
        for i in 0..100u64 {
            mirror.apply(entry(&format!("k{i}"), "v", i + 1, Operation::Put), 0);
        }
        // 100 keys in 64 shards (about 1.6 each): a page takes more than `count` keys only from a
        // shard holding 16 or more (1/8 of it beyond what the page still needs), which random
        // hashes of 100 keys all but never give. With 1,000 keys they sometimes did.
        let (next, first) = mirror.scan(0, 10);
        assert_eq!(first.len(), 10);
        let (_, second) = mirror.scan(next, 10);
        assert_eq!(second.len(), 10);
        assert!(second.iter().all(|key| !first.contains(key)));
        let listed = scan_all(&mirror, 7, by_hash, &mut |_| {});
        assert_eq!(
            sorted(listed),
            sorted((0..100).map(|i| format!("k{i}")).collect())
        );
        assert_eq!(mirror.scan(0, 5000).0, 0, "one page holds them all");
        assert_eq!(
            mirror.scan(u64::MAX, 10),
            (0, Vec::new()),
            "a cursor past the end"
        );
    }

    #[test]
    fn a_scan_of_a_large_table_takes_pages_of_an_eighth_of_a_shard_not_a_walk_per_count() {
        let mirror = Mirror::new(16);
        let keys = 64 * 8 * 200;
        for i in 0..keys as u64 {
            mirror.apply(entry(&format!("k{i}"), "v", i + 1, Operation::Put), 0);
        }
        let mut pages = 0;
        let listed = scan_all(&mirror, 10, by_hash, &mut |n| pages = n);
        assert_eq!(listed.len(), keys, "every key once");
        assert_eq!(
            sorted(listed).windows(2).filter(|w| w[0] == w[1]).count(),
            0
        );
        // About 800 keys a shard: pages of about 100, about 9 to a shard. With pages of 10, a
        // scan would take 10,240 of them (each a walk of a shard).
        assert!(pages < 64 * 12, "{pages} pages");
    }

    #[test]
    fn keys_sharing_a_position_are_never_split_over_two_pages() {
        let mirror = Mirror::new(16);
        for i in 0..300u64 {
            mirror.apply(entry(&format!("k{i}"), "v", i + 1, Operation::Put), 0);
        }
        // Within a shard, a key's place is its length: k0..k9 tie, as do k10..k99 and the rest.
        let by_length = |_: u64, key: &[u8]| key.len() as u64;
        let mut pages = Vec::new();
        let (mut cursor, mut listed) = (0, Vec::new());
        loop {
            let (next, page) = mirror.scan_by(cursor, 1, by_length);
            let lengths: std::collections::BTreeSet<usize> = page.iter().map(String::len).collect();
            pages.push(lengths.len());
            listed.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(
            sorted(listed),
            sorted((0..300).map(|i| format!("k{i}")).collect())
        );
        assert!(
            pages.iter().all(|&lengths| lengths <= 1),
            "pages of count 1 hold one tie"
        );
    }

    #[test]
    fn a_key_present_for_a_whole_scan_is_listed_once_whatever_changes_meanwhile() {
        let mirror = Mirror::new(16);
        for i in 0..500u64 {
            mirror.apply(
                entry(&format!("stays{i}"), "v", 2 * i + 1, Operation::Put),
                0,
            );
            mirror.apply(
                entry(&format!("goes{i}"), "v", 2 * i + 2, Operation::Put),
                0,
            );
        }
        let mut revision = 2000;
        let listed = scan_all(&mirror, 20, by_hash, &mut |page| {
            for i in 0..50 {
                revision += 1;
                let key = format!("goes{}", page * 50 + i);
                mirror.apply(entry(&key, "", revision, Operation::Delete), 0);
                revision += 1;
                mirror.apply(
                    entry(&format!("new{revision}"), "v", revision, Operation::Put),
                    0,
                );
            }
        });
        for i in 0..500 {
            let stays = format!("stays{i}");
            let times = listed.iter().filter(|key| **key == stays).count();
            assert_eq!(times, 1, "{stays} listed {times} times");
        }
    }

    #[test]
    fn the_largest_value_ever_held_bounds_what_a_read_of_n_values_may_hold() {
        let mirror = Mirror::new(16);
        assert!(!mirror.values_may_exceed(1000, 0), "an empty mirror");
        mirror.apply(entry("a", "0123456789", 1, Operation::Put), 0);
        mirror.apply(entry("b", "x", 2, Operation::Put), 0);
        assert!(mirror.values_may_exceed(3, 29));
        assert!(!mirror.values_may_exceed(2, 29));
        // A rebuild's table brings its own largest value; the mirror's never shrinks.
        let mut staging = Staging::default();
        staging.apply(entry("c", &"y".repeat(100), 1, Operation::Put), 0);
        assert!(mirror.install(staging).is_none(), "no watch to tell");
        assert!(mirror.values_may_exceed(1, 99));
        mirror.apply(entry("c", "", 2, Operation::Delete), 0);
        assert!(mirror.values_may_exceed(1, 99));
    }

    #[test]
    fn applies_in_revision_order_and_ignores_replays() {
        let mirror = Mirror::new(16);
        let done = Applied::Done { replaced: None };
        assert_eq!(mirror.apply(entry("a", "1", 1, Operation::Put), 0), done);
        assert_eq!(mirror.apply(entry("b", "22", 2, Operation::Put), 0), done);
        assert_eq!(
            mirror.apply(entry("a", "stale", 1, Operation::Put), 0),
            Applied::Again
        );
        assert_eq!(mirror.get("a").unwrap().value, Bytes::from("1"));
        assert_eq!(mirror.bytes(), 2 + 3);
        assert_eq!(mirror.apply(entry("a", "", 3, Operation::Delete), 0), done);
        assert!(mirror.get("a").is_none());
        assert_eq!(mirror.applied(), 3);
        assert_eq!(mirror.bytes(), 3);
        assert_eq!(mirror.apply(entry("b", "", 4, Operation::Purge), 0), done);
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
            mirror.apply(entry("k", "v", rev, Operation::Put), 0);
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
        assert_eq!(err.kind, ErrorKind::Timeout);
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
        assert_eq!(err.kind, ErrorKind::Timeout);
        let waiter = {
            let mirror = mirror.clone();
            tokio::spawn(async move { mirror.wait_for(2, Duration::from_secs(30)).await })
        };
        mirror.apply(entry("a", "1", 1, Operation::Put), 0);
        mirror.apply(entry("a", "2", 2, Operation::Put), 0);
        waiter.await.unwrap().unwrap();
    }

    #[test]
    fn expired_values_are_not_served_and_are_swept_with_an_event() {
        let mirror = Mirror::new(16);
        let mut events = mirror.subscribe();
        let past = unix_nanos() - 1;
        mirror.apply(entry("gone", "1", 1, Operation::Put), past);
        mirror.apply(
            entry("kept", "2", 2, Operation::Put),
            unix_nanos() + 60_000_000_000,
        );
        assert!(mirror.get("gone").is_none());
        assert!(mirror.read("gone", |e| e.is_none()));
        assert_eq!(mirror.keys(|_| true), vec!["kept".to_string()]);
        assert!(mirror.get("kept").is_some());
        // Only the value of that revision is swept; a newer one stays.
        assert!(!mirror.expire("gone", 7));
        assert!(mirror.expire("gone", 1));
        assert_eq!(mirror.len(), 1);
        assert_eq!(mirror.bytes(), 5);
        let mut removed = None;
        while let Ok(event) = events.try_recv() {
            if let MirrorEvent::Removed(entry) = event {
                removed = Some(entry);
            }
        }
        let removed = removed.unwrap();
        assert_eq!(
            (removed.key.as_str(), removed.operation),
            ("gone", Operation::Purge)
        );
    }

    /// Past `WALKED_INLINE` keys the lowest revision is found, and a replaced table freed, on the
    /// blocking pool; the answers are the same as inline.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_table_is_walked_and_freed_off_the_serving_thread() {
        let mirror = Mirror::new(16);
        let keys = WALKED_INLINE as u64 + 100;
        let mut first = Staging::default();
        for n in 1..=keys {
            first.apply(entry(&format!("k{n}"), "v", n + 10, Operation::Put), 0);
        }
        assert!(
            mirror.install(first).is_none(),
            "a first load is no rebuild"
        );
        assert_eq!(mirror.lowest_revision().await, Some(11));
        mirror.apply(entry("k1", "w", keys + 11, Operation::Put), 0);
        assert_eq!(mirror.lowest_revision().await, Some(12));
        let mut second = Staging::default();
        second.apply(entry("only", "v", keys + 12, Operation::Put), 0);
        assert!(mirror.install(second).is_none(), "no watch to tell");
        assert_eq!((mirror.len(), mirror.rebuilds()), (1, 1));
        assert_eq!(mirror.lowest_revision().await, Some(keys + 12));
    }

    /// What a watch was told so far, an event a line: `rebuilt`, or the operation and the key.
    fn told(events: &mut broadcast::Receiver<MirrorEvent>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(match event {
                MirrorEvent::Rebuilt => "rebuilt".to_string(),
                MirrorEvent::Removed(e) | MirrorEvent::Applied(e) => {
                    format!("{} {}", e.operation.as_str(), e.key)
                }
            });
        }
        seen
    }

    /// A rebuild of a large watched table is compared on the blocking pool; the watch hears the
    /// same difference as for a small one, in the same order.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_rebuild_is_announced_off_the_serving_thread() {
        let keys = WALKED_INLINE as u64 + 100;
        let mirror = Mirror::new(2 * keys as usize);
        let mut first = Staging::default();
        for n in 1..=keys {
            first.apply(entry(&format!("k{n}"), "v", n, Operation::Put), 0);
        }
        assert!(mirror.install(first).is_none());
        let mut events = mirror.subscribe();
        // Recreated with every key but k1, and k2 changed.
        let mut second = Staging::default();
        for n in 2..=keys {
            let value = if n == 2 { "changed" } else { "v" };
            second.apply(entry(&format!("k{n}"), value, n, Operation::Put), 0);
        }
        mirror
            .install(second)
            .expect("a watched rebuild")
            .announce()
            .await;
        assert_eq!(told(&mut events), ["rebuilt", "delete k1", "put k2"]);
    }

    #[test]
    fn a_rebuild_swaps_the_table_at_once_and_reports_the_difference() {
        let mirror = Mirror::new(64);
        let mut first = Staging::default();
        first.apply(entry("a", "1", 1, Operation::Put), 0);
        first.apply(entry("b", "2", 2, Operation::Put), 0);
        first.apply(entry("c", "3", 3, Operation::Put), 0);
        assert!(mirror.install(first).is_none());
        assert!(mirror.is_synced());
        assert_eq!((mirror.applied(), mirror.rebuilds()), (3, 0));
        let mut events = mirror.subscribe();
        // The bucket was recreated: revisions restart, `a` is gone, `b` changed, `c` is the same
        // value at a new revision.
        let mut second = Staging::default();
        second.apply(entry("b", "new", 1, Operation::Put), 0);
        second.apply(entry("c", "3", 2, Operation::Put), 0);
        assert_eq!(mirror.get("a").unwrap().value, Bytes::from("1"));
        mirror.install(second).expect("a watched rebuild").send();
        assert_eq!((mirror.applied(), mirror.rebuilds()), (2, 1));
        assert!(mirror.get("a").is_none());
        assert_eq!(mirror.get("b").unwrap().value, Bytes::from("new"));
        assert_eq!(mirror.bytes(), 4 + 2);
        let mut seen = told(&mut events);
        seen[2..].sort();
        assert_eq!(seen, ["rebuilt", "delete a", "put b", "put c"]);
    }

    #[test]
    fn a_snapshot_keeps_each_keys_last_write_whatever_order_its_table_is_written_in() {
        let mirror = Mirror::new(64);
        let mut staging = Staging::of_stream(1, 3_000);
        let (soon, later) = (
            unix_nanos() + 60_000_000_000,
            unix_nanos() + 120_000_000_000,
        );
        let mut revision = 0;
        let mut next = || {
            revision += 1;
            revision
        };
        for i in 0..3_000 {
            assert!(staging.apply(entry(&format!("k{i}"), "first", next(), Operation::Put), 0));
        }
        // Keys changed while the snapshot loaded: replaced, deleted, deleted and put again, and
        // a value that could expire replaced by one that could too, then removed.
        for i in (0..3_000).step_by(3) {
            staging.apply(entry(&format!("k{i}"), "second", next(), Operation::Put), 0);
        }
        for i in (1..3_000).step_by(3) {
            staging.apply(entry(&format!("k{i}"), "", next(), Operation::Delete), 0);
        }
        for i in (1..3_000).step_by(30) {
            staging.apply(entry(&format!("k{i}"), "again", next(), Operation::Put), 0);
        }
        let first_ttl = next();
        staging.apply(entry("ttl", "1", first_ttl, Operation::Put), soon);
        let second_ttl = next();
        staging.apply(entry("ttl", "2", second_ttl, Operation::Put), later);
        staging.apply(entry("ttl", "", next(), Operation::Purge), 0);
        assert!(!staging.apply(entry("k0", "replayed", 5, Operation::Put), 0));

        let mut replaced = staging.flush();
        replaced.sort_unstable();
        assert_eq!(replaced, [(soon, first_ttl), (later, second_ttl)]);
        assert!(mirror.install(staging).is_none());
        let mut bytes = 0;
        for i in 0..3_000 {
            let expected = match i % 3 {
                0 => Some("second"),
                1 if i % 30 == 1 => Some("again"),
                1 => None,
                _ => Some("first"),
            };
            let found = mirror.get(&format!("k{i}"));
            assert_eq!(
                found.as_ref().map(|e| e.value.as_ref()),
                expected.map(str::as_bytes),
                "k{i}"
            );
            if let Some(found) = found {
                bytes += Slot::new(&found.key, &found.value, found.revision, 1, 0).size();
            }
        }
        assert!(mirror.get("ttl").is_none());
        assert_eq!(mirror.len(), 2_100);
        assert_eq!(mirror.bytes(), bytes as u64);
        assert_eq!(mirror.applied(), revision);
    }

    #[test]
    fn a_rebuild_never_repeats_a_value_that_expired_meanwhile() {
        let mirror = Mirror::new(64);
        let past = unix_nanos() - 1;
        let mut first = Staging::default();
        first.apply(
            entry("ttl", "1", 1, Operation::Put),
            unix_nanos() + 60_000_000_000,
        );
        assert!(mirror.install(first).is_none());
        let mut events = mirror.subscribe();
        // The value expired and was swept; NATS still held it when the rebuild's snapshot read it.
        assert!(mirror.expire("ttl", 1));
        let mut second = Staging::default();
        second.apply(entry("ttl", "1", 1, Operation::Put), past);
        mirror.install(second).expect("a watched rebuild").send();
        let mut puts = 0;
        while let Ok(event) = events.try_recv() {
            if let MirrorEvent::Applied(e) = event {
                assert_eq!(e.operation, Operation::Put);
                puts += 1;
            }
        }
        assert_eq!(puts, 0, "the expired value was announced again");
    }

    #[test]
    fn several_keys_are_read_from_one_table_even_across_a_rebuild() {
        let mirror = Mirror::new(16);
        let mut first = Staging::default();
        first.apply(entry("a", "old-a", 1, Operation::Put), 0);
        first.apply(entry("b", "old-b", 2, Operation::Put), 0);
        assert!(mirror.install(first).is_none());
        let values = mirror.with_table(|table| {
            let a = table.read("a", |e| e.map(|e| e.value.to_vec()));
            // A rebuild swaps in a new table between the two keys.
            let mut second = Staging::default();
            second.apply(entry("b", "new-b", 1, Operation::Put), 0);
            assert!(mirror.install(second).is_none());
            let b = table.read("b", |e| e.map(|e| e.value.to_vec()));
            (a, b)
        });
        assert_eq!(values, (Some(b"old-a".to_vec()), Some(b"old-b".to_vec())));
        let now = mirror.get_many(&["a", "b"], 100).unwrap();
        assert_eq!(
            mirror.get_many(&["b", "b"], 9).err(),
            Some(10),
            "too large: no copy"
        );
        assert!(now[0].is_none());
        assert_eq!(now[1].as_ref().unwrap().value, Bytes::from("new-b"));
    }

    #[test]
    fn age_counts_from_the_last_confirmation() {
        let mirror = Mirror::new(16);
        assert_eq!(mirror.age(), None);
        mirror.confirm(Instant::now());
        assert!(mirror.age().unwrap() < Duration::from_secs(60));
        // A confirmation older than the last one does not make the mirror older.
        let latest = mirror.confirmed.load(Ordering::Relaxed);
        mirror.confirm(Instant::now() - Duration::from_millis(500));
        assert_eq!(mirror.confirmed.load(Ordering::Relaxed), latest);
    }

    #[test]
    fn age_counts_from_when_the_confirmation_was_asked() {
        let mirror = Mirror::new(16);
        mirror.confirm(Instant::now() - Duration::from_millis(500));
        // The coarse clock is behind by at most a tick (a few milliseconds).
        let age = mirror.age().unwrap();
        assert!(age >= Duration::from_millis(480), "{age:?}");
        assert!(age < Duration::from_secs(60), "{age:?}");
    }
}
