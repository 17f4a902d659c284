//! What the server shares with every connection, and how a command is counted in metrics.

use std::sync::Arc;

/// What the server shares with every connection.
pub struct Context {
    pub cache: Arc<crate::cache::Cache>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Bytes of requests held for all clients (`socket.max_buffered_bytes`).
    pub requests: super::input::RequestBudgets,
}

impl Context {
    /// The `bucket` label for a command: its bucket when configured, else "" so that clients
    /// cannot create label values at will.
    pub(super) fn bucket_label(&self, command: &crate::cmd::Command) -> &str {
        match command.bucket() {
            Some(name) => self
                .cache
                .bucket(name)
                .map_or("", crate::cache::Bucket::name),
            None => "",
        }
    }

    /// Counts a command that took from `started` until now.
    pub(super) fn count(
        &self,
        bucket: &str,
        op: crate::cmd::Op,
        started: std::time::Instant,
        outcome: crate::cmd::Outcome,
    ) {
        let (hits, misses) = outcome.lookups;
        if hits + misses > 0 {
            self.metrics.lookups(bucket, hits, misses);
        }
        self.metrics
            .request(bucket, op, started.elapsed().as_secs_f64(), outcome.error);
    }
}
