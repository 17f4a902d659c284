//! The `nearkv` command: `serve` runs the sidecar; the other subcommands are a client of it.
//!
//! Exit codes: 0 success, 1 `get` found no such key, 2 any error (one line on stderr).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, WatchEvent};
use crate::config::{BucketConfig, Config, LogFormat, DEFAULT_SOCKET_PATH};
use crate::protocol::{BucketStatus, Consistency, Entry, ReadOptions, WriteOptions};

#[derive(Debug, Parser)]
#[command(
    name = "nearkv",
    version,
    about = "Microsecond reads of NATS JetStream KV buckets, from a sidecar"
)]
pub struct Cli {
    /// The sidecar's Unix socket [default: the config's socket.path for serve, /tmp/nearkv.sock otherwise]
    #[arg(long, global = true, env = "NEARKV_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Client commands: print JSON for scripts (errors too, on stderr). Give it before the command:
    /// `nearkv --json get BUCKET KEY`.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Serve(ServeArgs),
    /// Print a key's value (raw bytes); exit 1 if the key is absent or deleted.
    Get {
        /// The bucket, one the sidecar mirrors (see `nearkv status`).
        bucket: String,
        /// The key, e.g. `order-1` or `orders.eu.1`.
        key: String,
        /// Wait until the mirror has applied at least this revision.
        #[arg(long)]
        min_revision: Option<u64>,
        /// Reflect every write NATS acknowledged before the request (a linearizable read).
        #[arg(long)]
        strong: bool,
        /// How long to wait for --min-revision or --strong.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Answer even if the mirror is older than the bucket's max_staleness.
        #[arg(long)]
        allow_stale: bool,
    },
    /// Store a value and print its revision. VALUE `-` reads standard input.
    Put {
        /// The bucket, one the sidecar mirrors.
        bucket: String,
        /// The key, e.g. `order-1` or `orders.eu.1`.
        key: String,
        /// The value, stored as these bytes; `-` reads them from standard input.
        value: String,
        /// Compare-and-set: 0 = the key must be absent or deleted, N = its revision must be N.
        #[arg(long)]
        expect_revision: Option<u64>,
        /// The value expires this long after it is stored, e.g. `30s`, `5m` (at least 1s; the
        /// bucket needs limit markers).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Delete a key (a delete marker; history is kept) and print the marker's revision.
    Delete {
        /// The bucket, one the sidecar mirrors.
        bucket: String,
        /// The key to delete.
        key: String,
        #[arg(long)]
        expect_revision: Option<u64>,
    },
    /// Purge a key's history, leaving a purge marker, and print the marker's revision.
    Purge {
        /// The bucket, one the sidecar mirrors.
        bucket: String,
        /// The key whose history to purge.
        key: String,
        #[arg(long)]
        expect_revision: Option<u64>,
    },
    /// List live keys, sorted, optionally matching a NATS wildcard filter such as `orders.>`.
    Keys {
        /// The bucket, one the sidecar mirrors.
        bucket: String,
        /// A NATS wildcard filter: `*` one token, a final `>` the rest (default: every key).
        filter: Option<String>,
        /// Answer even if the mirror is older than the bucket's max_staleness.
        #[arg(long)]
        allow_stale: bool,
    },
    /// Print the bucket's live entries, then every change, until interrupted.
    Watch {
        /// The bucket, one the sidecar mirrors.
        bucket: String,
        /// A NATS wildcard filter: `*` one token, a final `>` the rest (default: every key).
        filter: Option<String>,
        /// Only changes from now on, without the current values.
        #[arg(long)]
        no_initial: bool,
    },
    /// Load generator: measure nearkv, direct NATS KV or the raw socket floor (see docs/BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// The raw socket server `bench --against raw` measures (started by the bench itself).
    #[command(hide = true)]
    BenchRawServer {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        keys: usize,
        #[arg(long)]
        value_size: usize,
    },
    /// Show the mirrors' state, like `nats kv ls`.
    Status {
        /// One bucket (default: every bucket the sidecar mirrors).
        bucket: Option<String>,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file (see config/nearkv.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated; replaces the config's nats.servers.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// A bucket to mirror, in addition to the config's (repeatable).
    #[arg(long = "bucket")]
    pub buckets: Vec<String>,
    /// Create every configured bucket that does not exist.
    #[arg(long)]
    pub create_buckets: bool,
    /// Address of the /metrics, /healthz and /readyz endpoint ("" turns it off); replaces http.listen.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Log filter, e.g. `info` or `nearkv=debug`; replaces log.level (RUST_LOG takes precedence).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format; replaces log.format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args, cli.socket).await,
        Command::BenchRawServer {
            socket,
            keys,
            value_size,
        } => match crate::bench::raw::serve(&socket, keys, value_size).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("nearkv: raw server: {err}");
                ExitCode::from(EXIT_ERROR)
            }
        },
        Command::Bench(args) => {
            let socket = cli
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
            match crate::bench::run(&args, &socket).await {
                Ok(report) => {
                    if cli.json {
                        println!("{}", json!(report));
                    } else {
                        println!("{}", report.line());
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("nearkv: bench: {err}");
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
        command => {
            let socket = cli
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
            let output = Output { json: cli.json };
            match client_command(command, &socket, &output).await {
                Ok(code) => code,
                Err(err) => {
                    output.error(&err);
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
    }
}

/// Builds the sidecar's configuration: the file, then the flags on top.
pub fn serve_config(
    args: &ServeArgs,
    socket: Option<PathBuf>,
) -> Result<Config, crate::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(urls) = &args.nats_url {
        config.nats.servers = urls.split(',').map(|u| u.trim().to_string()).collect();
    }
    if let Some(socket) = socket {
        config.socket.path = socket;
    }
    if let Some(listen) = &args.http_listen {
        config.http.listen = listen.clone();
    }
    if let Some(level) = &args.log_level {
        config.log.level = level.clone();
    }
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    for name in &args.buckets {
        if !config.buckets.iter().any(|b| &b.name == name) {
            config.buckets.push(BucketConfig::named(name));
        }
    }
    if args.create_buckets {
        for bucket in &mut config.buckets {
            bucket.create = true;
        }
    }
    // Validated once, by `crate::serve`, which embedders call too.
    Ok(config)
}

async fn serve(args: ServeArgs, socket: Option<PathBuf>) -> ExitCode {
    let config = match serve_config(&args, socket) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nearkv: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: logs sent to a file or a collector stay plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let shutdown = CancellationToken::new();
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        signal_shutdown.cancel();
    });
    match crate::serve(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nearkv: {err}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn client_command(
    command: Command,
    socket: &std::path::Path,
    output: &Output,
) -> Result<ExitCode, Failure> {
    let client = Client::connect(socket).await?;
    match command {
        // `run` handles these before it gets here.
        Command::Serve(_) | Command::Bench(_) | Command::BenchRawServer { .. } => {
            Ok(ExitCode::from(EXIT_ERROR))
        }
        Command::Get {
            bucket,
            key,
            min_revision,
            strong,
            timeout_ms,
            allow_stale,
        } => {
            let read = ReadOptions {
                min_revision,
                consistency: Consistency::strong_if(strong),
                timeout_ms,
                allow_stale,
            };
            let (entry, fresh) = client.get_fresh(&bucket, &key, read).await?;
            let mirror = json!({ "revision": fresh.revision, "age_ms": fresh.age_ms });
            match entry {
                Some(entry) => {
                    if output.json {
                        let mut object = entry_json(&entry);
                        object["mirror"] = mirror;
                        output.line(&object);
                    } else {
                        output.raw(&entry.value);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    if output.json {
                        output.line(&json!({ "entry": null, "mirror": mirror }));
                    }
                    eprintln!(
                        "nearkv: not_found: key `{}` not found in bucket `{bucket}`",
                        crate::keys::quote(&key)
                    );
                    Ok(ExitCode::from(EXIT_NOT_FOUND))
                }
            }
        }
        Command::Put {
            bucket,
            key,
            value,
            expect_revision,
            ttl,
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| Failure::Input(format!("cannot read standard input: {e}")))?;
                buf
            } else {
                value.into_bytes()
            };
            let write = WriteOptions {
                ttl_ms: ttl.map(|ttl| ttl.as_millis() as u64),
                ..WriteOptions::expecting(expect_revision)
            };
            let revision = client.put_with(&bucket, &key, &value, write).await?;
            output.revision(revision);
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete {
            bucket,
            key,
            expect_revision,
        } => {
            let write = WriteOptions::expecting(expect_revision);
            output.revision(client.delete(&bucket, &key, write).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge {
            bucket,
            key,
            expect_revision,
        } => {
            let write = WriteOptions::expecting(expect_revision);
            output.revision(client.purge(&bucket, &key, write).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            bucket,
            filter,
            allow_stale,
        } => {
            let keys = client.keys(&bucket, filter.as_deref(), allow_stale).await?;
            if output.json {
                output.line(&json!(keys));
            } else {
                for key in keys {
                    output.text(&key);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            bucket,
            filter,
            no_initial,
        } => {
            let mut watch = client
                .watch(&bucket, filter.as_deref(), !no_initial)
                .await?;
            while let Some(item) = watch.next().await {
                match item? {
                    WatchEvent::Synced if output.json => output.line(&json!({ "synced": true })),
                    WatchEvent::Synced => output.text("# synced: live changes follow"),
                    WatchEvent::Entry(entry) if output.json => output.line(&entry_json(&entry)),
                    WatchEvent::Entry(entry) => output.text(&format!(
                        "{} {} {} {}",
                        entry.operation.as_str(),
                        entry.key,
                        entry.revision,
                        String::from_utf8_lossy(&entry.value)
                    )),
                }
            }
            // Only the sidecar ends a watch this command started (Ctrl-C ends the process).
            Err(Failure::WatchEnded)
        }
        Command::Status { bucket, watch } => loop {
            let buckets = client.status(bucket.as_deref()).await?;
            if output.json {
                output.line(&json!({ "buckets": buckets }));
            } else {
                if watch {
                    // Clear the screen and move home, as `watch(1)` does.
                    output.raw(b"\x1b[2J\x1b[H");
                }
                output.text(&status_table(&buckets, now_nanos()));
            }
            if !watch {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        },
    }
}

/// An entry as JSON: `value` is the text when it is UTF-8, else `value_base64` holds the bytes.
pub fn entry_json(entry: &Entry) -> Value {
    let mut object = json!({
        "key": entry.key,
        "revision": entry.revision,
        "created": entry.created,
        "operation": entry.operation.as_str(),
    });
    match std::str::from_utf8(&entry.value) {
        Ok(text) => object["value"] = json!(text),
        Err(_) => {
            object["value_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&entry.value))
        }
    }
    object
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Bytes as `nats kv ls` shows them: 1.2 KiB, 3.4 MiB.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How long ago, as `nats kv ls` shows it: 3s, 5m12s, 2h3m, 4d2h.
fn ago(then: i64, now: i64) -> String {
    if then <= 0 {
        return "never".to_string();
    }
    let secs = ((now - then).max(0) / 1_000_000_000) as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Time since NATS last confirmed the mirror current, marked when past `max_staleness`.
fn freshness(age_ms: Option<u64>, stale: bool) -> String {
    match age_ms {
        None => "-".to_string(),
        Some(ms) if stale => format!("{:.1}s(stale)", ms as f64 / 1000.0),
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
    }
}

fn status_table(buckets: &[BucketStatus], now: i64) -> String {
    let mut rows = vec![[
        "BUCKET",
        "KEYS",
        "SIZE",
        "REVISION",
        "LAG",
        "AGE",
        "SYNCED",
        "NATS",
        "LAST UPDATE",
    ]
    .map(str::to_string)];
    for b in buckets {
        rows.push([
            b.bucket.clone(),
            b.keys.to_string(),
            human_bytes(b.bytes),
            b.revision.to_string(),
            b.lag.to_string(),
            freshness(b.age_ms, b.stale),
            if b.synced { "yes" } else { "no" }.to_string(),
            if b.connected {
                "connected"
            } else {
                "disconnected"
            }
            .to_string(),
            ago(b.last_update, now),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Output {
    json: bool,
}

impl Output {
    fn raw(&self, bytes: &[u8]) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    }

    fn text(&self, line: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    fn line(&self, value: &Value) {
        self.text(&value.to_string());
    }

    fn revision(&self, revision: u64) {
        if self.json {
            self.line(&json!({ "revision": revision }));
        } else {
            self.text(&revision.to_string());
        }
    }

    /// One line on stderr: `nearkv: <code>: <message>`, or with `--json` an `error` object with
    /// the same code.
    fn error(&self, failure: &Failure) {
        let (code, message, server) = match failure {
            Failure::Client(err) => (err.code(), err.message(), err.server_error()),
            Failure::Input(message) => ("input", message.clone(), None),
            Failure::WatchEnded => (
                "unavailable",
                "the sidecar ended the watch (it is shutting down); watch again once it is back"
                    .to_string(),
                None,
            ),
        };
        if self.json {
            let error = json!({
                "code": code,
                "message": message,
                "current_revision": server.and_then(|e| e.current_revision),
                "revision": server.and_then(|e| e.revision),
                "sent": server.and_then(|e| e.sent),
            });
            eprintln!("{}", json!({ "error": error }));
        } else {
            eprintln!("nearkv: {code}: {}", message.replace('\n', " "));
        }
    }
}

/// Why a client command failed.
enum Failure {
    Client(ClientError),
    /// Standard input could not be read (`put ... -`).
    Input(String),
    /// The sidecar ended a watch that the user did not stop.
    WatchEnded,
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Failure::Client(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_reads_like_nats_kv_ls() {
        let now = 1_700_000_100_000_000_000;
        let status = BucketStatus {
            bucket: "shop_orders".to_string(),
            synced: true,
            connected: true,
            keys: 3,
            bytes: 2048,
            revision: 10,
            server_revision: 12,
            lag: 2,
            last_update: now - 75_000_000_000,
            age_ms: Some(400),
            stale: false,
            rebuilds: 0,
        };
        let table = status_table(&[status], now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "shop_orders",
                "3",
                "2.0",
                "KiB",
                "10",
                "2",
                "0.4s",
                "yes",
                "connected",
                "1m15s"
            ]
        );
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(ago(0, now), "never");
        assert_eq!(freshness(Some(12_340), true), "12.3s(stale)");
        assert_eq!(freshness(None, false), "-");
    }
}
