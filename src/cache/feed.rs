//! A bucket's change feed: an ordered push consumer on the bucket's stream, decoded into updates.
//!
//! async-nats' `kv::Watch` drops the message headers, and the mirror needs one of them: a put's
//! per-key TTL (`Nats-TTL`), without which it could not expire a value that another client wrote
//! with a TTL. So the feed reads the stream itself, with the consumer settings of `kv::Watch` and
//! the same operation headers and limit-marker reasons, and keeps the TTL.
//!
//! It runs the ordered-consumer protocol itself, on a plain subscription, as async-nats'
//! `push::Ordered` does: an ephemeral consumer with flow control and idle heartbeats, recreated
//! from the next stream sequence after a gap in the consumer's sequence, a heartbeat naming a
//! sequence the feed has not seen, or heartbeats that stop. `push::Ordered` wraps each message
//! in a `jetstream::Message` (a clone of the JetStream context: a `Client`, a `String` and a
//! channel sender) and parses its whole `$JS.ACK` subject, timestamp as a date included: about a
//! tenth of the sidecar's CPU in a cold start of a million keys.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, AckPolicy, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, Sleep};

use crate::protocol::Operation;

/// The consumer's idle heartbeat, as async-nats' ordered consumers use.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(5);
/// A window of silence (no message, no heartbeat) after which the consumer is taken as lost: one
/// and a half heartbeats, so that at least one was missed. The windows follow one another, so a
/// consumer that goes silent is noticed 7.5 to 15 s later.
const HEARTBEATS_MISSED_AFTER: Duration = Duration::from_millis(7_500);
/// How long a recreation waits for the old consumer's deletion.
const DELETE_WITHIN: Duration = Duration::from_secs(1);

/// One message of the bucket's stream, as the mirror applies it.
#[derive(Debug, Clone)]
pub struct Update {
    pub key: String,
    pub value: Bytes,
    pub revision: u64,
    /// When NATS stored the message, in Unix nanoseconds.
    pub created: i64,
    pub operation: Operation,
    /// The message's own TTL (`Nats-TTL`), if it has one.
    pub ttl: Option<Duration>,
    /// Messages the server still has to deliver after this one.
    pub pending: u64,
    /// The first message of a consumer the feed recreated by itself (after a gap, a heartbeat
    /// naming another sequence, or missed heartbeats): the stream it reads may not be the one the
    /// feed began on.
    pub resumed: bool,
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Each key's latest message, then every later change: a snapshot.
    Snapshot,
    /// Every message from this revision on.
    From(u64),
}

