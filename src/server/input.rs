//! What the sidecar holds of its clients' requests, bounded for the whole process: a connection's
//! limits alone multiply by `socket.max_connections`, so one client opening many connections (or
//! many clients during a NATS outage) could otherwise grow the sidecar past its pod's memory
//! limit, and the kernel's OOM killer would end it for every client.
//!
//! `socket.max_buffered_bytes` is split in two [`ByteBudget`]s ([`RequestBudgets`]). One holds
//! what connections have buffered of requests still arriving, beyond the first [`FREE`] bytes of
//! each ([`Input`]): a connection that cannot have more of it stops being read (its client's
//! writes block) until some is given back, and a request that has held it for [`ARRIVE_WITHIN`]
//! without arriving whole closes its connection, so that a client sending the starts of large
//! requests and nothing more keeps it from the others for at most that long. The other holds the
//! frames of protocol v1 requests waiting for NATS or the mirror (`Connection::waiting_slot`): one
//! that would pass it is answered `too_many_requests`. Two halves, so that stalled large requests
//! never refuse the small writes of other clients.

use std::sync::Arc;
use std::time::Duration;

use super::client_socket::ClientReader;
use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, ErrorCode};

/// Bytes a connection buffers of a request without taking from the budget (only what passes them
/// is taken): every request of usual size arrives without touching it.
pub const FREE: usize = 64 * 1024;
/// The most one read adds to a connection's buffer past `FREE`; the budget is taken this much at a
/// time.
const READ_AHEAD: usize = 32 * 1024;
/// How long a request may take to arrive whole once it holds budget. Over a Unix socket even the
/// largest frame arrives in milliseconds from a client that is sending it.
pub const ARRIVE_WITHIN: Duration = Duration::from_secs(10);

/// The two halves of `socket.max_buffered_bytes`.
pub struct RequestBudgets {
    /// For requests still arriving.
    pub arriving: ByteBudget,
    /// For the frames of waiting requests.
    pub waiting: ByteBudget,
}

impl RequestBudgets {
    pub fn new(max_buffered_bytes: usize) -> RequestBudgets {
        RequestBudgets {
            arriving: ByteBudget::new(max_buffered_bytes / 2),
            waiting: ByteBudget::new(max_buffered_bytes / 2),
        }
    }
}

/// Bytes shared by all connections, counted in KiB.
#[derive(Clone)]
pub struct ByteBudget {
    kib: Arc<Semaphore>,
    total_kib: usize,
}

impl ByteBudget {
    pub fn new(max_bytes: usize) -> ByteBudget {
        let total_kib = (max_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        ByteBudget {
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
        }
    }

    /// Takes `bytes` at once, if that much is free; at most the whole budget, so that one request
    /// larger than it is not refused when it is alone.
    pub fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = self.kib_of(bytes);
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Bytes held now, across all connections.
    pub fn held(&self) -> usize {
        (self.total_kib - self.kib.available_permits()) * 1024
    }

    /// [`ByteBudget::held`] as a metric's value.
    pub fn held_bytes(&self) -> i64 {
        i64::try_from(self.held()).unwrap_or(i64::MAX)
    }

    pub fn total(&self) -> usize {
        self.total_kib * 1024
    }

    fn kib_of(&self, bytes: usize) -> u32 {
        let kib = bytes.div_ceil(1024).clamp(1, self.total_kib);
        u32::try_from(kib).unwrap_or(u32::MAX)
    }
}

/// A connection's input: the bytes read and not yet taken as requests, and the budget they hold.
pub struct Input {
    reader: ClientReader,
    pub buf: BytesMut,
    budget: ByteBudget,
    held: Option<OwnedSemaphorePermit>,
    /// When the request being received first held budget.
    holding_since: Option<Instant>,
    /// The buffer's length after the last read: shorter now means a request was taken since.
    after_last_read: usize,
}

/// Why no more input was read.
pub enum InputError {
    /// The client closed the connection or it failed.
    Closed,
    /// A request held budget for `ARRIVE_WITHIN` without arriving whole.
    Stalled(Error),
}

impl Input {
    pub fn new(reader: ClientReader, buf: BytesMut, budget: ByteBudget) -> Input {
        Input {
            reader,
            buf,
            budget,
            held: None,
            holding_since: None,
            after_last_read: 0,
        }
    }

