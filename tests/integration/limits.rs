//! Limits that keep one client from taking the sidecar down: connections, requests in flight,
//! watches, idle connections. Each answers with its documented error code.

use std::time::Duration;

use serde_json::json;
use tokio::net::UnixStream;

use crate::harness::{bucket, metric, NatsServer, Sidecar};
use crate::raw_socket::{expect_closed, frame, read_response, send_raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_answers_with_its_error_and_spares_the_other_clients() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("l")], |config| {
        config.socket.max_connections = 2;
        config.socket.max_in_flight = 2;
        config.socket.max_watches = 2;
        config.socket.idle_timeout = Duration::from_millis(800);
    })
    .await;
    let client = sidecar.synced_client().await;
    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();

    // A third connection is told why, then closed; the two others go on.
    let mut third = UnixStream::connect(&sidecar.socket).await.unwrap();
    let refused = read_response(&mut third).await.expect("an error frame");
    assert_eq!(refused["id"], 0);
    assert_eq!(refused["error"]["code"], "too_many_connections");
    expect_closed(&mut third).await;

    // Two waiting requests fill the connection's in-flight slots; the third is refused at once.
    let waiting = |id: u64| {
        frame(&json!({"id": id, "op": "get", "bucket": "l", "key": "k",
                      "min_revision": 1_000_000, "timeout_ms": 1000}))
    };
    let mut burst = Vec::new();
    for id in 1..=3 {
        burst.extend(waiting(id));
    }
    send_raw(&mut raw, &burst).await;
    let first = read_response(&mut raw).await.unwrap();
    assert_eq!(
        (first["id"].clone(), first["error"]["code"].clone()),
        (json!(3), json!("too_many_requests"))
    );
    for _ in 0..2 {
        let answer = read_response(&mut raw).await.unwrap();
        assert_eq!(answer["error"]["code"], "timeout");
    }
    // Reads from memory never count against the limit.
    send_raw(
        &mut raw,
        &frame(&json!({"id": 4, "op": "get", "bucket": "l", "key": "k"})),
    )
    .await;
    assert_eq!(read_response(&mut raw).await.unwrap()["ok"], true);

    // Two watches at most per connection.
    for id in 10..=12 {
        send_raw(
            &mut raw,
            &frame(&json!({"id": id, "op": "watch", "bucket": "l"})),
        )
        .await;
    }
    let mut codes = Vec::new();
    while codes.len() < 3 {
        let message = read_response(&mut raw).await.unwrap();
        if message.get("ok").is_some() {
            codes.push((message["id"].clone(), message["error"]["code"].clone()));
        }
    }
    assert!(
        codes.contains(&(json!(12), json!("too_many_watches"))),
        "{codes:?}"
    );

    // A connection with watches is not idle; an idle one is told so and closed.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    send_raw(&mut raw, &frame(&json!({"id": 20, "op": "ping"}))).await;
    loop {
        let message = read_response(&mut raw).await.expect("still open");
        if message["id"] == 20 {
            assert_eq!(message["ok"], true);
            break;
        }
    }
    // The Rust client sent nothing since the start: the idle timeout has closed it, which frees
    // the slot this idle connection takes.
    let mut idle = UnixStream::connect(&sidecar.socket).await.unwrap();
    let closed = read_response(&mut idle).await.expect("an error frame");
    assert_eq!(
        (closed["id"].clone(), closed["error"]["code"].clone()),
        (json!(0), json!("idle_timeout"))
    );
    expect_closed(&mut idle).await;
    // Each refusal is counted for operators.
    for code in ["too_many_connections", "idle_timeout"] {
        let series = format!("nearkv_connections_refused_total{{code=\"{code}\"}}");
        assert!(
            crate::harness::metric(&sidecar.http, &series).await >= 1,
            "{series}"
        );
    }
    // The connection kept busy by its watches was never disturbed: it still answers.
    send_raw(&mut raw, &frame(&json!({"id": 21, "op": "ping"}))).await;
    loop {
        let message = read_response(&mut raw).await.expect("still open");
        if message["id"] == 21 {
            assert_eq!(message["ok"], true);
            break;
        }
    }
    // And the idle Rust client reconnects by itself on its next call.
    client.ping().await.unwrap();
}

