//! The baseline: the same workloads as direct async-nats KV calls, as an application without
//! nearkv would make them; plus seeding a bucket and timing a bare watcher's snapshot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use super::{
    key, unix_nanos, value, working_set, BenchArgs, Local, Recorder, Report, Rng, Workload,
};

async fn store(args: &BenchArgs) -> Result<kv::Store, String> {
    let client = async_nats::connect(&args.nats_url)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", args.nats_url))?;
    let js = jetstream::new(client);
    match js.get_key_value(&args.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: args.bucket.clone(),
                history: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create bucket {}: {e}", args.bucket)),
    }
}

/// Writes every key of the working set once; returns the write rate and the last revision.
pub async fn seed(args: &BenchArgs, report: bool) -> Result<(Report, u64), String> {
    let store = store(args).await?;
    let js = jetstream::new(
        async_nats::connect(&args.nats_url)
            .await
            .map_err(|e| e.to_string())?,
    );
    let payload = bytes::Bytes::from(value(args.value_size, 0));
    let started = Instant::now();
    let mut histogram = super::new_histogram();
    let mut last = 0;
    let mut acks = Vec::with_capacity(1000);
    for i in 0..args.keys {
        let ack = js
            .publish(format!("{}{}", store.prefix, key(i)), payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        acks.push((Instant::now(), ack));
        if acks.len() == 1000 || i + 1 == args.keys {
            for (sent, ack) in acks.drain(..) {
                last = ack
                    .await
                    .map_err(|e| format!("seeding failed: {e}"))?
                    .sequence
                    .max(last);
                let _ = histogram.record(sent.elapsed().as_nanos() as u64);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if report {
        eprintln!(
            "seeded {} keys of {} bytes into {} (last revision {last})",
            args.keys, args.value_size, args.bucket
        );
    }
    Ok((super::report_from(args, &histogram, 0, seconds), last))
}

/// Time for a fresh watcher with history to deliver each key's latest value.
pub async fn snapshot(args: &BenchArgs) -> Result<Report, String> {
    let store = store(args).await?;
    let expected = store
        .stream
        .get_info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .subjects_count;
    if expected == 0 {
        return Err(format!(
            "bucket {} is empty: seed it first (--workload seed)",
            args.bucket
        ));
    }
    let mut histogram = super::new_histogram();
    let started = Instant::now();
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let mut received = 0u64;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        received += 1;
        if entry.delta == 0 {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = histogram.record(started.elapsed().as_nanos() as u64);
    let mut report = super::report_from(args, &histogram, 0, seconds);
    report.ops = received;
    report.ops_per_sec = received as f64 / seconds;
    Ok(report)
}

pub async fn load(args: &BenchArgs, recorder: &Recorder) -> Result<(), String> {
    let mut stores = Vec::new();
    for _ in 0..args.connections {
        stores.push(store(args).await?);
    }
    let workers = stores.iter().enumerate().flat_map(|(c, store)| {
        (0..args.pipeline)
            .map(move |p| worker(args, store, recorder, (c * args.pipeline + p) as u64))
    });
    futures::future::join_all(workers).await;
    Ok(())
}

async fn worker(args: &BenchArgs, store: &kv::Store, recorder: &Recorder, n: u64) {
    let mut local = Local::new(recorder);
    let mut rng = Rng::new(n + 1);
    let keys = working_set(args, recorder, n);
    let payload = bytes::Bytes::from(value(args.value_size, 0));
    let mut revisions: HashMap<usize, u64> = HashMap::new();
    while !recorder.done() {
        let started = Instant::now();
        let ok = match args.workload {
            Workload::Get => store.get(keys[rng.below(args.keys)].as_str()).await.is_ok(),
            Workload::Mixed if rng.chance(args.read_ratio) => {
                store.get(keys[rng.below(args.keys)].as_str()).await.is_ok()
            }
            Workload::Mget => {
                let gets =
                    (0..args.mget_keys).map(|_| store.get(keys[rng.below(args.keys)].as_str()));
                futures::future::join_all(gets)
                    .await
                    .iter()
                    .all(Result::is_ok)
            }
            Workload::Cas => {
                let k = rng.below(args.keys);
                let expected = revisions.get(&k).copied().unwrap_or(0);
                match store.update(&keys[k], payload.clone(), expected).await {
                    Ok(revision) => {
                        revisions.insert(k, revision);
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => store
                .put(keys[rng.below(args.keys)].as_str(), payload.clone())
                .await
                .is_ok(),
        };
        local.record(started, ok);
    }
}

pub async fn watch(args: &BenchArgs, recorder: &Recorder) -> Result<(), String> {
    let mut watchers = Vec::new();
    for _ in 0..args.connections {
        let store = store(args).await?;
        watchers.push(store.watch("watch.>").await.map_err(|e| e.to_string())?);
    }
    let receive = watchers.into_iter().map(|mut watch| async move {
        let mut local = Local::new(recorder);
        let deadline = tokio::time::Instant::from_std(recorder.until) + Duration::from_millis(500);
        while let Ok(Some(Ok(entry))) = tokio::time::timeout_at(deadline, watch.next()).await {
            if let Some(stamp) = entry.value.get(..8) {
                let sent = u64::from_be_bytes(stamp.try_into().unwrap_or([0; 8]));
                if sent >= recorder.measuring_from_unix {
                    local.record_nanos(unix_nanos().saturating_sub(sent));
                }
            }
        }
    });
    let (_, written) = tokio::join!(
        futures::future::join_all(receive),
        paced_writer(args, recorder)
    );
    written
}

/// Puts stamped values directly to NATS at `--rate` per second.
pub async fn paced_writer(args: &BenchArgs, recorder: &Recorder) -> Result<(), String> {
    let store = store(args).await?;
    super::paced::paced_puts(args, recorder, |k, v| {
        let store = store.clone();
        async move { store.put(k, v.into()).await.is_ok() }
    })
    .await;
    Ok(())
}
