//! Redis's string commands, mapped onto a bucket: reads answered from the mirror, writes sent
//! to NATS with protocol v1's read-your-writes wait. Values are the exact bytes given.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::encode::Out;
use super::glob;
use super::nearkv;
use super::reply::{keys_reply, write_key, RespReply, Style};
use super::session::{arity, bad, integer, is, Handled, Session};
use crate::cache::{mget_too_large, Bucket, ErrorKind, MAX_MGET_BYTES};
use crate::cmd::{self, Op, Outcome};
use crate::error::{Error, ErrorCode};
use crate::metrics::ReadTally;
use crate::protocol::{Operation, WriteOptions};

/// Attempts of a read-then-compare-and-set (`SET ... XX`, `SET ... GET`, `GETDEL`) before a
/// key written that often by others meanwhile fails `WRONG_REVISION`.
const CAS_ATTEMPTS: usize = 16;

pub async fn execute(
    session: &mut Session,
    name: &str,
    args: &[Bytes],
    out: &mut Out<'_>,
) -> Handled {
    match name {
        // A GET or MGET with its arguments is answered by `Session::answer_read`.
        "GET" | "MGET" => Err(arity(name)),
        "SET" => set(session, args, out).await,
        "SETNX" if args.len() == 3 => {
            let options = SetOptions {
                condition: Condition::Absent,
                ..SetOptions::default()
            };
            match store(session, &args[1], args[2].clone(), options).await {
                Ok(Stored::Done(_)) => {
                    out.int(1);
                    Ok(())
                }
                Ok(Stored::NotDone) => {
                    out.int(0);
                    Ok(())
                }
                Err(err) => Err(err),
            }
        }
        "SETEX" | "PSETEX" if args.len() == 4 => {
            let options = setex_options(name == "SETEX", args)?;
            store(session, &args[1], args[3].clone(), options)
                .await
                .map(|_| out.ok())
        }
        "MSET" if args.len() >= 3 && args.len() % 2 == 1 => mset(session, args, out).await,
        "DEL" | "UNLINK" if args.len() >= 2 => {
            let delete = PipelinedWrite::new(Write::Delete {
                keys: args[1..].to_vec(),
            });
            pipelined_writes(session, &[delete], out).await;
            Ok(())
        }
        "GETDEL" if args.len() == 2 => getdel(session, args, out).await,
        "EXISTS" if args.len() >= 2 => {
            let mut found = 0;
            for arg in &args[1..] {
                let (bucket, key) = session.locate(arg)?;
                found += i64::from(bucket.get_cached(key).map_err(Error::from)?.is_some());
            }
            out.int(found);
            Ok(())
        }
        "STRLEN" if args.len() == 2 => {
            let (bucket, key) = session.locate(&args[1])?;
            let len = bucket
                .get_cached(key)
                .map_err(Error::from)?
                .map_or(0, |e| e.value.len());
            out.int(len as i64);
            Ok(())
        }
        "TYPE" if args.len() == 2 => {
            let (bucket, key) = session.locate(&args[1])?;
            let found = bucket.get_cached(key).map_err(Error::from)?.is_some();
            out.simple(if found { "string" } else { "none" });
            Ok(())
        }
        "TTL" | "PTTL" if args.len() == 2 => {
            let (bucket, key) = session.locate(&args[1])?;
            let reply = match bucket.time_to_live(key).map_err(Error::from)? {
                None => -2,
                Some(None) => -1,
                Some(Some(left)) if name == "TTL" => ((left.as_millis() + 500) / 1000) as i64,
                Some(Some(left)) => left.as_millis() as i64,
            };
            out.int(reply);
            Ok(())
        }
        "KEYS" if args.len() == 2 => keys(session, &args[1], out).await,
        "SCAN" if args.len() >= 2 => scan(session, args, out).await,
        "DBSIZE" if args.len() == 1 => {
            out.int(session.selected()?.status().keys as i64);
            Ok(())
        }
        _ => Err(arity(name)),
    }
}

fn count(session: &Session, bucket: &str, op: Op, started: Instant, outcome: Outcome) {
    session.ctx.count(bucket, op, started, outcome);
}

