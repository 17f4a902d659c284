//! `nearkv bench`: a load generator in the manner of `redis-benchmark` and `nats bench`.
//!
//! The same workload runs against nearkv's socket, against direct async-nats KV calls
//! (`--against nats`) and against a raw length-prefixed Unix-socket server (`--against raw`, the
//! floor any socket protocol pays), so the ratios in docs/BENCHMARKS.md come from one run on one
//! machine.

mod direct;
mod paced;
mod preencoded;
pub mod raw;
mod socket;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// nearkv's Unix socket (`--socket`).
    Nearkv,
    /// Direct async-nats KV calls to NATS (`--nats-url`).
    Nats,
    /// A raw Unix-socket server answering a 4-byte length prefix with a value from a map,
    /// started by the bench as a separate process: the floor of any socket round trip.
    Raw,
    /// A Redis server's Unix socket (`--socket`), or nearkv's Redis face: pre-encoded GETs of
    /// `<bucket>:<key>` in RESP (the working set is written with SET first). `get` only.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Reads of random keys.
    Get,
    /// Reads of `--mget-keys` random keys per request.
    Mget,
    /// Unconditional writes of random keys.
    Put,
    /// Compare-and-set writes: each worker updates its own keys with the revision it last wrote.
    Cas,
    /// `--read-ratio` gets, the rest puts.
    Mixed,
    /// Put→watch delivery: puts at `--rate` per second; each watcher measures the delay from the
    /// put to the event (the writer goes through NATS, or through `--write-socket`).
    Watch,
    /// Writes every key once (to prepare a bucket); reports the write rate.
    Seed,
    /// Time for a fresh KV watcher to receive the bucket's snapshot (`--against nats` only).
    Snapshot,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "get")]
    pub workload: Workload,
    #[arg(long, value_enum, default_value = "nearkv")]
    pub against: Target,
    /// Connections (clients for `--against nats`).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Keys in the working set.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// For `mixed`: the share of gets.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// For `mget`: keys per request.
    #[arg(long, default_value_t = 10)]
    pub mget_keys: usize,
    /// For `watch`: puts per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// For `watch`: write through this nearkv socket instead of directly to NATS.
    #[arg(long)]
    pub write_socket: Option<PathBuf>,
    /// The bucket (created with history 1 if missing; nearkv must mirror it).
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Skip writing the working set before a read workload.
    #[arg(long)]
    pub no_seed: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// For `get` against nearkv: encode the requests before the clock starts and read the
    /// replies in order, exactly as `--against redis` does, so that the two compare like for
    /// like.
    #[arg(long)]
    pub preencoded: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: Target,
    pub workload: Workload,
    pub connections: usize,
    pub pipeline: usize,
    pub value_size: usize,
    pub seconds: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Report {
    pub fn line(&self) -> String {
        format!(
            "{:<7} {:<8} conns={:<3} pipeline={:<3} {:>12.0} ops/s  p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  ({} ops, {} errors)",
            format!("{:?}", self.target).to_lowercase(),
            format!("{:?}", self.workload).to_lowercase(),
            self.connections,
            self.pipeline,
            self.ops_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.ops,
            self.errors
        )
    }
}

/// Latencies and counts shared by the workers of a run; each worker records into its own
/// histogram and merges it at the end, so recording takes no lock.
pub(crate) struct Recorder {
    pub measuring_from: Instant,
    /// `measuring_from` as Unix nanoseconds, for latencies stamped into values.
    pub measuring_from_unix: u64,
    pub until: Instant,
    /// Distinguishes this run's keys from earlier runs' (for `cas`).
    pub run_id: u64,
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    merged: std::sync::Mutex<Histogram<u64>>,
}

impl Recorder {
    fn new(warmup: Duration, duration: Duration) -> Arc<Recorder> {
        let now = Instant::now();
        Arc::new(Recorder {
            measuring_from: now + warmup,
            measuring_from_unix: unix_nanos() + warmup.as_nanos() as u64,
            until: now + warmup + duration,
            run_id: unix_nanos(),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            merged: std::sync::Mutex::new(new_histogram()),
        })
    }

    pub fn merge(&self, local: &Histogram<u64>) {
        if let Ok(mut merged) = self.merged.lock() {
            let _ = merged.add(local);
        }
    }

    pub fn done(&self) -> bool {
        Instant::now() >= self.until
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Nanoseconds from 1 ns to 60 s at 3 significant digits; the bounds are valid, so this holds.
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// One worker's view: records a completed op if it started inside the measuring window.
pub(crate) struct Local<'a> {
    pub recorder: &'a Recorder,
    pub histogram: Histogram<u64>,
}

impl<'a> Local<'a> {
    pub fn new(recorder: &'a Recorder) -> Self {
        Local {
            recorder,
            histogram: new_histogram(),
        }
    }

