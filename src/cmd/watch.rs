//! `watch` and `unwatch`: a stream of a bucket's changes pushed to the connection that asked.
//! The connection keeps its watches (and their limit); this module starts one.

use super::Text;

use crate::cache::Result;
use crate::cache::{self, Cache};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub bucket: Text,
    pub filter: Option<Text>,
    /// Send every live entry first, then a `synced` marker.
    pub initial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwatch {
    /// The id of the `watch` request to stop.
    pub watch: u64,
}

impl Watch {
    pub fn start(&self, cache: &Cache) -> Result<cache::Watch> {
        cache
            .bucket(&self.bucket)
            .and_then(|bucket| bucket.watch(self.filter.as_deref(), self.initial))
    }
}
