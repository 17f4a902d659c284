//! The Rust client: one Unix-socket connection, shared by any number of concurrent calls, and
//! reopened by itself when it is lost.
//!
//! Requests are pipelined: each call gets a fresh id, its frame is queued for a writer task, and
//! a reader task routes each response to the waiting call by id, so calls never wait for each
//! other. Watches are `Stream`s fed by the same reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::protocol::frame::FrameReader;
use crate::protocol::request::{encode, Request, WriteOptions};
use crate::protocol::response::{
    peek_id_ok, EntriesBody, EntryBody, Head, KeysBody, RevisionBody, StatusBody, WatchPush,
};
use crate::protocol::{BucketStatus, Entry, Freshness, ReadOptions};

/// Responses larger than this are refused (a server answer is never near it in practice).
const MAX_RESPONSE: u32 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error(transparent)]
    Server(#[from] Error),
    #[error("cannot connect to nearkv at {path}: {source} (is `nearkv serve` running? set --socket or NEARKV_SOCKET)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the connection to nearkv was closed")]
    Closed,
    #[error("unexpected response from nearkv: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The documented code: the server's error code, or for failures on this side
    /// `cannot_connect` (no sidecar answers at the socket), `connection_lost` (the connection
    /// closed before the answer) and `protocol` (an answer this client cannot read).
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Server(err) => err.code.as_str(),
            ClientError::Connect { .. } => "cannot_connect",
            ClientError::Closed => "connection_lost",
            ClientError::Protocol(_) => "protocol",
        }
    }

    /// What went wrong, without the code.
    pub fn message(&self) -> String {
        match self {
            ClientError::Server(err) => err.message.clone(),
            other => other.to_string(),
        }
    }

    /// The server's error, if that is what this is.
    pub fn server_error(&self) -> Option<&Error> {
        match self {
            ClientError::Server(err) => Some(err),
            _ => None,
        }
    }
}

enum Waiter {
    Call(oneshot::Sender<Bytes>),
    Watch(mpsc::UnboundedSender<Bytes>),
}

/// How a [`Client`] gets its connection back after losing it (the sidecar restarted, or closed
/// an idle connection).
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Session attempts after a loss before a call fails with `Connect`; 0: never reconnect.
    pub reconnect_attempts: u32,
    /// The first wait between attempts; it doubles up to `reconnect_backoff_max`, with jitter.
    pub reconnect_backoff: Duration,
    pub reconnect_backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            reconnect_attempts: 20,
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }
}

/// One socket connection (a session; the client opens another when it is lost): its pending calls and watches, and the queue to its writer task.
struct Session {
    waiters: Mutex<HashMap<u64, Waiter>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    closed: AtomicBool,
    /// The error the server sent with id 0 before closing the connection (`forbidden`,
    /// `too_many_connections`, `idle_timeout`, `frame_too_large`): why calls on it failed.
    refusal: Mutex<Option<Error>>,
}

impl Session {
    async fn open(path: &Path) -> Result<Arc<Session>, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read_half, mut write_half) = stream.into_split();
        let (out, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let connection = Arc::new(Session {
            waiters: Mutex::new(HashMap::new()),
            out,
            closed: AtomicBool::new(false),
            refusal: Mutex::new(None),
        });
        // A failed write ends the writer only: the reader still reads what the server sent
        // before closing (its reason, with id 0) and then closes the connection.
        tokio::spawn(async move {
            while let Some(mut buf) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(&more);
                }
                if write_half.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
        let reader = Arc::downgrade(&connection);
        tokio::spawn(async move {
            let mut frames = FrameReader::new(read_half, MAX_RESPONSE);
            while let Ok(Some(frame)) = frames.next_frame().await {
                let Some(connection) = reader.upgrade() else {
                    return;
                };
                connection.route(frame);
            }
            if let Some(connection) = reader.upgrade() {
                connection.close();
            }
        });
        Ok(connection)
    }

    /// Hands a response or watch message to whoever waits for its id.
    fn route(&self, frame: Bytes) {
        let id = match peek_id_ok(&frame) {
            Some((id, _)) => id,
            None => match rmp_serde::from_slice::<IdOnly>(&frame) {
                Ok(head) => head.id,
                Err(_) => return,
            },
        };
        if id == 0 {
            if let Ok(Head {
                error: Some(error), ..
            }) = rmp_serde::from_slice::<Head>(&frame)
            {
                if let Ok(mut refusal) = self.refusal.lock() {
                    *refusal = Some(error.into());
                }
            }
            return;
        }
        let Ok(mut waiters) = self.waiters.lock() else {
            return;
        };
        match waiters.get(&id) {
            Some(Waiter::Call(_)) => {
                if let Some(Waiter::Call(tx)) = waiters.remove(&id) {
                    let _ = tx.send(frame);
                }
            }
            Some(Waiter::Watch(tx)) => {
                let _ = tx.send(frame);
            }
            None => {}
        }
    }

    /// Marks the connection lost; dropping the waiters tells every pending call and watch.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.clear();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Why a call on this connection got no answer: the server's reason, if it gave one.
    fn lost(&self) -> ClientError {
        match self.refusal.lock().ok().and_then(|r| r.clone()) {
            Some(error) => ClientError::Server(error),
            None => ClientError::Closed,
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.remove(&id);
        }
    }

    /// Queues a request whose answers go to `waiter`.
    fn send(&self, id: u64, request: &Request<'_>, waiter: Waiter) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        encode(id, request, &mut buf);
        self.waiters
            .lock()
            .map_err(|_| ClientError::Closed)?
            .insert(id, waiter);
        if self.is_closed() {
            self.forget(id);
            return Err(self.lost());
        }
        self.out.send(buf).map_err(|_| self.lost())
    }
}

