//! The floor: a raw Unix-socket server that answers a 4-byte length-prefixed key with the
//! length-prefixed value from a `HashMap`, and a pipelining client for it. The server runs as a
//! separate process (`nearkv bench-raw-server`), as nearkv does.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use super::{flush, key, response, value, BenchArgs, Local, Recorder, Rng};
use nearkv::protocol::frame::FrameReader;

/// Serves the raw protocol on `socket` until killed.
pub async fn serve(socket: &Path, keys: usize, value_size: usize) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let map: HashMap<Vec<u8>, Bytes> = (0..keys)
        .map(|i| (key(i).into_bytes(), Bytes::from(value(value_size, 0))))
        .collect();
    let map = std::sync::Arc::new(map);
    loop {
        let (stream, _) = listener.accept().await?;
        let map = map.clone();
        tokio::spawn(async move {
            let (read_half, mut write_half) = stream.into_split();
            let mut frames = FrameReader::new(read_half, 1024 * 1024);
            let mut out = Vec::with_capacity(16 * 1024);
            while let Ok(Some(frame)) = frames.next_frame().await {
                let reply = map.get(frame.as_ref()).map_or(&[][..], |v| v.as_ref());
                out.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                out.extend_from_slice(reply);
                if !frames.has_buffered_frame() {
                    if write_half.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
        });
    }
}

/// Starts the raw server as a child process and runs the read load against it.
pub(crate) async fn load(args: &BenchArgs, recorder: &Recorder) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("nearkv-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let socket = dir.join("raw.sock");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut server = tokio::process::Command::new(exe)
        .arg("bench-raw-server")
        .arg("--socket")
        .arg(&socket)
        .args([
            "--keys",
            &args.keys.to_string(),
            "--value-size",
            &args.value_size.to_string(),
        ])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the raw server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).await.is_err() {
        if Instant::now() > deadline {
            return Err("the raw server did not start".to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let workers = (0..args.connections).map(|n| connection(args, &socket, recorder, n as u64));
    let results = futures::future::join_all(workers).await;
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    results.into_iter().collect()
}

async fn connection(
    args: &BenchArgs,
    socket: &Path,
    recorder: &Recorder,
    n: u64,
) -> Result<(), String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let (read_half, mut write_half) = stream.into_split();
    let mut frames = FrameReader::new(read_half, 1024 * 1024);
    let mut local = Local::new(recorder);
    let mut rng = Rng::new(n + 1);
    let keys: Vec<String> = (0..args.keys).map(key).collect();
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(args.pipeline);
    let mut out = Vec::with_capacity(4096);
    loop {
        while in_flight.len() < args.pipeline && !recorder.done() {
            let k = keys[rng.below(args.keys)].as_bytes();
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            in_flight.push_back(Instant::now());
        }
        if in_flight.is_empty() {
            return Ok(());
        }
        flush(&mut write_half, &mut out).await?;
        loop {
            let frame = response(&mut frames, "the raw server").await?;
            if let Some(started) = in_flight.pop_front() {
                local.record(started, frame.len() == args.value_size.max(8));
            }
            if !frames.has_buffered_frame() {
                break;
            }
        }
    }
}
