//! Framing: a 4-byte big-endian length, then that many bytes of MessagePack.
//!
//! Reading is split into a cheap check (is a whole frame buffered, is it too large?) and the
//! hand-off of the frame's bytes, so a partial frame is never parsed and an oversized one is
//! refused from its prefix alone, before any of its body is buffered.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const LENGTH_PREFIX: usize = 4;

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameCheck {
    /// Not yet a whole frame; read more.
    Incomplete,
    /// A whole frame whose body is this long.
    Complete(usize),
    /// The prefix announces a body longer than allowed.
    TooLarge(u32),
}

pub fn check(buf: &[u8], max_frame_size: u32) -> FrameCheck {
    let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
        return FrameCheck::Incomplete;
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > max_frame_size {
        FrameCheck::TooLarge(len)
    } else if buf.len() - LENGTH_PREFIX >= len as usize {
        FrameCheck::Complete(len as usize)
    } else {
        FrameCheck::Incomplete
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads whole frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame_size: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame_size: u32) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            max_frame_size,
        }
    }

    /// The next frame's body; `None` when the peer closed the stream between frames.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            match check(&self.buf, self.max_frame_size) {
                FrameCheck::Complete(len) => {
                    self.buf.advance(LENGTH_PREFIX);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                FrameCheck::TooLarge(len) => {
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.max_frame_size,
                    })
                }
                FrameCheck::Incomplete => {}
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
        }
    }

    /// Whether a whole frame is already buffered, so it can be read without waiting.
    pub fn has_buffered_frame(&self) -> bool {
        !matches!(
            check(&self.buf, self.max_frame_size),
            FrameCheck::Incomplete
        )
    }
}

/// Starts a frame in `buf`: reserves the length prefix and returns where the frame begins.
pub fn begin(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; LENGTH_PREFIX]);
    start
}

/// Ends the frame begun at `start` by writing its length prefix.
pub fn end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - LENGTH_PREFIX) as u32;
    buf[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_needs_the_whole_prefix_and_body() {
        assert_eq!(check(&[], 10), FrameCheck::Incomplete);
        assert_eq!(check(&[0, 0, 0], 10), FrameCheck::Incomplete);
        assert_eq!(check(&[0, 0, 0, 2, 1], 10), FrameCheck::Incomplete);
        assert_eq!(check(&[0, 0, 0, 2, 1, 2, 3], 10), FrameCheck::Complete(2));
        assert_eq!(check(&[0, 0, 0, 11], 10), FrameCheck::TooLarge(11));
        assert_eq!(check(&[0, 0, 0, 0], 10), FrameCheck::Complete(0));
    }

    #[tokio::test]
    async fn reader_splits_frames_and_reports_truncation() {
        let bytes: &[u8] = &[0, 0, 0, 1, 7, 0, 0, 0, 2, 8, 9, 0, 0, 0, 5, 1];
        let mut reader = FrameReader::new(bytes, 100);
        assert_eq!(reader.next_frame().await.unwrap().unwrap().as_ref(), &[7]);
        assert_eq!(
            reader.next_frame().await.unwrap().unwrap().as_ref(),
            &[8, 9]
        );
        assert!(matches!(
            reader.next_frame().await,
            Err(FrameError::Truncated { buffered: 5 })
        ));
        let mut reader = FrameReader::new(&[0u8, 1, 0, 0][..], 100);
        assert!(matches!(
            reader.next_frame().await,
            Err(FrameError::TooLarge {
                len: 65536,
                max: 100
            })
        ));
        let mut reader = FrameReader::new(&[][..], 100);
        assert!(reader.next_frame().await.unwrap().is_none());
    }
}
