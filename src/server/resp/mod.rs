//! The Redis face: RESP2 and RESP3 on the same socket as protocol v1 (docs/RESP.md), so that
//! an application's existing Redis client reads its NATS KV buckets.
//!
//! Unlike protocol v1, whose responses carry the request's id, RESP answers in order and its
//! clients expect each command to see the ones before it. So a connection runs its commands one
//! after the other: reads answered from memory at once, a write awaited (with the same
//! read-your-writes wait as v1) before the next command runs. The one exception: pipelined plain
//! `SET`s and `DEL`s, and `NEARKV.*` writes other than creates, are sent to NATS in order and
//! awaited together, before the next other command runs.
//! Pipelined replies are sent in one write, as for v1.

mod dispatch;
mod encode;
mod glob;
mod info;
mod nearkv;
mod parse;
mod pubsub;
mod reply;
mod session;
mod strings;

use std::sync::Arc;

use bytes::BytesMut;

use super::client_socket::{ClientReader, ClientWriter};
use super::connection::{IdleClock, Limits};
use super::context::Context;
use super::draining::Draining;
use super::input::{Input, InputError};
use crate::error::{Error, ErrorCode};
use crate::metrics::ReadTally;
use encode::{Out, Version};
use parse::Check;
use session::Session;
use strings::PipelinedWrite;

/// Replies are sent once this much is pending, even in the middle of a pipelined burst.
const MAX_BATCH: usize = 256 * 1024;
/// Pipelined writes sent to NATS together (`strings::writes_in_order`), and the most bytes they
/// hold (beyond the first, also against `socket.max_buffered_bytes`' half for waiting requests):
/// more are run in turns.
const MAX_WRITES: usize = 64;
const MAX_WRITE_BYTES: usize = 4 * 1024 * 1024;

/// Serves one RESP connection whose first bytes, already read, are `input`.
pub async fn run(
    (reader, writer): (ClientReader, ClientWriter),
    input: BytesMut,
    ctx: Arc<Context>,
    limits: Limits,
    draining: Arc<Draining>,
    id: u64,
) {
    ctx.metrics.connections.inc();
    let mut connection = Connection {
        session: Session::new(ctx.clone(), id),
        input: Input::new(reader, input, ctx.requests.arriving.clone()),
        writer,
        args: Vec::new(),
        writes: Vec::new(),
        batch: Vec::with_capacity(16 * 1024),
        tally: ctx.metrics.tally(),
        limits,
    };
    connection.serve(&draining).await;
    ctx.metrics.connections.dec();
}

struct Connection {
    session: Session,
    input: Input,
    writer: ClientWriter,
    /// The arguments of the command being run, reused from one command to the next.
    args: Vec<bytes::Bytes>,
    /// Plain `SET`s and `DEL`s read and not yet run: run together before any other command and
    /// whenever no whole command is left in the input.
    writes: Vec<PipelinedWrite>,
    batch: Vec<u8>,
    /// Reads answered from memory, added to the shared metrics once per burst.
    tally: ReadTally,
    limits: Limits,
}

