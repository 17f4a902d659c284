//! The nearkv side of the bench: a lean pipelining client that keeps `--pipeline` requests in
//! flight per connection (as redis-benchmark does), and watchers for the delivery workload.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::net::UnixStream;

use super::{
    flush, key, response, unix_nanos, value, working_set, BenchArgs, Local, Recorder, Rng, Workload,
};
use nearkv::client::{Client, WatchEvent};
use nearkv::protocol::frame::FrameReader;
use nearkv::protocol::request::{encode, Request, WriteOptions};
use nearkv::protocol::response::{peek_id_ok, Head, RevisionBody};
use nearkv::protocol::ReadOptions;

/// Waits until the sidecar's mirror of `bucket` has applied `revision` (the seeded data).
/// Fails before the bench changes anything when the sidecar at `socket` is not there or does
/// not mirror `bucket`.
pub async fn check_mirrored(socket: &Path, bucket: &str) -> Result<(), String> {
    let client = Client::connect(socket).await.map_err(|e| e.to_string())?;
    match client.status(Some(bucket)).await {
        Ok(_) => Ok(()),
        Err(err) if err.code() == "unknown_bucket" => Err(format!(
            "the sidecar at {} does not mirror bucket `{bucket}`, which the bench writes and reads: \
             start it with `--bucket {bucket} --create-buckets` (./scripts/dev.sh mirrors `bench`), \
             or pass --bucket NAME",
            socket.display()
        )),
        Err(err) => Err(err.to_string()),
    }
}

pub async fn wait_for_revision(socket: &Path, bucket: &str, revision: u64) -> Result<(), String> {
    let client = Client::connect(socket).await.map_err(|e| e.to_string())?;
    let read = ReadOptions {
        min_revision: Some(revision),
        timeout_ms: Some(120_000),
        ..ReadOptions::default()
    };
    client
        .get_with(bucket, &key(0), read)
        .await
        .map(|_| ())
        .map_err(|e| format!("nearkv did not mirror the seeded keys: {e}"))
}

pub async fn load(args: &BenchArgs, socket: &Path, recorder: &Recorder) -> Result<(), String> {
    let workers = (0..args.connections).map(|n| connection(args, socket, recorder, n as u64));
    for result in futures::future::join_all(workers).await {
        result?;
    }
    Ok(())
}

