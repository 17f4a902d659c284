//! The `nearkv` command line, run as a separate process like a user or script runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{bucket, NatsServer, Sidecar};

fn nearkv(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .env("NEARKV_SOCKET", socket)
        .args(args)
        .output()
        .expect("nearkv runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_exit_codes_and_json() {
    let nats = NatsServer::start().await;
    let ttl = nearkv::config::BucketConfig {
        limit_markers: Duration::from_secs(1),
        ..bucket("ttl")
    };
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("shop_orders"), ttl]).await;
    sidecar.synced_client().await;
    let s = sidecar.socket.clone();
    let s = s.as_path();

    // A TTL: stored with the value; refused where the bucket does not allow it.
    assert_exit(
        &nearkv(s, &["put", "ttl", "session", "s", "--ttl", "30s"]),
        0,
    );
    let out = nearkv(s, &["put", "shop_orders", "session", "s", "--ttl", "30s"]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_request"));

    let out = nearkv(s, &["put", "shop_orders", "order-1", "{\"id\":1}"]);
    assert_exit(&out, 0);
    let r1: u64 = stdout(&out).trim().parse().unwrap();

    let out = nearkv(s, &["get", "shop_orders", "order-1"]);
    assert_exit(&out, 0);
    assert_eq!(out.stdout, b"{\"id\":1}", "get prints the raw value");

    let out = nearkv(s, &["--json", "get", "shop_orders", "order-1"]);
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["value"], "{\"id\":1}");
    assert_eq!(json["revision"], r1);
    assert_eq!(json["operation"], "put");
    // How fresh the answer is: the mirror's revision and age.
    assert!(json["mirror"]["revision"].as_u64().unwrap() >= r1);
    assert!(json["mirror"]["age_ms"].is_u64());
    let out = nearkv(s, &["get", "shop_orders", "order-1", "--allow-stale"]);
    assert_exit(&out, 0);

    // Missing key: exit 1.
    let out = nearkv(s, &["get", "shop_orders", "order-404"]);
    assert_exit(&out, 1);
    assert!(out.stdout.is_empty());

    // CAS through the CLI: conflict exits 2 with a one-line message, JSON error with --json.
    let out = nearkv(
        s,
        &[
            "put",
            "shop_orders",
            "order-1",
            "x",
            "--expect-revision",
            "0",
        ],
    );
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("wrong_revision"), "{err}");
    let out = nearkv(
        s,
        &[
            "--json",
            "put",
            "shop_orders",
            "order-1",
            "x",
            "--expect-revision",
            "99",
        ],
    );
    assert_exit(&out, 2);
    let json: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(json["error"]["code"], "wrong_revision");
    assert_eq!(json["error"]["current_revision"], r1);
    let r1s = r1.to_string();
    let out = nearkv(
        s,
        &[
            "--json",
            "put",
            "shop_orders",
            "order-1",
            "y",
            "--expect-revision",
            &r1s,
        ],
    );
    assert_exit(&out, 0);
    let r2 = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["revision"]
        .as_u64()
        .unwrap();
    assert!(r2 > r1);

    // VALUE `-` reads stdin, binary-safe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .env("NEARKV_SOCKET", s)
        .args(["put", "shop_orders", "blob", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&[0, 159, 146, 150, 10])
        .unwrap();
    assert_exit(&child.wait_with_output().unwrap(), 0);
    let out = nearkv(s, &["get", "shop_orders", "blob"]);
    assert_eq!(out.stdout, [0, 159, 146, 150, 10]);
    let out = nearkv(s, &["--json", "get", "shop_orders", "blob"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["value_base64"], "AJ+Slgo=");

    // keys, delete, purge, status.
    let out = nearkv(s, &["keys", "shop_orders"]);
    assert_eq!(stdout(&out), "blob\norder-1\n");
    let out = nearkv(s, &["--json", "keys", "shop_orders", "order-1"]);
    assert_eq!(stdout(&out).trim(), "[\"order-1\"]");
    let out = nearkv(s, &["keys", "shop_orders", "order-*"]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_key"));
    let out = nearkv(s, &["delete", "shop_orders", "blob"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).trim().parse::<u64>().unwrap() > r2);
    let out = nearkv(s, &["purge", "shop_orders", "order-1"]);
    assert_exit(&out, 0);
    assert_exit(&nearkv(s, &["get", "shop_orders", "order-1"]), 1);
    let out = nearkv(s, &["status"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("BUCKET"), "{}", stdout(&out));
    let out = nearkv(s, &["--json", "status", "shop_orders"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["buckets"][0]["bucket"], "shop_orders");
    assert_eq!(json["buckets"][0]["synced"], true);
    assert_eq!(json["buckets"][0]["keys"], 0);

    // Errors: unknown bucket, invalid key, no sidecar at the socket — each exit 2, one line.
    for args in [
        vec!["get", "nope", "k"],
        vec!["get", "shop_orders", "a..b"],
        vec![
            "--socket",
            "/nonexistent/nearkv.sock",
            "get",
            "shop_orders",
            "k",
        ],
    ] {
        let out = nearkv(s, &args);
        assert_exit(&out, 2);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr)
                .trim_end()
                .lines()
                .count(),
            1
        );
    }
    let err = String::from_utf8_lossy(&nearkv(s, &["get", "nope", "k"]).stderr).to_string();
    assert!(err.contains("unknown_bucket"), "{err}");
    // Every error line is `nearkv: <code>: <message>` with a documented code, the client's own
    // failures included; --json gives the same code.
    let none = ["--socket", "/nonexistent/nearkv.sock"];
    let err = nearkv(s, &[&none[..], &["get", "shop_orders", "k"]].concat());
    let line = String::from_utf8_lossy(&err.stderr).to_string();
    assert!(line.starts_with("nearkv: cannot_connect: "), "{line}");
    let err = nearkv(
        s,
        &[&none[..], &["--json", "get", "shop_orders", "k"]].concat(),
    );
    let json: serde_json::Value = serde_json::from_slice(&err.stderr).unwrap();
    assert_eq!(json["error"]["code"], "cannot_connect", "{json}");
    let err = nearkv(s, &["put", "shop_orders", "a..b", "v"]);
    let line = String::from_utf8_lossy(&err.stderr).to_string();
    assert!(line.starts_with("nearkv: invalid_key: "), "{line}");
    let out = nearkv(s, &["get", "shop_orders", "never-written"]);
    assert_exit(&out, 1);
    let line = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(line.starts_with("nearkv: not_found: "), "{line}");
    // `serve --help` offers no client-only flag; `get --help` describes its arguments.
    let help = stdout(&nearkv(s, &["serve", "--help"]));
    assert!(!help.contains("--json"), "{help}");
    let help = stdout(&nearkv(s, &["get", "--help"]));
    assert!(
        help.contains("The bucket") && help.contains("The key"),
        "{help}"
    );
    sidecar.stop().await;
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("watch still running");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_prints_values_then_changes() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("w")]).await;
    let client = sidecar.synced_client().await;
    client.put("w", "a", b"1").await.unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .env("NEARKV_SOCKET", &sidecar.socket)
        .args(["--json", "watch", "w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    assert_eq!(next_line(&mut lines).await["key"], "a");
    assert_eq!(
        next_line(&mut lines).await,
        serde_json::json!({"synced": true})
    );
    let r = client.put("w", "b", b"2").await.unwrap();
    let event = next_line(&mut lines).await;
    assert_eq!(
        (event["key"].as_str(), event["revision"].as_u64()),
        (Some("b"), Some(r))
    );
    client.delete("w", "a", Default::default()).await.unwrap();
    assert_eq!(next_line(&mut lines).await["operation"], "delete");
    // The sidecar shuts down: the watch says why it ended and exits non-zero.
    sidecar.stop().await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the watch ends")
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("\"unavailable\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let nats = NatsServer::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let socket = dir.path().join("n.sock");
    let log_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .args([
            "serve",
            "--nats-url",
            &nats.url(),
            "--bucket",
            "logs",
            "--create-buckets",
        ])
        .args(["--http-listen", "", "--socket"])
        .arg(&socket)
        .stderr(log_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let client = loop {
        if let Ok(client) = nearkv::Client::connect(&socket).await {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    crate::harness::wait_synced(&client).await;
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(log_file.path()).unwrap();
    assert!(logs.contains("nearkv serving"), "{logs}");
    assert!(!logs.contains('\x1b'), "ANSI codes in a log file: {logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_stops_on_sigterm_and_removes_its_socket() {
    let nats = NatsServer::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let socket = dir.path().join("n.sock");
    let log_file = tempfile::NamedTempFile::new().unwrap();
    // A token the (auth-less) test server ignores: it must never reach the logs.
    let config = dir.path().join("nearkv.toml");
    std::fs::write(&config, "[nats]\ntoken = \"s3cr3t-t0ken\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--nats-url",
            &nats.url(),
            "--bucket",
            "sig",
            "--create-buckets",
            "--http-listen",
            &format!("127.0.0.1:{}", crate::harness::free_port()),
            "--log-format",
            "json",
            "--socket",
        ])
        .arg(&socket)
        .stderr(log_file.reopen().unwrap())
        .spawn()
        .unwrap();
    crate::harness::eventually(Duration::from_secs(20), "the socket to appear", || {
        let exists = socket.exists();
        async move { exists }
    })
    .await;
    let client = nearkv::Client::connect(&socket).await.unwrap();
    crate::harness::wait_synced(&client).await;
    client.put("sig", "k", b"v").await.unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(!socket.exists(), "socket removed");
    let logs = std::fs::read_to_string(log_file.path()).unwrap();
    assert!(logs.lines().count() >= 3, "{logs}");
    assert!(
        !logs.contains("s3cr3t"),
        "a secret reached the logs: {logs}"
    );
    for line in logs.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("--log-format json writes JSON lines ({e}): {line}"));
        assert!(
            record["level"].is_string() && record["fields"].is_object(),
            "{line}"
        );
    }

    // Invalid configuration fails at start, naming the field.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[buckets]]\nname = \"ok\"\nhistory = 99\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nearkv"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("buckets[0].history"));
}