pub struct Feed {
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    /// The consumer's settings but its deliver subject and start.
    config: push::Config,
    start: Start,
    consumer: String,
    messages: async_nats::Subscriber,
    prefix: String,
    /// The server had nothing (more) to deliver when the consumer was created or at some message.
    caught_up: bool,
    /// Messages delivered so far, over every consumer.
    delivered: u64,
    /// The last message's sequences: in the current consumer, and in the stream.
    consumer_sequence: u64,
    stream_sequence: u64,
    /// The consumer must be replaced before anything more is read.
    broken: bool,
    /// The replacement under way. Kept here, not in `next`'s future: the actor polls `next` in a
    /// `select!` that drops it whenever another branch fires, and a recreation restarted each
    /// time might never finish.
    recreation: Option<Recreation>,
    /// When the consumer counts as lost unless something arrived meanwhile (`heard`); moved on
    /// only when it passes: resetting a timer per message would cost more than the message.
    silence: Pin<Box<Sleep>>,
    heard: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A consumer's subscription, its name, and whether it had nothing to deliver when created.
type Subscribed = (async_nats::Subscriber, String, bool);
type Recreation = Pin<Box<dyn Future<Output = Result<Subscribed, FeedError>> + Send>>;

/// Why a feed could not start or deliver; the actor recovers from each.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot create the bucket's consumer: {0}")]
    CreateConsumer(#[source] BoxError),
    #[error("cannot subscribe to the bucket's consumer: {0}")]
    Subscribe(#[source] BoxError),
    #[error("no message or heartbeat from the bucket's consumer for {0:?}; recreating it")]
    MissedHeartbeats(Duration),
    #[error("a message without valid metadata: {0}")]
    Metadata(#[source] BoxError),
    #[error("a message on `{0}`, outside the bucket")]
    OutsideBucket(String),
    #[error("cannot read the bucket's stream: {0}")]
    Read(String),
}

impl Feed {
    pub async fn start(
        client: &async_nats::Client,
        store: &kv::Store,
        filter: &str,
        start: Start,
    ) -> Result<Feed, FeedError> {
        let config = push::Config {
            description: Some("nearkv mirror".to_string()),
            filter_subject: format!("{}{}", store.prefix, filter),
            replay_policy: ReplayPolicy::Instant,
            ack_policy: AckPolicy::None,
            max_deliver: 1,
            flow_control: true,
            idle_heartbeat: IDLE_HEARTBEAT,
            inactive_threshold: Duration::from_secs(30),
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        };
        let (messages, consumer, caught_up) =
            subscribe(client, &store.stream, &config, deliver_policy(start)).await?;
        Ok(Feed {
            client: client.clone(),
            stream: store.stream.clone(),
            config,
            start,
            consumer,
            messages,
            prefix: store.prefix.clone(),
            caught_up,
            delivered: 0,
            consumer_sequence: 0,
            stream_sequence: 0,
            broken: false,
            recreation: None,
            silence: Box::pin(tokio::time::sleep(HEARTBEATS_MISSED_AFTER)),
            heard: false,
        })
    }

    /// Whether the feed has delivered everything the stream held when it last said so.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// The consumer broke and is being recreated: nothing arrives until it is.
    pub fn is_recreating(&self) -> bool {
        self.broken
    }

    /// The next update; `None` when the subscription ended (the client closed), `Some(Err)` on a
    /// transient error, after which the feed goes on.
    pub async fn next(&mut self) -> Option<Result<Update, FeedError>> {
        loop {
            if self.broken {
                let recreation = match self.recreation.take() {
                    Some(recreation) => recreation,
                    None => self.replacement(),
                };
                let recreation = self.recreation.insert(recreation);
                let recreated = recreation.as_mut().await;
                self.recreation = None;
                match recreated {
                    Ok(subscribed) => self.resume_on(subscribed),
                    Err(err) => return Some(Err(err)),
                }
            }
            let message = tokio::select! {
                biased;
                message = self.messages.next() => message?,
                () = &mut self.silence => {
                    self.hear_again();
                    if std::mem::take(&mut self.heard) {
                        continue;
                    }
                    self.broken = true;
                    return Some(Err(FeedError::MissedHeartbeats(HEARTBEATS_MISSED_AFTER)));
                }
            };
            self.heard = true;
            match message.status {
                None => {}
                Some(StatusCode::IDLE_HEARTBEAT) => {
                    self.control(&message);
                    continue;
                }
                Some(_) => continue,
            }
            let Some(info) = message.reply.as_deref().and_then(AckMetadata::parse) else {
                return Some(Err(FeedError::Metadata(
                    format!("reply subject {:?} is not a JetStream ack", message.reply).into(),
                )));
            };
            if info.consumer_sequence != self.consumer_sequence + 1 {
                tracing::debug!(
                    expected = self.consumer_sequence + 1,
                    got = info.consumer_sequence,
                    "a gap in the consumer's sequence; recreating it"
                );
                self.broken = true;
                continue;
            }
            let Some(key) = message.subject.strip_prefix(self.prefix.as_str()) else {
                return Some(Err(FeedError::OutsideBucket(message.subject.to_string())));
            };
            if info.pending == 0 {
                self.caught_up = true;
            }
            let resumed = self.delivered > 0 && info.consumer_sequence == 1;
            self.delivered += 1;
            self.consumer_sequence = info.consumer_sequence;
            self.stream_sequence = info.stream_sequence;
            let mut update = Update::decode(
                key,
                message.headers.as_ref(),
                message.payload,
                info.stream_sequence,
                info.published,
            );
            update.pending = info.pending;
            update.resumed = resumed;
            return Some(Ok(update));
        }
    }

    /// A status-100 message: a flow control request (answered, or the server stops delivering),
    /// or an idle heartbeat, which names the last consumer sequence the server sent and may say
    /// that a flow control answer went missing.
    fn control(&mut self, message: &async_nats::Message) {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let answer = match &message.reply {
            Some(reply) => Some(reply.to_string()),
            None => header("Nats-Consumer-Stalled"),
        };
        if let Some(answer) = answer {
            // Sent apart, as async-nats' ordered consumer does, so that no wait for the
            // connection's queue holds up the feed. Lost if the connection drops; the consumer is
            // then recreated anyway.
            let client = self.client.clone();
            tokio::spawn(async move { client.publish(answer, Bytes::new()).await });
        }
        let last = header("Nats-Last-Consumer").and_then(|v| v.parse::<u64>().ok());
        if message.reply.is_none() && last.is_some_and(|last| last != self.consumer_sequence) {
            tracing::debug!(
                server = last,
                feed = self.consumer_sequence,
                "the consumer's heartbeat names a sequence the feed has not seen; recreating it"
            );
            self.broken = true;
        }
    }

    /// A new consumer that starts after the last message delivered (or where the feed started,
    /// if none was), on a new subscription; the old consumer is deleted first.
    fn replacement(&self) -> Recreation {
        let (client, stream, config) = (
            self.client.clone(),
            self.stream.clone(),
            self.config.clone(),
        );
        let old = self.consumer.clone();
        let start = if self.delivered == 0 {
            deliver_policy(self.start)
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: self.stream_sequence + 1,
            }
        };
        Box::pin(async move {
            // Best effort, and not waited for long: the consumer is often gone with its server.
            let _ = tokio::time::timeout(DELETE_WITHIN, stream.delete_consumer(&old)).await;
            subscribe(&client, &stream, &config, start).await
        })
    }

    fn resume_on(&mut self, (messages, consumer, caught_up): Subscribed) {
        self.messages = messages;
        self.consumer = consumer;
        self.caught_up |= caught_up;
        self.consumer_sequence = 0;
        self.broken = false;
        self.hear_again();
        self.heard = false;
    }

    fn hear_again(&mut self) {
        let until = Instant::now() + HEARTBEATS_MISSED_AFTER;
        self.silence.as_mut().reset(until);
    }
}

fn deliver_policy(start: Start) -> DeliverPolicy {
    match start {
        Start::Snapshot => DeliverPolicy::LastPerSubject,
        Start::From(revision) => DeliverPolicy::ByStartSequence {
            start_sequence: revision,
        },
    }
}

/// Subscribes to a new inbox, then creates an ephemeral consumer delivering to it (in that order,
/// so that no message is sent before the subscription exists). Returns the subscription, the
/// consumer's name, and whether it had nothing to deliver.
async fn subscribe(
    client: &async_nats::Client,
    stream: &jetstream::stream::Stream,
    config: &push::Config,
    deliver_policy: DeliverPolicy,
) -> Result<Subscribed, FeedError> {
    let inbox = client.new_inbox();
    let messages = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| FeedError::Subscribe(e.into()))?;
    let consumer = stream
        .create_consumer(push::Config {
            deliver_subject: inbox,
            deliver_policy,
            ..config.clone()
        })
        .await
        .map_err(|e| FeedError::CreateConsumer(e.into()))?;
    let info = consumer.cached_info();
    Ok((messages, info.name.clone(), info.num_pending == 0))
}

impl Update {
    /// An update from a message's parts, as any NATS KV client reads them: the operation from
    /// `KV-Operation` (or a limit marker's reason), a put's own TTL from `Nats-TTL`.
    fn decode(
        key: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        revision: u64,
        created: i64,
    ) -> Update {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let operation = match (header("KV-Operation"), header("Nats-Marker-Reason")) {
            (Some("DEL"), _) | (None, Some("Remove")) => Operation::Delete,
            (Some("PURGE"), _) | (None, Some(_)) => Operation::Purge,
            _ => Operation::Put,
        };
        let ttl = match operation {
            Operation::Put => header("Nats-TTL").and_then(parse_ttl),
            Operation::Delete | Operation::Purge => None,
        };
        Update {
            key: key.to_string(),
            // Not copied here: the mirror copies the value into its slot (and a watch event gets
            // its own copy), so no update pins the connection's larger read buffer for long.
            value: payload,
            revision,
            created,
            operation,
            ttl,
            pending: 0,
            resumed: false,
        }
    }
}

/// What the feed needs of a delivered message's `$JS.ACK` reply subject. async-nats'
/// `Message::info` parses it too, but spends a sixth of a cold start's samples doing so (an i128
/// timestamp, a date type, every token checked); this reads the four numbers and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckMetadata {
    stream_sequence: u64,
    consumer_sequence: u64,
    /// When NATS stored the message, in Unix nanoseconds.
    published: i64,
    pending: u64,
}