async fn connection(
    args: &BenchArgs,
    socket: &Path,
    recorder: &Recorder,
    n: u64,
) -> Result<(), String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to nearkv at {}: {e}", socket.display()))?;
    let (read_half, mut write_half) = stream.into_split();
    let mut frames = FrameReader::new(read_half, 64 * 1024 * 1024);
    let mut local = Local::new(recorder);
    let mut rng = Rng::new(n + 1);
    let keys = working_set(args, recorder, n);
    let payload = value(args.value_size, 0);
    let mut in_flight: HashMap<u64, (Instant, usize)> = HashMap::with_capacity(args.pipeline);
    // For `cas`: the revision each of the worker's keys was last written at.
    let mut revisions: HashMap<usize, u64> = HashMap::new();
    let mut out = Vec::with_capacity(4096);
    let mut next_id = 1u64;
    loop {
        while in_flight.len() < args.pipeline && !recorder.done() {
            let id = next_id;
            next_id += 1;
            let k = match args.workload {
                Workload::Cas => {
                    let mut k = rng.below(args.keys);
                    // One CAS in flight per key, or they would conflict with each other.
                    while in_flight.values().any(|(_, other)| *other == k) {
                        k = rng.below(args.keys);
                    }
                    k
                }
                _ => rng.below(args.keys),
            };
            let request = match args.workload {
                Workload::Get => Request::Get {
                    bucket: &args.bucket,
                    key: &keys[k],
                    read: ReadOptions::default(),
                },
                Workload::Mget => Request::Mget {
                    bucket: &args.bucket,
                    keys: (0..args.mget_keys)
                        .map(|_| keys[rng.below(args.keys)].as_str())
                        .collect(),
                    read: ReadOptions::default(),
                },
                Workload::Mixed if rng.chance(args.read_ratio) => Request::Get {
                    bucket: &args.bucket,
                    key: &keys[k],
                    read: ReadOptions::default(),
                },
                Workload::Cas => Request::Put {
                    bucket: &args.bucket,
                    key: &keys[k],
                    value: &payload,
                    write: WriteOptions::expecting(Some(revisions.get(&k).copied().unwrap_or(0))),
                },
                _ => Request::Put {
                    bucket: &args.bucket,
                    key: &keys[k],
                    value: &payload,
                    write: WriteOptions::default(),
                },
            };
            encode(id, &request, &mut out);
            in_flight.insert(id, (Instant::now(), k));
        }
        if in_flight.is_empty() {
            return Ok(());
        }
        flush(&mut write_half, &mut out).await?;
        loop {
            let frame = response(&mut frames, "nearkv").await?;
            let (id, ok) = match peek_id_ok(&frame) {
                Some((id, ok)) => (id, ok == Some(true)),
                None => {
                    let head: Head = rmp_serde::from_slice(&frame).map_err(|e| e.to_string())?;
                    (head.id, head.ok == Some(true))
                }
            };
            if let Some((started, k)) = in_flight.remove(&id) {
                if args.workload == Workload::Cas {
                    let head: Head = rmp_serde::from_slice(&frame).map_err(|e| e.to_string())?;
                    match (ok, head.error.as_ref().and_then(|e| e.current_revision)) {
                        (true, _) => {
                            if let Ok(body) = rmp_serde::from_slice::<RevisionBody>(&frame) {
                                revisions.insert(k, body.revision);
                            }
                        }
                        // Someone else wrote the key (another bench run): resynchronise.
                        (false, Some(current)) => {
                            revisions.insert(k, current);
                        }
                        (false, None) => {}
                    }
                }
                local.record(started, ok);
            }
            if !frames.has_buffered_frame() {
                break;
            }
        }
    }
}

/// Watchers on nearkv measure put→event delay; a writer puts at `--rate` through NATS or
/// through `--write-socket`.
pub async fn watch(args: &BenchArgs, socket: &Path, recorder: &Recorder) -> Result<(), String> {
    let client = Client::connect(socket).await.map_err(|e| e.to_string())?;
    let mut watchers = Vec::new();
    for _ in 0..args.connections {
        let watch = client
            .watch(&args.bucket, Some("watch.>"), false)
            .await
            .map_err(|e| e.to_string())?;
        watchers.push(watch);
    }
    let receive = watchers.into_iter().map(|mut watch| async move {
        let mut local = Local::new(recorder);
        let deadline = tokio::time::Instant::from_std(recorder.until) + Duration::from_millis(500);
        loop {
            let item = match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(item)) => item,
                _ => return,
            };
            if let Ok(WatchEvent::Entry(entry)) = item {
                if let Some(stamp) = entry.value.get(..8) {
                    let sent = u64::from_be_bytes(stamp.try_into().unwrap_or([0; 8]));
                    if sent >= recorder.measuring_from_unix {
                        local.record_nanos(unix_nanos().saturating_sub(sent));
                    }
                }
            }
        }
    });
    let writer = async {
        match &args.write_socket {
            Some(path) => {
                let writer = Client::connect(path).await.map_err(|e| e.to_string())?;
                super::paced::paced_puts(args, recorder, |k, v| {
                    let writer = writer.clone();
                    let bucket = args.bucket.clone();
                    async move { writer.put(&bucket, &k, &v).await.is_ok() }
                })
                .await;
                Ok::<(), String>(())
            }
            None => super::direct::paced_writer(args, recorder).await,
        }
    };
    let (_, written) = tokio::join!(futures::future::join_all(receive), writer);
    written
}
