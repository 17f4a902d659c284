//! Writes at a steady rate, for the watch-latency workloads (through the socket or directly).

use std::time::Duration;

use super::{unix_nanos, value, BenchArgs, Recorder};

/// Calls `put` `--rate` times per second with stamped values until the run ends.
pub async fn paced_puts<F, Fut>(args: &BenchArgs, recorder: &Recorder, put: F)
where
    F: Fn(String, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0usize;
    while !recorder.done() {
        ticks.tick().await;
        let k = format!("watch.{}", i % args.keys);
        i += 1;
        put(k, value(args.value_size, unix_nanos())).await;
    }
}
