//! One RESP connection's state (protocol version, selected database, name, subscriptions) and
//! how a key argument finds its bucket. Which handler runs each command is in `dispatch.rs`.

use std::sync::Arc;

use bytes::Bytes;

use super::encode::Version;
use super::pubsub::PubSub;
use crate::cache::Bucket;
use crate::error::{Error, ErrorCode};
use crate::server::context::Context;

/// The Redis version whose commands and replies nearkv follows (`HELLO`, `INFO`): clients
/// decide what to send from it.
pub const REDIS_VERSION: &str = "7.2.0";

/// What a handler answers when a command cannot run: its error reply.
pub type Handled = Result<(), Error>;

pub struct Session {
    pub ctx: Arc<Context>,
    pub version: Version,
    /// Database N is the N-th configured bucket.
    pub db: usize,
    pub name: Option<Bytes>,
    pub id: u64,
    pub pubsub: PubSub,
    /// `QUIT` was received: answer it, then close.
    pub quit: bool,
}

pub fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadRequest, message)
}

pub fn arity(name: &str) -> Error {
    bad(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

pub fn text(arg: &Bytes) -> Result<&str, Error> {
    std::str::from_utf8(arg).map_err(|_| {
        Error::new(
            ErrorCode::InvalidKey,
            "a key or name must be UTF-8 text: NATS KV keys are letters, digits and - / _ = .",
        )
    })
}

pub fn integer(arg: &Bytes) -> Result<i64, Error> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("value is not an integer or out of range"))
}

pub fn is(arg: &Bytes, word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

impl Session {
    pub fn new(ctx: Arc<Context>, id: u64) -> Session {
        Session {
            ctx,
            version: Version::Resp2,
            db: 0,
            name: None,
            id,
            pubsub: PubSub::default(),
            quit: false,
        }
    }

    /// The bucket of the selected database.
    pub fn selected(&self) -> Result<&Bucket, Error> {
        self.ctx.cache.buckets().nth(self.db).ok_or_else(|| {
            bad("no bucket is configured: add one to the config's [[buckets]]".to_string())
        })
    }

    /// The bucket and key a key argument names: `bucket:key` in any configured bucket, or a key
    /// of the selected database. NATS KV keys and bucket names cannot hold `:`, so this is never
    /// ambiguous.
    pub fn locate<'k>(&self, arg: &'k Bytes) -> Result<(&Bucket, &'k str), Error> {
        let name = text(arg)?;
        match name.split_once(':') {
            // A sidecar mirrors a few buckets: comparing their names costs less than hashing.
            Some((bucket, key)) => match self.ctx.cache.buckets().find(|b| b.name() == bucket) {
                Some(bucket) => Ok((bucket, key)),
                None => Err(crate::cache::Error::unknown_bucket(bucket).into()),
            },
            None => Ok((self.selected()?, name)),
        }
    }

    /// `RESET`: back to a new connection's state.
    pub fn reset(&mut self) {
        self.version = Version::Resp2;
        self.db = 0;
        self.name = None;
        self.pubsub.clear();
    }

    pub fn client_line(&self) -> String {
        format!(
            "id={} name={} db={} resp={} sub={} psub={}",
            self.id,
            String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
            self.db,
            if self.version == Version::Resp3 { 3 } else { 2 },
            self.pubsub.channels(),
            self.pubsub.patterns()
        )
    }
}
