//! A bucket's mirror saved to a file, for a warm start: a sidecar restarted beside the same pod
//! volume loads it and replays only the revisions after it, instead of a whole snapshot.
//!
//! The file is written beside its final name, synced, then renamed over it (and the directory
//! synced), so a crash at any moment leaves the previous file or the new one, never a part.
//! Whatever is read back is checked before anything of it is used: the format version, a CRC-32
//! of every byte, and the bucket and filter it was saved for. Whether the stream is still the one
//! it was saved from and still holds every revision after it is the actor's check (`history_lost`).
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! "NEARKVMR"  u32 version
//! u16 len, bucket name   u16 len, filter
//! per value:  u8 1, u16 len, key, u32 len, value, u64 revision, i64 created, i64 expires
//! end:        u8 0, u64 values, u64 applied revision, i64 last update, i128 stream created,
//!             u64 the bucket's max_age in ns (0: none; expiries were computed with it)
//! u32 CRC-32 (IEEE) of everything before it
//! ```

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::mirror::{
    unix_nanos, ExpiryKey, Mirror, PendingWrite, SavedPosition, ShardLists, Staging,
};
use super::slot::Slot;
use super::state::State;

const MAGIC: &[u8; 8] = b"NEARKVMR";
const VERSION: u32 = 1;
const VALUE_TAG: u8 = 1;
const END_TAG: u8 = 0;

/// The file a bucket's mirror is saved in.
pub(super) fn path(dir: &Path, bucket: &str) -> PathBuf {
    dir.join(format!("{bucket}.mirror"))
}

/// Where this process writes the file before renaming it: named by process, so that two
/// sidecars given the same directory never write into one temporary file.
fn temporary_path(dir: &Path, bucket: &str) -> PathBuf {
    dir.join(format!(".{bucket}.mirror.{}.tmp", std::process::id()))
}

/// Removes the temporary files of `bucket` left in `dir` by processes that no longer run (killed
/// in the middle of a save).
pub(super) fn remove_leftovers(dir: &Path, bucket: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{bucket}.mirror.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A mirror read back from its file, checked and ready to restore.
pub(super) struct Saved {
    pub staging: Staging,
    /// Values that expire, as the actor tracks them.
    pub expiring: Vec<(ExpiryKey, String)>,
    pub position: SavedPosition,
    pub values: u64,
    /// The bucket's `max_age` when the mirror was saved: the values' expiries were computed with
    /// it, so a mirror saved under another one must not be restored.
    pub max_age: Option<Duration>,
    /// The lowest revision of a value read (expired ones included); `None` when there is none.
    pub lowest_revision: Option<u64>,
}

/// Why a saved mirror was not used.
#[derive(Debug, thiserror::Error)]
pub(super) enum SavedError {
    #[error("no saved mirror")]
    Missing,
    #[error("cannot read the saved mirror: {0}")]
    Io(#[from] io::Error),
    #[error("the saved mirror is damaged: {0}")]
    Damaged(String),
    #[error(
        "the saved mirror was written by format version {0}; this sidecar reads version {VERSION}"
    )]
    Version(u32),
    #[error("the saved mirror belongs to {0}")]
    Foreign(String),
}

/// Writes `mirror` to its file in `dir` atomically. `Ok(None)`: nothing was written because a new
/// snapshot replaced the table during the walk (the next save will do).
pub(super) fn write(
    dir: &Path,
    bucket: &str,
    filter: &str,
    max_age: Option<Duration>,
    mirror: &Mirror,
) -> io::Result<Option<(SavedPosition, u64)>> {
    fs::create_dir_all(dir)?;
    let temporary = temporary_path(dir, bucket);
    let written = write_file(&temporary, bucket, filter, max_age, mirror);
    match written {
        Ok(Some(done)) => {
            fs::rename(&temporary, path(dir, bucket))?;
            File::open(dir)?.sync_all()?;
            Ok(Some(done))
        }
        other => {
            let _ = fs::remove_file(&temporary);
            other
        }
    }
}

