//! One client connection: one task reads frames, answers what memory can answer at once, hands
//! waiting requests to their own tasks, and writes every response, coalescing a pipelined burst
//! into one write; plus the connection's watches.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client_socket::{ClientReader, ClientWriter};
use super::context::Context;
use super::draining::Draining;
use super::input::{Input, InputError};
use super::v1::{self, V1Reply};
use crate::cache::{Bucket, WatchItem};
use crate::cmd::{Command, Get, Op, Outcome, Reply, Route};
use crate::error::{Error, ErrorCode};
use crate::metrics::ReadTally;
use crate::protocol::frame::{check, FrameCheck, LENGTH_PREFIX};
use crate::protocol::response::{encode_error, encode_watch, WatchMessage};

/// Responses queued by waiting requests and watches before they must wait: this bounds a
/// connection's memory when its client stops reading.
const OUTPUT_QUEUE: usize = 256;
/// The writer sends at most this much in one write, and answers from memory are sent once this
/// much is pending, even in the middle of a pipelined burst: a burst of reads of large values
/// must not pile up in memory (3,000 pipelined `get`s of a 1 MB value once held 1.3 GB).
const MAX_WRITE: usize = 256 * 1024;

/// Answers of waiting reads (`min_revision`, strong) a connection holds at once, from their
/// encoding until they are written: the reads themselves wait together, but a client that does
/// not read their answers cannot make the sidecar hold more than these. An answer that could hold
/// more than `READ_ANSWER_SHARE` of values takes a share per such size (an `mget` of up to 64 MiB
/// takes them all), so that they hold at most about 64 MiB.
const READ_ANSWERS: usize = 16;
const READ_ANSWER_SHARE: usize = 4 * 1024 * 1024;

/// KiB of watch messages a connection holds for its client, taken from their buckets but not yet
/// written (see `run_watch`).
const WATCH_OUTPUT_KIB: usize = 32 * 1024;

/// A waiting request's share of its connection's limits and of the sidecar's request bytes,
/// given back when it is answered.
struct WaitingSlot {
    _slot: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
}

/// A response or watch message waiting in the connection's queue.
struct Queued {
    frame: Vec<u8>,
    /// The turn its answer took (see `Connection::listing` and `Connection::read_answers`), or
    /// the room a watch message takes (`WatchOutlet::room`), kept until the frame is written.
    turn: Option<OwnedSemaphorePermit>,
}

impl From<Vec<u8>> for Queued {
    fn from(frame: Vec<u8>) -> Self {
        Queued { frame, turn: None }
    }
}

/// What one connection may use (from `SocketConfig`), so that no client can take the sidecar down.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame_size: u32,
    pub max_in_flight: usize,
    pub max_in_flight_bytes: usize,
    pub max_watches: usize,
    /// `Duration::ZERO`: never close an idle connection.
    pub idle_timeout: Duration,
    /// How long one write to the client may block before the connection is closed.
    pub write_timeout: Duration,
}

pub struct Connection {
    ctx: Arc<Context>,
    out: mpsc::Sender<Queued>,
    watches: HashMap<u64, CancellationToken>,
    tasks: TaskTracker,
    /// Ends the connection's watches when the server shuts down.
    shutdown: CancellationToken,
    /// Ends the connection's loop when the server shuts down.
    draining: Arc<Draining>,
    limits: Limits,
    /// One permit per waiting request in flight.
    in_flight: Arc<Semaphore>,
    /// One permit per KiB of the frames of waiting requests in flight: a request holds its frame
    /// (a put, its value) until answered. Without this, a client pipelining puts of 1 MB while
    /// NATS was slow pinned up to `max_in_flight` of them (1 GB) in the sidecar.
    in_flight_bytes: Arc<Semaphore>,
    /// One permit: a connection lists keys one request at a time, from the walk until its
    /// client has read the answer. A listing of a million keys is about 11 MB; a client that
    /// pipelines hundreds of them and reads nothing otherwise grew the sidecar by 500 MB in the
    /// 10 s before `write_timeout` closed it.
    listing: Arc<Semaphore>,
    /// One permit per KiB of watch messages held for the client (`WATCH_OUTPUT_KIB`).
    watch_output: Arc<Semaphore>,
    /// `READ_ANSWERS` permits: a waiting read takes one once its wait is over, to make its answer.
    read_answers: Arc<Semaphore>,
    /// Requests answered at once, added to the shared metrics once per burst.
    tally: ReadTally,
}

