//! Prometheus metrics, in base units, labelled by `bucket` (and `op`, `code` where they apply),
//! never by key. docs/METRICS.md lists each one.
//!
//! Request counters are updated on the request path; the mirror's state (keys, bytes, revisions,
//! lag, synced) is read from the cache when Prometheus scrapes, so applying an update costs no
//! metric work at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::local::LocalHistogram;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cache::Cache;
use crate::cmd::{Op, Outcome};
use crate::error::ErrorCode;

/// One bucket's request-path metrics, resolved once so that counting a request takes no lock:
/// `MetricVec::with_label_values` takes a read lock shared by every connection.
struct BucketMetrics {
    requests: Vec<IntCounter>,
    duration: Vec<Histogram>,
    hits: IntCounter,
    misses: IntCounter,
}

/// Metrics updated on the request path.
pub struct Metrics {
    registry: Registry,
    by_bucket: HashMap<String, BucketMetrics, ahash::RandomState>,
    requests: IntCounterVec,
    duration: HistogramVec,
    errors: IntCounterVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    write_conflicts: IntCounterVec,
    pub connections: IntGauge,
    connections_refused: IntCounterVec,
    pub slow_clients: IntCounter,
    pub watches: IntGauge,
    watch_delivered: IntCounterVec,
    watch_dropped: IntCounterVec,
    pub nats_reconnects: IntCounter,
}