fn write_file(
    file: &Path,
    bucket: &str,
    filter: &str,
    max_age: Option<Duration>,
    mirror: &Mirror,
) -> io::Result<Option<(SavedPosition, u64)>> {
    let mut out = Checksummed {
        inner: BufWriter::with_capacity(1 << 20, File::create(file)?),
        crc: crc32fast::Hasher::new(),
    };
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    write_short(&mut out, bucket.as_bytes())?;
    write_short(&mut out, filter.as_bytes())?;
    let mut values = 0u64;
    let walked = mirror.walk(|slot| {
        values += 1;
        out.write_all(&[VALUE_TAG])?;
        write_short(&mut out, slot.key_bytes())?;
        let len = u32::try_from(slot.value().len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a value over 4 GiB"))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(slot.value())?;
        out.write_all(&slot.revision().to_le_bytes())?;
        out.write_all(&slot.created().to_le_bytes())?;
        out.write_all(&slot.expires().to_le_bytes())
    })?;
    let Some(position) = walked else {
        return Ok(None);
    };
    let Some(stream_created) = position.stream_created else {
        return Ok(None);
    };
    out.write_all(&[END_TAG])?;
    out.write_all(&values.to_le_bytes())?;
    out.write_all(&position.applied.to_le_bytes())?;
    out.write_all(&position.last_update.to_le_bytes())?;
    out.write_all(&stream_created.to_le_bytes())?;
    let max_age = max_age.map_or(0, |age| age.as_nanos().min(u64::MAX as u128) as u64);
    out.write_all(&max_age.to_le_bytes())?;
    let crc = out.crc.clone().finalize();
    let mut file = out.inner.into_inner().map_err(|err| err.into_error())?;
    file.write_all(&crc.to_le_bytes())?;
    file.sync_all()?;
    Ok(Some((position, values)))
}

fn write_short(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a key over 64 KiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// A writer that checksums what passes through it.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The smallest value record: tag, key length, value length, revision, created, expires.
const MIN_RECORD_LEN: usize = 1 + 2 + 4 + 8 + 8 + 8;

/// Bytes after the last value: the end tag, the value count, the applied revision, the last
/// update, the stream's creation time and the bucket's `max_age`.
const END_LEN: usize = 1 + 8 + 8 + 8 + 16 + 8;

/// Reads and checks the mirror saved for `bucket` and `filter` in `dir`. Values that expired
/// since are left out. The values are decoded and put into a table sized for them by up to four
/// threads at once: most of a warm start is this.
pub(super) fn read(dir: &Path, bucket: &str, filter: &str) -> Result<Saved, SavedError> {
    let bytes = match fs::read(path(dir, bucket)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(SavedError::Missing),
        Err(err) => return Err(err.into()),
    };
    if bytes.len() < MAGIC.len() + 4 + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SavedError::Damaged("not a nearkv mirror file".to_string()));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(SavedError::Version(version));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if crc32fast::hash(body) != stored {
        return Err(SavedError::Damaged(
            "its checksum does not match (a truncated or altered file)".to_string(),
        ));
    }
    let mut input = Input {
        rest: &body[MAGIC.len() + 4..],
    };
    let saved_bucket = input.short()?;
    let saved_filter = input.short()?;
    if saved_bucket != bucket.as_bytes() || saved_filter != filter.as_bytes() {
        return Err(SavedError::Foreign(format!(
            "bucket {:?} with filter {:?}, not bucket {bucket:?} with filter {filter:?}",
            String::from_utf8_lossy(saved_bucket),
            String::from_utf8_lossy(saved_filter)
        )));
    }
    let Some(records_len) = input.rest.len().checked_sub(END_LEN) else {
        return Err(SavedError::Damaged(
            "it ends before its end record".to_string(),
        ));
    };
    let (records, end) = input.rest.split_at(records_len);
    let mut end = Input { rest: end };
    if end.take(1)?[0] != END_TAG {
        return Err(SavedError::Damaged("its end record is missing".to_string()));
    }
    let values = u64::from_le_bytes(end.array()?);
    let position = SavedPosition {
        applied: u64::from_le_bytes(end.array()?),
        last_update: i64::from_le_bytes(end.array()?),
        stream_created: Some(i128::from_le_bytes(end.array()?)),
    };
    let max_age = match u64::from_le_bytes(end.array()?) {
        0 => None,
        nanos => Some(Duration::from_nanos(nanos)),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let chunks = split_records(records, values, threads)?;
    // Sized by the count the file states, but never beyond what its bytes can hold: a file
    // crafted with a matching checksum must not make the table ask for all memory.
    let room = (records.len() / MIN_RECORD_LEN).min(usize::try_from(values).unwrap_or(0));
    let staging = Staging::with_room(room);
    let now = unix_nanos();
    // Two passes, each on every thread: the slots are made and sorted by shard, then each thread
    // puts whole shards in the table, in table-position order (see `Staging`).
    let loaded: Vec<Result<(Loaded, ShardLists), SavedError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(|| load_records(chunk, &staging, now)))
            .collect();
        workers.into_iter().map(joined).collect()
    });
    let mut total = Loaded::default();
    let mut by_shard = staging.shard_lists();
    for chunk in loaded {
        let (chunk, lists) = chunk?;
        total.records += chunk.records;
        total.lowest_revision = lowest(total.lowest_revision, chunk.lowest_revision);
        total.expiring.extend(chunk.expiring);
        for (all, list) in by_shard.iter_mut().zip(lists) {
            all.extend(list);
        }
    }
    let mut shares: Vec<Vec<(usize, Vec<PendingWrite>)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (index, list) in by_shard.into_iter().enumerate() {
        shares[index % threads].push((index, list));
    }
    let added: Vec<Result<i64, SavedError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(|| {
                    Ok(share
                        .into_iter()
                        .map(|(index, list)| staging.put_saved(index, list))
                        .sum::<i64>())
                })
            })
            .collect();
        workers.into_iter().map(joined).collect()
    });
    let mut bytes = 0;
    for added in added {
        bytes += added?;
    }
    let mut staging = staging;
    if total.records != values {
        return Err(SavedError::Damaged(format!(
            "it says {values} values but holds {}",
            total.records
        )));
    }
    staging.set_saved_position(position, bytes);
    Ok(Saved {
        staging,
        expiring: total.expiring,
        position,
        values,
        max_age,
        lowest_revision: total.lowest_revision,
    })
}

