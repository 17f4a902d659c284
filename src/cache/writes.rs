//! Writes to NATS KV with the revision each one got.
//!
//! async-nats' `delete` and `purge` do not return the revision of the marker they write, and its
//! `create` hides the current revision on a conflict, so the messages are published here with the
//! same subjects and headers async-nats and the other NATS clients use; any NATS KV client reads
//! them as ordinary puts, deletes and purges.

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;

use tokio::sync::watch;

use super::link::{self, Link};
use crate::cache::error::{Error, ErrorKind, Result};
use crate::keys::quote;
use crate::protocol::{Operation, WriteOptions};

const KV_OPERATION: &str = "KV-Operation";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// JetStream's "wrong last sequence" error, and the one clustered streams may return instead.
const WRONG_LAST_SEQUENCE_CODES: [u64; 2] = [10071, 10164];
const MESSAGE_TOO_LARGE_CODE: u64 = 10054;
const INVALID_TTL_CODE: u64 = 10165;
const TTL_DISABLED_CODE: u64 = 10166;

/// Hands one KV operation to the NATS connection; [`Sent::settled`] then awaits NATS's answer.
/// Writes sent one after another (each call awaited before the next starts) reach NATS, and are
/// stored or refused, in that order: one connection, one stream. So a client's pipelined writes
/// can be in flight together and still land as if run one by one.
pub async fn send<'a>(
    to: Destination<'a>,
    key: &'a str,
    operation: Operation,
    value: Bytes,
    options: WriteOptions,
) -> Result<Sent<'a>> {
    let message = Message {
        key,
        operation,
        ttl_ms: options.ttl_ms,
    };
    // Only a refused conditional write is sent again.
    let retry_value = options.expect_revision.map(|_| value.clone());
    let mut sent = start(to, message, value, options.expect_revision).await?;
    sent.retry_value = retry_value;
    Ok(sent)
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
        Err(err) => Err(Error::write_failed(
            ErrorKind::Unavailable,
            true,
            format!(
                "NATS refused the conditional write to `{}`, but reading the key's current revision \
                 failed ({err}); the write may have been stored by an earlier attempt: read the key \
                 before retrying",
                quote(key)
            ),
        )),
    }
}

/// Where a write goes: the bucket, through the JetStream context, over the connection `link`
/// describes (if that drops, the acknowledgement never comes).
#[derive(Clone, Copy)]
pub struct Destination<'a> {
    pub client: &'a async_nats::Client,
    pub js: &'a jetstream::Context,
    pub store: &'a kv::Store,
    pub link: &'a watch::Receiver<Link>,
}

/// What a write publishes, apart from its value and condition.
#[derive(Clone, Copy)]
struct Message<'a> {
    key: &'a str,
    operation: Operation,
    ttl_ms: Option<u64>,
}

/// A write handed to the NATS connection, its acknowledgement still to come.
pub struct Sent<'a> {
    to: Destination<'a>,
    message: Message<'a>,
    expect_revision: Option<u64>,
    /// The value again, for a conditional write that may be sent again.
    retry_value: Option<Bytes>,
    ack: PublishAckFuture,
    link: watch::Receiver<Link>,
    sent_on: Link,
}

async fn start<'a>(
    to: Destination<'a>,
    message: Message<'a>,
    value: Bytes,
    expect_revision: Option<u64>,
) -> Result<Sent<'a>> {
    let (js, store, key) = (to.js, to.store, message.key);
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
    // The server's limit counts the header block too: exactly what NATS accepts, no margin.
    // An atomic load: no copy of the server's INFO on the write path.
    let max_payload = to.client.max_payload();
    let header_len = header_wire_len(&headers);
    if max_payload > 0 && value.len() + header_len > max_payload {
        return Err(Error::new(
            ErrorKind::ValueTooLarge,
            format!(
                "the value for `{}` is {} bytes; the NATS server's max_payload of {max_payload} \
                 bytes allows at most {} for this write ({header_len} bytes of headers travel with it)",
                quote(key),
                value.len(),
                max_payload - header_len.min(max_payload),
            ),
        ));
    }
    let mut link = to.link.clone();
    let sent_on = Link::of(to.client);
    tokio::select! {
        sent = js.publish_with_headers(subject, headers, value) => match sent {
            Ok(ack) => Ok(Sent {
                to,
                message,
                expect_revision,
                retry_value: None,
                ack,
                link,
                sent_on,
            }),
            Err(err) => Err(publish_error(err, key, expect_revision)),
        },
        () = link::lost(&mut link, || Link::of(to.client), sent_on) => Err(link_lost(key)),
    }
}