/// Builds a metric and registers it; the names and labels are fixed, so failure is a bug caught
/// by the tests.
fn registered<T: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    let metric = metric.unwrap_or_else(|err| panic!("invalid metric definition: {err}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|err| panic!("metric registered twice: {err}"));
    metric
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    /// Metrics for a sidecar serving `buckets`.
    pub fn new(buckets: &[&str]) -> Arc<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let metrics = Metrics {
            requests: counter(
                "nearkv_requests_total",
                "Requests answered, by bucket and op.",
                &["bucket", "op"],
            ),
            duration: registered(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "nearkv_request_duration_seconds",
                        "Time from reading a request to queueing its response, by bucket and op.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["bucket", "op"],
                ),
            ),
            errors: counter(
                "nearkv_errors_total",
                "Requests answered with an error, by bucket, op and error code.",
                &["bucket", "op", "code"],
            ),
            cache_hits: counter(
                "nearkv_cache_hits_total",
                "get/mget keys found in the mirror.",
                &["bucket"],
            ),
            cache_misses: counter(
                "nearkv_cache_misses_total",
                "get/mget keys absent from the mirror (absent or deleted in the bucket).",
                &["bucket"],
            ),
            write_conflicts: counter(
                "nearkv_write_conflicts_total",
                "Writes refused with wrong_revision.",
                &["bucket"],
            ),
            connections: registered(
                r,
                IntGauge::new(
                    "nearkv_socket_connections",
                    "Open client connections on the socket.",
                ),
            ),
            connections_refused: counter(
                "nearkv_connections_refused_total",
                "Connections refused on accept or closed by the server, by error code \
                 (too_many_connections, forbidden, idle_timeout, frame_too_large, and timeout \
                 for a request that stopped arriving).",
                &["code"],
            ),
            slow_clients: registered(
                r,
                IntCounter::new(
                    "nearkv_slow_clients_disconnected_total",
                    "Connections closed because the client did not read its responses within \
                     socket.write_timeout.",
                ),
            ),
            watches: registered(
                r,
                IntGauge::new("nearkv_watches_active", "Active client watches."),
            ),
            watch_delivered: counter(
                "nearkv_watch_events_delivered_total",
                "Watch messages queued to clients.",
                &["bucket"],
            ),
            watch_dropped: counter(
                "nearkv_watch_events_dropped_total",
                "Updates a slow watch missed before it was ended with slow_consumer.",
                &["bucket"],
            ),
            nats_reconnects: registered(
                r,
                IntCounter::new(
                    "nearkv_nats_reconnects_total",
                    "Times the NATS connection was re-established.",
                ),
            ),
            registry,
            by_bucket: HashMap::default(),
        };
        let mut metrics = metrics;
        // "" stands for requests without a (known) bucket.
        for bucket in buckets.iter().copied().chain([""]) {
            let resolved = BucketMetrics {
                requests: Op::ALL
                    .iter()
                    .map(|op| metrics.requests.with_label_values(&[bucket, op.name()]))
                    .collect(),
                duration: Op::ALL
                    .iter()
                    .map(|op| metrics.duration.with_label_values(&[bucket, op.name()]))
                    .collect(),
                hits: metrics.cache_hits.with_label_values(&[bucket]),
                misses: metrics.cache_misses.with_label_values(&[bucket]),
            };
            metrics.by_bucket.insert(bucket.to_string(), resolved);
        }
        // Exported at 0 from the start, so that rates and alerts on them work before the first.
        for code in [
            ErrorCode::TooManyConnections,
            ErrorCode::Forbidden,
            ErrorCode::IdleTimeout,
            ErrorCode::FrameTooLarge,
        ] {
            metrics
                .connections_refused
                .with_label_values(&[code.as_str()]);
        }
        let process = prometheus::process_collector::ProcessCollector::for_self();
        let _ = metrics.registry.register(Box::new(process));
        Arc::new(metrics)
    }

    /// Adds the collector that reads the cache's state at scrape time.
    pub fn watch_cache(&self, cache: Arc<Cache>) {
        let _ = self.registry.register(Box::new(CacheCollector::new(cache)));
    }

    /// Adds a gauge with one label whose values `readings` give when Prometheus scrapes, so that
    /// what they read costs nothing between scrapes.
    pub fn gauge_at_scrape(
        &self,
        name: &str,
        help: &str,
        label: &str,
        readings: Vec<(&'static str, Reading)>,
    ) {
        let gauge = IntGaugeVec::new(Opts::new(name, help), &[label])
            .unwrap_or_else(|err| panic!("invalid metric definition: {err}"));
        let descs = gauge.desc().into_iter().cloned().collect();
        let collector = ScrapeGauge {
            gauge,
            descs,
            readings,
        };
        let _ = self.registry.register(Box::new(collector));
    }

    pub fn request(&self, bucket: &str, op: Op, seconds: f64, error: Option<ErrorCode>) {
        let slot = op.index();
        let op = op.name();
        match self.by_bucket.get(bucket) {
            Some(m) => {
                m.requests[slot].inc();
                m.duration[slot].observe(seconds);
            }
            None => {
                self.requests.with_label_values(&[bucket, op]).inc();
                self.duration
                    .with_label_values(&[bucket, op])
                    .observe(seconds);
            }
        }
        if let Some(code) = error {
            self.error(bucket, op, code);
        }
    }

    fn error(&self, bucket: &str, op: &str, code: ErrorCode) {
        self.errors
            .with_label_values(&[bucket, op, code.as_str()])
            .inc();
        if code == ErrorCode::WrongRevision {
            self.write_conflicts.with_label_values(&[bucket]).inc();
        }
    }

    /// A connection's tally of the requests it answers from memory.
    pub fn tally(self: &Arc<Self>) -> ReadTally {
        ReadTally {
            metrics: self.clone(),
            since: None,
            counts: Vec::new(),
        }
    }

    pub fn lookups(&self, bucket: &str, hits: u64, misses: u64) {
        match self.by_bucket.get(bucket) {
            Some(m) => {
                m.hits.inc_by(hits);
                m.misses.inc_by(misses);
            }
            None => {
                self.cache_hits.with_label_values(&[bucket]).inc_by(hits);
                self.cache_misses
                    .with_label_values(&[bucket])
                    .inc_by(misses);
            }
        }
    }

    /// Counts a connection the server refused or closed, by the code it was sent.
    pub fn connection_refused(&self, code: ErrorCode) {
        self.connections_refused
            .with_label_values(&[code.as_str()])
            .inc();
    }

    pub fn watch_delivered(&self, bucket: &str) -> IntCounter {
        self.watch_delivered.with_label_values(&[bucket])
    }

    pub fn watch_dropped(&self, bucket: &str, missed: u64) {
        self.watch_dropped
            .with_label_values(&[bucket])
            .inc_by(missed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The requests one connection answers from memory, counted locally and added to the shared
/// metrics once per burst of them.
///
/// The shared counters and histograms are atomics that every core writes, and timing each read
/// took two precise clock reads: on pipelined GETs the two together cost more than the lookup.
/// So a burst's reads are timed together: each is recorded with the time from the start of the
/// burst's first read to [`ReadTally::flush`], which the connection calls before it sends the
/// burst's replies or runs a command that waits. A read at the end of a burst did wait that
/// long for its reply to be sent; one at the start is recorded a little slower than it was.
pub struct ReadTally {
    metrics: Arc<Metrics>,
    since: Option<Instant>,
    counts: Vec<Tallied>,
}

/// One bucket and op's requests since the last flush.
struct Tallied {
    bucket: String,
    op: Op,
    requests: u64,
    hits: u64,
    misses: u64,
    duration: LocalHistogram,
}

impl ReadTally {
    /// Marks the start of a request answered from memory; the first of a burst starts its clock.
    pub fn start(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// Counts a request answered from memory, begun with [`ReadTally::start`].
    pub fn count(&mut self, bucket: &str, op: Op, outcome: Outcome) {
        if let Some(code) = outcome.error {
            self.metrics.error(bucket, op.name(), code);
        }
        let index = match self
            .counts
            .iter()
            .position(|t| t.op == op && t.bucket == bucket)
        {
            Some(index) => index,
            None => {
                let Some(resolved) = self.metrics.by_bucket.get(bucket) else {
                    // Not a configured bucket's label: counted at once, as a waiting request is.
                    let seconds = self.since.map_or(0.0, |s| s.elapsed().as_secs_f64());
                    self.metrics.request(bucket, op, seconds, None);
                    return;
                };
                self.counts.push(Tallied {
                    bucket: bucket.to_string(),
                    op,
                    requests: 0,
                    hits: 0,
                    misses: 0,
                    duration: resolved.duration[op.index()].local(),
                });
                self.counts.len() - 1
            }
        };
        let tallied = &mut self.counts[index];
        tallied.requests += 1;
        tallied.hits += outcome.lookups.0;
        tallied.misses += outcome.lookups.1;
    }

    /// Adds what was counted since the last flush to the shared metrics.
    pub fn flush(&mut self) {
        let Some(since) = self.since.take() else {
            return;
        };
        let seconds = since.elapsed().as_secs_f64();
        for tallied in &mut self.counts {
            if tallied.requests == 0 {
                continue;
            }
            if let Some(resolved) = self.metrics.by_bucket.get(&tallied.bucket) {
                let op = tallied.op.index();
                resolved.requests[op].inc_by(tallied.requests);
                for _ in 0..tallied.requests {
                    tallied.duration.observe(seconds);
                }
                tallied.duration.flush();
                if tallied.hits > 0 {
                    resolved.hits.inc_by(tallied.hits);
                }
                if tallied.misses > 0 {
                    resolved.misses.inc_by(tallied.misses);
                }
            }
            tallied.requests = 0;
            tallied.hits = 0;
            tallied.misses = 0;
        }
    }
}

impl Drop for ReadTally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Reads each bucket's mirror state when Prometheus scrapes.
struct CacheCollector {
    cache: Arc<Cache>,
    gauges: Mutex<Gauges>,
    descs: Vec<Desc>,
}

struct Gauges {
    keys: IntGaugeVec,
    bytes: IntGaugeVec,
    revision: IntGaugeVec,
    server_revision: IntGaugeVec,
    lag: IntGaugeVec,
    last_event: IntGaugeVec,
    synced: IntGaugeVec,
    watcher_restarts: IntCounterVec,
    rebuilds: IntCounterVec,
    skipped: IntCounterVec,
    strong_read_fetches: IntCounterVec,
    saves: IntCounterVec,
    save_failures: IntCounterVec,
    warm_starts: IntCounterVec,
    saved_rejected: IntCounterVec,
    age: GaugeVec,
    stale: IntGaugeVec,
    nats_connected: IntGauge,
}

impl CacheCollector {
    fn new(cache: Arc<Cache>) -> CacheCollector {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["bucket"])
                .unwrap_or_else(|err| panic!("invalid metric definition: {err}"))
        };
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["bucket"])
                .unwrap_or_else(|err| panic!("invalid metric definition: {err}"))
        };
        let gauges = Gauges {
            keys: gauge("nearkv_mirror_keys", "Live keys in the mirror."),
            bytes: gauge("nearkv_mirror_bytes", "Bytes of keys and values in the mirror."),
            revision: gauge("nearkv_mirror_revision", "Highest revision the mirror has applied."),
            server_revision: gauge(
                "nearkv_stream_revision",
                "Latest revision of the bucket's stream, as last learned from NATS.",
            ),
            lag: gauge(
                "nearkv_mirror_lag_revisions",
                "Revisions the stream is ahead of the mirror (stream revision minus mirror revision).",
            ),
            last_event: gauge(
                "nearkv_mirror_last_event_timestamp_seconds",
                "Unix time of the last update the mirror applied (0: none yet).",
            ),
            synced: gauge("nearkv_mirror_synced", "1 once the initial snapshot is applied, else 0."),
            watcher_restarts: counter(
                "nearkv_watcher_restarts_total",
                "Times a bucket's change feed was recreated after a loss.",
            ),
            rebuilds: counter(
                "nearkv_mirror_rebuilds_total",
                "Times a mirror was reloaded from a fresh snapshot after its initial sync (stream purged, recreated or history lost).",
            ),
            skipped: counter(
                "nearkv_mirror_revisions_skipped_total",
                "Revisions the mirror never saw because NATS had already discarded them (superseded \
                 history beyond the bucket's history setting); counted for unfiltered mirrors.",
            ),
            strong_read_fetches: counter(
                "nearkv_strong_read_fetches_total",
                "NATS requests made for strong reads; strong reads that arrive together share one.",
            ),
            saves: counter(
                "nearkv_mirror_saves_total",
                "Times the mirror was saved to cache.state_dir for a warm start.",
            ),
            save_failures: counter(
                "nearkv_mirror_save_failures_total",
                "Saves of the mirror to cache.state_dir that failed (see the log).",
            ),
            warm_starts: counter(
                "nearkv_mirror_warm_starts_total",
                "Starts that restored the saved mirror and caught up from its revision instead of a full snapshot.",
            ),
            saved_rejected: counter(
                "nearkv_mirror_saved_rejected_total",
                "Saved mirrors not used (damaged, foreign, from a recreated bucket, older than the stream's history): a cold start instead.",
            ),
            age: GaugeVec::new(
                Opts::new(
                    "nearkv_mirror_age_seconds",
                    "Seconds since NATS last confirmed the mirror current (the age_ms of reads).",
                ),
                &["bucket"],
            )
            .unwrap_or_else(|err| panic!("invalid metric definition: {err}")),
            stale: gauge(
                "nearkv_mirror_stale",
                "1 while the mirror's age exceeds the bucket's max_staleness (reads fail with stale), else 0.",
            ),
            nats_connected: IntGauge::new("nearkv_nats_connected", "1 while the NATS connection is up, else 0.")
                .unwrap_or_else(|err| panic!("invalid metric definition: {err}")),
        };
        let mut descs = Vec::new();
        for collector in gauges.collectors() {
            descs.extend(collector.desc().into_iter().cloned());
        }
        CacheCollector {
            cache,
            gauges: Mutex::new(gauges),
            descs,
        }
    }
}