fn lowest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What one thread loaded.
#[derive(Default)]
struct Loaded {
    records: u64,
    lowest_revision: Option<u64>,
    expiring: Vec<(ExpiryKey, String)>,
}

/// One value record: its key, value, revision, created and expires.
type Record<'a> = (&'a [u8], &'a [u8], u64, i64, i64);

fn next_record<'a>(input: &mut Input<'a>) -> Result<Record<'a>, SavedError> {
    match input.take(1)?[0] {
        VALUE_TAG => {}
        tag => return Err(SavedError::Damaged(format!("unknown record tag {tag}"))),
    }
    let key = input.short()?;
    let len = u32::from_le_bytes(input.array()?) as usize;
    let value = input.take(len)?;
    let revision = u64::from_le_bytes(input.array()?);
    let created = i64::from_le_bytes(input.array()?);
    let expires = i64::from_le_bytes(input.array()?);
    Ok((key, value, revision, created, expires))
}

/// Cuts the records into up to `parts` runs of whole records, by walking their lengths.
fn split_records(records: &[u8], values: u64, parts: usize) -> Result<Vec<&[u8]>, SavedError> {
    let per_part = values.div_ceil(parts.max(1) as u64).max(1);
    let mut chunks = Vec::with_capacity(parts);
    let mut input = Input { rest: records };
    let mut chunk_start = records;
    let mut in_chunk = 0;
    while !input.rest.is_empty() {
        next_record(&mut input)?;
        in_chunk += 1;
        if in_chunk == per_part {
            let used = chunk_start.len() - input.rest.len();
            chunks.push(&chunk_start[..used]);
            chunk_start = input.rest;
            in_chunk = 0;
        }
    }
    if in_chunk > 0 {
        chunks.push(chunk_start);
    }
    Ok(chunks)
}

/// A reading thread's result; a thread that panicked is a damaged file, not a crash.
fn joined<T>(
    worker: std::thread::ScopedJoinHandle<'_, Result<T, SavedError>>,
) -> Result<T, SavedError> {
    worker
        .join()
        .unwrap_or_else(|_| Err(SavedError::Damaged("a reading thread panicked".to_string())))
}