struct ClientState {
    path: PathBuf,
    options: ClientOptions,
    current: Mutex<Arc<Session>>,
    /// Held while reconnecting, so that concurrent calls wait for one new connection.
    reconnecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

/// A connection to a nearkv sidecar. Cheap to clone; clones share the connection.
///
/// When the connection is lost, calls in flight fail with [`ClientError::Closed`] (a write among
/// them may or may not have happened: read before retrying it) and watches end; the next call
/// reconnects by itself, with backoff, as [`ClientOptions`] says.
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientState>,
}

/// A change pushed by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A live entry of the initial snapshot, or a put, delete or purge.
    Entry(Entry),
    /// The initial values have all been sent.
    Synced,
}

impl Client {
    /// Connects with the default [`ClientOptions`]. The first connection is not retried: a
    /// sidecar that is not there is reported at once.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with(path, ClientOptions::default()).await
    }

    pub async fn connect_with(
        path: impl AsRef<Path>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let connection = Session::open(&path).await?;
        Ok(Client {
            shared: Arc::new(ClientState {
                path,
                options,
                current: Mutex::new(connection),
                reconnecting: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.shared.current.lock().ok().map(|c| c.clone())
    }

    /// The live connection, reconnecting first if it was lost.
    async fn connection(&self) -> Result<Arc<Session>, ClientError> {
        if let Some(connection) = self.current().filter(|c| !c.is_closed()) {
            return Ok(connection);
        }
        let _one_at_a_time = self.shared.reconnecting.lock().await;
        if let Some(connection) = self.current().filter(|c| !c.is_closed()) {
            return Ok(connection);
        }
        let options = self.shared.options;
        let mut backoff = Backoff::new(options.reconnect_backoff, options.reconnect_backoff_max);
        let mut attempt = 0;
        loop {
            match Session::open(&self.shared.path).await {
                Ok(connection) => {
                    if let Ok(mut current) = self.shared.current.lock() {
                        *current = connection.clone();
                    }
                    return Ok(connection);
                }
                Err(err) if attempt >= options.reconnect_attempts => return Err(err),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        }
    }

    async fn send(
        &self,
        request: &Request<'_>,
        waiter: Waiter,
    ) -> Result<(u64, Arc<Session>), ClientError> {
        let connection = self.connection().await?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        connection.send(id, request, waiter)?;
        Ok((id, connection))
    }

    async fn call<T: DeserializeOwned>(&self, request: &Request<'_>) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        let (_, connection) = self.send(request, Waiter::Call(tx)).await?;
        let frame = rx.await.map_err(|_| connection.lost())?;
        decode_response(&frame)
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        let _: serde::de::IgnoredAny = self.call(&Request::Ping).await?;
        Ok(())
    }

    /// The key's entry from the sidecar's mirror; `None` when the key is absent or deleted.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Entry>, ClientError> {
        self.get_with(bucket, key, ReadOptions::default()).await
    }

    pub async fn get_with(
        &self,
        bucket: &str,
        key: &str,
        read: ReadOptions,
    ) -> Result<Option<Entry>, ClientError> {
        Ok(self.get_fresh(bucket, key, read).await?.0)
    }

    /// A `get` that also returns how fresh the mirror was: its revision and age.
    pub async fn get_fresh(
        &self,
        bucket: &str,
        key: &str,
        read: ReadOptions,
    ) -> Result<(Option<Entry>, Freshness), ClientError> {
        let body: EntryBody = self.call(&Request::Get { bucket, key, read }).await?;
        let freshness = Freshness {
            revision: body.revision,
            age_ms: body.age_ms,
        };
        Ok((body.entry, freshness))
    }

    pub async fn mget(
        &self,
        bucket: &str,
        keys: &[&str],
        read: ReadOptions,
    ) -> Result<Vec<Option<Entry>>, ClientError> {
        Ok(self.mget_fresh(bucket, keys, read).await?.0)
    }

    /// An `mget` that also returns how fresh the mirror was: its revision and age.
    pub async fn mget_fresh(
        &self,
        bucket: &str,
        keys: &[&str],
        read: ReadOptions,
    ) -> Result<(Vec<Option<Entry>>, Freshness), ClientError> {
        let request = Request::Mget {
            bucket,
            keys: keys.to_vec(),
            read,
        };
        let body: EntriesBody = self.call(&request).await?;
        let freshness = Freshness {
            revision: body.revision,
            age_ms: body.age_ms,
        };
        Ok((body.entries, freshness))
    }

    /// Stores the value; returns its revision once this sidecar's mirror shows it.
    pub async fn put(&self, bucket: &str, key: &str, value: &[u8]) -> Result<u64, ClientError> {
        self.put_with(bucket, key, value, WriteOptions::default())
            .await
    }

    /// A put with options: `expect_revision` makes it a compare-and-set.
    pub async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        value: &[u8],
        write: WriteOptions,
    ) -> Result<u64, ClientError> {
        let request = Request::Put {
            bucket,
            key,
            value,
            write,
        };
        let body: RevisionBody = self.call(&request).await?;
        Ok(body.revision)
    }

    /// Writes a delete marker; returns its revision.
    pub async fn delete(
        &self,
        bucket: &str,
        key: &str,
        write: WriteOptions,
    ) -> Result<u64, ClientError> {
        let body: RevisionBody = self.call(&Request::Delete { bucket, key, write }).await?;
        Ok(body.revision)
    }

    /// Removes the key's history, leaving a purge marker; returns its revision.
    pub async fn purge(
        &self,
        bucket: &str,
        key: &str,
        write: WriteOptions,
    ) -> Result<u64, ClientError> {
        let body: RevisionBody = self.call(&Request::Purge { bucket, key, write }).await?;
        Ok(body.revision)
    }

    /// Live keys, sorted, optionally matching a NATS wildcard filter.
    pub async fn keys(
        &self,
        bucket: &str,
        filter: Option<&str>,
        allow_stale: bool,
    ) -> Result<Vec<String>, ClientError> {
        let request = Request::Keys {
            bucket,
            filter,
            allow_stale,
        };
        let body: KeysBody = self.call(&request).await?;
        Ok(body.keys)
    }

    pub async fn status(&self, bucket: Option<&str>) -> Result<Vec<BucketStatus>, ClientError> {
        let body: StatusBody = self.call(&Request::Status { bucket }).await?;
        Ok(body.buckets)
    }

    /// Watches the bucket: with `initial`, its live entries and then `Synced`; then every change.
    /// Dropping the stream ends the watch on the server.
    pub async fn watch(
        &self,
        bucket: &str,
        filter: Option<&str>,
        initial: bool,
    ) -> Result<WatchStream, ClientError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let request = Request::Watch {
            bucket,
            filter,
            initial,
        };
        let (id, connection) = self.send(&request, Waiter::Watch(tx)).await?;
        let Some(first) = rx.recv().await else {
            return Err(connection.lost());
        };
        if let Err(err) = decode_response::<serde::de::IgnoredAny>(&first) {
            connection.forget(id);
            return Err(err);
        }
        Ok(WatchStream {
            id,
            rx,
            connection,
            client: self.clone(),
            ended: false,
        })
    }
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: u64,
}

fn decode_response<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ClientError> {
    let head: Head =
        rmp_serde::from_slice(frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let Some(error) = head.error {
        return Err(ClientError::Server(error.into()));
    }
    if head.ok != Some(true) {
        return Err(ClientError::Protocol(format!(
            "response {} has neither `ok: true` nor an error",
            head.id
        )));
    }
    rmp_serde::from_slice(frame).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The items of a watch; ends after the server's `end` message (an error item first if it ended
/// with one) or when the connection closes.
pub struct WatchStream {
    id: u64,
    rx: mpsc::UnboundedReceiver<Bytes>,
    /// The connection the watch lives on; it ends with it.
    connection: Arc<Session>,
    client: Client,
    ended: bool,
}

impl WatchStream {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.ended = true;
                return Poll::Ready(Some(Err(ClientError::Closed)));
            }
            Poll::Ready(Some(frame)) => frame,
        };
        let push: WatchPush = match rmp_serde::from_slice(&frame) {
            Ok(push) => push,
            Err(err) => return Poll::Ready(Some(Err(ClientError::Protocol(err.to_string())))),
        };
        if push.end {
            self.ended = true;
            self.connection.forget(self.id);
            return Poll::Ready(push.error.map(|e| Err(ClientError::Server(e.into()))));
        }
        if push.synced {
            return Poll::Ready(Some(Ok(WatchEvent::Synced)));
        }
        match push.event {
            Some(entry) => Poll::Ready(Some(Ok(WatchEvent::Entry(entry)))),
            None => Poll::Ready(Some(Err(ClientError::Protocol(
                "watch message without event, synced or end".to_string(),
            )))),
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if !self.ended {
            self.connection.forget(self.id);
            // Its answer finds no waiter and is dropped.
            let id = self.client.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let mut buf = Vec::new();
            encode(id, &Request::Unwatch { watch: self.id }, &mut buf);
            let _ = self.connection.out.send(buf);
        }
    }
}