    pub fn record(&mut self, started: Instant, ok: bool) {
        if started < self.recorder.measuring_from {
            return;
        }
        if ok {
            let nanos = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            let _ = self.histogram.record(nanos.max(1));
            self.recorder.ops.fetch_add(1, Ordering::Relaxed);
        } else {
            self.recorder.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_nanos(&mut self, nanos: u64) {
        let _ = self.histogram.record(nanos.max(1));
        self.recorder.ops.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Local<'_> {
    fn drop(&mut self) {
        self.recorder.merge(&self.histogram);
    }
}

/// Keys of the working set: `key-000000`, `key-000001`, ...
pub(crate) fn key(i: usize) -> String {
    format!("key-{i:07}")
}

/// The keys a worker uses. A `cas` worker owns keys that are new in every run, so the first
/// compare-and-set of each is a create (`expect_revision` 0) and every later one expects the
/// revision the worker last wrote.
pub(crate) fn working_set(args: &BenchArgs, recorder: &Recorder, worker: u64) -> Vec<String> {
    match args.workload {
        Workload::Cas => (0..args.keys)
            .map(|i| format!("cas-{}-{worker}-{i}", recorder.run_id))
            .collect(),
        _ => (0..args.keys).map(key).collect(),
    }
}

/// A tiny xorshift generator: random enough to spread keys, free of locks and syscalls.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.below(1_000_000) as f64) < p * 1_000_000.0
    }
}

/// Runs the benchmark described by `args` and returns its report.
pub async fn run(args: &BenchArgs, socket: &std::path::Path) -> Result<Report, String> {
    if args.connections == 0 || args.pipeline == 0 || args.keys == 0 {
        return Err("--connections, --pipeline and --keys must be at least 1".to_string());
    }
    if args.against == Target::Nearkv
        && !matches!(args.workload, Workload::Snapshot | Workload::Seed)
    {
        socket::check_mirrored(socket, &args.bucket).await?;
    }
    let needs_seed = matches!(
        args.workload,
        Workload::Get | Workload::Mget | Workload::Mixed
    );
    if (args.against == Target::Redis || args.preencoded) && args.workload != Workload::Get {
        return Err("--against redis and --preencoded run the get workload only".to_string());
    }
    let seeds_nats = !matches!(args.against, Target::Raw | Target::Redis);
    let last_revision = if needs_seed && !args.no_seed && seeds_nats {
        direct::seed(args, false).await?.1
    } else {
        0
    };
    if args.against == Target::Redis && !args.no_seed {
        preencoded::seed_resp(args, socket).await?;
    }
    if args.against == Target::Nearkv && last_revision > 0 {
        socket::wait_for_revision(socket, &args.bucket, last_revision).await?;
    }
    let recorder = Recorder::new(args.warmup, args.duration);
    let progress = (!args.quiet).then(|| tokio::spawn(progress(recorder.clone())));
    let started = Instant::now();
    let outcome = match (args.against, args.workload) {
        (_, Workload::Seed) => direct::seed(args, true).await.map(|(report, _)| Some(report)),
        (Target::Nats, Workload::Snapshot) => direct::snapshot(args).await.map(Some),
        (_, Workload::Snapshot) => Err("the snapshot workload runs --against nats only; time nearkv's readiness instead (scripts/bench.sh does)".to_string()),
        (Target::Nearkv, Workload::Watch) => socket::watch(args, socket, &recorder).await.map(|()| None),
        (Target::Nats, Workload::Watch) => direct::watch(args, &recorder).await.map(|()| None),
        (Target::Raw, Workload::Watch) => Err("the raw target has no watch".to_string()),
        (Target::Redis, _) => preencoded::load(args, socket, preencoded::Protocol::Resp, &recorder).await.map(|()| None),
        (Target::Nearkv, _) if args.preencoded => preencoded::load(args, socket, preencoded::Protocol::V1, &recorder).await.map(|()| None),
        (Target::Nearkv, _) => socket::load(args, socket, &recorder).await.map(|()| None),
        (Target::Nats, _) => direct::load(args, &recorder).await.map(|()| None),
        (Target::Raw, _) => raw::load(args, &recorder).await.map(|()| None),
    };
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    if let Some(report) = outcome? {
        return Ok(report);
    }
    let seconds = started
        .elapsed()
        .saturating_sub(args.warmup)
        .as_secs_f64()
        .max(1e-9);
    let histogram = recorder
        .merged
        .lock()
        .map_err(|_| "a worker panicked".to_string())?
        .clone();
    Ok(report_from(
        args,
        &histogram,
        recorder.errors.load(Ordering::Relaxed),
        seconds,
    ))
}

pub(crate) fn report_from(
    args: &BenchArgs,
    histogram: &Histogram<u64>,
    errors: u64,
    seconds: f64,
) -> Report {
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Report {
        target: args.against,
        workload: args.workload,
        connections: args.connections,
        pipeline: args.pipeline,
        value_size: args.value_size,
        seconds,
        ops: histogram.len(),
        errors,
        ops_per_sec: histogram.len() as f64 / seconds,
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: histogram.max() as f64 / 1000.0,
    }
}

async fn progress(recorder: Arc<Recorder>) {
    let mut last = 0;
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let ops = recorder.ops.load(Ordering::Relaxed);
        let phase = if Instant::now() < recorder.measuring_from {
            "warmup"
        } else {
            "measuring"
        };
        eprint!(
            "\r{:>6.1}s {phase:<9} {:>12} ops {:>10} ops/s   ",
            start.elapsed().as_secs_f64(),
            ops,
            ops - last
        );
        last = ops;
    }
}

/// Writes the queued requests of a pipelining worker.
pub(crate) async fn flush(
    socket: &mut tokio::net::unix::OwnedWriteHalf,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    if !out.is_empty() {
        socket.write_all(out).await.map_err(|e| e.to_string())?;
        out.clear();
    }
    Ok(())
}

/// The next response of a pipelining worker.
pub(crate) async fn response<R: tokio::io::AsyncRead + Unpin>(
    frames: &mut nearkv::protocol::frame::FrameReader<R>,
    peer: &str,
) -> Result<bytes::Bytes, String> {
    frames
        .next_frame()
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{peer} closed the connection"))
}

/// A value of `size` bytes whose first 8 bytes carry `stamp` (for watch latency).
pub(crate) fn value(size: usize, stamp: u64) -> Vec<u8> {
    let mut v = vec![b'x'; size.max(8)];
    v[..8].copy_from_slice(&stamp.to_be_bytes());
    v.truncate(size.max(8));
    v
}

pub(crate) fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