impl Limits {
    /// `max_in_flight_bytes` in KiB, the unit of a connection's byte permits (a request takes
    /// at most `u32::MAX` of them at once).
    fn in_flight_kib(&self) -> usize {
        (self.max_in_flight_bytes / 1024).clamp(1, u32::MAX as usize)
    }
}

impl Connection {
    /// Serves one protocol v1 connection whose first bytes, already read, are `input`.
    pub async fn run(
        (read_half, mut socket): (ClientReader, ClientWriter),
        input: bytes::BytesMut,
        ctx: Arc<Context>,
        limits: Limits,
        shutdown: CancellationToken,
        draining: Arc<Draining>,
    ) {
        ctx.metrics.connections.inc();
        let (out, mut queued) = mpsc::channel(OUTPUT_QUEUE);
        let mut connection = Connection {
            ctx: ctx.clone(),
            out,
            watches: HashMap::new(),
            tasks: TaskTracker::new(),
            shutdown,
            draining,
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            in_flight_bytes: Arc::new(Semaphore::new(limits.in_flight_kib())),
            listing: Arc::new(Semaphore::new(1)),
            read_answers: Arc::new(Semaphore::new(READ_ANSWERS)),
            watch_output: Arc::new(Semaphore::new(WATCH_OUTPUT_KIB)),
            tally: ctx.metrics.tally(),
        };
        let mut input = Input::new(read_half, input, ctx.requests.arriving.clone());
        let mut batch = Vec::new();
        let open = connection
            .serve(&mut input, &mut socket, &mut queued, &mut batch)
            .await;
        // Stop watches; let requests already started finish, and send what they answer.
        for (_, watch) in connection.watches.drain() {
            watch.cancel();
        }
        connection.tasks.close();
        drop(connection);
        if open {
            let mut open =
                send_to_client(&mut socket, &mut batch, None, &mut queued, &limits, &ctx).await;
            while let Some(Queued { mut frame, turn }) = queued.recv().await {
                if open {
                    open =
                        send_to_client(&mut socket, &mut frame, turn, &mut queued, &limits, &ctx)
                            .await;
                    if !open {
                        // Listings not started yet see it and skip their walk.
                        queued.close();
                    }
                }
            }
            if open {
                let _ = tokio::time::timeout(limits.write_timeout, socket.shutdown()).await;
            }
        }
        ctx.metrics.connections.dec();
    }

    /// Reads and answers requests, and writes what waiting requests and watches queue, until
    /// the client leaves or the server shuts down. Returns whether the socket is still writable.
    ///
    /// One task does both, so an answer from memory goes out without waking another task.
    async fn serve(
        &mut self,
        input: &mut Input,
        socket: &mut ClientWriter,
        queued: &mut mpsc::Receiver<Queued>,
        batch: &mut Vec<u8>,
    ) -> bool {
        // One registration for the connection's life (see `Draining`).
        let draining = self.draining.clone();
        let begun = draining.begun();
        tokio::pin!(begun);
        // Checked every `idle_timeout`: a period without a frame, a request in flight or a watch
        // closes the connection. Counting frames keeps the clock off the request path.
        let idle = self.limits.idle_timeout;
        let mut clock = IdleClock::new(idle);
        loop {
            clock.seen += self.answer_waiting_gets(input, batch);
            // Answer a pipelined burst in one write: flush when no whole frame is waiting, or
            // when the answers so far reach MAX_WRITE (so a client that does not read stops
            // being read from, rather than growing the batch).
            let whole_frame_waiting = !matches!(
                check(&input.buf, self.limits.max_frame_size),
                FrameCheck::Incomplete
            );
            if !whole_frame_waiting || batch.len() >= MAX_WRITE {
                self.tally.flush();
                if !batch.is_empty()
                    && !send_to_client(socket, batch, None, queued, &self.limits, &self.ctx).await
                {
                    return false;
                }
            }
            let next = tokio::select! {
                biased;
                _ = &mut begun => return true,
                Some(Queued { mut frame, turn }) = queued.recv() => {
                    if !send_to_client(socket, &mut frame, turn, queued, &self.limits, &self.ctx).await {
                        return false;
                    }
                    continue;
                }
                next = next_frame(input, self.limits.max_frame_size) => next,
                quiet = clock.check() => {
                    if quiet && self.is_idle() {
                        let error = idle_timeout(idle);
                        encode_error(batch, 0, &error);
                        self.ctx.metrics.connection_refused(error.code);
                        return true;
                    }
                    continue;
                }
            };
            clock.seen += 1;
            let frame = match next {
                Next::Frame(frame) => frame,
                Next::Closed => return true,
                Next::Refused(error) => {
                    encode_error(batch, 0, &error);
                    self.ctx.metrics.connection_refused(error.code);
                    return true;
                }
            };
            self.handle(frame, batch);
        }
    }