impl AckMetadata {
    /// Both forms of ADR-15: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
    /// seq>.<timestamp>.<pending>`, and the one with a domain and account hash before the stream
    /// (and possibly more tokens after `pending`).
    fn parse(reply: &str) -> Option<AckMetadata> {
        let mut tokens = reply.strip_prefix("$JS.ACK.")?.split('.');
        let mut numbers = [""; 11];
        let mut count = 0;
        for token in tokens.by_ref().take(numbers.len()) {
            numbers[count] = token;
            count += 1;
        }
        let first = match count {
            7 => 2,
            9.. => 4,
            _ => return None,
        };
        let number = |token: &str| -> Option<u64> {
            if token.is_empty() || token.len() > 19 {
                return None;
            }
            token.bytes().try_fold(0u64, |n, b| {
                b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
            })
        };
        Some(AckMetadata {
            stream_sequence: number(numbers[first + 1])?,
            consumer_sequence: number(numbers[first + 2])?,
            published: i64::try_from(number(numbers[first + 3])?).ok()?,
            pending: number(numbers[first + 4])?,
        })
    }
}

/// Messages one catch-up request may return.
const CATCH_UP_BATCH: usize = 256;

/// The bucket's messages at and after `revision` among the keys `filter` matches, in order, read
/// without a consumer: how the mirror keeps up while a new consumer cannot be created yet
/// (creating one needs the cluster's meta leader; reading needs only the stream). Empty when there
/// is none.
///
/// When the stream allows direct gets, one batched direct get returns up to `CATCH_UP_BATCH`
/// messages: any replica answers it, and one that lags returns fewer messages, never wrong ones
/// (a replica holds a prefix of the stream). Otherwise the stream leader returns one message per
/// request.
pub async fn read_from(
    client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
    revision: u64,
) -> Result<Vec<Update>, FeedError> {
    let subject = format!("{}{}", store.prefix, filter);
    if store.stream.cached_info().config.allow_direct {
        return read_batch(client, store, &subject, revision).await;
    }
    match store
        .stream
        .get_first_raw_message_by_subject(&subject, revision)
        .await
    {
        Ok(message) => Ok(vec![stored_update(store, message)?]),
        Err(err) if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(Vec::new())
        }
        Err(err) => Err(FeedError::Read(err.to_string())),
    }
}

