//! The history checker: concurrent clients over two sidecars run a seeded random mix of puts,
//! compare-and-sets, deletes and reads of every consistency on a few keys, while the NATS server
//! is restarted; every operation is recorded and the history checked (see `check.rs`).
//!
//! CI runs it for 12 s. The long mode, and a rerun of a failure:
//!
//! ```text
//! NEARKV_HISTORY_SECS=300 ./scripts/history.sh
//! NEARKV_HISTORY_SEED=<seed printed by the failure> ./scripts/history.sh
//! ```

mod check;
mod linear;

use std::collections::HashMap;

use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nearkv::client::{Client, ClientError};
use nearkv::protocol::{Consistency as Level, ReadOptions, WriteOptions};
use nearkv::ErrorCode;

use crate::harness::{bucket, wait_synced, NatsServer, Sidecar, SidecarProcess};
use check::{check, check_final, Consistency, FinalEntry, Kind, Op, Outcome};
use linear::{check_linearizable, Message};

const BUCKET: &str = "history";
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
const CLIENTS: usize = 6;
/// Messages the bucket's stream keeps per key: all of them (KV clients allow at most 64; the
/// stream itself does not mind), so that the linearizability check sees every write that took
/// effect, those whose caller never learned their fate included.
const HISTORY: i64 = 1_000_000_000;

/// Creates the bucket as any KV client does, then lifts its per-key history limit.
async fn create_bucket_keeping_everything(nats: &NatsServer) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: BUCKET.to_string(),
        history: 64,
        ..Default::default()
    })
    .await
    .expect("create the bucket");
    let mut stream = js
        .get_stream(format!("KV_{BUCKET}"))
        .await
        .expect("the bucket's stream");
    let mut config = stream.info().await.expect("stream info").config.clone();
    config.max_messages_per_subject = HISTORY;
    js.update_stream(config).await.expect("keep every message");
}

/// Every message of the bucket's stream, in revision order, read by a plain consumer.
async fn whole_stream(nats: &NatsServer) -> Vec<Message> {
    use async_nats::jetstream::consumer::{push, DeliverPolicy};
    let kv = nats.kv(BUCKET).await;
    let last = kv
        .stream
        .get_info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let consumer = kv
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let prefix = format!("$KV.{BUCKET}.");
    let mut out = Vec::new();
    while out.last().is_none_or(|m: &Message| m.revision < last) {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stream in time")
            .expect("more messages")
            .expect("a message");
        let revision = message.info().expect("metadata").stream_sequence;
        let removed = message.headers.as_ref().is_some_and(|h| {
            h.get("KV-Operation")
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
        });
        let key = message
            .subject
            .strip_prefix(prefix.as_str())
            .unwrap_or("")
            .to_string();
        let value = (!removed).then(|| String::from_utf8_lossy(&message.payload).to_string());
        out.push(Message {
            revision,
            key,
            value,
        });
    }
    out
}

/// SplitMix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn failure(err: &ClientError) -> String {
    match err.server_error() {
        Some(e) => e.code.as_str().to_string(),
        None => err.to_string(),
    }
}

