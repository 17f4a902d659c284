//! GETs encoded before the clock starts, sent and read the same way in protocol v1 and in RESP
//! (a Redis server, or nearkv's Redis face): one generator for both sides of a comparison, which
//! spends as little per request as `redis-benchmark` does. Each connection cycles through a pool
//! of requests for random keys and reads the replies in order (a connection answers reads from
//! memory in the order it received them, in both protocols).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::{flush, key, value, BenchArgs, Local, Recorder, Rng};
use nearkv::protocol::frame::{self, FrameCheck, LENGTH_PREFIX};
use nearkv::protocol::request::{encode, Request};
use nearkv::protocol::response::peek_id_ok;
use nearkv::protocol::ReadOptions;

/// Requests encoded per connection, sent in turn.
const POOL: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    Resp,
}

/// A key as RESP names it: `<bucket>:<key>`, which nearkv's Redis face reads from the bucket
/// and a Redis server holds as a key of that name (see [`seed_resp`]).
fn resp_key(args: &BenchArgs, i: usize) -> String {
    format!("{}:{}", args.bucket, key(i))
}

fn resp_command(words: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
    for word in words {
        out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        out.extend_from_slice(word);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the working set over RESP (`SET <bucket>:<key> value`), pipelined.
pub async fn seed_resp(args: &BenchArgs, socket: &Path) -> Result<(), String> {
    let stream = connect(socket).await?;
    let (mut read_half, mut write_half) = stream.into_split();
    let payload = value(args.value_size, 0);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::new();
    for first in (0..args.keys).step_by(256) {
        let chunk = first..(first + 256).min(args.keys);
        for i in chunk.clone() {
            resp_command(&[b"SET", resp_key(args, i).as_bytes(), &payload], &mut out);
        }
        flush(&mut write_half, &mut out).await?;
        for _ in chunk {
            if !next_reply(Protocol::Resp, &mut read_half, &mut input).await? {
                return Err(format!(
                    "SET failed on {}: {}",
                    socket.display(),
                    String::from_utf8_lossy(&input[..input.len().min(200)])
                ));
            }
        }
    }
    Ok(())
}

pub async fn load(
    args: &BenchArgs,
    socket: &Path,
    protocol: Protocol,
    recorder: &Recorder,
) -> Result<(), String> {
    let workers =
        (0..args.connections).map(|n| connection(args, socket, protocol, recorder, n as u64));
    for result in futures::future::join_all(workers).await {
        result?;
    }
    Ok(())
}

async fn connect(socket: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))
}

async fn connection(
    args: &BenchArgs,
    socket: &Path,
    protocol: Protocol,
    recorder: &Recorder,
    n: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(n + 1);
    let requests: Vec<Vec<u8>> = (0..POOL)
        .map(|i| {
            let k = rng.below(args.keys);
            let mut frame = Vec::new();
            match protocol {
                Protocol::V1 => encode(
                    i as u64,
                    &Request::Get {
                        bucket: &args.bucket,
                        key: &key(k),
                        read: ReadOptions::default(),
                    },
                    &mut frame,
                ),
                Protocol::Resp => resp_command(&[b"GET", resp_key(args, k).as_bytes()], &mut frame),
            }
            frame
        })
        .collect();
    let stream = connect(socket).await?;
    let (mut read_half, mut write_half) = stream.into_split();
    let mut local = Local::new(recorder);
    let mut started = VecDeque::with_capacity(args.pipeline);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(4096);
    let mut next = 0;
    loop {
        while started.len() < args.pipeline && !recorder.done() {
            out.extend_from_slice(&requests[next % POOL]);
            next += 1;
            started.push_back(Instant::now());
        }
        let Some(&first) = started.front() else {
            return Ok(());
        };
        flush(&mut write_half, &mut out).await?;
        // At least one reply, then every other one already here.
        let ok = next_reply(protocol, &mut read_half, &mut input).await?;
        started.pop_front();
        local.record(first, ok);
        while let Some((len, ok)) = reply(protocol, &input)? {
            input.advance(len);
            if let Some(sent) = started.pop_front() {
                local.record(sent, ok);
            }
        }
    }
}

/// Reads until a whole reply is in `input`, consumes it, and says whether it succeeded.
async fn next_reply(
    protocol: Protocol,
    read_half: &mut tokio::net::unix::OwnedReadHalf,
    input: &mut BytesMut,
) -> Result<bool, String> {
    loop {
        if let Some((len, ok)) = reply(protocol, input)? {
            input.advance(len);
            return Ok(ok);
        }
        match read_half.read_buf(input).await {
            Ok(0) => return Err("the server closed the connection".to_string()),
            Ok(_) => {}
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// The length of the whole reply at the start of `input` and whether it succeeded (a miss
/// counts as a success); `None` until it has all arrived.
fn reply(protocol: Protocol, input: &[u8]) -> Result<Option<(usize, bool)>, String> {
    match protocol {
        Protocol::V1 => match frame::check(input, u32::MAX) {
            FrameCheck::Complete(len) => {
                let body = &input[LENGTH_PREFIX..LENGTH_PREFIX + len];
                let ok = peek_id_ok(body).is_some_and(|(_, ok)| ok == Some(true));
                Ok(Some((LENGTH_PREFIX + len, ok)))
            }
            FrameCheck::Incomplete | FrameCheck::TooLarge(_) => Ok(None),
        },
        Protocol::Resp => {
            let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let line = &input[..end];
            match line.first() {
                Some(b'$') => {
                    let len: i64 = std::str::from_utf8(&line[1..])
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .ok_or("a bulk reply with a bad length")?;
                    if len < 0 {
                        return Ok(Some((end + 2, true)));
                    }
                    let whole = end + 2 + len as usize + 2;
                    Ok((input.len() >= whole).then_some((whole, true)))
                }
                Some(b'+' | b':') => Ok(Some((end + 2, true))),
                Some(b'-') => Ok(Some((end + 2, false))),
                _ => Err(format!(
                    "an unexpected reply: {}",
                    String::from_utf8_lossy(&input[..input.len().min(80)])
                )),
            }
        }
    }
}
