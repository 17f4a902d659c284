//! `nearkv bench` in smoke mode: every target and the main workloads run and report numbers.
//! (Timings are never asserted: the machines are shared and noisy.)

use std::process::Command;

use crate::harness::{bucket, NatsServer, Sidecar};

fn bench(socket: &std::path::Path, nats: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .arg("--socket")
        .arg(socket)
        .args([
            "--json",
            "bench",
            "--quiet",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
        ])
        .args(["--nats-url", nats, "--keys", "200"])
        .args(args)
        .output()
        .expect("nearkv bench runs");
    assert!(
        out.status.success(),
        "nearkv bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_target_and_workload() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("bench")]).await;
    sidecar.synced_client().await;
    let url = nats.url();
    for args in [
        vec!["--workload", "get"],
        vec!["--workload", "get", "--connections", "4", "--pipeline", "8"],
        vec!["--workload", "mget"],
        vec!["--workload", "put"],
        vec!["--workload", "cas", "--pipeline", "4"],
        vec!["--workload", "mixed"],
        vec!["--workload", "get", "--against", "nats"],
        vec!["--workload", "cas", "--against", "nats"],
        vec!["--workload", "get", "--against", "raw", "--pipeline", "4"],
        vec!["--workload", "get", "--preencoded", "--pipeline", "8"],
        // RESP, pre-encoded, on the sidecar's Redis face.
        vec!["--workload", "get", "--against", "redis", "--pipeline", "8"],
        vec!["--workload", "watch", "--rate", "200"],
        vec!["--workload", "watch", "--rate", "200", "--against", "nats"],
        vec!["--workload", "snapshot", "--against", "nats"],
    ] {
        let report = bench(&sidecar.socket, &url, &args);
        assert!(report["ops"].as_u64().unwrap() > 0, "{args:?}: {report}");
        assert_eq!(report["errors"], 0, "{args:?}: {report}");
        assert!(
            report["p50_us"].as_f64().unwrap() > 0.0,
            "{args:?}: {report}"
        );
    }
    sidecar.stop().await;
}