    /// Answers the plain `get`s at the front of the input (most of a pipelined burst of reads)
    /// where they lie: no frame is split off, and no `select!` runs between two of them. Stops at
    /// anything else, which `serve` takes as a frame, and at [`MAX_WRITE`] bytes of answers.
    /// Returns how many it answered.
    fn answer_waiting_gets(&mut self, input: &mut Input, batch: &mut Vec<u8>) -> u64 {
        let mut answered = 0;
        while batch.len() < MAX_WRITE {
            let FrameCheck::Complete(len) = check(&input.buf, self.limits.max_frame_size) else {
                break;
            };
            let frame = &input.buf[LENGTH_PREFIX..LENGTH_PREFIX + len];
            let Some((id, bucket, key)) = v1::plain_get(frame, &self.ctx.cache) else {
                break;
            };
            answer_plain_get(&mut self.tally, id, bucket, key, batch);
            bytes::Buf::advance(&mut input.buf, LENGTH_PREFIX + len);
            answered += 1;
        }
        answered
    }

    fn handle(&mut self, frame: Bytes, batch: &mut Vec<u8>) {
        // Requests answered at once are timed by the tally, a burst at a time.
        self.tally.start();
        if let Some((id, bucket, key)) = v1::plain_get(&frame, &self.ctx.cache) {
            answer_plain_get(&mut self.tally, id, bucket, key, batch);
            return;
        }
        let (id, command) = match v1::parse(&frame) {
            Ok(parsed) => parsed,
            Err(err) => {
                encode_error(batch, err.id, &err.error);
                let outcome = Outcome {
                    error: Some(err.error.code),
                    ..Outcome::OK
                };
                self.tally.count("", Op::Invalid, outcome);
                return;
            }
        };
        let op = command.op();
        let mut reply = V1Reply { out: batch, id };
        match command.route() {
            Route::Now => {
                let outcome = command.answer_now(&self.ctx.cache, &mut reply);
                self.tally
                    .count(self.ctx.bucket_label(&command), op, outcome);
            }
            Route::Waits => {
                let started = std::time::Instant::now();
                let permit = match self.waiting_slot(frame.len()) {
                    Ok(permit) => permit,
                    Err(error) => {
                        let outcome = Outcome::failed(error, &mut reply);
                        self.ctx
                            .count(self.ctx.bucket_label(&command), op, started, outcome);
                        return;
                    }
                };
                let ctx = self.ctx.clone();
                let out = self.out.clone();
                let listing = matches!(command, Command::Keys(_)).then(|| self.listing.clone());
                let read_answers = self.read_answers.clone();
                // Boxed: a write's future is about 4 KB, and spawning moves it by value through
                // several calls; a box moves as a pointer.
                self.tasks.spawn(Box::pin(async move {
                    let _permit = permit;
                    let turn = match listing {
                        Some(listing) => listing.acquire_owned().await.ok(),
                        None => None,
                    };
                    if turn.is_some() && out.is_closed() {
                        // The client is gone: nobody would read the listing.
                        return;
                    }
                    let bucket = ctx.bucket_label(&command).to_string();
                    let mut response = Vec::new();
                    let mut reply = V1Reply {
                        out: &mut response,
                        id,
                    };
                    let (outcome, turn) = match command.wait_to_read(&ctx.cache).await {
                        Some(Ok(())) => {
                            let shares = command
                                .answer_bytes_at_most(&ctx.cache)
                                .div_ceil(READ_ANSWER_SHARE)
                                .clamp(1, READ_ANSWERS);
                            let turn = read_answers.acquire_many_owned(shares as u32).await.ok();
                            (command.answer_now(&ctx.cache, &mut reply), turn)
                        }
                        Some(Err(err)) => (Outcome::failed(err, &mut reply), turn),
                        None => (command.answer(&ctx.cache, &mut reply).await, turn),
                    };
                    ctx.count(&bucket, op, started, outcome);
                    let _ = out
                        .send(Queued {
                            frame: response,
                            turn,
                        })
                        .await;
                }));
            }
            Route::Watch => {
                let outcome = self.watch(id, &command, &mut reply);
                self.tally
                    .count(self.ctx.bucket_label(&command), op, outcome);
            }
        }
    }