/// `GET key`, counted in `tally`.
pub fn get(session: &Session, key: &Bytes, out: &mut Out<'_>, tally: &mut ReadTally) -> Handled {
    tally.start();
    let (bucket, key) = session.locate(key)?;
    let mut reply = RespReply {
        out,
        style: Style::Redis,
    };
    let outcome = cmd::Get::read_now(bucket, key, false, &mut reply);
    tally.count(bucket.name(), Op::Get, outcome);
    Ok(())
}

/// `MGET key [key ...]` (`args` holds at least one key), counted in `tally`.
pub fn mget(
    session: &Session,
    args: &[Bytes],
    out: &mut Out<'_>,
    tally: &mut ReadTally,
) -> Handled {
    tally.start();
    let located = args[1..]
        .iter()
        .map(|arg| {
            session
                .locate(arg)
                .map(|(bucket, key)| Located { bucket, key })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first = located[0].bucket;
    if located.iter().all(|l| std::ptr::eq(l.bucket, first)) {
        let mut reply = RespReply {
            out,
            style: Style::Redis,
        };
        let outcome = cmd::Mget::read_now(first, &located, false, &mut reply);
        tally.count(first.name(), Op::Mget, outcome);
        return Ok(());
    }
    // Keys of several buckets: each read from its own mirror.
    let mut values = Vec::with_capacity(located.len());
    let mut bytes = 0;
    for Located { bucket, key } in &located {
        let value = bucket.get_cached(key).map_err(Error::from)?;
        bytes += value.as_ref().map_or(0, |entry| entry.value.len());
        if bytes > MAX_MGET_BYTES {
            return Err(mget_too_large(bytes, located.len()).into());
        }
        values.push(value);
    }
    out.array(values.len());
    for value in values {
        match value {
            Some(entry) => out.bulk(&entry.value),
            None => out.null(),
        }
    }
    Ok(())
}

/// A key argument's bucket and key; read as the key, so that an `MGET` of one bucket's keys
/// goes to the mirror without another list.
struct Located<'a> {
    bucket: &'a Bucket,
    key: &'a str,
}

impl AsRef<str> for Located<'_> {
    fn as_ref(&self) -> &str {
        self.key
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Condition {
    #[default]
    Always,
    /// `NX`: only when the key has no value.
    Absent,
    /// `XX`: only when the key has a value.
    Present,
}

#[derive(Debug, Clone, Copy, Default)]
struct SetOptions {
    condition: Condition,
    ttl_ms: Option<u64>,
    /// `GET`: answer the value the key had.
    get: bool,
}

enum Stored {
    /// Stored, replacing this value (read only when asked for).
    Done(Option<Bytes>),
    /// Not stored: the condition did not hold.
    NotDone,
}

/// `SETEX key seconds value` (`seconds` true) or `PSETEX key ms value`.
fn setex_options(seconds: bool, args: &[Bytes]) -> Result<SetOptions, Error> {
    let amount = integer(&args[2])?;
    if amount <= 0 {
        let name = if seconds { "setex" } else { "psetex" };
        return Err(bad(format!("invalid expire time in '{name}' command")));
    }
    let ms = if seconds {
        amount.saturating_mul(1000)
    } else {
        amount
    };
    Ok(SetOptions {
        ttl_ms: Some(ms as u64),
        ..SetOptions::default()
    })
}

/// A write a connection sends without waiting for the writes before it to be stored (see
/// [`writes_in_order`]): a valid `SET` without `NX`, `XX` or `GET`, a `SETEX` or a `PSETEX` (one
/// put with no condition), a `DEL` or `UNLINK` (a delete with no condition of each key that has
/// a value), or a valid `NEARKV.SET`, `NEARKV.DEL` or `NEARKV.PURGE` without `IFREV 0` (one write,
/// compared with its `IFREV` revision by NATS in the order sent).
pub struct PipelinedWrite {
    write: Write,
    /// When the command was read, for its duration metric.
    read_at: Instant,
    /// Its bytes' share of `socket.max_buffered_bytes`, held until it is stored.
    held: Option<OwnedSemaphorePermit>,
}

enum Write {
    /// One write of one key.
    One {
        key: Bytes,
        operation: Operation,
        value: Bytes,
        write: WriteOptions,
        answer: Answer,
    },
    /// `DEL`/`UNLINK`: a delete of each named key that has a value.
    Delete { keys: Vec<Bytes> },
}

/// How a stored write is answered.
#[derive(Clone, Copy)]
enum Answer {
    /// `+OK` (`SET`).
    Ok,
    /// The revision stored (`NEARKV.*`).
    Revision,
}

/// What a pipelined write answers: `+OK` or the revision for one write, the number of keys
/// deleted for a `DEL`.
enum Done {
    One(Answer, u64),
    Deleted(i64),
}

impl PipelinedWrite {
    pub fn of(args: &[Bytes]) -> Option<PipelinedWrite> {
        let name = args.first()?;
        let one = |key: &Bytes, operation, value: &Bytes, write, answer| {
            Some(PipelinedWrite::new(Write::One {
                key: key.clone(),
                operation,
                value: value.clone(),
                write,
                answer,
            }))
        };
        let redis_put = |options: SetOptions, value| {
            if options.condition != Condition::Always || options.get {
                return None;
            }
            let write = WriteOptions {
                ttl_ms: options.ttl_ms,
                ..WriteOptions::default()
            };
            one(&args[1], Operation::Put, value, write, Answer::Ok)
        };
        // A create is sent again each time it meets a marker, after the writes sent behind it:
        // it runs alone.
        let no_create = |write: WriteOptions| (write.expect_revision != Some(0)).then_some(write);
        if is(name, "SET") && args.len() >= 3 {
            redis_put(parse_set(args).ok()?, &args[2])
        } else if (is(name, "SETEX") || is(name, "PSETEX")) && args.len() == 4 {
            redis_put(setex_options(is(name, "SETEX"), args).ok()?, &args[3])
        } else if (is(name, "DEL") || is(name, "UNLINK")) && args.len() >= 2 {
            let keys = args[1..].to_vec();
            Some(PipelinedWrite::new(Write::Delete { keys }))
        } else if is(name, "NEARKV.SET") && args.len() >= 3 {
            let write = no_create(nearkv::write_options(args, 3, true).ok()?)?;
            one(&args[1], Operation::Put, &args[2], write, Answer::Revision)
        } else if (is(name, "NEARKV.DEL") || is(name, "NEARKV.PURGE")) && args.len() >= 2 {
            let write = no_create(nearkv::write_options(args, 2, false).ok()?)?;
            let operation = if is(name, "NEARKV.DEL") {
                Operation::Delete
            } else {
                Operation::Purge
            };
            one(&args[1], operation, &Bytes::new(), write, Answer::Revision)
        } else {
            None
        }
    }

    fn new(write: Write) -> PipelinedWrite {
        PipelinedWrite {
            write,
            read_at: Instant::now(),
            held: None,
        }
    }

    /// Bytes it holds until it is stored.
    pub fn len(&self) -> usize {
        match &self.write {
            Write::One { key, value, .. } => key.len() + value.len(),
            Write::Delete { keys } => keys.iter().map(Bytes::len).sum(),
        }
    }

    /// Holds `share` of the sidecar's request budget until it is stored.
    pub fn hold(&mut self, share: OwnedSemaphorePermit) {
        self.held = Some(share);
    }
}

/// Runs pipelined writes as Redis would one after the other, each answered in order (`+OK`, the
/// revision, or how many keys a `DEL` deleted, or its error; see [`writes_in_order`]).
pub async fn pipelined_writes(session: &Session, writes: &[PipelinedWrite], out: &mut Out<'_>) {
    for done in writes_in_order(session, writes).await {
        match done {
            Ok(Done::One(Answer::Ok, _)) => out.ok(),
            Ok(Done::One(Answer::Revision, revision)) => out.int(revision as i64),
            Ok(Done::Deleted(count)) => out.int(count),
            Err(err) => super::reply::error(out, &err),
        }
    }
}

/// Stores writes with all of them in flight to NATS together: each is handed to the NATS
/// connection after the one before it (so NATS stores them, and compares each `IFREV`, in the
/// order the client sent them; the last `SET` of a key wins), then all are awaited at once. One
/// by one, a connection's pipelined `SET`s took a NATS round trip each (about 6,000 per second on
/// one connection).
///
/// Which keys a `DEL` deletes (those with a value) is decided first, in order, from the mirror
/// and the writes before it in the batch, which the mirror does not show yet. A `DEL` of a key
/// that a conditional write before it may or may not have given a value waits until the writes
/// before it are stored, and is decided from the mirror then.
async fn writes_in_order<'s>(
    session: &'s Session,
    writes: &'s [PipelinedWrite],
) -> Vec<Result<Done, Error>> {
    let mut done = Vec::with_capacity(writes.len());
    let mut rest = writes;
    while !rest.is_empty() {
        let planned = plan(session, rest);
        let (turn, later) = rest.split_at(planned.len());
        done.extend(send_in_order(session, planned, turn).await);
        rest = later;
    }
    done
}

/// Whether a key has a value once the writes planned before are stored; `None` when that
/// depends on a conditional write's outcome.
type HasValue<'s> = std::collections::HashMap<(&'s str, &'s str), Option<bool>>;

/// Plans writes from the first on, until one that depends on how an earlier one turns out (a
/// `DEL` of a key a conditional write left undecided); at least the first.
fn plan<'s>(session: &'s Session, writes: &'s [PipelinedWrite]) -> Vec<Result<Plan<'s>, Error>> {
    let mut has_value = HasValue::new();
    let mut planned = Vec::with_capacity(writes.len());
    for write in writes {
        planned.push(match &write.write {
            Write::One {
                key,
                operation,
                value,
                write,
                answer,
            } => session.locate(key).and_then(|(bucket, key)| {
                bucket.check_write(key, *operation, value.len(), write.ttl_ms)?;
                let after = match (operation, write.expect_revision) {
                    (Operation::Put, None) => Some(true),
                    (Operation::Delete | Operation::Purge, None) => Some(false),
                    // Refused, the key keeps what it had; stored, a put leaves a value and a
                    // delete none.
                    (operation, Some(_)) => {
                        let put = *operation == Operation::Put;
                        let before = has_value
                            .get(&(bucket.name(), key))
                            .copied()
                            .unwrap_or_else(|| bucket.get_cached(key).ok().map(|e| e.is_some()));
                        (before == Some(put)).then_some(put)
                    }
                };
                has_value.insert((bucket.name(), key), after);
                Ok(Plan::One {
                    bucket,
                    key,
                    operation: *operation,
                    value: value.clone(),
                    write: *write,
                    answer: *answer,
                })
            }),
            Write::Delete { keys } => match deletes(session, keys, &mut has_value) {
                Ok(Some(targets)) => Ok(Plan::Delete(targets)),
                // Never the first: only the writes planned here leave keys undecided.
                Ok(None) => break,
                Err(err) => Err(err),
            },
        });
    }
    planned
}

async fn send_in_order<'s>(
    session: &'s Session,
    planned: Vec<Result<Plan<'s>, Error>>,
    writes: &'s [PipelinedWrite],
) -> Vec<Result<Done, Error>> {
    let mut turn: Option<tokio::sync::oneshot::Receiver<()>> = None;
    let sends = planned.into_iter().zip(writes).map(|(plan, write)| {
        // Dropped (never sent on) once this one is handed to NATS or failed before: the next
        // one's turn to send.
        let (next, after) = tokio::sync::oneshot::channel::<()>();
        let previous = turn.replace(after);
        async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let plan = match plan {
                Ok(plan) => plan,
                Err(err) => return Err(err),
            };
            let done = match plan {
                Plan::One {
                    bucket,
                    key,
                    operation,
                    value,
                    write: options,
                    answer,
                } => {
                    let sent = bucket.send(key, operation, value, options).await;
                    drop(next);
                    let stored = match sent {
                        Ok(sent) => sent
                            .stored_in_order()
                            .await
                            .map(|revision| Done::One(answer, revision)),
                        Err(err) => Err(err),
                    };
                    let op = match operation {
                        Operation::Put => Op::Put,
                        Operation::Delete => Op::Delete,
                        Operation::Purge => Op::Purge,
                    };
                    count_write(session, bucket, op, write.read_at, stored.as_ref().err());
                    stored
                }
                Plan::Delete(targets) => {
                    let mut sent = Vec::with_capacity(targets.len());
                    for (bucket, key) in &targets {
                        let delete = Operation::Delete;
                        let options = WriteOptions::default();
                        sent.push(bucket.send(key, delete, Bytes::new(), options).await);
                    }
                    drop(next);
                    let stored = futures::future::join_all(sent.into_iter().map(|sent| async {
                        match sent {
                            Ok(sent) => sent.stored().await,
                            Err(err) => Err(err),
                        }
                    }))
                    .await;
                    let mut done = Ok(Done::Deleted(stored.len() as i64));
                    for ((bucket, _), stored) in targets.iter().zip(stored) {
                        let error = stored.err();
                        count_write(session, bucket, Op::Delete, write.read_at, error.as_ref());
                        if let (Ok(_), Some(err)) = (&done, error) {
                            done = Err(err);
                        }
                    }
                    done
                }
            };
            done.map_err(Error::from)
        }
    });
    futures::future::join_all(sends).await
}

