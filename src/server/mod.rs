//! The Unix-socket server: binds the socket, accepts connections, and shuts down cleanly.

mod client_socket;
mod connection;
mod context;
mod draining;
mod input;
mod resp;
mod v1;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::SocketConfig;

use crate::error::{Error, ErrorCode};
use crate::protocol::response::encode_error;
use connection::{Connection, Limits};
pub use context::Context;
use draining::Draining;
pub use input::RequestBudgets;
pub use resp::parse_stream as parse_resp_stream;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "socket {0} is in use by a running process (another nearkv?); stop it or choose another --socket"
    )]
    InUse(PathBuf),
    #[error("cannot create socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    limits: Limits,
    max_connections: usize,
    shutdown_grace: std::time::Duration,
    allow_uids: Vec<u32>,
    allow_gids: Vec<u32>,
}

impl Server {
    /// Binds the socket with the configured mode. A socket file left by a crashed run (nobody
    /// accepts on it) is replaced; one that a live process still serves is left alone.
    pub async fn bind(
        config: &SocketConfig,
        mode: u32,
        group: Option<u32>,
    ) -> Result<Server, BindError> {
        let path = config.path.clone();
        let io = |source| BindError::Io {
            path: path.clone(),
            source,
        };
        if path.exists() {
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                return Err(BindError::InUse(path));
            }
            std::fs::remove_file(&path).map_err(io)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Bind under a temporary name, set the mode, then rename: the socket never appears at its
        // path with the umask's wider permissions, not even for a moment.
        let staging = path.with_file_name(format!(
            ".{}.{}",
            path.file_name()
                .map_or("nearkv.sock".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging).map_err(io)?;
        let placed = std::os::unix::fs::chown(&staging, None, group)
            .and_then(|()| {
                std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
            })
            .and_then(|()| std::fs::rename(&staging, &path));
        if let Err(err) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(io(err));
        }
        Ok(Server {
            listener,
            path,
            limits: Limits {
                max_frame_size: config.max_frame_size,
                max_in_flight: config.max_in_flight,
                max_in_flight_bytes: config.max_in_flight_bytes,
                max_watches: config.max_watches,
                idle_timeout: config.idle_timeout,
                write_timeout: config.write_timeout,
            },
            shutdown_grace: config.shutdown_grace,
            max_connections: config.max_connections,
            allow_uids: config.allow_uids.clone(),
            allow_gids: config.allow_gids.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` is cancelled; then stops accepting, removes the socket
    /// file, ends watches and lets in-flight requests finish for up to `shutdown_grace`, after
    /// which the connections still open are closed.
    pub async fn run(self, ctx: Arc<Context>, shutdown: CancellationToken) {
        // Aborted when the shutdown grace period is over: drops the connections still open.
        let mut connections = JoinSet::new();
        let draining = Arc::new(Draining::default());
        let active = Arc::new(AtomicUsize::new(0));
        let mut next_connection: u64 = 0;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                // Reaps finished connections, so that the set holds only open ones.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    if let Some(refusal) = self.refusal(&stream, active.load(Ordering::Relaxed)) {
                        ctx.metrics.connection_refused(refusal.code);
                        connections.spawn(refuse(stream, refusal));
                        continue;
                    }
                    next_connection += 1;
                    let span = tracing::info_span!("connection", id = next_connection);
                    let open = OpenConnection::count(&active);
                    let connection = serve_connection(
                        stream,
                        ctx.clone(),
                        self.limits,
                        shutdown.clone(),
                        draining.clone(),
                        next_connection,
                    );
                    connections.spawn(tracing::Instrument::instrument(
                        async move {
                            connection.await;
                            drop(open);
                        },
                        span,
                    ));
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        draining.begin();
        if let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(error = %err, path = %self.path.display(), "cannot remove socket file");
        }
        let all_closed = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(self.shutdown_grace, all_closed)
            .await
            .is_err()
        {
            tracing::warn!(
                open = active.load(Ordering::Relaxed),
                grace = ?self.shutdown_grace,
                "shutdown grace period over; closing the connections still open"
            );
            connections.shutdown().await;
        }
    }
}

/// Counts a connection as open for `socket.max_connections` until it is dropped: when the
/// connection ends, and also when it is aborted after the shutdown grace period.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(active: &Arc<AtomicUsize>) -> OpenConnection {
        active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(active.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    /// Why a new connection may not be served, if it may not: its peer is not allowed, or
    /// there are too many connections already.
    fn refusal(&self, stream: &UnixStream, active: usize) -> Option<Error> {
        if !self.allow_uids.is_empty() || !self.allow_gids.is_empty() {
            let peer = stream.peer_cred().ok();
            let allowed = peer.is_some_and(|peer| {
                self.allow_uids.contains(&peer.uid()) || self.allow_gids.contains(&peer.gid())
            });
            if !allowed {
                let (uid, gid) = (peer.map(|p| p.uid()), peer.map(|p| p.gid()));
                tracing::warn!(
                    ?uid,
                    ?gid,
                    "connection refused: peer not in socket.allow_uids / allow_gids"
                );
                let who = match (uid, gid) {
                    (Some(uid), Some(gid)) => format!("user {uid} (group {gid})"),
                    _ => "a peer whose credentials cannot be read".to_string(),
                };
                return Some(Error::new(
                    ErrorCode::Forbidden,
                    format!(
                        "{who} may not use this sidecar: not in socket.allow_uids or \
                         socket.allow_gids"
                    ),
                ));
            }
        }
        if active >= self.max_connections {
            tracing::warn!(
                max_connections = self.max_connections,
                "connection refused: socket.max_connections reached"
            );
            return Some(Error::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the sidecar already serves {} connections (socket.max_connections); reuse a \
                     connection (requests pipeline on one) or raise the limit",
                    self.max_connections
                ),
            ));
        }
        None
    }
}

/// Which protocol a connection speaks, from its first byte: a protocol v1 frame begins with 0x00
/// (its length prefix; every frame is shorter than 16 MiB), anything else is RESP.
fn speaks_v1(first: u8) -> bool {
    first == 0
}

/// A connection's first bytes, which tell its protocol.
enum First {
    Bytes(BytesMut),
    /// The peer closed the connection (or it failed) before sending anything.
    Closed,
    /// Nothing arrived in the time allowed.
    Silent,
}

/// Reads a connection's first bytes, waiting at most `wait` (`Duration::ZERO`: as long as it
/// takes).
async fn first_bytes(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    wait: std::time::Duration,
) -> First {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let read = stream.read_buf(&mut input);
    let read = if wait.is_zero() {
        read.await
    } else {
        match tokio::time::timeout(wait, read).await {
            Ok(read) => read,
            Err(_) => return First::Silent,
        }
    };
    match read {
        Ok(n) if n > 0 => First::Bytes(input),
        _ => First::Closed,
    }
}

/// Serves a connection in the protocol its first bytes show.
async fn serve_connection(
    stream: UnixStream,
    ctx: Arc<Context>,
    limits: Limits,
    shutdown: CancellationToken,
    draining: Arc<Draining>,
    id: u64,
) {
    let (mut reader, mut writer) = match client_socket::split(stream) {
        Ok(sides) => sides,
        Err(err) => {
            tracing::warn!(error = %err, "cannot register an accepted connection; it is closed");
            return;
        }
    };
    let first = tokio::select! {
        _ = draining.begun() => return,
        first = first_bytes(&mut reader, limits.idle_timeout) => first,
    };
    let input = match first {
        First::Bytes(input) => input,
        First::Closed => return,
        // Nothing sent for socket.idle_timeout: told so as any idle v1 connection is.
        First::Silent => {
            let error = connection::idle_timeout(limits.idle_timeout);
            ctx.metrics.connection_refused(error.code);
            let mut frame = Vec::new();
            encode_error(&mut frame, 0, &error);
            let _ = tokio::time::timeout(limits.write_timeout, writer.write_all(&frame)).await;
            return;
        }
    };
    if speaks_v1(input[0]) {
        Connection::run((reader, writer), input, ctx, limits, shutdown, draining).await;
    } else {
        resp::run((reader, writer), input, ctx, limits, draining, id).await;
    }
}

/// How long a refused connection may take to show its protocol before it is told in v1's.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Tells a connection why it is not served, in the protocol it speaks, then closes it. The
/// protocol shows in its first request, so the refusal follows that request (a client that sends
/// nothing within `REFUSAL_WAIT` is told in protocol v1's, as before there was a second face).
async fn refuse(mut stream: UnixStream, error: Error) {
    let first = first_bytes(&mut stream, REFUSAL_WAIT).await;
    let reply = match first {
        First::Bytes(input) if !speaks_v1(input[0]) => resp::refusal(&error),
        _ => {
            let mut frame = Vec::new();
            encode_error(&mut frame, 0, &error);
            frame
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(&reply).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