    fn watch(&mut self, id: u64, command: &Command, reply: &mut V1Reply<'_>) -> Outcome {
        self.watches.retain(|_, token| !token.is_cancelled());
        match command {
            Command::Watch(watch) => {
                if self.watches.len() >= self.limits.max_watches {
                    let error = Error::new(
                        ErrorCode::TooManyWatches,
                        format!(
                            "this connection already has {} active watches (socket.max_watches); \
                             unwatch one, or watch a wider filter",
                            self.limits.max_watches
                        ),
                    );
                    return Outcome::failed(error, reply);
                }
                if self.watches.contains_key(&id) {
                    let error = Error::new(
                        ErrorCode::BadRequest,
                        format!(
                            "watch id {id} is already in use on this connection; choose another id"
                        ),
                    );
                    return Outcome::failed(error, reply);
                }
                let started = match watch.start(&self.ctx.cache) {
                    Ok(started) => started,
                    Err(err) => return Outcome::failed(err, reply),
                };
                reply.done();
                let token = self.shutdown.child_token();
                self.watches.insert(id, token.clone());
                let task = run_watch(
                    id,
                    started,
                    WatchOutlet {
                        queue: self.out.clone(),
                        room: self.watch_output.clone(),
                    },
                    token,
                    self.shutdown.clone(),
                    self.ctx.clone(),
                    watch.bucket.to_string(),
                );
                self.tasks.spawn(task);
                Outcome::OK
            }
            Command::Unwatch(unwatch) => match self.watches.remove(&unwatch.watch) {
                Some(token) => {
                    token.cancel();
                    reply.done();
                    Outcome::OK
                }
                None => {
                    let error = Error::new(
                        ErrorCode::BadRequest,
                        format!(
                            "no active watch with id {} on this connection",
                            unwatch.watch
                        ),
                    );
                    Outcome::failed(error, reply)
                }
            },
            other => other.answer_now(&self.ctx.cache, reply),
        }
    }
}

impl Connection {
    /// The turn of a waiting request whose frame is `frame_len` bytes long (the request holds
    /// its frame until it is answered): one of `max_in_flight` slots, and its share of
    /// `max_in_flight_bytes`. A frame larger than that share goes through when it is alone.
    fn waiting_slot(&self, frame_len: usize) -> Result<WaitingSlot, Error> {
        let refused = |what: String| {
            Error::new(
                ErrorCode::TooManyRequests,
                format!(
                    "this connection already has {what}; wait for their responses, or spread the \
                     load over more connections"
                ),
            )
        };
        let Ok(slot) = self.in_flight.clone().try_acquire_owned() else {
            return Err(refused(format!(
                "{} requests waiting (socket.max_in_flight)",
                self.limits.max_in_flight
            )));
        };
        let budget = self.limits.in_flight_kib();
        // At most `u32::MAX` (see `in_flight_kib`).
        let kib = frame_len.div_ceil(1024).clamp(1, budget) as u32;
        let Ok(bytes) = self.in_flight_bytes.clone().try_acquire_many_owned(kib) else {
            let waiting = (budget - self.in_flight_bytes.available_permits()) * 1024;
            return Err(refused(format!(
                "about {waiting} bytes of requests waiting, and this one of {frame_len} bytes \
                 would pass socket.max_in_flight_bytes ({})",
                self.limits.max_in_flight_bytes
            )));
        };
        let waiting = &self.ctx.requests.waiting;
        let Some(shared) = waiting.try_take(frame_len) else {
            return Err(Error::new(
                ErrorCode::TooManyRequests,
                format!(
                    "the sidecar's waiting requests already hold about {} bytes for all its \
                     clients, and this one of {frame_len} bytes would pass their half of \
                     socket.max_buffered_bytes ({} bytes); retry once some are answered",
                    waiting.held(),
                    waiting.total()
                ),
            ));
        };
        Ok(WaitingSlot {
            _slot: slot,
            _bytes: bytes,
            _shared: shared,
        })
    }

