//! The command layer: every operation, parsed once into a command that owns its data, with one
//! module per operation holding what it does against the cache and what it answers.
//!
//! A wire face (protocol v1 in `server::v1`) only translates: bytes into a [`Command`], and the
//! answers a command gives through [`Reply`] into bytes. How a command runs is decided by its type
//! ([`Command::route`]); what it is counted as, by its [`Op`].
//!
//! To add an operation: write its module here (the command, `from`, what it answers), add it
//! to [`commands!`]'s list below, and give it a wire shape in `protocol::request`.

mod delete;
mod get;
mod keys;
mod mget;
mod ping;
mod put;
mod reply;
mod status;
mod text;
mod watch;

pub use delete::{Delete, Purge};
pub use get::Get;
pub use keys::Keys;
pub use mget::Mget;
pub use ping::Ping;
pub use put::Put;
pub use reply::{append, KeysEncoder, Outcome, Reply};
pub use status::Status;
pub use text::Text;
pub use watch::{Unwatch, Watch};

use bytes::Bytes;

use crate::cache::Cache;
use crate::protocol::Request;

/// How a connection runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Answered now from memory, by the task that read it: no spawn on the hot path.
    Now,
    /// May wait on NATS or the mirror: runs in its own task so it holds up nothing behind it.
    Waits,
    /// Starts or stops one of the connection's watches.
    Watch,
}

/// Declares [`Command`] and [`Op`] from one list, so that an operation's metric label, its
/// variant and its module cannot drift apart.
macro_rules! commands {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// One request, parsed and owning its data: it can move into a task as it is.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Command {
            $($variant($variant),)+
        }

        /// What a command is counted as in metrics (`op` label).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op {
            $($variant,)+
            /// A frame that did not parse into a command.
            Invalid,
        }

        impl Op {
            /// Every op, in the order of [`Op::index`].
            pub const ALL: &'static [Op] = &[$(Op::$variant,)+ Op::Invalid];

            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$variant => $name,)+
                    Op::Invalid => "invalid",
                }
            }

            /// The op's position in [`Op::ALL`], for metrics kept in arrays.
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl Command {
            pub fn op(&self) -> Op {
                match self {
                    $(Command::$variant(_) => Op::$variant,)+
                }
            }
        }
    };
}

commands! {
    Ping => "ping",
    Get => "get",
    Mget => "mget",
    Put => "put",
    Delete => "delete",
    Purge => "purge",
    Keys => "keys",
    Status => "status",
    Watch => "watch",
    Unwatch => "unwatch",
}

impl Command {
    /// The command a protocol v1 request asks for. `frame` is the frame the request was parsed
    /// from: a put's value is kept as a slice of it, not copied.
    pub fn from_request(request: Request<'_>, frame: &Bytes) -> Command {
        // Keys, names and values become slices of the frame: owned, yet not copied.
        let text = |part: &str| Text::shared(frame, part);
        match request {
            Request::Ping => Command::Ping(Ping),
            Request::Get { bucket, key, read } => {
                Command::Get(Get::new(text(bucket), text(key), read))
            }
            Request::Mget { bucket, keys, read } => Command::Mget(Mget {
                bucket: text(bucket),
                keys: keys.iter().map(|key| text(key)).collect(),
                read,
            }),
            Request::Put {
                bucket,
                key,
                value,
                write,
            } => Command::Put(Put::new(
                text(bucket),
                text(key),
                text::share(frame, value),
                write,
            )),
            Request::Delete { bucket, key, write } => {
                Command::Delete(Delete::new(text(bucket), text(key), write))
            }
            Request::Purge { bucket, key, write } => {
                Command::Purge(Purge::new(text(bucket), text(key), write))
            }
            Request::Keys {
                bucket,
                filter,
                allow_stale,
            } => Command::Keys(Keys {
                bucket: text(bucket),
                filter: filter.map(text),
                allow_stale,
            }),
            Request::Status { bucket } => Command::Status(Status {
                bucket: bucket.map(text),
            }),
            Request::Watch {
                bucket,
                filter,
                initial,
            } => Command::Watch(Watch {
                bucket: text(bucket),
                filter: filter.map(text),
                initial,
            }),
            Request::Unwatch { watch } => Command::Unwatch(Unwatch { watch }),
        }
    }