/// Makes the slots of `records`, sorted by the shard that will hold them.
fn load_records(
    records: &[u8],
    staging: &Staging,
    now: i64,
) -> Result<(Loaded, ShardLists), SavedError> {
    let mut loaded = Loaded::default();
    let mut lists = staging.shard_lists();
    let mut input = Input { rest: records };
    while !input.rest.is_empty() {
        let (key, value, revision, created, expires) = next_record(&mut input)?;
        loaded.records += 1;
        loaded.lowest_revision = lowest(loaded.lowest_revision, Some(revision));
        if expires != 0 && expires <= now {
            continue;
        }
        let key = std::str::from_utf8(key)
            .map_err(|_| SavedError::Damaged("a key that is not UTF-8".to_string()))?;
        if expires != 0 {
            loaded.expiring.push(((expires, revision), key.to_string()));
        }
        staging.sort_saved(
            Slot::new(key, value, revision, created, expires),
            &mut lists,
        );
    }
    Ok((loaded, lists))
}

/// The unread part of a saved file.
struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], SavedError> {
        if self.rest.len() < len {
            return Err(SavedError::Damaged(
                "it ends in the middle of a record".to_string(),
            ));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SavedError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn short(&mut self) -> Result<&'a [u8], SavedError> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }
}

/// Saves the bucket's mirror every `every` when it changed, and once more on shutdown, for as
/// long as the cache runs. Saving walks the table on a blocking thread; reads go on meanwhile.
pub(super) async fn keep_saved(
    state: Arc<State>,
    dir: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last: Option<SavedPosition> = None;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        last = save_if_changed(&state, &dir, last).await;
        if stopping {
            return;
        }
    }
}