    /// Nothing in flight and no watch: only then may the idle timeout close the connection.
    fn is_idle(&mut self) -> bool {
        self.watches.retain(|_, token| !token.is_cancelled());
        self.watches.is_empty() && self.in_flight.available_permits() == self.limits.max_in_flight
    }
}

/// What the next read of a v1 connection's input gives.
enum Next {
    Frame(Bytes),
    /// The client left (between frames, or in the middle of one).
    Closed,
    /// The connection must close after telling the client why.
    Refused(Error),
}

/// The next whole frame's body. Cancel-safe: what was read stays in `input`.
/// A plain `get` (see [`v1::plain_get`]), answered from the mirror into `batch` and counted in
/// `tally`.
fn answer_plain_get(
    tally: &mut ReadTally,
    id: u64,
    bucket: &Bucket,
    key: &str,
    batch: &mut Vec<u8>,
) {
    tally.start();
    let mut reply = V1Reply { out: batch, id };
    let outcome = Get::read_now(bucket, key, false, &mut reply);
    tally.count(bucket.name(), Op::Get, outcome);
}

async fn next_frame(input: &mut Input, max_frame_size: u32) -> Next {
    loop {
        match check(&input.buf, max_frame_size) {
            FrameCheck::Complete(len) => {
                bytes::Buf::advance(&mut input.buf, LENGTH_PREFIX);
                return Next::Frame(input.buf.split_to(len).freeze());
            }
            FrameCheck::TooLarge(len) => {
                return Next::Refused(Error::new(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame of {len} bytes exceeds the maximum frame size of {max_frame_size} \
                         bytes; the connection is closed"
                    ),
                ))
            }
            FrameCheck::Incomplete => {}
        }
        match input.read().await {
            Ok(_) => {}
            Err(InputError::Closed) => return Next::Closed,
            Err(InputError::Stalled(error)) => return Next::Refused(error),
        }
    }
}

/// What a connection closed for idling is told, in either protocol.
pub(super) fn idle_timeout(idle: Duration) -> Error {
    Error::new(
        ErrorCode::IdleTimeout,
        format!(
            "no request for {} (socket.idle_timeout); the connection is closed: reconnect when needed",
            humantime::format_duration(idle)
        ),
    )
}

/// When a connection has been idle for `socket.idle_timeout`: checked once per period, quiet
/// when no request arrived since the previous check. Counting requests keeps the clock off the
/// request path.
pub(super) struct IdleClock {
    /// `None` when connections never time out.
    checks: Option<tokio::time::Interval>,
    /// Requests since the last check.
    pub seen: u64,
}

impl IdleClock {
    pub(super) fn new(period: Duration) -> IdleClock {
        let checks = (!period.is_zero())
            .then(|| tokio::time::interval_at(tokio::time::Instant::now() + period, period));
        IdleClock { checks, seen: 0 }
    }

    /// Resolves at the next check (never, without a timeout): whether the period was quiet.
    pub(super) async fn check(&mut self) -> bool {
        match &mut self.checks {
            Some(checks) => {
                checks.tick().await;
            }
            None => std::future::pending().await,
        }
        std::mem::take(&mut self.seen) == 0
    }
}

/// Where a watch's messages go: the connection's queue, and the room for watch messages it holds.
struct WatchOutlet {
    queue: mpsc::Sender<Queued>,
    /// `WATCH_OUTPUT_KIB` permits, shared by the connection's watches.
    room: Arc<Semaphore>,
}

