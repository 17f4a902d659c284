//! A client's Unix socket, registered with the runtime for reading only.
//!
//! tokio registers a `UnixStream` for readable and writable readiness at once. Then every time
//! the client reads a reply, the kernel's write-space callback finds the sidecar's epoll entry
//! interested in writability, queues it as ready, and wakes the serving thread if it sleeps: a
//! wake-up for nothing per reply, paid by the client inside its `recv` (8.5-10% of
//! redis-benchmark's samples against nearkv, under 2% against redis-server, which registers
//! only its readable interest). Replies are small and nearly always fit the socket's buffer, so
//! the writer writes at once and waits for writability only when a write would block, through a
//! duplicate of the descriptor registered for that alone (epoll keeps one entry per descriptor)
//! and dropped once the write is through.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::time::error::Elapsed;

/// The reading side of an accepted client connection (see the module's doc).
pub struct ClientReader {
    socket: Arc<AsyncFd<StdUnixStream>>,
}

/// The writing side of an accepted client connection; the socket closes when both sides are
/// dropped.
pub struct ClientWriter {
    socket: Arc<AsyncFd<StdUnixStream>>,
    /// While a write is incomplete: the descriptor's duplicate, registered for writability.
    blocked: Option<AsyncFd<OwnedFd>>,
}

/// Takes an accepted `stream` from tokio's registration and registers it for reading only.
pub fn split(stream: tokio::net::UnixStream) -> io::Result<(ClientReader, ClientWriter)> {
    // Still non-blocking: `into_std` leaves the mode as it was.
    let stream = stream.into_std()?;
    let socket = Arc::new(register(stream, Interest::READABLE)?);
    let writer = ClientWriter {
        socket: socket.clone(),
        blocked: None,
    };
    Ok((ClientReader { socket }, writer))
}

/// Registers `io`, which owns its descriptor, with the runtime for `interest`.
fn register<T: AsRawFd>(io: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `io` is a `UnixStream` or an `OwnedFd`: it owns an open descriptor, closes it only
    // when dropped, and always returns that same one.
    unsafe { AsyncFd::register_with_interest(io, interest) }.map_err(|err| err.into_parts().1)
}

impl AsyncRead for ClientReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            // SAFETY: `read` only writes into the slice, and `assume_init` below covers just the
            // bytes it wrote. Zeroing the spare capacity first (the safe way) costs a memset of
            // the whole read buffer on every read.
            let unfilled =
                unsafe { &mut *(buf.unfilled_mut() as *mut [MaybeUninit<u8>] as *mut [u8]) };
            let room = unfilled.len();
            match ready.try_io(|socket| socket.get_ref().read(unfilled)) {
                Ok(Ok(read)) => {
                    if read > 0 && read < room {
                        // Less than asked for: the socket is drained, and the next read would
                        // only learn so from a system call. Data arriving since is a new event.
                        ready.clear_ready();
                    }
                    // SAFETY: the kernel wrote these `read` bytes.
                    unsafe { buf.assume_init(read) };
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                // Would block: the readiness was cleared; wait for the next.
                Err(_) => {}
            }
        }
    }
}

impl ClientWriter {
    /// Writes all of `buf`, waiting at most `limit` for a client that does not read. The timer
    /// starts only once the socket's buffer is full: a reply that goes through at once (nearly
    /// all of them) reads no clock and makes no timer.
    pub async fn write_all_within(
        &mut self,
        buf: &[u8],
        limit: Duration,
    ) -> Result<io::Result<()>, Elapsed> {
        let mut written = 0;
        if self.blocked.is_none() {
            while written < buf.len() {
                match self.write_now(&buf[written..]) {
                    Ok(0) => return Ok(Err(io::ErrorKind::WriteZero.into())),
                    Ok(more) => written += more,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => return Ok(Err(err)),
                }
            }
        }
        if written == buf.len() {
            return Ok(Ok(()));
        }
        tokio::time::timeout(limit, self.write_all(&buf[written..])).await
    }

    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.socket.get_ref().write(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                written => return written,
            }
        }
    }
}