/// Saves the mirror unless it is not synced or still where `last` saved it; returns where the
/// file now stands.
async fn save_if_changed(
    state: &Arc<State>,
    dir: &Path,
    last: Option<SavedPosition>,
) -> Option<SavedPosition> {
    let mirror = state.mirror();
    if !mirror.is_synced() {
        return last;
    }
    let now = (mirror.applied(), mirror.stream_created());
    if last.is_some_and(|last| (last.applied, last.stream_created) == now) {
        return last;
    }
    let started = Instant::now();
    let task = {
        let state = state.clone();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let max_age = state.max_age();
            write(
                &dir,
                state.name(),
                &state.config().filter,
                max_age,
                state.mirror(),
            )
        })
    };
    let counters = state.save_counters();
    match task.await {
        Ok(Ok(Some((position, values)))) => {
            counters.saves.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                values,
                revision = position.applied,
                took_ms = started.elapsed().as_millis() as u64,
                "mirror saved"
            );
            Some(position)
        }
        Ok(Ok(None)) => last,
        Ok(Err(err)) => {
            counters.save_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, dir = %dir.display(), "cannot save the mirror for a warm start");
            last
        }
        Err(err) => {
            counters.save_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "the mirror's save task failed");
            last
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Entry, Operation};
    use bytes::Bytes;

    fn mirror_of(entries: &[(&str, &str, u64, i64)]) -> Mirror {
        let mut staging = Staging::of_stream(1_700_000_000_123_456_789, entries.len());
        for &(key, value, revision, expires) in entries {
            let entry = Entry {
                key: key.to_string(),
                value: Bytes::from(value.to_string()),
                revision,
                created: revision as i64 * 10,
                operation: Operation::Put,
            };
            staging.apply(entry, expires);
        }
        let mirror = Mirror::new(16);
        assert!(
            mirror.install(staging).is_none(),
            "a first load is no rebuild"
        );
        mirror
    }

    fn saved_file(entries: &[(&str, &str, u64, i64)]) -> (tempfile::TempDir, Mirror) {
        let dir = tempfile::tempdir().unwrap();
        let mirror = mirror_of(entries);
        let hour = Some(Duration::from_secs(3600));
        let written = write(dir.path(), "orders", ">", hour, &mirror).unwrap();
        assert!(written.is_some());
        (dir, mirror)
    }

    #[test]
    fn a_saved_mirror_reads_back_as_it_was_without_expired_values() {
        let later = unix_nanos() + 3_600_000_000_000;
        let (dir, mirror) = saved_file(&[
            ("a", "1", 1, 0),
            ("b", "two", 2, later),
            ("gone", "x", 3, unix_nanos() - 1),
            ("c", "", 4, 0),
        ]);
        let saved = read(dir.path(), "orders", ">").unwrap();
        assert_eq!(saved.values, 4);
        assert_eq!(saved.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(
            saved.position,
            SavedPosition {
                applied: 4,
                last_update: 40,
                stream_created: Some(1_700_000_000_123_456_789),
            }
        );
        assert_eq!(saved.expiring, vec![((later, 2), "b".to_string())]);
        let restored = Mirror::new(16);
        restored.restore(saved.staging);
        assert!(
            !restored.is_synced(),
            "a restored mirror serves only once caught up"
        );
        assert_eq!(restored.applied(), 4);
        assert_eq!(restored.stream_created(), mirror.stream_created());
        for key in ["a", "b", "c"] {
            assert_eq!(restored.get(key), mirror.get(key), "{key}");
        }
        assert!(restored.get("gone").is_none());
        assert_eq!(restored.len(), 3);
        assert_eq!(restored.bytes(), 2 + 4 + 1);
        assert!(!temporary_path(dir.path(), "orders").exists());
    }

    #[test]
    fn a_damaged_truncated_or_foreign_file_is_refused() {
        let (dir, _mirror) = saved_file(&[("a", "1", 1, 0), ("b", "2", 2, 0)]);
        let file = path(dir.path(), "orders");
        let good = fs::read(&file).unwrap();
        // A file copied or renamed to another bucket's name is not that bucket's.
        let refused = |bytes: &[u8], bucket: &str, filter: &str| {
            fs::write(path(dir.path(), bucket), bytes).unwrap();
            read(dir.path(), bucket, filter).err().unwrap()
        };
        assert!(matches!(
            refused(&good, "payments", ">"),
            SavedError::Foreign(_)
        ));
        assert!(matches!(
            refused(&good, "orders", "a.>"),
            SavedError::Foreign(_)
        ));
        for cut in [0, 5, 12, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(refused(&good[..cut], "orders", ">"), SavedError::Damaged(_)),
                "cut at {cut}"
            );
        }
        for at in [20, good.len() / 2, good.len() - 2] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x40;
            assert!(
                matches!(refused(&flipped, "orders", ">"), SavedError::Damaged(_)),
                "flipped at {at}"
            );
        }
        let mut newer = good.clone();
        newer[8] = 9;
        assert!(matches!(
            refused(&newer, "orders", ">"),
            SavedError::Version(9)
        ));
        fs::remove_file(&file).unwrap();
        assert!(matches!(
            read(dir.path(), "orders", ">"),
            Err(SavedError::Missing)
        ));
    }

    #[test]
    fn an_interrupted_save_leaves_the_previous_file() {
        let (dir, _mirror) = saved_file(&[("a", "1", 1, 0)]);
        // A save killed halfway leaves its temporary file; the saved file is untouched.
        let leftover = dir.path().join(".orders.mirror.4000000000.tmp");
        fs::write(&leftover, b"NEARKVMR\x01\0\0\0half").unwrap();
        let saved = read(dir.path(), "orders", ">").unwrap();
        assert_eq!(saved.values, 1);
        // The next save replaces the leftover and the file.
        let newer = mirror_of(&[("a", "1", 1, 0), ("b", "2", 2, 0)]);
        write(dir.path(), "orders", ">", None, &newer).unwrap();
        assert_eq!(read(dir.path(), "orders", ">").unwrap().max_age, None);
        assert_eq!(read(dir.path(), "orders", ">").unwrap().values, 2);
        assert!(!temporary_path(dir.path(), "orders").exists());
        // A start removes what dead processes left; other buckets' files stay.
        fs::write(dir.path().join(".other.mirror.4000000000.tmp"), b"x").unwrap();
        remove_leftovers(dir.path(), "orders");
        assert!(!leftover.exists());
        assert!(dir.path().join(".other.mirror.4000000000.tmp").exists());
        assert!(path(dir.path(), "orders").exists());
    }

    #[test]
    fn a_mirror_never_loaded_from_a_stream_is_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::loaded(Vec::new());
        assert!(write(dir.path(), "orders", ">", None, &mirror)
            .unwrap()
            .is_none());
        assert!(!path(dir.path(), "orders").exists());
    }
}