    pub fn route(&self) -> Route {
        match self {
            Command::Get(get) if !get.is_immediate() => Route::Waits,
            Command::Mget(mget) if !mget.is_immediate() => Route::Waits,
            // A listing may walk a large mirror on the blocking pool.
            Command::Put(_) | Command::Delete(_) | Command::Purge(_) | Command::Keys(_) => {
                Route::Waits
            }
            Command::Watch(_) | Command::Unwatch(_) => Route::Watch,
            _ => Route::Now,
        }
    }

    /// The bucket the command names, if any.
    pub fn bucket(&self) -> Option<&str> {
        match self {
            Command::Get(c) => Some(c.bucket.as_str()),
            Command::Mget(c) => Some(c.bucket.as_str()),
            Command::Put(c) => Some(c.bucket.as_str()),
            Command::Delete(c) => Some(c.bucket.as_str()),
            Command::Purge(c) => Some(c.bucket.as_str()),
            Command::Keys(c) => Some(c.bucket.as_str()),
            Command::Status(c) => c.bucket.as_deref(),
            Command::Watch(c) => Some(c.bucket.as_str()),
            Command::Ping(_) | Command::Unwatch(_) => None,
        }
    }

    /// Answers a command routed [`Route::Now`] from memory.
    pub fn answer_now(&self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        match self {
            Command::Ping(c) => c.answer(reply),
            Command::Get(c) => c.answer_now(cache, reply),
            Command::Mget(c) => c.answer_now(cache, reply),
            Command::Status(c) => c.answer(cache, reply),
            Command::Keys(_)
            | Command::Put(_)
            | Command::Delete(_)
            | Command::Purge(_)
            | Command::Watch(_)
            | Command::Unwatch(_) => reply::misrouted(self.op().name(), reply),
        }
    }

    /// For a read that waits (a revision, a strong read): waits until the mirror can answer it,
    /// after which [`Command::answer_now`] answers it at once. `None` for any other command.
    pub async fn wait_to_read(&self, cache: &Cache) -> Option<Result<(), crate::cache::Error>> {
        match self {
            Command::Get(c) => Some(c.wait(cache).await.map(|_| ())),
            Command::Mget(c) => Some(c.wait(cache).await.map(|_| ())),
            _ => None,
        }
    }

    /// The most value bytes a read's answer could hold (0 for any other command), judged by the
    /// largest value its bucket's mirror ever held; an `mget` beyond `MAX_MGET_BYTES` is refused.
    pub fn answer_bytes_at_most(&self, cache: &Cache) -> usize {
        let (bucket, keys) = match self {
            Command::Get(c) => (&c.bucket, 1),
            Command::Mget(c) => (&c.bucket, c.keys.len()),
            _ => return 0,
        };
        cache.bucket(bucket).map_or(0, |bucket| {
            bucket
                .mirror()
                .values_at_most(keys)
                .min(crate::cache::MAX_MGET_BYTES)
        })
    }

    /// Answers a command routed [`Route::Waits`]; also answers the others.
    pub async fn answer(self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        match self {
            Command::Get(c) => c.answer(cache, reply).await,
            Command::Mget(c) => c.answer(cache, reply).await,
            Command::Put(c) => c.answer(cache, reply).await,
            Command::Delete(c) => c.answer(cache, reply).await,
            Command::Purge(c) => c.answer(cache, reply).await,
            Command::Keys(c) => c.answer(cache, reply).await,
            other => other.answer_now(cache, reply),
        }
    }
}