/// A pipelined write, its bucket found and (for a `DEL`) the keys it deletes decided.
enum Plan<'s> {
    One {
        bucket: &'s Bucket,
        key: &'s str,
        operation: Operation,
        value: Bytes,
        write: WriteOptions,
        answer: Answer,
    },
    Delete(Vec<(&'s Bucket, &'s str)>),
}

/// The keys of a `DEL` that have a value once the writes before it are stored: Redis answers
/// how many keys existed, and a key without a value is not written to. Updates `has_value`.
/// `None` when a conditional write before it leaves one of them undecided.
fn deletes<'s>(
    session: &'s Session,
    keys: &'s [Bytes],
    has_value: &mut HasValue<'s>,
) -> Result<Option<Vec<(&'s Bucket, &'s str)>>, Error> {
    let mut targets = Vec::new();
    for arg in keys {
        let (bucket, key) = session.locate(arg)?;
        // A key named twice is deleted once.
        let named = |(b, k): &(&Bucket, &str)| std::ptr::eq(*b, bucket) && *k == key;
        let present = match has_value.get(&(bucket.name(), key)) {
            _ if targets.iter().any(named) => false,
            Some(Some(present)) => *present,
            Some(None) => return Ok(None),
            None => bucket.get_cached(key).map_err(Error::from)?.is_some(),
        };
        if present {
            targets.push((bucket, key));
        }
    }
    for (bucket, key) in &targets {
        has_value.insert((bucket.name(), key), Some(false));
    }
    Ok(Some(targets))
}

