//! The cache's errors: a kind to branch on, a message for people, the details a failed write
//! carries, and the underlying error when there is one. The socket server maps a kind to its
//! wire code (`crate::error::ErrorCode`); the codes only a socket can produce (frame and
//! connection limits) are not kinds of the cache.

use std::fmt;
use std::sync::Arc;

/// What went wrong, in terms an embedder can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The call is not valid as made: a key outside the mirrored filter, a TTL below one second.
    BadRequest,
    /// The bucket is not one this cache mirrors.
    UnknownBucket,
    /// A key or key filter breaks the NATS KV key rules, or a key is too long for a write.
    InvalidKey,
    /// The value exceeds the bucket's `max_value_size` or the server's `max_payload`.
    ValueTooLarge,
    /// A compare-and-set failed: the key's current revision is not the expected one.
    WrongRevision,
    /// The bucket's mirror has not finished its initial sync (or could not open the bucket).
    NotReady,
    /// NATS could not be reached; a write's `sent` says whether it may have happened.
    Unavailable,
    /// The deadline passed before the call could be answered.
    Timeout,
    /// The mirror was last confirmed current longer ago than the bucket's `max_staleness`.
    Stale,
    /// A watch fell too far behind the bucket's updates and was ended.
    SlowConsumer,
    /// The bucket is read-only through this cache.
    Forbidden,
    /// A bug or an unexpected answer from NATS; the message says what happened.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnknownBucket => "unknown_bucket",
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::ValueTooLarge => "value_too_large",
            ErrorKind::WrongRevision => "wrong_revision",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Stale => "stale",
            ErrorKind::SlowConsumer => "slow_consumer",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed cache call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// With `WrongRevision`: the key's latest revision, 0 when it is absent or deleted.
    pub current_revision: Option<u64>,
    /// With `Timeout` after a write: the revision NATS acknowledged, which the mirror had not
    /// applied yet.
    pub revision: Option<u64>,
    /// With `Unavailable` or `Timeout` from a write: whether the write may have reached NATS.
    /// `false`: it was never sent, so it certainly did not happen; `true`: it may or may not
    /// have been stored (unless `revision` says it was).
    pub sent: Option<bool>,
    /// The NATS client's error behind this one, if any.
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        (
            self.kind,
            &self.message,
            self.current_revision,
            self.revision,
            self.sent,
        ) == (
            other.kind,
            &other.message,
            other.current_revision,
            other.revision,
            other.sent,
        )
    }
}

impl Eq for Error {}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            current_revision: None,
            revision: None,
            sent: None,
            source: None,
        }
    }

    /// Keeps `source` as the cause of this error.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// A write that failed `Unavailable` or `Timeout`; `sent` says whether it may have reached NATS.
    pub fn write_failed(kind: ErrorKind, sent: bool, message: impl Into<String>) -> Self {
        Error {
            sent: Some(sent),
            ..Error::new(kind, message)
        }
    }

    /// A refused compare-and-set. `current` is the key's latest revision read after the refusal;
    /// 0 when the key has no value (absent, deleted, purged or expired). `key` is as quoted for
    /// messages.
    pub fn wrong_revision(quoted_key: &str, expected: u64, current: u64) -> Self {
        let state = match current {
            0 => "has no value (absent or deleted)".to_string(),
            n => format!("is at revision {n}"),
        };
        Error {
            current_revision: Some(current),
            ..Error::new(
                ErrorKind::WrongRevision,
                format!(
                    "key `{quoted_key}` {state}, not at the expected revision {expected}; read it \
                     again and retry with expect_revision {current}"
                ),
            )
        }
    }

    pub fn unknown_bucket(bucket: &str) -> Self {
        Error::new(
            ErrorKind::UnknownBucket,
            format!(
                "bucket `{bucket}` is not mirrored by this sidecar; add it to the config's [[buckets]] \
                 or start with --bucket {bucket}"
            ),
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
