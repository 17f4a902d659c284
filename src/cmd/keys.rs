//! `keys`: the live keys of a bucket's mirror that match a filter, sorted.

use super::Text;

use super::{Outcome, Reply};
use crate::cache::Cache;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub bucket: Text,
    pub filter: Option<Text>,
    pub allow_stale: bool,
}

impl Keys {
    pub fn new(bucket: &str, filter: Option<&str>, allow_stale: bool) -> Keys {
        Keys {
            bucket: bucket.into(),
            filter: filter.map(Text::from),
            allow_stale,
        }
    }

    pub async fn answer(&self, cache: &Cache, reply: &mut impl Reply) -> Outcome {
        let encode = reply.keys_encoder();
        let listed = match cache.bucket(&self.bucket) {
            Ok(bucket) => {
                bucket
                    .keys_with(self.filter.as_deref(), self.allow_stale, encode)
                    .await
            }
            Err(err) => Err(err),
        };
        match listed {
            Ok(encoded) => {
                reply.encoded(encoded);
                Outcome::OK
            }
            Err(err) => Outcome::failed(err, reply),
        }
    }
}
