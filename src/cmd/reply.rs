//! What commands answer, written by the wire face that received them.

use crate::cache::{self, ErrorKind};
use crate::error::{Error, ErrorCode};
use crate::protocol::types::EntryRef;
use crate::protocol::{BucketStatus, Freshness};

pub type KeysEncoder = Box<dyn FnOnce(Vec<String>) -> Vec<u8> + Send>;

/// Appends `bytes` to `out`, without a copy when `out` is empty.
pub fn append(out: &mut Vec<u8>, bytes: Vec<u8>) {
    if out.is_empty() {
        *out = bytes;
    } else {
        out.extend_from_slice(&bytes);
    }
}

/// The answers a command can give. A wire face implements it to encode them; entries are lent
/// straight from the mirror so that a read is encoded without an owned copy.
pub trait Reply {
    /// Success with nothing to say (`ping`, `watch`, `unwatch`).
    fn done(&mut self);
    fn entry(&mut self, entry: Option<EntryRef<'_>>, fresh: Freshness);
    /// `count` entries, asking `entry_at` for each in order.
    fn entries(
        &mut self,
        count: usize,
        fresh: Freshness,
        entry_at: impl FnMut(usize, &mut dyn FnMut(Option<EntryRef<'_>>)),
    );
    fn revision(&mut self, revision: u64);
    /// How to encode a `keys` answer, as a function that may run on another thread: a
    /// million keys take long enough to encode that other clients must not wait for it.
    fn keys_encoder(&self) -> KeysEncoder;
    /// Appends an answer a [`Reply::keys_encoder`] encoded.
    fn encoded(&mut self, bytes: Vec<u8>);
    fn statuses(&mut self, buckets: &[BucketStatus]);
    fn error(&mut self, error: &Error);
}

/// What happened to a command, for the face's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub error: Option<ErrorCode>,
    /// Keys read: (found, not found), for the bucket's hit and miss counters.
    pub lookups: (u64, u64),
}

impl Outcome {
    pub const OK: Outcome = Outcome {
        error: None,
        lookups: (0, 0),
    };

    pub fn lookups(hits: u64, misses: u64) -> Outcome {
        Outcome {
            error: None,
            lookups: (hits, misses),
        }
    }

    /// Replies with `error` and returns its outcome.
    pub fn failed(error: impl Into<Error>, reply: &mut impl Reply) -> Outcome {
        let error = error.into();
        reply.error(&error);
        Outcome {
            error: Some(error.code),
            lookups: (0, 0),
        }
    }
}

/// A command answered on a path its route does not lead to: a bug in the connection, reported
/// rather than panicking.
pub(super) fn misrouted(op: &str, reply: &mut impl Reply) -> Outcome {
    let error = Error::new(
        ErrorCode::Internal,
        format!("op `{op}` was answered on the wrong path"),
    );
    Outcome::failed(error, reply)
}

impl From<ErrorKind> for ErrorCode {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::BadRequest => ErrorCode::BadRequest,
            ErrorKind::UnknownBucket => ErrorCode::UnknownBucket,
            ErrorKind::InvalidKey => ErrorCode::InvalidKey,
            ErrorKind::ValueTooLarge => ErrorCode::ValueTooLarge,
            ErrorKind::WrongRevision => ErrorCode::WrongRevision,
            ErrorKind::NotReady => ErrorCode::NotReady,
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            ErrorKind::Timeout => ErrorCode::Timeout,
            ErrorKind::Stale => ErrorCode::Stale,
            ErrorKind::SlowConsumer => ErrorCode::SlowConsumer,
            ErrorKind::Forbidden => ErrorCode::Forbidden,
            ErrorKind::Internal => ErrorCode::Internal,
        }
    }
}

/// A cache error as the wire carries it (the mapping happens here, at the edge): its kind's code, its message and details.
impl From<cache::Error> for Error {
    fn from(err: cache::Error) -> Self {
        Error {
            code: err.kind.into(),
            message: err.message,
            current_revision: err.current_revision,
            revision: err.revision,
            sent: err.sent,
        }
    }
}