impl AsyncWrite for ClientWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let Some(blocked) = &this.blocked else {
                match this.write_now(buf) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        // Registered now, a socket that became writable meanwhile is reported
                        // at once: no wake-up is lost.
                        let duplicate = this.socket.get_ref().as_fd().try_clone_to_owned()?;
                        this.blocked = Some(register(duplicate, Interest::WRITABLE)?);
                        continue;
                    }
                    written => return Poll::Ready(written),
                }
            };
            let mut ready = ready!(blocked.poll_write_ready(cx))?;
            match ready.try_io(|_| this.write_now(buf)) {
                Ok(Ok(written)) => {
                    if written == buf.len() {
                        // Through: stop hearing of write space until a write blocks again.
                        this.blocked = None;
                    }
                    return Poll::Ready(Ok(written));
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (ClientReader, ClientWriter, tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (reader, writer) = split(ours).unwrap();
        (reader, writer, theirs)
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_the_reader_and_arrives_whole() {
        let (mut reader, mut writer, mut peer) = pair();
        let sent: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            assert!(writer.blocked.is_none(), "unregistered once through");
            writer.write_all(b"after").await.unwrap();
            writer.shutdown().await.unwrap();
            writer
        });
        let mut received = Vec::new();
        peer.read_to_end(&mut received).await.unwrap();
        let _writer = writing.await.unwrap();
        assert_eq!(received.len(), expected.len() + 5);
        assert!(received[..expected.len()] == expected[..], "bytes in order");
        assert_eq!(&received[expected.len()..], b"after");

        peer.write_all(b"request").await.unwrap();
        drop(peer);
        let mut request = Vec::new();
        reader.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
    }

    /// The epoll event masks this process has registered for `fd`'s socket, as the kernel lists
    /// them in `/proc/self/fdinfo` (matched by inode; the runtime's epoll may be listed under two
    /// descriptors, so each registration is counted once).
    fn epoll_masks(fd: &impl AsRawFd) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let fd = fd.as_raw_fd();
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let mut registrations = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("eventpoll"));
            let info = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
            let Some(info) = is_epoll
                .then(|| std::fs::read_to_string(info).ok())
                .flatten()
            else {
                continue;
            };
            let ours = format!("ino:{inode:x} ");
            registrations.extend(
                info.lines()
                    .filter(|line| line.starts_with("tfd:") && line.contains(&ours))
                    .map(str::to_string),
            );
        }
        registrations
            .iter()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let at = fields.iter().position(|f| *f == "events:").unwrap();
                u32::from_str_radix(fields[at + 1], 16).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn the_socket_is_registered_for_writability_only_while_a_write_is_blocked() {
        const EPOLLIN: u32 = 0x1;
        const EPOLLOUT: u32 = 0x4;
        let (reader, mut writer, mut peer) = pair();
        let masks = epoll_masks(writer.socket.get_ref());
        assert_eq!(masks.len(), 1, "one registration: {masks:x?}");
        assert_eq!(masks[0] & (EPOLLIN | EPOLLOUT), EPOLLIN, "{:x}", masks[0]);

        writer.write_all(&[1; 1024]).await.unwrap();
        assert!(
            writer.blocked.is_none(),
            "a write that fits never registers"
        );
        // Fill the socket's buffer: the write blocks, and waits through a second registration.
        let big = vec![2; 4 * 1024 * 1024];
        let mut write = Box::pin(writer.write_all(&big));
        assert!(futures::poll!(&mut write).is_pending());
        drop(write);
        let masks = epoll_masks(writer.socket.get_ref());
        assert_eq!(masks.len(), 2, "{masks:x?}");
        assert!(masks.iter().any(|mask| mask & EPOLLOUT != 0), "{masks:x?}");

        let reading = tokio::spawn(async move {
            let mut received = 0;
            let mut buf = vec![0; 64 * 1024];
            loop {
                let read = peer.read(&mut buf).await.unwrap();
                if read == 0 {
                    return received;
                }
                received += read;
            }
        });
        writer.write_all(b"rest").await.unwrap();
        let masks = epoll_masks(writer.socket.get_ref());
        assert_eq!(masks.len(), 1, "unregistered once through: {masks:x?}");
        assert_eq!(masks[0] & EPOLLOUT, 0);
        writer.shutdown().await.unwrap();
        drop((reader, writer));
        assert!(reading.await.unwrap() > 1024 + 4);
    }

    #[tokio::test]
    async fn a_bounded_write_goes_through_at_once_or_when_the_reader_reads() {
        let (_reader, mut writer, mut peer) = pair();
        let limit = Duration::from_secs(60);
        writer
            .write_all_within(b"small", limit)
            .await
            .unwrap()
            .unwrap();
        let mut small = [0; 5];
        peer.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"small");

        let big = vec![3; 8 * 1024 * 1024];
        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            peer.read_to_end(&mut received).await.unwrap();
            received
        });
        writer.write_all_within(&big, limit).await.unwrap().unwrap();
        assert!(writer.blocked.is_none(), "unregistered once through");
        writer.shutdown().await.unwrap();
        assert!(reading.await.unwrap() == big, "bytes whole and in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_write_to_a_client_that_does_not_read_ends_at_its_limit() {
        let (_reader, mut writer, _peer) = pair();
        let big = vec![4; 8 * 1024 * 1024];
        let written = writer
            .write_all_within(&big, Duration::from_millis(250))
            .await;
        assert!(written.is_err(), "timed out: {written:?}");
    }

    #[tokio::test]
    async fn a_write_to_a_client_that_left_fails() {
        let (_reader, mut writer, peer) = pair();
        drop(peer);
        let error = writer.write_all(&[1; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
