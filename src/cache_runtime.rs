//! The runtime the sidecar's cache runs on: the NATS connection, every bucket's actor and feed.
//!
//! The socket's connections are served by the caller's runtime (one thread by default, see
//! `socket.threads`); the cache gets a runtime of its own, of at most two threads. Measured on two
//! cores (docs/BENCHMARKS.md), this beat one work-stealing runtime for both: a connection's reads
//! stay on the thread that reads its socket instead of hopping between workers, and the NATS side
//! (acks, the feed's deliveries, mirror inserts) runs beside it rather than queued behind it.

use std::io;

use tokio::runtime::{Builder, Handle, Runtime};

/// Threads of the cache's runtime at most: NATS's connection task beside the bucket actors.
const MAX_THREADS: usize = 2;

pub(crate) struct CacheRuntime {
    handle: Handle,
    runtime: Option<Runtime>,
}

impl CacheRuntime {
    pub fn start() -> io::Result<CacheRuntime> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = Builder::new_multi_thread()
            .worker_threads(cores.min(MAX_THREADS))
            .thread_name("nearkv-cache")
            .enable_all()
            .build()?;
        Ok(CacheRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for CacheRuntime {
    /// Drops what is left on the runtime (the NATS connection's own tasks) without blocking: the
    /// sidecar stops it from async code, after the cache's tasks have ended.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
