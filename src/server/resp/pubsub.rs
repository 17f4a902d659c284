//! Keyspace notifications as Redis clients consume them, fed by the mirrors: `SUBSCRIBE` and
//! `PSUBSCRIBE` on `__keyspace@<db>__:<key>` (the message is the event: `set`, `del`,
//! `expired`), `__keyevent@<db>__:<event>` (the message is the key), and nearkv's own
//! `__nearkv@<db>__:<key>` (the message is `<event> <revision>`).
//!
//! The first subscription starts one watch per bucket; the last unsubscribe stops them. A
//! subscriber that falls too far behind is disconnected, as Redis does with its pub/sub output
//! buffer limit: it would otherwise miss notifications without knowing.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use super::encode::Out;
use super::glob;
use crate::cache::{Cache, WatchItem};
use crate::error::Error;
use crate::protocol::Operation;

/// Notifications queued for a connection; one more, and the subscriber is disconnected with
/// `slow_consumer`.
const QUEUE: usize = 16 * 1024;

/// One change of one key, as the mirror applied it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub db: usize,
    pub key: String,
    /// `set`, `del` or `expired`.
    pub event: &'static str,
    pub revision: u64,
}

/// What a connection's watches send it: a notification, or why they ended.
pub type Delivery = Result<Notification, Error>;

#[derive(Default)]
pub struct PubSub {
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
    feed: Option<(mpsc::Receiver<Delivery>, CancellationToken)>,
}

impl Drop for PubSub {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PubSub {
    pub fn is_active(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    pub fn patterns(&self) -> usize {
        self.patterns.len()
    }

    fn count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    fn stop(&mut self) {
        if let Some((_, stop)) = self.feed.take() {
            stop.cancel();
        }
    }

    pub fn clear(&mut self) {
        self.channels.clear();
        self.patterns.clear();
        self.stop();
    }

    pub fn subscribe(
        &mut self,
        cache: &Arc<Cache>,
        patterns: bool,
        names: Vec<Bytes>,
        out: &mut Out<'_>,
    ) {
        if self.feed.is_none() {
            match start(cache) {
                Ok(feed) => self.feed = Some(feed),
                Err(err) => {
                    super::reply::error(out, &err);
                    return;
                }
            }
        }
        for name in names {
            if patterns {
                self.patterns.insert(name.clone());
            } else {
                self.channels.insert(name.clone());
            }
            out.push(3);
            out.bulk(if patterns {
                b"psubscribe"
            } else {
                b"subscribe"
            });
            out.bulk(&name);
            out.int(self.count());
        }
    }

    pub fn unsubscribe(&mut self, patterns: bool, names: Vec<Bytes>, out: &mut Out<'_>) {
        let kind: &[u8] = if patterns {
            b"punsubscribe"
        } else {
            b"unsubscribe"
        };
        let names = if names.is_empty() {
            let set = if patterns {
                &self.patterns
            } else {
                &self.channels
            };
            set.iter().cloned().collect()
        } else {
            names
        };
        if names.is_empty() {
            out.push(3);
            out.bulk(kind);
            out.null();
            out.int(self.count());
        }
        for name in names {
            if patterns {
                self.patterns.remove(&name);
            } else {
                self.channels.remove(&name);
            }
            out.push(3);
            out.bulk(kind);
            out.bulk(&name);
            out.int(self.count());
        }
        if !self.is_active() {
            self.stop();
        }
    }

    /// The next delivery of the watches, once there are any.
    pub async fn next(&mut self) -> Option<Delivery> {
        match &mut self.feed {
            Some((events, _)) => events.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Writes the messages `notification` makes for this connection's subscriptions.
    pub fn deliver(&self, notification: &Notification, out: &mut Out<'_>) {
        let db = notification.db;
        let key = notification.key.as_bytes();
        let revision_message = format!("{} {}", notification.event, notification.revision);
        let sends: [(String, &[u8]); 3] = [
            (
                format!("__keyspace@{db}__:{}", notification.key),
                notification.event.as_bytes(),
            ),
            (format!("__keyevent@{db}__:{}", notification.event), key),
            (
                format!("__nearkv@{db}__:{}", notification.key),
                revision_message.as_bytes(),
            ),
        ];
        for (channel, message) in &sends {
            if self.channels.contains(channel.as_bytes()) {
                out.push(3);
                out.bulk(b"message");
                out.bulk(channel.as_bytes());
                out.bulk(message);
            }
            for pattern in &self.patterns {
                if glob::matches(pattern, channel.as_bytes()) {
                    out.push(4);
                    out.bulk(b"pmessage");
                    out.bulk(pattern);
                    out.bulk(channel.as_bytes());
                    out.bulk(message);
                }
            }
        }
    }
}

/// Starts a watch on every bucket, forwarding its changes as notifications.
fn start(cache: &Arc<Cache>) -> Result<(mpsc::Receiver<Delivery>, CancellationToken), Error> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let stop = CancellationToken::new();
    let mut watches = Vec::new();
    for (db, bucket) in cache.buckets().enumerate() {
        watches.push((db, bucket.watch(None, false).map_err(Error::from)?));
    }
    for (db, mut watch) in watches {
        let sender = sender.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = stop.cancelled() => return,
                    item = watch.next() => item,
                };
                let delivery = match item {
                    Ok(WatchItem::Event(entry)) => Ok(Notification {
                        db,
                        key: entry.key.clone(),
                        event: match entry.operation {
                            Operation::Put => "set",
                            Operation::Delete | Operation::Purge => "del",
                        },
                        revision: entry.revision,
                    }),
                    Ok(WatchItem::Expired(entry)) => Ok(Notification {
                        db,
                        key: entry.key.clone(),
                        event: "expired",
                        revision: entry.revision,
                    }),
                    Ok(WatchItem::Synced) => continue,
                    Err(err) => Err(Error::from(err)),
                };
                let ended = delivery.is_err();
                match sender.try_send(delivery) {
                    Ok(()) if !ended => {}
                    Ok(()) | Err(TrySendError::Closed(_)) => return,
                    Err(TrySendError::Full(_)) => break,
                }
            }
            // QUEUE notifications wait unread. Waiting here with the watch would pin every
            // value written meanwhile in the bucket's event ring: drop it, then say why.
            drop(watch);
            let behind = crate::cache::Error::new(
                crate::cache::ErrorKind::SlowConsumer,
                format!(
                    "the subscriber left {QUEUE} notifications unread and was disconnected; \
                     read faster, then subscribe again"
                ),
            );
            let _ = sender.send(Err(Error::from(behind))).await;
        });
    }
    Ok((receiver, stop))
}