impl Gauges {
    fn collectors(&self) -> [&dyn Collector; 18] {
        [
            &self.keys,
            &self.bytes,
            &self.revision,
            &self.server_revision,
            &self.lag,
            &self.last_event,
            &self.synced,
            &self.watcher_restarts,
            &self.rebuilds,
            &self.skipped,
            &self.strong_read_fetches,
            &self.saves,
            &self.save_failures,
            &self.warm_starts,
            &self.saved_rejected,
            &self.age,
            &self.stale,
            &self.nats_connected,
        ]
    }
}

impl Collector for CacheCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(g) = self.gauges.lock() else {
            return Vec::new();
        };
        for bucket in self.cache.buckets() {
            let s = bucket.status();
            let name = [s.bucket.as_str()];
            let saved = bucket.save_stats();
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            g.keys.with_label_values(&name).set(clamp(s.keys));
            g.bytes.with_label_values(&name).set(clamp(s.bytes));
            g.revision.with_label_values(&name).set(clamp(s.revision));
            g.server_revision
                .with_label_values(&name)
                .set(clamp(s.server_revision));
            g.lag.with_label_values(&name).set(clamp(s.lag));
            g.last_event
                .with_label_values(&name)
                .set(s.last_update / 1_000_000_000);
            g.synced.with_label_values(&name).set(i64::from(s.synced));
            let counters = [
                (&g.watcher_restarts, bucket.watcher_restarts()),
                (&g.rebuilds, s.rebuilds),
                (&g.skipped, bucket.skipped_revisions()),
                (&g.strong_read_fetches, bucket.strong_read_fetches()),
                (&g.saves, saved.saves),
                (&g.save_failures, saved.save_failures),
                (&g.warm_starts, saved.warm_starts),
                (&g.saved_rejected, saved.rejected),
            ];
            for (counter, total) in counters {
                let counter = counter.with_label_values(&name);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
            if let Some(ms) = s.age_ms {
                g.age.with_label_values(&name).set(ms as f64 / 1000.0);
            }
            g.stale.with_label_values(&name).set(i64::from(s.stale));
        }
        g.nats_connected.set(i64::from(
            self.cache.nats_client().connection_state() == async_nats::connection::State::Connected,
        ));
        g.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}