/// A batched direct get (ADR-31): the messages arrive on the reply inbox one by one, then an
/// end-of-batch status (204), or a 404 when there is no message at all.
async fn read_batch(
    client: &async_nats::Client,
    store: &kv::Store,
    subject: &str,
    revision: u64,
) -> Result<Vec<Update>, FeedError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| FeedError::Subscribe(e.into()))?;
    let request = serde_json::json!({
        "seq": revision,
        "next_by_subj": subject,
        "batch": CATCH_UP_BATCH,
    });
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{}", store.stream_name),
            inbox,
            request.to_string().into(),
        )
        .await
        .map_err(|e| FeedError::Read(e.to_string()))?;
    let mut updates = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.status.map(|status| status.as_u16()) {
            None => {
                // A server without batched direct gets answers with one message and no count.
                let batched = reply
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get("Nats-Num-Pending").is_some());
                let message = jetstream::message::StreamMessage::try_from(reply)
                    .map_err(|e| FeedError::Metadata(e.into()))?;
                updates.push(stored_update(store, message)?);
                if !batched || updates.len() >= CATCH_UP_BATCH {
                    break;
                }
            }
            Some(204 | 404) => break,
            Some(status) => {
                return Err(FeedError::Read(format!(
                    "a direct get answered {status} {}",
                    reply.description.as_deref().unwrap_or_default()
                )))
            }
        }
    }
    Ok(updates)
}

