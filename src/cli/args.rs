//! The command line: what `nearkv` and each subcommand accept.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use nearkv::config::LogFormat;

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
    /// Directory to save the mirrors in for a warm start; replaces cache.state_dir.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// How often a changed mirror is saved, e.g. `60s`; replaces cache.save_interval.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub save_interval: Option<std::time::Duration>,
}