/// What a [`Metrics::gauge_at_scrape`] gauge shows for one label value.
pub type Reading = Box<dyn Fn() -> i64 + Send + Sync>;

struct ScrapeGauge {
    gauge: IntGaugeVec,
    descs: Vec<Desc>,
    readings: Vec<(&'static str, Reading)>,
}

impl Collector for ScrapeGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (value, read) in &self.readings {
            self.gauge.with_label_values(&[value]).set(read());
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, start: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(start))
            .map(|l| l[start.len()..].trim().to_string())
    }

    #[test]
    fn a_gauge_at_scrape_shows_what_its_readings_read_then() {
        let metrics = Metrics::new(&["b"]);
        let held = Arc::new(std::sync::atomic::AtomicI64::new(5));
        let read = held.clone();
        metrics.gauge_at_scrape(
            "nearkv_test_bytes",
            "Bytes held.",
            "part",
            vec![
                (
                    "one",
                    Box::new(move || read.load(std::sync::atomic::Ordering::Relaxed)),
                ),
                ("two", Box::new(|| 7)),
            ],
        );
        assert_eq!(
            line(&metrics.render(), "nearkv_test_bytes{part=\"one\"}").as_deref(),
            Some("5")
        );
        held.store(9, std::sync::atomic::Ordering::Relaxed);
        let text = metrics.render();
        assert_eq!(
            line(&text, "nearkv_test_bytes{part=\"one\"}").as_deref(),
            Some("9")
        );
        assert_eq!(
            line(&text, "nearkv_test_bytes{part=\"two\"}").as_deref(),
            Some("7")
        );
    }

    #[test]
    fn a_tally_reaches_the_shared_metrics_when_flushed_or_dropped() {
        let metrics = Metrics::new(&["b"]);
        let requests = |op: &str| {
            line(
                &metrics.render(),
                &format!("nearkv_requests_total{{bucket=\"b\",op=\"{op}\"}}"),
            )
        };
        let mut tally = metrics.tally();
        tally.start();
        tally.count("b", Op::Get, Outcome::lookups(1, 0));
        tally.count("b", Op::Get, Outcome::lookups(0, 1));
        tally.count("b", Op::Mget, Outcome::lookups(2, 1));
        assert_eq!(requests("get").as_deref(), Some("0"));

        tally.flush();
        let text = metrics.render();
        assert_eq!(requests("get").as_deref(), Some("2"));
        assert_eq!(requests("mget").as_deref(), Some("1"));
        assert_eq!(
            line(&text, "nearkv_cache_hits_total{bucket=\"b\"}").as_deref(),
            Some("3")
        );
        assert_eq!(
            line(&text, "nearkv_cache_misses_total{bucket=\"b\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            line(
                &text,
                "nearkv_request_duration_seconds_count{bucket=\"b\",op=\"get\"}"
            )
            .as_deref(),
            Some("2")
        );

        // An error is counted at once; the request itself with its burst.
        tally.start();
        let failed = Outcome {
            error: Some(ErrorCode::NotReady),
            lookups: (0, 0),
        };
        tally.count("b", Op::Get, failed);
        assert_eq!(
            line(
                &metrics.render(),
                "nearkv_errors_total{bucket=\"b\",code=\"not_ready\",op=\"get\"}"
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(requests("get").as_deref(), Some("2"));
        drop(tally);
        assert_eq!(requests("get").as_deref(), Some("3"));
    }
}
