//! `delete` and `purge`: remove a key in NATS (a purge also drops its history), optionally only
//! at an expected revision, and answer once this sidecar's mirror shows it.

use super::Text;

use super::{Outcome, Reply};
use crate::cache::Cache;
use crate::cache::Result;
use crate::protocol::WriteOptions;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub bucket: Text,
    pub key: Text,
    pub write: WriteOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub bucket: Text,
    pub key: Text,
    pub write: WriteOptions,
}

impl Delete {
    pub fn new(bucket: impl Into<Text>, key: impl Into<Text>, write: WriteOptions) -> Delete {
        Delete {
            bucket: bucket.into(),
            key: key.into(),
            write,
        }
    }

    pub async fn answer(self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        let removed = match cache.bucket(&self.bucket) {
            Ok(bucket) => bucket.delete(&self.key, self.write).await,
            Err(err) => Err(err),
        };
        answer_revision(removed, reply)
    }
}

impl Purge {
    pub fn new(bucket: impl Into<Text>, key: impl Into<Text>, write: WriteOptions) -> Purge {
        Purge {
            bucket: bucket.into(),
            key: key.into(),
            write,
        }
    }

    pub async fn answer(self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        let removed = match cache.bucket(&self.bucket) {
            Ok(bucket) => bucket.purge(&self.key, self.write).await,
            Err(err) => Err(err),
        };
        answer_revision(removed, reply)
    }
}

fn answer_revision(removed: Result<u64>, reply: &mut impl Reply) -> Outcome {
    match removed {
        Ok(revision) => {
            reply.revision(revision);
            Outcome::OK
        }
        Err(err) => Outcome::failed(err, reply),
    }
}