/// One client's run: operations chosen by its own seeded generator until `until`.
async fn run_client(
    id: usize,
    sidecar: usize,
    client: Client,
    seed: u64,
    start: Instant,
    until: Instant,
) -> Vec<Op> {
    let mut rng = Rng(seed ^ (id as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut ops = Vec::new();
    // The client's view, to make compare-and-sets and min_revision reads that can succeed.
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let mut own_latest = 0u64;
    let mut n = 0u64;
    let timeout_ms = Some(2_000);
    while Instant::now() < until {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let roll = rng.below(100);
        n += 1;
        let value = format!("c{id}-{n}");
        let invoked = start.elapsed().as_nanos() as u64;
        let write = |expect_revision: Option<u64>| WriteOptions {
            expect_revision,
            timeout_ms,
            ttl_ms: None,
        };
        let seen_rev = seen.get(key).copied().unwrap_or(0);
        let (kind, outcome) = if roll < 38 {
            // Plain puts, compare-and-sets on the revision last seen, creates.
            let expect = match roll {
                0..=19 => None,
                20..=29 => Some(seen_rev),
                _ => Some(0),
            };
            let result = client
                .put_with(BUCKET, key, value.as_bytes(), write(expect))
                .await;
            let kind = Kind::Put { value, expect };
            (kind, write_outcome(result))
        } else if roll < 50 {
            // Deletes: plain, and conditional on the revision last seen.
            let expect = (roll >= 46).then_some(seen_rev);
            (
                Kind::Delete { expect },
                write_outcome(client.delete(BUCKET, key, write(expect)).await),
            )
        } else {
            let level = match roll {
                50..=73 => Consistency::Cached,
                74..=83 => Consistency::MinRevision(own_latest.max(1)),
                _ => Consistency::Strong,
            };
            (
                Kind::Get(level),
                read(&client, key, level, timeout_ms).await,
            )
        };
        match &outcome {
            Outcome::Written(rev) => {
                own_latest = own_latest.max(*rev);
                seen.insert(key, *rev);
            }
            Outcome::Read { entry, .. } => {
                seen.insert(key, entry.as_ref().map_or(0, |(_, rev)| *rev));
            }
            // Retry with what the refusal reported, as a client would.
            Outcome::Conflict { current } => {
                seen.insert(key, *current);
            }
            _ => {}
        }
        let completed = start.elapsed().as_nanos() as u64;
        let acknowledged = matches!(outcome, Outcome::Written(_));
        ops.push(Op {
            client: id,
            sidecar,
            key: key.to_string(),
            kind,
            invoked,
            completed,
            outcome,
        });
        // Half the acknowledged writes are read back at once from the mirror: read-your-writes
        // at its tightest, NATS restarts included.
        if acknowledged && rng.below(2) == 0 {
            let invoked = start.elapsed().as_nanos() as u64;
            let outcome = read(&client, key, Consistency::Cached, timeout_ms).await;
            ops.push(Op {
                client: id,
                sidecar,
                key: key.to_string(),
                kind: Kind::Get(Consistency::Cached),
                invoked,
                completed: start.elapsed().as_nanos() as u64,
                outcome,
            });
        }
    }
    ops
}

async fn read(client: &Client, key: &str, level: Consistency, timeout_ms: Option<u64>) -> Outcome {
    let read = ReadOptions {
        min_revision: match level {
            Consistency::MinRevision(rev) => Some(rev),
            _ => None,
        },
        consistency: match level {
            Consistency::Strong => Level::Strong,
            _ => Level::Cached,
        },
        timeout_ms,
        allow_stale: false,
    };
    match client.get_fresh(BUCKET, key, read).await {
        Ok((entry, fresh)) => Outcome::Read {
            entry: entry.map(|e| (String::from_utf8_lossy(&e.value).to_string(), e.revision)),
            mirror: fresh.revision,
        },
        Err(err) => Outcome::Failed(failure(&err)),
    }
}

fn write_outcome(result: Result<u64, ClientError>) -> Outcome {
    match result {
        Ok(rev) => Outcome::Written(rev),
        Err(err) => match err.server_error() {
            Some(e) if e.code == ErrorCode::WrongRevision => Outcome::Conflict {
                current: e.current_revision.unwrap_or(u64::MAX),
            },
            Some(e) if e.code == ErrorCode::Timeout && e.revision.is_some() => {
                Outcome::StoredLate(e.revision.unwrap_or(0))
            }
            _ => Outcome::Unknown(failure(&err)),
        },
    }
}

/// What the stream holds at a revision: the key and its value (`None` for a marker).
type Stored = (String, Option<String>);

/// Each key's final state and every acknowledged write's message, as a plain NATS client sees them.
async fn server_view(
    nats: &NatsServer,
    history: &[Op],
) -> (HashMap<String, FinalEntry>, HashMap<u64, Option<Stored>>) {
    let kv = nats.kv(BUCKET).await;
    let mut final_state = HashMap::new();
    for key in KEYS {
        let subject = format!("$KV.{BUCKET}.{key}");
        let entry = match kv.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => FinalEntry {
                revision: message.sequence,
                value: marker_free_value(&message),
            },
            Err(_) => FinalEntry {
                revision: 0,
                value: None,
            },
        };
        final_state.insert(key.to_string(), entry);
    }
    // Writes per key by revision, to tell a message removed by the history limit from a lost one.
    let mut revisions_by_key: HashMap<&str, Vec<u64>> = HashMap::new();
    for op in history {
        if let Outcome::Written(rev) | Outcome::StoredLate(rev) = op.outcome {
            revisions_by_key
                .entry(op.key.as_str())
                .or_default()
                .push(rev);
        }
    }
    // Every acknowledged write's message, fetched 64 at a time.
    let prefix = format!("$KV.{BUCKET}.");
    let fetched: Vec<(u64, &str, Option<Stored>)> =
        futures::stream::iter(history.iter().filter_map(|op| match op.outcome {
            Outcome::Written(rev) | Outcome::StoredLate(rev) => Some((rev, op.key.as_str())),
            _ => None,
        }))
        .map(|(rev, key)| {
            let kv = &kv;
            let prefix = &prefix;
            async move {
                let message = kv.stream.get_raw_message(rev).await.ok().map(|message| {
                    let subject = message.subject.strip_prefix(prefix.as_str());
                    let subject = subject.unwrap_or(&message.subject).to_string();
                    (subject, marker_free_value(&message))
                });
                (rev, key, message)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut stored = HashMap::new();
    for (rev, key, message) in fetched {
        match message {
            Some(message) => {
                stored.insert(rev, Some(message));
            }
            None => {
                let newer = revisions_by_key[key].iter().filter(|&&r| r > rev).count() as i64;
                if newer >= HISTORY {
                    stored.insert(rev, None);
                }
            }
        }
    }
    (final_state, stored)
}

fn marker_free_value(message: &async_nats::jetstream::message::StreamMessage) -> Option<String> {
    let removed = message
        .headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
    (!removed).then(|| String::from_utf8_lossy(&message.payload).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_checker() {
    check_histories(Run::InProcess).await;
}

/// The same checks against two `nearkv serve` processes, as deployed: the binary runs each
/// sidecar on one thread (`socket.threads = 1`), the NATS connection and mirror included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_checker_against_the_binary() {
    check_histories(Run::Processes).await;
}

/// Where the two checked sidecars run.
#[derive(Debug, Clone, Copy)]
enum Run {
    InProcess,
    Processes,
}

async fn check_histories(run_as: Run) {
    let seconds = env_u64("NEARKV_HISTORY_SECS").unwrap_or(12);
    let seed = env_u64("NEARKV_HISTORY_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let run = Duration::from_secs(seconds);
    let mut nats = NatsServer::start().await;
    create_bucket_keeping_everything(&nats).await;
    let (mut in_process, mut processes) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        match run_as {
            Run::InProcess => {
                in_process.push(Sidecar::start(&nats.url(), vec![bucket(BUCKET)]).await)
            }
            Run::Processes => {
                processes.push(SidecarProcess::start(&nats.url(), &[BUCKET], &[]).await)
            }
        }
    }
    let sockets: Vec<std::path::PathBuf> = in_process
        .iter()
        .map(|s| s.socket.clone())
        .chain(processes.iter().map(|s| s.socket.clone()))
        .collect();
    let connect = |i: usize| {
        let socket = sockets[i].clone();
        async move { Client::connect(&socket).await.expect("client connects") }
    };
    for i in 0..sockets.len() {
        wait_synced(&connect(i).await).await;
    }
    let start = Instant::now();
    let until = start + run;
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let sidecar = id % 2;
        let client = connect(sidecar).await;
        tasks.push(tokio::spawn(run_client(
            id, sidecar, client, seed, start, until,
        )));
    }
    // The NATS server goes away and comes back: once, and every further 20 s in long runs.
    let restarts = (seconds / 20).max(1);
    let mut outages = Vec::new();
    for i in 1..=restarts {
        let at = start + run.mul_f64(i as f64 / (restarts + 1) as f64);
        tokio::time::sleep_until(at.into()).await;
        let down = start.elapsed();
        nats.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats.restart().await;
        outages.push((down, start.elapsed()));
    }
    let mut history = Vec::new();
    for task in tasks {
        history.extend(task.await.expect("client task"));
    }

    let mut violations = check(&history);
    let (final_state, stored) = server_view(&nats, &history).await;
    violations.extend(check_final(&history, &final_state, &stored));
    let stream = whole_stream(&nats).await;
    violations.extend(check_linearizable(&history, &stream));
    // Both mirrors converge on the server's state, key for key.
    let last = final_state.values().map(|e| e.revision).max().unwrap_or(0);
    let converged = Arc::new(ReadOptions {
        min_revision: Some(last),
        timeout_ms: Some(20_000),
        ..ReadOptions::default()
    });
    let mut diverged = Vec::new();
    for i in 0..sockets.len() {
        let client = connect(i).await;
        let entries = client
            .mget(BUCKET, &KEYS, *converged)
            .await
            .expect("mirror catches up");
        for (key, entry) in KEYS.iter().zip(entries) {
            let server = &final_state[*key];
            let mirror = entry.map(|e| (e.revision, String::from_utf8_lossy(&e.value).to_string()));
            let expected = server.value.clone().map(|v| (server.revision, v));
            if mirror != expected {
                diverged.push(format!(
                    "sidecar {i}: `{key}` is {mirror:?}, NATS has {expected:?}"
                ));
            }
        }
    }

    let count = |f: &dyn Fn(&Op) -> bool| history.iter().filter(|op| f(op)).count();
    let reads = count(&|op| matches!(op.outcome, Outcome::Read { .. }));
    let acked = count(&|op| matches!(op.outcome, Outcome::Written(_)));
    let conflicts = count(&|op| matches!(op.outcome, Outcome::Conflict { .. }));
    let failed = count(&|op| matches!(op.outcome, Outcome::Failed(_) | Outcome::Unknown(_)));
    let creates = count(&|op| {
        matches!(
            op.kind,
            Kind::Put {
                expect: Some(0),
                ..
            }
        ) && matches!(op.outcome, Outcome::Written(_))
    });
    let refused_creates = count(&|op| {
        matches!(
            op.kind,
            Kind::Put {
                expect: Some(0),
                ..
            }
        ) && matches!(op.outcome, Outcome::Conflict { .. })
    });
    let strong = count(&|op| {
        matches!(op.kind, Kind::Get(Consistency::Strong))
            && matches!(op.outcome, Outcome::Read { .. })
    });
    println!(
        "history checker ({run_as:?}): seed {seed}, {seconds} s, {CLIENTS} clients over 2 sidecars, {} keys, \
         NATS down at {outages:?}\n  {} operations: {reads} reads answered ({strong} strong), \
         {acked} writes acknowledged, {conflicts} compare-and-set conflicts, {failed} failed \
         (NATS away)\n  linearizability of every key checked against all {} stream messages \
         ({creates} creates, {refused_creates} refused)\n  violations: {}, mirrors diverged: {}",
        KEYS.len(),
        history.len(),
        stream.len(),
        violations.len(),
        diverged.len()
    );
    let mut report = String::new();
    for violation in violations.iter().take(20) {
        report.push_str(&violation.render(&history));
    }
    assert!(
        violations.is_empty() && diverged.is_empty(),
        "{} violations (rerun with NEARKV_HISTORY_SEED={seed}):\n{report}{}",
        violations.len(),
        diverged.join("\n")
    );
    assert!(
        acked > 0 && reads > 0 && strong > 0,
        "the run did too little to prove anything"
    );
}