fn count_write(
    session: &Session,
    bucket: &Bucket,
    op: Op,
    read_at: Instant,
    error: Option<&crate::cache::Error>,
) {
    let outcome = Outcome {
        error: error.map(|e| ErrorCode::from(e.kind)),
        ..Outcome::OK
    };
    count(session, bucket.name(), op, read_at, outcome);
}

fn parse_set(args: &[Bytes]) -> Result<SetOptions, Error> {
    let mut options = SetOptions::default();
    let mut i = 3;
    let syntax = || bad("syntax error");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    while i < args.len() {
        let option = &args[i];
        let mut ttl = |scale: i64, absolute: bool| -> Result<(), Error> {
            if options.ttl_ms.is_some() {
                return Err(syntax());
            }
            let value = integer(args.get(i + 1).ok_or_else(syntax)?)?;
            let ms = value.saturating_mul(scale) - if absolute { now_ms() } else { 0 };
            if value <= 0 || ms <= 0 {
                return Err(bad("invalid expire time in 'set' command"));
            }
            options.ttl_ms = Some(ms as u64);
            i += 1;
            Ok(())
        };
        if is(option, "NX") || is(option, "XX") {
            if options.condition != Condition::Always {
                return Err(syntax());
            }
            options.condition = if is(option, "NX") {
                Condition::Absent
            } else {
                Condition::Present
            };
        } else if is(option, "EX") {
            ttl(1000, false)?;
        } else if is(option, "PX") {
            ttl(1, false)?;
        } else if is(option, "EXAT") {
            ttl(1000, true)?;
        } else if is(option, "PXAT") {
            ttl(1, true)?;
        } else if is(option, "GET") {
            options.get = true;
        } else if is(option, "KEEPTTL") {
            return Err(bad(
                "KEEPTTL is not supported: each NATS KV value carries its own TTL, so a new value \
                 cannot keep the old one's; pass EX or PX with the time left (see TTL)",
            ));
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    Ok(options)
}

async fn set(session: &mut Session, args: &[Bytes], out: &mut Out<'_>) -> Handled {
    if args.len() < 3 {
        return Err(arity("set"));
    }
    let options = parse_set(args)?;
    match store(session, &args[1], args[2].clone(), options).await? {
        Stored::Done(old) if options.get => match old {
            Some(value) => out.bulk(&value),
            None => out.null(),
        },
        Stored::Done(_) => out.ok(),
        Stored::NotDone if options.get => {
            // With GET, Redis answers the current value even when the condition failed.
            let (bucket, key) = session.locate(&args[1])?;
            match bucket.get_cached(key).map_err(Error::from)? {
                Some(entry) => out.bulk(&entry.value),
                None => out.null(),
            }
        }
        Stored::NotDone => out.null(),
    }
    Ok(())
}

/// Stores `value` under the key as `options` say. A plain `SET` is one put; a condition on the
/// current value (`NX` is a create, `XX` and `GET` read first) is a compare-and-set, retried
/// when another writer got in between.
async fn store(
    session: &Session,
    arg: &Bytes,
    value: Bytes,
    options: SetOptions,
) -> Result<Stored, Error> {
    let started = Instant::now();
    let (bucket, key) = session.locate(arg)?;
    let result = store_in(bucket, key, value, options).await;
    let outcome = Outcome {
        error: result.as_ref().err().map(|e| e.code),
        ..Outcome::OK
    };
    count(session, bucket.name(), Op::Put, started, outcome);
    result
}

async fn store_in(
    bucket: &Bucket,
    key: &str,
    value: Bytes,
    options: SetOptions,
) -> Result<Stored, Error> {
    let write = |expect_revision| WriteOptions {
        expect_revision,
        ttl_ms: options.ttl_ms,
        timeout_ms: None,
    };
    if options.condition == Condition::Always && !options.get {
        bucket.put(key, value, write(None)).await?;
        return Ok(Stored::Done(None));
    }
    if options.condition == Condition::Absent && !options.get {
        return match bucket.put(key, value, write(Some(0))).await {
            Ok(_) => Ok(Stored::Done(None)),
            Err(err) if err.kind == ErrorKind::WrongRevision => Ok(Stored::NotDone),
            Err(err) => Err(err.into()),
        };
    }
    for _ in 0..CAS_ATTEMPTS {
        let current = bucket.get_cached(key)?;
        let holds = match options.condition {
            Condition::Always => true,
            Condition::Absent => current.is_none(),
            Condition::Present => current.is_some(),
        };
        if !holds {
            return Ok(Stored::NotDone);
        }
        let expect = current.as_ref().map_or(0, |e| e.revision);
        match bucket.put(key, value.clone(), write(Some(expect))).await {
            Ok(_) => return Ok(Stored::Done(current.map(|e| e.value))),
            Err(err) if err.kind == ErrorKind::WrongRevision => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(contended(key))
}

fn contended(key: &str) -> Error {
    Error::new(
        ErrorCode::WrongRevision,
        format!(
            "key `{key}` changed {CAS_ATTEMPTS} times while this command tried to change it; retry"
        ),
    )
}

async fn mset(session: &Session, args: &[Bytes], out: &mut Out<'_>) -> Handled {
    // Not atomic: each pair is its own put, sent in order, all in flight together; a failure
    // answers the first error, and the other pairs may be stored.
    let pairs: Vec<PipelinedWrite> = args[1..]
        .chunks(2)
        .map(|pair| {
            PipelinedWrite::new(Write::One {
                key: pair[0].clone(),
                operation: Operation::Put,
                value: pair[1].clone(),
                write: WriteOptions::default(),
                answer: Answer::Ok,
            })
        })
        .collect();
    for stored in writes_in_order(session, &pairs).await {
        stored?;
    }
    out.ok();
    Ok(())
}

async fn getdel(session: &Session, args: &[Bytes], out: &mut Out<'_>) -> Handled {
    let (bucket, key) = session.locate(&args[1])?;
    for _ in 0..CAS_ATTEMPTS {
        let Some(current) = bucket.get_cached(key)? else {
            out.null();
            return Ok(());
        };
        match bucket
            .delete(key, WriteOptions::expecting(Some(current.revision)))
            .await
        {
            Ok(_) => {
                out.bulk(&current.value);
                return Ok(());
            }
            Err(err) if err.kind == ErrorKind::WrongRevision => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(contended(key))
}

/// The bucket a `KEYS`/`SCAN` pattern lists, and the pattern within it: `bucket:pattern` when
/// the part before `:` names a configured bucket, else the selected database. Keys of another
/// bucket than the selected one are answered as `bucket:key`, so that `GET` takes them as they are.
fn pattern_target<'s, 'p>(
    session: &'s Session,
    pattern: &'p [u8],
) -> Result<(&'s Bucket, &'p [u8], bool), Error> {
    if let Some(at) = pattern.iter().position(|&b| b == b':') {
        if let Ok(name) = std::str::from_utf8(&pattern[..at]) {
            if let Ok(bucket) = session.ctx.cache.bucket(name) {
                return Ok((bucket, &pattern[at + 1..], true));
            }
        }
    }
    Ok((session.selected()?, pattern, false))
}

async fn keys(session: &Session, pattern: &Bytes, out: &mut Out<'_>) -> Handled {
    let (bucket, pattern, qualified) = pattern_target(session, pattern)?;
    let glob = pattern.to_vec();
    let version = out.version;
    let prefix = qualified.then(|| bucket.name().to_string());
    // Encoded where the keys are listed: a million of them would hold up every other client.
    let encoded = bucket
        .keys_then(
            false,
            move |key| glob::matches(&glob, key.as_bytes()),
            move |keys| keys_reply(version, prefix.as_deref(), &keys),
        )
        .await
        .map_err(Error::from)?;
    cmd::append(out.buf, encoded);
    Ok(())
}

async fn scan(session: &Session, args: &[Bytes], out: &mut Out<'_>) -> Handled {
    let cursor = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| bad("invalid cursor"))?;
    let mut pattern: Option<&[u8]> = None;
    let mut page = 10usize;
    let mut strings = true;
    let mut i = 2;
    while i < args.len() {
        let value = args.get(i + 1).ok_or_else(|| bad("syntax error"))?;
        if is(&args[i], "MATCH") {
            pattern = Some(value);
        } else if is(&args[i], "COUNT") {
            let n = integer(value)?;
            if n < 1 {
                return Err(bad("syntax error"));
            }
            page = n.min(1_000_000) as usize;
        } else if is(&args[i], "TYPE") {
            strings = value.eq_ignore_ascii_case(b"string");
        } else {
            return Err(bad("syntax error"));
        }
        i += 2;
    }
    let (bucket, pattern, qualified) = match pattern {
        Some(p) => {
            let (bucket, p, qualified) = pattern_target(session, p)?;
            (bucket, Some(p), qualified)
        }
        None => (session.selected()?, None, false),
    };
    // Every key is a string: a scan for another type walks nothing and ends at once.
    let (next, keys) = if strings {
        bucket.scan(cursor, page).await.map_err(Error::from)?
    } else {
        (0, Vec::new())
    };
    let listed: Vec<&String> = keys
        .iter()
        .filter(|key| pattern.is_none_or(|p| glob::matches(p, key.as_bytes())))
        .collect();
    out.array(2);
    out.bulk(next.to_string().as_bytes());
    out.array(listed.len());
    for key in listed {
        write_key(out, qualified.then(|| bucket.name()), key);
    }
    Ok(())
}
