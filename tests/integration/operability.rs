//! What operators see: /metrics moving by the right amounts, /healthz, /readyz through the
//! initial sync and a NATS outage, and the Grafana dashboard querying only exported metrics.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use nearkv::protocol::WriteOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{bucket, eventually, http_get, NatsServer, Sidecar, SidecarProcess};

/// The value of one sample, e.g. `nearkv_requests_total{bucket="m",op="put"}`; 0 when absent.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap_or(0.0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_hits_conflicts_and_watch_events() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("m")]).await;
    let client = sidecar.synced_client().await;
    let mut watch = client.watch("m", None, false).await.unwrap();

    let mut revision = 0;
    for i in 0..10 {
        revision = client
            .put("m", &format!("k{i}"), b"0123456789")
            .await
            .unwrap();
    }
    for i in 0..5 {
        assert!(client.get("m", &format!("k{i}")).await.unwrap().is_some());
    }
    for i in 0..3 {
        assert!(client
            .get("m", &format!("absent{i}"))
            .await
            .unwrap()
            .is_none());
    }
    let stale = WriteOptions::expecting(Some(1));
    assert!(client.put_with("m", "k9", b"x", stale).await.is_err());
    assert!(client.get("nope", "k").await.is_err());
    for _ in 0..10 {
        watch.next().await.unwrap().unwrap();
    }

    let (status, metrics) = http_get(&sidecar.http, "/metrics").await;
    assert_eq!(status, 200);
    let m = |name: &str, labels: &[(&str, &str)]| sample(&metrics, name, labels);
    assert_eq!(
        m("nearkv_requests_total", &[("bucket", "m"), ("op", "put")]),
        11.0
    );
    assert_eq!(
        m("nearkv_requests_total", &[("bucket", "m"), ("op", "get")]),
        8.0
    );
    assert_eq!(
        m("nearkv_requests_total", &[("bucket", ""), ("op", "get")]),
        1.0,
        "unknown buckets share one label"
    );
    assert_eq!(
        m(
            "nearkv_request_duration_seconds_count",
            &[("bucket", "m"), ("op", "put")]
        ),
        11.0
    );
    assert_eq!(m("nearkv_cache_hits_total", &[("bucket", "m")]), 5.0);
    assert_eq!(m("nearkv_cache_misses_total", &[("bucket", "m")]), 3.0);
    assert_eq!(m("nearkv_write_conflicts_total", &[("bucket", "m")]), 1.0);
    assert_eq!(
        m(
            "nearkv_errors_total",
            &[("bucket", "m"), ("op", "put"), ("code", "wrong_revision")]
        ),
        1.0
    );
    assert_eq!(m("nearkv_errors_total", &[("code", "unknown_bucket")]), 1.0);
    assert_eq!(m("nearkv_mirror_keys", &[("bucket", "m")]), 10.0);
    assert_eq!(
        m("nearkv_mirror_bytes", &[("bucket", "m")]),
        10.0 * (2.0 + 10.0)
    );
    assert_eq!(
        m("nearkv_mirror_revision", &[("bucket", "m")]),
        revision as f64
    );
    assert_eq!(m("nearkv_mirror_synced", &[("bucket", "m")]), 1.0);
    assert_eq!(m("nearkv_mirror_lag_revisions", &[("bucket", "m")]), 0.0);
    assert!(
        m(
            "nearkv_mirror_last_event_timestamp_seconds",
            &[("bucket", "m")]
        ) > 1.6e9
    );
    assert_eq!(
        m("nearkv_watch_events_delivered_total", &[("bucket", "m")]),
        10.0
    );
    assert_eq!(m("nearkv_watches_active", &[]), 1.0);
    assert_eq!(m("nearkv_socket_connections", &[]), 1.0);
    assert_eq!(m("nearkv_nats_connected", &[]), 1.0);
    assert!(m("process_resident_memory_bytes", &[]) > 0.0);
    assert!(!metrics.contains("k0"), "no per-key labels");

    let (status, body) = http_get(&sidecar.http, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    drop(watch);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_latches_after_the_initial_sync_and_survives_a_nats_outage() {
    let mut nats = NatsServer::start().await;
    // A bucket big enough that its initial sync can be observed from outside.
    let kv = nats.kv("big").await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut acks = Vec::new();
    for i in 0..100_000u32 {
        acks.push(
            js.publish(format!("$KV.big.key{i}"), "0123456789".into())
                .await
                .unwrap(),
        );
        if acks.len() == 2_000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    drop(kv);

    let sidecar = Sidecar::start(&nats.url(), vec![bucket("big")]).await;
    let (status, body) = http_get(&sidecar.http, "/readyz").await;
    assert_eq!(status, 503, "not ready before the initial sync: {body}");
    assert!(body.contains("big: not ready"), "{body}");
    eventually(Duration::from_secs(60), "/readyz to turn 200", || async {
        http_get(&sidecar.http, "/readyz").await.0 == 200
    })
    .await;
    let client = sidecar.client().await;
    assert_eq!(client.status(Some("big")).await.unwrap()[0].keys, 100_000);

    // NATS goes away for longer than the Kubernetes example's readiness window (3 failures 5 s
    // apart): the sidecar stays ready, since it serves reads from memory (fail-static); only
    // the body says NATS is away.
    nats.stop();
    eventually(
        Duration::from_secs(20),
        "the sidecar to see NATS gone",
        || async { !client.status(Some("big")).await.unwrap()[0].connected },
    )
    .await;
    let until = std::time::Instant::now() + Duration::from_secs(16);
    let mut probes = 0;
    while std::time::Instant::now() < until {
        let (status, body) = http_get(&sidecar.http, "/readyz").await;
        assert_eq!(status, 200, "a NATS outage made /readyz fail: {body}");
        assert!(body.contains("NATS is not connected"), "{body}");
        assert!(client.get("big", "key7").await.unwrap().is_some());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(probes >= 10);
    println!(
        "NATS outage of 16 s: /readyz answered 200 to {probes} of {probes} probes; reads served"
    );
    assert_eq!(http_get(&sidecar.http, "/healthz").await.0, 200);
    nats.restart().await;
    eventually(
        Duration::from_secs(20),
        "/readyz to say NATS is back",
        || async {
            let (status, body) = http_get(&sidecar.http, "/readyz").await;
            status == 200 && body.trim() == "big: ready"
        },
    )
    .await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_nearkv_exports() {
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/nearkv-dashboard.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("nearkv_") || word.starts_with("process_") {
                    queried.insert(word.to_string());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");

    // Exercise every metric so each has a series, then scrape.
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("d")]).await;
    let client = sidecar.synced_client().await;
    let mut watch = client.watch("d", None, false).await.unwrap();
    let r = client.put("d", "k", b"v").await.unwrap();
    watch.next().await.unwrap().unwrap();
    drop(watch);
    client.get("d", "k").await.unwrap();
    client.get("d", "absent").await.unwrap();
    let conflict = WriteOptions::expecting(Some(r + 100));
    assert!(client.put_with("d", "k", b"v", conflict).await.is_err());
    eventually(Duration::from_secs(10), "the watch to end", || async {
        let (_, metrics) = http_get(&sidecar.http, "/metrics").await;
        sample(&metrics, "nearkv_watches_active", &[]) == 0.0
    })
    .await;
    let (_, metrics) = http_get(&sidecar.http, "/metrics").await;
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nearkv does not export: {missing:?}"
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_port_disables_the_endpoint_not_the_sidecar() {
    let nats = NatsServer::start().await;
    let first = Sidecar::start(&nats.url(), vec![bucket("h")]).await;
    let port = first.http.clone();
    let second = Sidecar::start_with(&nats.url(), vec![bucket("h")], move |c| {
        c.http.listen = port
    })
    .await;
    let client = second.synced_client().await;
    client.put("h", "k", b"v").await.unwrap();
    assert_eq!(
        client.get("h", "k").await.unwrap().unwrap().value.as_ref(),
        b"v"
    );
    // The port still belongs to the first sidecar.
    assert_eq!(http_get(&first.http, "/healthz").await.0, 200);
    second.stop().await;
    first.stop().await;
}

/// A client that opens many HTTP connections and never finishes a request keeps neither the
/// probes out nor the descriptors: past 256 open connections the oldest is closed, and a
/// connection is closed 10 s after it last completed a request (or opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_that_never_finish_a_request_neither_block_probes_nor_pile_up() {
    let nats = NatsServer::start().await;
    let mut sidecar = SidecarProcess::start(&nats.url(), &["slow"], &[]).await;
    eventually(Duration::from_secs(20), "/readyz to turn 200", || async {
        http_get(&sidecar.http, "/readyz").await.0 == 200
    })
    .await;
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", sidecar.pid()))
            .expect("the sidecar's descriptors")
            .count()
    };
    let idle = descriptors();

    let mut held = Vec::new();
    for _ in 0..600 {
        let mut stream = TcpStream::connect(&sidecar.http).await.unwrap();
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    let (status, body) = http_get(&sidecar.http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(&sidecar.http, "/healthz").await.0, 200);
    let open = descriptors() - idle;
    assert!(
        (200..=260).contains(&open),
        "600 unfinished requests hold {open} descriptors; at most 256 connections stay open"
    );

    // The oldest were closed at once, the rest within the header timeout; each sees the end.
    let mut ended = 0;
    for stream in &mut held {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest));
        if matches!(read.await, Ok(Ok(_)) | Ok(Err(_))) {
            ended += 1;
        }
    }
    assert_eq!(ended, 600, "connections left open past the header timeout");
    eventually(
        Duration::from_secs(5),
        "the sidecar to close its side",
        || async { descriptors() <= idle },
    )
    .await;
    assert!(sidecar.terminate().await, "a clean exit after the flood");
}
