//! `put`: stores a value in NATS, optionally only at an expected revision, and answers once this
//! sidecar's mirror shows it.

use super::Text;
use bytes::Bytes;

use super::{Outcome, Reply};
use crate::cache::Cache;
use crate::protocol::WriteOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    pub bucket: Text,
    pub key: Text,
    pub value: Bytes,
    pub write: WriteOptions,
}

impl Put {
    pub fn new(
        bucket: impl Into<Text>,
        key: impl Into<Text>,
        value: Bytes,
        write: WriteOptions,
    ) -> Put {
        Put {
            bucket: bucket.into(),
            key: key.into(),
            value,
            write,
        }
    }

    pub async fn answer(self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        let stored = match cache.bucket(&self.bucket) {
            Ok(bucket) => bucket.put(&self.key, self.value, self.write).await,
            Err(err) => Err(err),
        };
        match stored {
            Ok(revision) => {
                reply.revision(revision);
                Outcome::OK
            }
            Err(err) => Outcome::failed(err, reply),
        }
    }
}