/// An `mget` that names a large value many times is refused with `value_too_large` before any
/// answer is built, on every path (from memory, after a wait, and Redis `MGET` of one bucket or
/// several); one within the limit is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mget_whose_values_exceed_the_answer_limit_is_refused() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("m"), bucket("n")]).await;
    let client = sidecar.synced_client().await;
    let huge = vec![b'x'; 1_000_000];
    let last = client.put("m", "huge", &huge).await.unwrap();
    client.put("n", "small", b"v").await.unwrap();
    // 70 names of a 1 MB value: 70 MB, over the 64 MiB an mget answers with.
    let names = vec!["huge"; 70];
    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();
    for (id, waits) in [(1, false), (2, true)] {
        let mut request = json!({"id": id, "op": "mget", "bucket": "m", "keys": names});
        if waits {
            request["min_revision"] = json!(last);
        }
        send_raw(&mut raw, &frame(&request)).await;
        let answer = read_response(&mut raw).await.unwrap();
        assert_eq!(answer["error"]["code"], "value_too_large", "{id}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("70000000 bytes"), "{message}");
    }
    let within = json!({"id": 3, "op": "mget", "bucket": "m", "keys": vec!["huge"; 10]});
    send_raw(&mut raw, &frame(&within)).await;
    let answer = read_response(&mut raw).await.unwrap();
    assert_eq!(answer["entries"].as_array().unwrap().len(), 10);

    // The same through the Redis face, for one bucket's keys and for keys of two buckets.
    let mut redis = UnixStream::connect(&sidecar.socket).await.unwrap();
    for first in ["m:huge", "n:small"] {
        let mut command = format!("*71\r\n$4\r\nMGET\r\n${}\r\n{first}\r\n", first.len());
        for _ in 0..69 {
            command.push_str("$6\r\nm:huge\r\n");
        }
        send_raw(&mut redis, command.as_bytes()).await;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            tokio::io::AsyncReadExt::read_exact(&mut redis, &mut byte)
                .await
                .unwrap();
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        assert!(line.starts_with("-VALUE_TOO_LARGE "), "{first}: {line}");
    }
}

/// Waiting requests hold their frames (a put, its value) until answered: a connection may hold
/// at most `max_in_flight_bytes` of them, whatever `max_in_flight` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_may_hold_at_most_max_in_flight_bytes_of_frames_per_connection() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("b")], |config| {
        config.socket.max_in_flight_bytes = 5 * 512 * 1024;
    })
    .await;
    let _ = sidecar.synced_client().await;
    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();
    let padded = |id: u64, pad: usize| padded_wait("b", id, pad, 1500);
    let mut burst = Vec::new();
    for id in 1..=3 {
        burst.extend(padded(id, 1024 * 1024));
    }
    // Half a MiB is left of 2.5: a small request still fits.
    burst.extend(padded(4, 0));
    send_raw(&mut raw, &burst).await;
    expect_too_many_requests(&mut raw, 3, "socket.max_in_flight_bytes").await;
    let mut timed_out = Vec::new();
    for _ in 0..3 {
        let answer = read_response(&mut raw).await.unwrap();
        assert_eq!(answer["error"]["code"], "timeout", "{answer}");
        timed_out.push(answer["id"].as_u64().unwrap());
    }
    timed_out.sort_unstable();
    assert_eq!(timed_out, [1, 2, 4]);
    // Answered, they gave their bytes back; and a request larger than the whole budget goes
    // through when it is alone.
    send_raw(&mut raw, &padded(5, 3 * 1024 * 1024)).await;
    let alone = read_response(&mut raw).await.unwrap();
    assert_eq!(
        (alone["id"].clone(), alone["error"]["code"].clone()),
        (json!(5), json!("timeout"))
    );
    // Another connection was never limited by this one.
    let other = sidecar.client().await;
    other.put("b", "k", b"v").await.unwrap();
}

/// A read of `bucket` that waits for a revision that never comes, padded with `pad` bytes
/// (unknown fields are ignored, but the request holds its whole frame while it waits).
fn padded_wait(bucket: &str, id: u64, pad: usize, timeout_ms: u64) -> Vec<u8> {
    frame(&json!({"id": id, "op": "get", "bucket": bucket, "key": "k",
                  "min_revision": 1_000_000, "timeout_ms": timeout_ms,
                  "pad": "p".repeat(pad)}))
}

