//! Writes to NATS KV with the revision each one got.
//!
//! async-nats' `delete` and `purge` do not return the revision of the marker they write, and its
//! `create` hides the current revision on a conflict, so the messages are published here with the
//! same subjects and headers async-nats and the other NATS clients use; any NATS KV client reads
//! them as ordinary puts, deletes and purges.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::error::{Error, ErrorCode, Result};
use crate::protocol::{Operation, WriteOptions};

const KV_OPERATION: &str = "KV-Operation";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// JetStream's "wrong last sequence" error, and the one clustered streams may return instead.
const WRONG_LAST_SEQUENCE_CODES: [u64; 2] = [10071, 10164];
const MESSAGE_TOO_LARGE_CODE: u64 = 10054;
const INVALID_TTL_CODE: u64 = 10165;
const TTL_DISABLED_CODE: u64 = 10166;

/// Publishes one KV operation and returns the revision NATS stored it at.
/// `expect_revision` 0 means "absent or deleted", as NATS KV's own `create` does.
pub async fn write(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    operation: Operation,
    value: Bytes,
    options: WriteOptions,
) -> Result<u64> {
    let message = Message {
        key,
        operation,
        ttl_ms: options.ttl_ms,
    };
    let publish = |value: Bytes, expect: Option<u64>| publish(js, store, &message, value, expect);
    match options.expect_revision {
        Some(0) => match publish(value.clone(), Some(0)).await {
            Err(err) if err.code == ErrorCode::WrongRevision => {
                // The key has messages; that still counts as absent when the latest is a delete marker.
                match latest(store, key).await? {
                    Latest::Removed(marker) => publish(value, Some(marker))
                        .await
                        .map_err(|err| conflict(err, key, 0)),
                    Latest::Live(current) => Err(Error::wrong_revision(key, 0, current)),
                    Latest::Absent => Err(Error::wrong_revision(key, 0, 0)),
                }
            }
            other => other,
        },
        Some(expected) => match publish(value, Some(expected)).await {
            Err(err) if err.code == ErrorCode::WrongRevision => {
                let current = match latest(store, key).await? {
                    Latest::Live(current) => current,
                    Latest::Removed(_) | Latest::Absent => 0,
                };
                Err(Error::wrong_revision(key, expected, current))
            }
            other => other,
        },
        None => publish(value, None).await,
    }
}

/// A conflict on the retry after a delete marker: someone else created the key in between.
fn conflict(err: Error, key: &str, expected: u64) -> Error {
    if err.code == ErrorCode::WrongRevision {
        Error::wrong_revision(key, expected, err.current_revision.unwrap_or(0))
    } else {
        err
    }
}

enum Latest {
    Live(u64),
    Removed(u64),
    Absent,
}

/// The key's latest message, asked of the stream leader so it is not behind a lagging replica.
async fn latest(store: &kv::Store, key: &str) -> Result<Latest> {
    let subject = format!("{}{}", store.prefix, key);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            // A limit marker (a value removed by its TTL or max_age) counts as removed too.
            let removed = message
                .headers
                .get(KV_OPERATION)
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
                || message
                    .headers
                    .get(async_nats::header::NATS_MARKER_REASON)
                    .is_some();
            Ok(if removed {
                Latest::Removed(message.sequence)
            } else {
                Latest::Live(message.sequence)
            })
        }
        Err(err) if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(Latest::Absent)
        }
        Err(err) => Err(Error::new(
            ErrorCode::Unavailable,
            format!("revision conflict on `{key}`, but reading its current revision failed: {err}"),
        )),
    }
}

/// What a write publishes, apart from its value and condition.
struct Message<'a> {
    key: &'a str,
    operation: Operation,
    ttl_ms: Option<u64>,
}

async fn publish(
    js: &jetstream::Context,
    store: &kv::Store,
    message: &Message<'_>,
    value: Bytes,
    expect_revision: Option<u64>,
) -> Result<u64> {
    let key = message.key;
    let prefix = store.put_prefix.as_deref().unwrap_or(&store.prefix);
    let subject = format!("{prefix}{key}");
    let mut headers = HeaderMap::new();
    if let Some(ms) = message.ttl_ms {
        headers.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            format!("{ms}ms").as_str(),
        );
    }
    match message.operation {
        Operation::Put => {}
        Operation::Delete => headers.insert(KV_OPERATION, "DEL"),
        Operation::Purge => {
            headers.insert(KV_OPERATION, "PURGE");
            headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        }
    }
    if let Some(revision) = expect_revision {
        headers.insert(
            EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
    }
    let ack = match js.publish_with_headers(subject, headers, value).await {
        Ok(ack) => ack.await,
        Err(err) => Err(err),
    };
    ack.map(|ack| ack.sequence)
        .map_err(|err| publish_error(err, key, expect_revision))
}

fn jetstream_code(err: &PublishError) -> Option<u64> {
    let source = std::error::Error::source(err)?;
    source
        .downcast_ref::<jetstream::Error>()
        .map(|e| e.error_code().0)
}

fn publish_error(err: PublishError, key: &str, expect_revision: Option<u64>) -> Error {
    let code = jetstream_code(&err);
    match err.kind() {
        PublishErrorKind::WrongLastSequence => {
            Error::wrong_revision(key, expect_revision.unwrap_or(0), 0)
        }
        PublishErrorKind::Other if code.is_some_and(|c| WRONG_LAST_SEQUENCE_CODES.contains(&c)) => {
            Error::wrong_revision(key, expect_revision.unwrap_or(0), 0)
        }
        PublishErrorKind::MaxPayloadExceeded => Error::new(
            ErrorCode::ValueTooLarge,
            format!("the value for `{key}` exceeds the NATS server's max_payload"),
        ),
        PublishErrorKind::Other if code == Some(TTL_DISABLED_CODE) => Error::new(
            ErrorCode::BadRequest,
            format!(
                "the bucket does not allow per-key TTLs, so `{key}` was not written: create it with \
                 limit markers (`limit_markers` in nearkv's bucket config, `nats kv add --marker-ttl`) \
                 or put without ttl_ms"
            ),
        ),
        PublishErrorKind::Other if code == Some(INVALID_TTL_CODE) => Error::new(
            ErrorCode::BadRequest,
            format!("NATS rejected the TTL of the write to `{key}`: it must be at least 1000 ms"),
        ),
        PublishErrorKind::Other if code == Some(MESSAGE_TOO_LARGE_CODE) => Error::new(
            ErrorCode::ValueTooLarge,
            format!("the value for `{key}` exceeds the bucket's max_value_size"),
        ),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::StreamNotFound => {
            Error::new(
                ErrorCode::Unavailable,
                format!(
                    "NATS did not acknowledge the write to `{key}` ({err}); it may or may not have been \
                     applied: read the key before retrying"
                ),
            )
        }
        _ => Error::new(
            ErrorCode::Internal,
            format!("NATS rejected the write to `{key}`: {err}"),
        ),
    }
}