impl Sent<'_> {
    /// The revision NATS stored the write at.
    ///
    /// `expect_revision` 0 means "the key has no value": absent, or its latest message a delete,
    /// purge or expiry marker. NATS itself only knows "no message at all" (0) or "this exact
    /// revision", so a refused create of a key whose latest message is a marker is sent again
    /// against that marker's revision, again after each marker another client writes meanwhile,
    /// until it is stored or the key really holds a value (or `deadline` passes). So a create on
    /// a deleted key never fails while the key stays deleted, however often others delete it.
    ///
    /// On a refusal, `current_revision` is the key's latest revision read from the stream leader
    /// after NATS refused the write: a revision the key had during the request, 0 for no value.
    ///
    /// Without `resend`, a refused write is never sent again: it keeps its place among writes
    /// sent after it (a pipeline's), and a refused create of a key whose latest message is a
    /// marker fails `wrong_revision` with `current_revision` 0.
    pub async fn settled(self, deadline: tokio::time::Instant, resend: bool) -> Result<u64> {
        let (to, message, value) = (self.to, self.message, self.retry_value.clone());
        let (key, expected) = (message.key, self.expect_revision);
        let mut outcome = self.acked().await;
        let (Some(expected), Some(value)) = (expected, value) else {
            return outcome;
        };
        loop {
            match outcome {
                Err(err) if err.kind == ErrorKind::WrongRevision => {}
                done => return done,
            }
            let latest = latest(to.store, key).await?;
            let again = match latest {
                _ if !resend => None,
                // Still no value: a marker (or a purge of everything) came in between. Try
                // again against what is there now.
                Latest::Removed(marker) if expected == 0 => Some(marker),
                Latest::Absent if expected == 0 => Some(0),
                // Read from the stream leader, like the refusal: the key has the expected
                // revision now (the refusal was not about it, or the key reached it since).
                Latest::Live(current) | Latest::Removed(current) if current == expected => {
                    Some(expected)
                }
                _ => None,
            };
            let Some(condition) = again else {
                let current = match latest {
                    Latest::Live(current) => current,
                    Latest::Removed(_) | Latest::Absent => 0,
                };
                return Err(Error::wrong_revision(&quote(key), expected, current));
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::write_failed(
                    ErrorKind::Timeout,
                    true,
                    format!(
                        "the conditional write to `{}` was refused again and again as other \
                         clients kept writing markers to the key; it was not stored by the last \
                         attempt, but may have been by none: read the key before retrying",
                        quote(key)
                    ),
                ));
            }
            outcome = match start(to, message, value.clone(), Some(condition)).await {
                Ok(sent) => sent.acked().await,
                Err(err) => Err(err),
            };
        }
    }

    async fn acked(mut self) -> Result<u64> {
        let (to, key) = (self.to, self.message.key);
        tokio::select! {
            ack = self.ack => ack
                .map(|ack| ack.sequence)
                .map_err(|err| publish_error(err, key, self.expect_revision)),
            // The answer would have come on that connection: waiting out the timeout tells
            // nothing more.
            () = link::lost(&mut self.link, || Link::of(to.client), self.sent_on) => {
                Err(link_lost(key))
            }
        }
    }
}

fn link_lost(key: &str) -> Error {
    Error::write_failed(
        ErrorKind::Unavailable,
        true,
        format!(
            "the NATS connection dropped while the write to `{}` was in flight; it may or may \
             not have been stored: read the key before retrying",
            quote(key)
        ),
    )
}

/// The size of the header block NATS counts against `max_payload` (none when there are no headers).
fn header_wire_len(headers: &HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    let fields: usize = headers
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (name, v)))
        .map(|(name, value)| AsRef::<str>::as_ref(name).len() + 2 + value.as_str().len() + 2)
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

fn jetstream_code(err: &PublishError) -> Option<u64> {
    let source = std::error::Error::source(err)?;
    source
        .downcast_ref::<jetstream::Error>()
        .map(|e| e.error_code().0)
}

fn publish_error(err: PublishError, key: &str, expect_revision: Option<u64>) -> Error {
    let code = jetstream_code(&err);
    let key = quote(key);
    let wrong_last_sequence = err.kind() == PublishErrorKind::WrongLastSequence
        || (err.kind() == PublishErrorKind::Other
            && code.is_some_and(|c| WRONG_LAST_SEQUENCE_CODES.contains(&c)));
    if wrong_last_sequence {
        // A placeholder: [`Sent::settled`] reads the key's real current revision before answering.
        return Error::wrong_revision(&key, expect_revision.unwrap_or(0), 0);
    }
    match err.kind() {
        PublishErrorKind::MaxPayloadExceeded => Error::new(
            ErrorKind::ValueTooLarge,
            format!("the value for `{key}` exceeds the NATS server's max_payload"),
        ),
        PublishErrorKind::Other if code == Some(TTL_DISABLED_CODE) => Error::new(
            ErrorKind::BadRequest,
            format!(
                "the bucket does not allow per-key TTLs, so `{key}` was not written: create it with \
                 limit markers (`limit_markers` in nearkv's bucket config, `nats kv add --marker-ttl`) \
                 or put without ttl_ms"
            ),
        ),
        PublishErrorKind::Other if code == Some(INVALID_TTL_CODE) => Error::new(
            ErrorKind::BadRequest,
            format!("NATS rejected the TTL of the write to `{key}`: it must be at least 1000 ms"),
        ),
        PublishErrorKind::Other if code == Some(MESSAGE_TOO_LARGE_CODE) => Error::new(
            ErrorKind::ValueTooLarge,
            format!("the value for `{key}` exceeds the bucket's max_value_size"),
        ),
        // No responders: the server had no stream to store the message (JetStream restarting).
        PublishErrorKind::StreamNotFound => Error::write_failed(
            ErrorKind::Unavailable,
            false,
            format!(
                "NATS has no stream to store the write to `{key}` right now ({err}); it was not \
                 stored: retry when NATS is back"
            ),
        ),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Error::write_failed(
            ErrorKind::Unavailable,
            true,
            format!(
                "NATS did not acknowledge the write to `{key}` ({err}); it may or may not have been \
                 stored: read the key before retrying"
            ),
        ),
        _ => Error::new(
            ErrorKind::Internal,
            format!("NATS rejected the write to `{key}`: {err}"),
        ),
    }
}