impl Connection {
    async fn serve(&mut self, draining: &Draining) {
        let begun = draining.begun();
        tokio::pin!(begun);
        let idle = self.limits.idle_timeout;
        let mut clock = IdleClock::new(idle);
        loop {
            match self.answer_buffered().await {
                Ok(answered) => clock.seen += answered,
                Err(()) => return,
            }
            if !self.flush().await {
                return;
            }
            tokio::select! {
                biased;
                _ = &mut begun => return,
                delivery = self.session.pubsub.next() => match delivery {
                    Some(Ok(notification)) => {
                        let mut out = Out { buf: &mut self.batch, version: self.session.version };
                        self.session.pubsub.deliver(&notification, &mut out);
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "keyspace subscriber fell behind; closing its connection");
                        return;
                    }
                    None => {}
                },
                read = self.input.read() => match read {
                    Ok(_) => {}
                    Err(InputError::Closed) => return,
                    Err(InputError::Stalled(error)) => {
                        let mut out = Out { buf: &mut self.batch, version: self.session.version };
                        reply::error(&mut out, &error);
                        self.session.ctx.metrics.connection_refused(error.code);
                        self.flush().await;
                        return;
                    }
                },
                quiet = clock.check() => {
                    if quiet && !self.session.pubsub.is_active() {
                        let error = super::connection::idle_timeout(idle);
                        let mut out = Out { buf: &mut self.batch, version: self.session.version };
                        reply::error(&mut out, &error);
                        self.session.ctx.metrics.connection_refused(error.code);
                        self.flush().await;
                        return;
                    }
                }
            }
        }
    }

    /// Runs every whole command in the input, in order. `Err` when the connection must close:
    /// `QUIT`, a protocol error (answered first), or a client that does not read its replies.
    async fn answer_buffered(&mut self) -> Result<u64, ()> {
        let mut answered = 0;
        loop {
            let max = self.limits.max_frame_size as usize;
            match parse::check(&self.input.buf, max) {
                Ok(Check::Incomplete) => {
                    self.run_writes().await;
                    return Ok(answered);
                }
                Ok(Check::Empty { len }) => parse::skip(&mut self.input.buf, len),
                Ok(Check::Complete { len }) => {
                    parse::take(&mut self.input.buf, len, &mut self.args);
                    answered += 1;
                    if let Some(mut write) = self.session.pipelined_write(&self.args) {
                        // The first of a batch is the one command a connection always runs;
                        // the others hold their bytes against socket.max_buffered_bytes, and
                        // when it has no room the batch so far runs first.
                        if !self.writes.is_empty() {
                            let waiting = &self.session.ctx.requests.waiting;
                            match waiting.try_take(write.len()) {
                                Some(share) => write.hold(share),
                                None => self.run_writes().await,
                            }
                        }
                        self.writes.push(write);
                        let held: usize = self.writes.iter().map(PipelinedWrite::len).sum();
                        if self.writes.len() >= MAX_WRITES || held >= MAX_WRITE_BYTES {
                            self.run_writes().await;
                            if self.batch.len() >= MAX_BATCH && !self.flush().await {
                                return Err(());
                            }
                        }
                        continue;
                    }
                    self.run_writes().await;
                    let mut out = Out {
                        buf: &mut self.batch,
                        version: self.session.version,
                    };
                    if !self
                        .session
                        .answer_read(&self.args, &mut out, &mut self.tally)
                    {
                        // It may wait: the reads before it are timed without that wait.
                        self.tally.flush();
                        self.session.execute(&self.args, &mut out).await;
                    }
                    if self.session.quit {
                        self.flush().await;
                        return Err(());
                    }
                    if self.batch.len() >= MAX_BATCH && !self.flush().await {
                        return Err(());
                    }
                }
                Err(err) => {
                    self.run_writes().await;
                    let mut out = Out {
                        buf: &mut self.batch,
                        version: self.session.version,
                    };
                    out.error("ERR", &err.to_string());
                    self.session
                        .ctx
                        .metrics
                        .connection_refused(ErrorCode::BadRequest);
                    self.flush().await;
                    return Err(());
                }
            }
        }
    }

    /// Runs the pipelined writes read so far, their replies in order.
    async fn run_writes(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        // The reads before them are timed without this wait.
        self.tally.flush();
        let mut out = Out {
            buf: &mut self.batch,
            version: self.session.version,
        };
        strings::pipelined_writes(&self.session, &self.writes, &mut out).await;
        self.writes.clear();
    }

    /// Sends the pending replies. False when the client is gone or did not read them within
    /// `socket.write_timeout`.
    async fn flush(&mut self) -> bool {
        self.tally.flush();
        if self.batch.is_empty() {
            return true;
        }
        let written = self
            .writer
            .write_all_within(&self.batch, self.limits.write_timeout)
            .await;
        let pending = self.batch.len();
        self.batch.clear();
        if self.batch.capacity() > 4 * MAX_BATCH {
            self.batch.shrink_to(16 * 1024);
        }
        match written {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(
                    pending_bytes = pending,
                    write_timeout = ?self.limits.write_timeout,
                    "Redis client did not read its replies within socket.write_timeout; closing the connection"
                );
                self.session.ctx.metrics.slow_clients.inc();
                false
            }
        }
    }
}

/// A connection refused before it is served, told why in RESP: `-FORBIDDEN ...`,
/// `-TOO_MANY_CONNECTIONS ...`.
pub fn refusal(error: &Error) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut out = Out {
        buf: &mut buf,
        version: Version::Resp2,
    };
    out.error(&error.code.as_str().to_ascii_uppercase(), &error.message);
    buf
}

/// Splits `input` into RESP commands as a connection does, with a limit of `max_bytes` per
/// command: the arguments of each whole command, and the protocol error that stopped it, if
/// any. For the fuzz target.
pub fn parse_stream(input: &[u8], max_bytes: usize) -> (Vec<Vec<bytes::Bytes>>, Option<String>) {
    let mut buf = BytesMut::from(input);
    let mut commands = Vec::new();
    loop {
        match parse::check(&buf, max_bytes) {
            Ok(Check::Incomplete) => return (commands, None),
            Ok(Check::Empty { len }) => parse::skip(&mut buf, len),
            Ok(Check::Complete { len }) => {
                let mut args = Vec::new();
                parse::take(&mut buf, len, &mut args);
                commands.push(args);
            }
            Err(err) => return (commands, Some(err.to_string())),
        }
    }
}