/// Sends a watch's items until it is cancelled, falls behind, or the connection goes away.
///
/// Once the initial listing is sent, updates are taken from the bucket as they come, even while
/// the client is not reading: an update not yet taken pins its value in the bucket's event ring
/// (a watcher that read nothing while another client put 1 MB values grew the sidecar by 2.1 GB
/// in 12 s). Taken but unwritten, the messages of a connection's watches may hold
/// `WATCH_OUTPUT_KIB`; past it the watch ends with `slow_consumer`, as Redis drops a subscriber
/// whose output passes 32 MB. The initial listing instead goes at the client's pace.
async fn run_watch(
    id: u64,
    mut watch: crate::cache::Watch,
    outlet: WatchOutlet,
    token: CancellationToken,
    server_shutdown: CancellationToken,
    ctx: Arc<Context>,
    bucket: String,
) {
    let metrics = &ctx.metrics;
    metrics.watches.inc();
    let delivered = metrics.watch_delivered(&bucket);
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let end = loop {
        let listing = watch.is_listing();
        let item = tokio::select! {
            biased;
            _ = &mut cancelled => break None,
            slot = outlet.queue.reserve(), if !pending.is_empty() => match (slot, pending.pop_front()) {
                (Ok(slot), Some(queued)) => {
                    slot.send(queued);
                    delivered.inc();
                    continue;
                }
                _ => {
                    metrics.watches.dec();
                    return;
                }
            },
            item = watch.next(), if !listing || pending.is_empty() => item,
        };
        let mut frame = Vec::new();
        match item {
            Ok(WatchItem::Event(entry) | WatchItem::Expired(entry)) => {
                encode_watch(&mut frame, id, WatchMessage::Event(&entry))
            }
            Ok(WatchItem::Synced) => encode_watch(&mut frame, id, WatchMessage::Synced),
            Err(err) => break Some(err),
        }
        let kib = frame.len().div_ceil(1024).min(WATCH_OUTPUT_KIB) as u32;
        let turn = match outlet.room.clone().try_acquire_many_owned(kib) {
            Ok(turn) => turn,
            Err(_) if listing => tokio::select! {
                biased;
                _ = &mut cancelled => break None,
                turn = outlet.room.clone().acquire_many_owned(kib) => match turn {
                    Ok(turn) => turn,
                    Err(_) => break None,
                },
            },
            Err(_) => {
                break Some(crate::cache::Error::new(
                    crate::cache::ErrorKind::SlowConsumer,
                    format!(
                        "the client left {} MiB of watch messages unread on this connection and \
                         the watch was ended; read faster, or watch again to resume from a fresh \
                         snapshot",
                        WATCH_OUTPUT_KIB / 1024
                    ),
                ))
            }
        };
        pending.push_back(Queued {
            frame,
            turn: Some(turn),
        });
    };
    // Messages taken but not sent are missed: the client is told `slow_consumer` or left.
    drop(pending);
    metrics.watches.dec();
    metrics.watch_dropped(&bucket, watch.missed());
    // Ended by the server, not by the client's unwatch: the client must learn why.
    let end = end.map(Error::from).or_else(|| {
        server_shutdown.is_cancelled().then(|| {
            Error::new(
                ErrorCode::Unavailable,
                "the sidecar is shutting down; watch again once it is back",
            )
        })
    });
    token.cancel();
    let mut frame = Vec::new();
    encode_watch(&mut frame, id, WatchMessage::End(end.as_ref()));
    let _ = outlet.queue.send(frame.into()).await;
}

/// Writes `buf` and whatever else is queued (up to `MAX_WRITE`) in one write, then clears `buf`
/// (and shrinks it, if a large burst grew it past four times that).
/// Returns false when the client is gone, or did not read for `write_timeout`: such a client
/// must not pin this task, the responses queued for it, or the server's shutdown.
async fn send_to_client(
    socket: &mut ClientWriter,
    buf: &mut Vec<u8>,
    turn: Option<OwnedSemaphorePermit>,
    queued: &mut mpsc::Receiver<Queued>,
    limits: &Limits,
    ctx: &Context,
) -> bool {
    // Listing turns of what this write sends, given back once it is written.
    let mut turns: Vec<OwnedSemaphorePermit> = turn.into_iter().collect();
    while buf.len() < MAX_WRITE {
        match queued.try_recv() {
            Ok(more) => {
                buf.extend_from_slice(&more.frame);
                turns.extend(more.turn);
            }
            Err(_) => break,
        }
    }
    let written = socket.write_all_within(buf, limits.write_timeout).await;
    drop(turns);
    let pending = buf.len();
    buf.clear();
    // A connection's buffer outlives its largest burst: one of big values must not stay held.
    if buf.capacity() > 4 * MAX_WRITE {
        buf.shrink_to(MAX_WRITE);
    }
    match written {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "client stopped reading; dropping its responses");
            false
        }
        Err(_) => {
            tracing::warn!(
                pending_bytes = pending,
                write_timeout = ?limits.write_timeout,
                "client did not read its responses within socket.write_timeout; closing the connection"
            );
            ctx.metrics.slow_clients.inc();
            false
        }
    }
}