    /// Reads more of the client's input: at once while the buffered part of a request is small,
    /// otherwise once the budget covers the buffer with what the read may add. Cancel-safe: a
    /// cancelled call keeps what it took and read, and its deadline.
    pub async fn read(&mut self) -> Result<usize, InputError> {
        let buffered = self.buf.len();
        if buffered < self.after_last_read {
            // A request was taken since the last read: the next one has its own deadline.
            self.holding_since = None;
        }
        if buffered < FREE {
            self.held = None;
            self.holding_since = None;
            self.after_last_read = buffered;
            let read = (&mut self.buf).limit(FREE - buffered);
            return match read_into(&mut self.reader, read).await {
                Ok(0) | Err(_) => Err(InputError::Closed),
                Ok(read) => Ok(read),
            };
        }
        let deadline = *self.holding_since.get_or_insert_with(Instant::now) + ARRIVE_WITHIN;
        let too_slow = || InputError::Stalled(stalled(buffered));
        // A request never holds more than the whole budget (half of `socket.max_buffered_bytes`
        // is at least `max_frame_size`, so a valid one fits): one that would is left to stall.
        let room = (FREE + self.budget.total()).saturating_sub(buffered);
        if room == 0 {
            tokio::time::sleep_until(deadline).await;
            return Err(too_slow());
        }
        let ahead = READ_AHEAD.min(room);
        let need = self.budget.kib_of(buffered + ahead - FREE) as usize;
        let held = self
            .held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        if held < need {
            let more = self
                .budget
                .kib
                .clone()
                .acquire_many_owned((need - held) as u32);
            let more = match tokio::time::timeout_at(deadline, more).await {
                Ok(Ok(more)) => more,
                // The semaphore is never closed.
                Ok(Err(_)) => return Err(InputError::Closed),
                Err(_) => return Err(too_slow()),
            };
            match &mut self.held {
                Some(held) => held.merge(more),
                None => self.held = Some(more),
            }
        } else if let Some(held_permit) = &mut self.held {
            // Give back what a shorter buffer no longer needs.
            drop(held_permit.split(held - need));
        }
        let read = (&mut self.buf).limit(ahead);
        let read = match tokio::time::timeout_at(deadline, read_into(&mut self.reader, read)).await
        {
            Ok(Ok(0) | Err(_)) => Err(InputError::Closed),
            Ok(Ok(read)) => Ok(read),
            Err(_) => Err(too_slow()),
        };
        self.after_last_read = self.buf.len();
        read
    }
}

/// What a connection whose request did not arrive in time is told.
fn stalled(buffered: usize) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!(
            "a request still incomplete after {buffered} bytes did not arrive whole within \
                 {}s of passing {} KiB; the connection is closed: send each request whole, \
                 without pausing",
            ARRIVE_WITHIN.as_secs(),
            FREE / 1024
        ),
    )
}

async fn read_into(
    reader: &mut ClientReader,
    mut into: bytes::buf::Limit<&mut BytesMut>,
) -> std::io::Result<usize> {
    reader.read_buf(&mut into).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn requests_past_the_free_bytes_are_read_only_as_far_as_the_budget_allows() {
        let budget = ByteBudget::new(256 * 1024);
        let mut inputs = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..2 {
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let (keep, mut write) = theirs.into_split();
            senders.push((
                keep,
                tokio::spawn(async move {
                    let _ = write.write_all(&vec![7; 1024 * 1024]).await;
                }),
            ));
            let (read, _) = crate::server::client_socket::split(ours).unwrap();
            inputs.push(Input::new(read, BytesMut::new(), budget.clone()));
        }
        let [mut first, mut second] = <[Input; 2]>::try_from(inputs).ok().unwrap();
        async fn fill(input: &mut Input) {
            while input.read().await.is_ok() {}
        }
        let both = async { tokio::join!(fill(&mut first), fill(&mut second)) };
        assert!(
            tokio::time::timeout(Duration::from_millis(500), both)
                .await
                .is_err(),
            "both wait for budget"
        );
        let buffered = first.buf.len() + second.buf.len();
        assert!(buffered <= 2 * FREE + 256 * 1024, "{buffered}");
        assert!(buffered >= 2 * FREE + 200 * 1024, "{buffered}");
        assert!(budget.held() > (256 - 32) * 1024, "{}", budget.held());
        drop(first);
        assert!(
            budget.held() < 256 * 1024,
            "given back when the connection ends"
        );
        for (_, sender) in senders {
            sender.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_holds_budget_and_stops_arriving_is_told_so_in_time() {
        let budget = ByteBudget::new(1024 * 1024);
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_keep, mut write) = theirs.into_split();
        write.write_all(&vec![7; 100 * 1024]).await.unwrap();
        let (read, _) = crate::server::client_socket::split(ours).unwrap();
        let mut input = Input::new(read, BytesMut::new(), budget.clone());
        let started = Instant::now();
        let error = loop {
            match input.read().await {
                Ok(_) => {}
                Err(InputError::Stalled(error)) => break error,
                Err(InputError::Closed) => panic!("the client did not close"),
            }
        };
        assert_eq!(error.code, ErrorCode::Timeout);
        assert!(
            started.elapsed() >= ARRIVE_WITHIN,
            "{:?}",
            started.elapsed()
        );
        assert!(error.message.contains("102400 bytes"), "{}", error.message);
    }
}