/// The next response is request `id`'s `too_many_requests`, whose message names `limit`.
async fn expect_too_many_requests(raw: &mut UnixStream, id: u64, limit: &str) {
    let refused = read_response(raw).await.unwrap();
    assert_eq!(
        (refused["id"].clone(), refused["error"]["code"].clone()),
        (json!(id), json!("too_many_requests")),
        "{refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains(limit), "{message}");
}

/// Started under a soft limit of 256 open files (systemd's default is 1024), the sidecar raises
/// it to the hard limit: each client takes a descriptor, and clients past the soft limit would
/// otherwise get no answer at all, well below `socket.max_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_serves_more_clients_than_the_soft_limit_on_open_files() {
    let nats = NatsServer::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let socket = dir.path().join("n.sock");
    let child = std::process::Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_nearkv"))
        .args(["serve", "--nats-url", &nats.url(), "--bucket", "fd"])
        .args(["--create-buckets", "--http-listen", "", "--socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stopped however the test ends.
    struct Stopped(std::process::Child);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Stopped(child);
    crate::harness::eventually(Duration::from_secs(20), "the socket", || {
        let exists = socket.exists();
        async move { exists }
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    let hard: u64 = open_files[4].parse().unwrap_or(u64::MAX);
    assert!(
        hard > 400,
        "this test needs a hard limit above 400: {open_files:?}"
    );
    assert_eq!(open_files[3], open_files[4], "soft raised to hard");
    let mut clients = Vec::new();
    for id in 0..300u64 {
        let mut client = UnixStream::connect(&socket).await.unwrap();
        send_raw(&mut client, &frame(&json!({"id": id, "op": "ping"}))).await;
        let answer = read_response(&mut client).await.expect("an answer");
        assert_eq!(answer["ok"], true, "client {id}: {answer}");
        clients.push(client);
    }
}

/// `socket.max_buffered_bytes` bounds what all connections together hold of requests, in two
/// halves: waiting requests' frames, and requests still arriving. The starts of large requests
/// that never finish cannot grow the sidecar (500 such 4 MB requests once held 1.9 GiB), keep
/// other clients' requests from being served, or hold their half for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_all_connections_share_one_budget_and_unfinished_ones_are_closed() {
    const LARGE: usize = 1536 * 1024;
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("u")], |config| {
        config.socket.max_frame_size = 2 * 1024 * 1024;
        config.socket.max_buffered_bytes = 4 * 1024 * 1024;
    })
    .await;
    let client = sidecar.synced_client().await;

    // Waiting requests have 2 MiB: two of 900 KiB fit, a third is refused and told why.
    let mut raw = UnixStream::connect(&sidecar.socket).await.unwrap();
    let padded = |id: u64| padded_wait("u", id, 900 * 1024, 1000);
    let mut burst = Vec::new();
    for id in 1..=3 {
        burst.extend(padded(id));
    }
    send_raw(&mut raw, &burst).await;
    expect_too_many_requests(&mut raw, 3, "socket.max_buffered_bytes").await;
    for _ in 0..2 {
        assert_eq!(
            read_response(&mut raw).await.unwrap()["error"]["code"],
            "timeout"
        );
    }

    // Eight v1 connections and two RESP ones send all but the last byte of a large request:
    // more than the 2 MiB that arriving requests have.
    let mut stalled = Vec::new();
    let mut writers = Vec::new();
    for i in 0..10 {
        let stream = UnixStream::connect(&sidecar.socket).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let start = if i < 8 {
            let mut start = (LARGE as u32).to_be_bytes().to_vec();
            start.resize(4 + LARGE - 1, b'x');
            start
        } else {
            let mut start = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${LARGE}\r\n").into_bytes();
            start.resize(start.len() + LARGE - 1, b'x');
            start
        };
        // It blocks once the sidecar stops reading. Its handle keeps the write half, whose drop
        // would end the request.
        writers.push(tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut write, &start).await;
            write
        }));
        stalled.push(tokio::spawn(async move {
            let mut told = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::io::AsyncReadExt::read_to_end(&mut read, &mut told),
            )
            .await;
            told
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Operators see the arriving half (2 MiB) nearly all held.
    let arriving = r#"nearkv_buffered_request_bytes{part="arriving"}"#;
    let held = metric(&sidecar.http, arriving).await;
    assert!(held > 1536 * 1024 && held <= 2048 * 1024, "{held}");

    // Other clients' requests are served meanwhile, writes included.
    let put = client.put("u", "small", b"v").await.unwrap();
    assert_eq!(
        client.get("u", "small").await.unwrap().unwrap().revision,
        put
    );
    let mut redis = UnixStream::connect(&sidecar.socket).await.unwrap();
    send_raw(&mut redis, b"SET u:small w\r\nGET u:small\r\n").await;
    let mut answer = [0; 64];
    let mut got = 0;
    while !answer[..got].ends_with(b"w\r\n") {
        got += tokio::io::AsyncReadExt::read(&mut redis, &mut answer[got..])
            .await
            .unwrap();
    }
    assert_eq!(&answer[..got], b"+OK\r\n$1\r\nw\r\n");

    // Within 10 s of holding budget each unfinished request is told `timeout` and closed, in its
    // connection's protocol (a v1 error frame with id 0, or a RESP error).
    for (i, told) in stalled.into_iter().enumerate() {
        let told = told.await.unwrap();
        if i < 8 {
            let len = u32::from_be_bytes(told[..4].try_into().unwrap()) as usize;
            let answer: serde_json::Value = rmp_serde::from_slice(&told[4..4 + len]).unwrap();
            assert_eq!(
                (answer["id"].clone(), answer["error"]["code"].clone()),
                (json!(0), json!("timeout")),
                "{answer}"
            );
            assert_eq!(told.len(), 4 + len, "then the connection is closed");
        } else {
            let told = String::from_utf8_lossy(&told);
            assert!(told.starts_with("-TIMEOUT "), "{told}");
            assert!(told.contains("did not arrive whole"), "{told}");
        }
    }
    drop(writers);
    assert_eq!(metric(&sidecar.http, arriving).await, 0);
    // The budget is free again: a large write goes through.
    let large = vec![b'v'; 1024 * 1024];
    let put = client.put("u", "large", &large).await.unwrap();
    let entry = client.get("u", "large").await.unwrap().unwrap();
    assert_eq!((entry.revision, entry.value.len()), (put, large.len()));
}

/// Pipelined Redis `SET`s past a connection's first hold their values against the waiting half
/// of `socket.max_buffered_bytes`; with no room they run in smaller turns, never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_redis_sets_share_the_budget_and_run_in_turns_when_it_is_full() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("u")], |config| {
        config.socket.max_frame_size = 64 * 1024;
        // 64 KiB for waiting requests: one 40 KiB value past the first of a batch at a time.
        config.socket.max_buffered_bytes = 128 * 1024;
    })
    .await;
    let client = sidecar.synced_client().await;
    let mut redis = UnixStream::connect(&sidecar.socket).await.unwrap();
    let mut burst = Vec::new();
    for i in 0..10u8 {
        let value = vec![b'a' + i; 40 * 1024];
        burst.extend(format!("*3\r\n$3\r\nSET\r\n$3\r\nu:k\r\n${}\r\n", value.len()).into_bytes());
        burst.extend(value);
        burst.extend(b"\r\n");
    }
    send_raw(&mut redis, &burst).await;
    let mut told = Vec::new();
    while told.len() < 50 {
        let mut chunk = [0; 64];
        let n = tokio::io::AsyncReadExt::read(&mut redis, &mut chunk)
            .await
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&told));
        told.extend(&chunk[..n]);
    }
    assert_eq!(told, b"+OK\r\n".repeat(10));
    let entry = client.get("u", "k").await.unwrap().unwrap();
    assert_eq!(entry.value[..], vec![b'j'; 40 * 1024][..]);
    let waiting = r#"nearkv_buffered_request_bytes{part="waiting"}"#;
    assert_eq!(metric(&sidecar.http, waiting).await, 0);
}