/// A message read from the stream, as the feed would have delivered it.
fn stored_update(
    store: &kv::Store,
    message: jetstream::message::StreamMessage,
) -> Result<Update, FeedError> {
    let Some(key) = message.subject.strip_prefix(store.prefix.as_str()) else {
        return Err(FeedError::OutsideBucket(message.subject.to_string()));
    };
    let mut update = Update::decode(
        key,
        Some(&message.headers),
        message.payload.clone(),
        message.sequence,
        message
            .time
            .unix_timestamp_nanos()
            .clamp(0, i64::MAX as i128) as i64,
    );
    // Unknown: the catch-up learns from the stream's info whether the mirror is current.
    update.pending = 1;
    Ok(update)
}

/// Reads a `Nats-TTL` header: whole seconds ("30"), a Go duration ("1500ms", "1h30m"), or "never".
pub fn parse_ttl(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "never" {
        return None;
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_nanos((number * nanos_per_unit) as u64);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_forms_are_read_and_others_refused() {
        let expected = AckMetadata {
            stream_sequence: 1_000_042,
            consumer_sequence: 7,
            published: 1_764_230_400_123_456_789,
            pending: 0,
        };
        assert_eq!(
            AckMetadata::parse("$JS.ACK.KV_b.cons.1.1000042.7.1764230400123456789.0"),
            Some(expected)
        );
        assert_eq!(
            AckMetadata::parse("$JS.ACK.hub.ACCHASH.KV_b.cons.1.1000042.7.1764230400123456789.0.x"),
            Some(expected)
        );
        assert_eq!(
            AckMetadata::parse("$JS.ACK.hub.ACCHASH.KV_b.cons.1.1000042.7.1764230400123456789.0"),
            Some(expected)
        );
        for bad in [
            "_INBOX.abc",
            "$JS.ACK.KV_b.cons.1.1000042.7.1764230400123456789",
            "$JS.ACK.KV_b.cons.1.x.7.1764230400123456789.0",
            "$JS.ACK.KV_b.cons.1.1000042.7..0",
            "$JS.ACK.KV_b.cons.1.1000042.7.99999999999999999999.0",
            "$JS.ACK.KV_b.cons.1.1000042.7.-5.0",
        ] {
            assert_eq!(AckMetadata::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ttl_headers_in_every_form_the_server_accepts() {
        assert_eq!(parse_ttl("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_ttl("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_ttl("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_ttl("never"), None);
        assert_eq!(parse_ttl("soon"), None);
        assert_eq!(parse_ttl("5x"), None);
    }
}
