//! The thread the sidecar's cache runs on: the NATS connection, every bucket's actor and feed.
//!
//! The socket's connections are served by the caller's runtime (one thread by default, see
//! `socket.threads`); the cache gets a single-threaded runtime of its own. Measured on two cores
//! (docs/BENCHMARKS.md), this beat one work-stealing runtime for both: a connection's reads stay on
//! the thread that reads its socket instead of hopping between workers, and the NATS side (acks,
//! the watcher's deliveries, mirror inserts) runs beside it rather than queued behind it.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub(crate) struct CacheThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl CacheThread {
    pub fn start() -> io::Result<CacheThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stop_asked) = oneshot::channel::<()>();
        let (stopped_tx, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("nearkv-cache".to_string())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stop_asked.await;
                });
                // Whatever is left (the NATS connection's own tasks) is dropped with the runtime.
                drop(runtime);
                let _ = stopped_tx.send(());
            })?;
        Ok(CacheThread {
            handle,
            stop: Some(stop),
            stopped: Some(stopped),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the runtime, dropping the tasks still on it, and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for CacheThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
