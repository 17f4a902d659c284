//! Errors as protocol v1 carries them: the wire codes, shared by the socket server and the
//! client, so that an error keeps its meaning from the sidecar to the application that reads it.
//! The cache's own errors (`cache::Error`) map to these at the socket.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable error codes of protocol v1 (docs/PROTOCOL.md, "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not a valid request of its op: a missing field or a field of the wrong type.
    BadRequest,
    /// The `op` is not one this server knows.
    UnknownOp,
    /// The bucket is not one this sidecar mirrors.
    UnknownBucket,
    /// A key or key filter breaks the NATS KV key rules.
    InvalidKey,
    /// The value exceeds the bucket's `max_value_size` or the server's `max_payload`.
    ValueTooLarge,
    /// A compare-and-set failed: the key's current revision is not the expected one.
    WrongRevision,
    /// The bucket's mirror has not finished its initial sync (or could not open the bucket).
    NotReady,
    /// NATS could not be reached or did not answer in time; a write may or may not have happened.
    Unavailable,
    /// The request's deadline passed before it could be answered.
    Timeout,
    /// The mirror was last confirmed current longer ago than the bucket's `max_staleness`.
    Stale,
    /// A frame's length prefix exceeds the server's max frame size; the connection is closed.
    FrameTooLarge,
    /// A watch fell too far behind the bucket's updates and was ended.
    SlowConsumer,
    /// The server already serves `socket.max_connections` connections; this one is closed.
    TooManyConnections,
    /// The connection already has `socket.max_in_flight` waiting requests in flight.
    TooManyRequests,
    /// The connection already has `socket.max_watches` active watches.
    TooManyWatches,
    /// The connection sent nothing for `socket.idle_timeout` and is closed.
    IdleTimeout,
    /// The peer's user or group may not use this socket, or the bucket is read-only here.
    Forbidden,
    /// A bug or an unexpected answer from NATS; the message says what happened.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownBucket => "unknown_bucket",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::WrongRevision => "wrong_revision",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Stale => "stale",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::TooManyWatches => "too_many_watches",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request's failure on the wire: a code to branch on, a message for people, and the details some codes carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// With `wrong_revision`: the key's latest revision, 0 when it is absent or deleted.
    pub current_revision: Option<u64>,
    /// With `timeout` after a write: the revision NATS acknowledged, which the mirror had not applied yet.
    pub revision: Option<u64>,
    /// With `unavailable` or `timeout` from a write: whether the write may have reached NATS.
    /// `false`: it was never sent, so it certainly did not happen; `true`: it may or may not have
    /// been stored (unless `revision` says it was).
    pub sent: Option<bool>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            current_revision: None,
            revision: None,
            sent: None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
