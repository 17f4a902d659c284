//! The sidecar's configuration: a TOML file (see config/nearkv.toml for every option and its
//! default), overridden by command-line flags, validated once at start so that a mistake is
//! reported with the field it is in rather than discovered by a failing request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys::validate_filter;

/// Why a configuration could not be used. The message always names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid { field: String, message: String },
}

/// A password or token: read from the config, handed to NATS, never printed (its `Debug` shows
/// `***` and it has no `Display`), so it cannot reach a log line or an error message.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for the NATS client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats: NatsConfig,
    pub socket: SocketConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub cache: CacheConfig,
    pub buckets: Vec<BucketConfig>,
}

/// Where the mirrors are saved for a warm start, and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// A directory (in Kubernetes, the pod's emptyDir) where each bucket's mirror is saved on
    /// shutdown and every `save_interval`, and loaded at start instead of a full snapshot when
    /// the stream still holds every revision after it. Unset: every start is a cold snapshot.
    pub state_dir: Option<PathBuf>,
    /// How often a changed mirror is saved while running.
    #[serde(with = "humantime_serde")]
    pub save_interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            state_dir: None,
            save_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs; the client fails over between them.
    pub servers: Vec<String>,
    /// Try `servers` in the order given (the first one first) instead of in random order, e.g.
    /// to prefer the node on the same host.
    pub retain_servers_order: bool,
    /// A `.creds` file (JWT and nkey seed).
    pub credentials_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A file holding a user nkey seed (`SU...`), for nkey authentication.
    pub nkey_seed_file: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS.
    pub tls_required: bool,
    /// PEM file of the CA(s) that signed the NATS server's certificate, if not a public one.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients (mutual TLS).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Shown by `nats server report connections`.
    pub connection_name: String,
    /// How long a NATS request (a write, a stream info) may take before it counts as `unavailable`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: vec!["nats://127.0.0.1:4222".to_string()],
            retain_servers_order: false,
            credentials_file: None,
            nkey_seed_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            user: None,
            password: None,
            token: None,
            connection_name: "nearkv".to_string(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// File mode of the socket, as an octal string such as "0660".
    pub mode: String,
    /// Group of the socket file (a name or a number), so that the application's group may
    /// connect; unset: the sidecar's own group.
    pub group: Option<String>,
    /// When either list is non-empty, only peers whose user id is in `allow_uids` or whose
    /// (primary) group id is in `allow_gids` may connect (checked with SO_PEERCRED); others get
    /// `forbidden` and are closed.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    /// Largest frame (the length prefix's value) a client may send.
    pub max_frame_size: u32,
    /// Deadline of a request that does not carry `timeout_ms`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Client connections served at once; one more is told `too_many_connections` and closed.
    pub max_connections: usize,
    /// Requests that wait (writes, `min_revision` and strong reads, key listings) in flight on one
    /// connection; one more is answered `too_many_requests`. Reads answered from memory do not
    /// count.
    pub max_in_flight: usize,
    /// Bytes of the frames of those waiting requests (a put's holds its value) on one connection;
    /// a request that would pass it is answered `too_many_requests`, unless it is the only one.
    pub max_in_flight_bytes: usize,
    /// Bytes of requests the sidecar holds for all its clients together: requests still arriving,
    /// past their first 64 KiB, and the frames of waiting requests. A waiting request that would
    /// pass it is answered `too_many_requests`; a connection sending a large request waits for
    /// room (see `server::input`).
    pub max_buffered_bytes: usize,
    /// Active watches on one connection; one more is answered `too_many_watches`.
    pub max_watches: usize,
    /// A connection that sends nothing for this long, with no request in flight and no watch, is
    /// told `idle_timeout` and closed (within twice this time). "0s": never.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long writing responses to a client may block (the client does not read) before the
    /// connection is closed, so that it pins neither a task nor memory.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// After SIGTERM: how long in-flight requests may take to be answered before the remaining
    /// connections are closed and the process exits (keep it under Kubernetes'
    /// terminationGracePeriodSeconds, 30 s by default).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Threads that run the sidecar: the socket's connections (both protocols), the NATS
    /// connection and the bucket mirrors. With 1, all of them share one thread, as Redis serves
    /// its clients, so a write never wakes another thread; walks of large buckets run on the
    /// blocking pool either way.
    pub threads: usize,
}

pub const DEFAULT_SOCKET_PATH: &str = "/tmp/nearkv.sock";
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 4 * 1024 * 1024;

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            path: PathBuf::from(DEFAULT_SOCKET_PATH),
            mode: "0660".to_string(),
            group: None,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            request_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_in_flight: 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_watches: 256,
            idle_timeout: Duration::from_secs(15 * 60),
            write_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            threads: 1,
        }
    }
}

impl SocketConfig {
    /// The socket file's group id, if one is configured: a number, or a name from /etc/group.
    pub fn group_id(&self) -> Result<Option<u32>, ConfigError> {
        let Some(group) = &self.group else {
            return Ok(None);
        };
        if let Ok(gid) = group.parse() {
            return Ok(Some(gid));
        }
        let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
        groups
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let gid = fields.nth(1)?.parse().ok()?;
                Some((name, gid))
            })
            .find(|(name, _)| name == group)
            .map(|(_, gid)| Some(gid))
            .ok_or_else(|| {
                invalid(
                    "socket.group",
                    format!("no group named {group:?} in /etc/group; give a name or a number"),
                )
            })
    }

    /// The mode as permission bits; validated by [`Config::validate`].
    pub fn mode_bits(&self) -> Result<u32, ConfigError> {
        let digits = self.mode.trim_start_matches("0o");
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|bits| *bits <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "socket.mode",
                    format!("{:?} is not an octal file mode such as \"0660\"", self.mode),
                )
            })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the /metrics, /healthz and /readyz endpoint; "" turns it off.
    pub listen: String,
}

pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: DEFAULT_HTTP_LISTEN.to_string(),
        }
    }
}

impl HttpConfig {
    /// The address to listen on, or `None` when the endpoint is off.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            invalid(
                "http.listen",
                format!(
                    "{:?} is not an address such as \"127.0.0.1:9464\" or \"0.0.0.0:9464\"",
                    self.listen
                ),
            )
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "nearkv=debug"; RUST_LOG takes precedence.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketConfig {
    pub name: String,
    /// Which keys to mirror, as a NATS wildcard filter; `>` mirrors the whole bucket.
    pub filter: String,
    /// Create the bucket with the settings below when it does not exist.
    pub create: bool,
    /// Values kept per key (1 to 64).
    pub history: i64,
    /// How long a value lives; 0 keeps values forever.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Largest value in bytes; -1 leaves it to the server's `max_payload`.
    pub max_value_size: i32,
    pub storage: Storage,
    pub replicas: usize,
    /// Create the bucket with limit markers kept this long: per-key TTLs (`ttl_ms` on put) are
    /// then allowed, and NATS announces each expiry. 0: off. Needs nats-server 2.11 or later.
    #[serde(with = "humantime_serde")]
    pub limit_markers: Duration,
    /// Refuse writes through this sidecar with `forbidden`; reads and watches work as usual.
    pub read_only: bool,
    /// How often an idle mirror asks NATS for the stream's state: it confirms the mirror current
    /// (the `age_ms` of reads) and notices a purged or recreated bucket. A mirror that hears from
    /// its feed asks only every fifth time. One stream-info request per bucket per interval at
    /// most: raise it for many buckets or many sidecars.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Fail cached reads with `stale` once NATS last confirmed the mirror current longer ago
    /// than this. Unset: serve what the mirror has for as long as NATS is away (fail-static).
    #[serde(with = "humantime_serde", default)]
    pub max_staleness: Option<Duration>,
}

impl Default for BucketConfig {
    fn default() -> Self {
        BucketConfig {
            name: String::new(),
            filter: ">".to_string(),
            create: false,
            history: 1,
            max_age: Duration::ZERO,
            max_value_size: -1,
            storage: Storage::File,
            replicas: 1,
            limit_markers: Duration::ZERO,
            read_only: false,
            check_interval: Duration::from_secs(1),
            max_staleness: None,
        }
    }
}

/// The shortest `max_staleness` a bucket may have.
const MIN_MAX_STALENESS: Duration = Duration::from_millis(200);

impl BucketConfig {
    pub fn named(name: impl Into<String>) -> Self {
        BucketConfig {
            name: name.into(),
            ..BucketConfig::default()
        }
    }
}

impl Config {
    /// Reads and parses a TOML file; [`Config::validate`] checks what parsing cannot.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: names, ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nats.servers.is_empty() {
            return Err(invalid("nats.servers", "give at least one NATS server URL"));
        }
        for (i, url) in self.nats.servers.iter().enumerate() {
            if let Err(err) = url.parse::<async_nats::ServerAddr>() {
                return Err(invalid(
                    format!("nats.servers[{i}]"),
                    format!("{url:?} is not a NATS URL such as \"nats://127.0.0.1:4222\": {err}"),
                ));
            }
        }
        let methods = [
            self.nats.credentials_file.is_some(),
            self.nats.user.is_some(),
            self.nats.token.is_some(),
            self.nats.nkey_seed_file.is_some(),
        ];
        if methods.iter().filter(|&&m| m).count() > 1 {
            return Err(invalid(
                "nats",
                "use one authentication method: credentials_file, user + password, token or \
                 nkey_seed_file",
            ));
        }
        if self.nats.tls_cert_file.is_some() != self.nats.tls_key_file.is_some() {
            return Err(invalid(
                "nats.tls_cert_file",
                "a client certificate needs its key (tls_key_file), and the other way round",
            ));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(invalid("nats.user", "user and password go together"));
        }
        self.socket.mode_bits()?;
        self.socket.group_id()?;
        self.http.address()?;
        for (field, value) in [
            ("socket.max_connections", self.socket.max_connections),
            ("socket.max_in_flight", self.socket.max_in_flight),
            (
                "socket.max_in_flight_bytes",
                self.socket.max_in_flight_bytes,
            ),
            ("socket.max_buffered_bytes", self.socket.max_buffered_bytes),
            ("socket.max_watches", self.socket.max_watches),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.socket.max_buffered_bytes / 2 < self.socket.max_frame_size as usize {
            return Err(invalid(
                "socket.max_buffered_bytes",
                "must be at least twice socket.max_frame_size: half of it holds requests \
                 still arriving, and the largest must fit",
            ));
        }
        if !(1..=256).contains(&self.socket.threads) {
            return Err(invalid("socket.threads", "must be between 1 and 256"));
        }
        for (field, value) in [
            ("socket.write_timeout", self.socket.write_timeout),
            ("socket.shutdown_grace", self.socket.shutdown_grace),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(field, "must be at least 100ms"));
            }
        }
        if self.cache.save_interval < Duration::from_millis(10) {
            return Err(invalid("cache.save_interval", "must be at least 10ms"));
        }
        if self
            .cache
            .state_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid(
                "cache.state_dir",
                "is empty: give a directory, or leave it out for cold starts only",
            ));
        }
        if self.socket.max_frame_size < 1024 {
            return Err(invalid(
                "socket.max_frame_size",
                "must be at least 1024 bytes",
            ));
        }
        if self.buckets.is_empty() {
            return Err(invalid(
                "buckets",
                "no bucket configured: add a [[buckets]] table or pass --bucket NAME",
            ));
        }
        for (i, bucket) in self.buckets.iter().enumerate() {
            let field = |name: &str| format!("buckets[{i}].{name}");
            let name_ok = !bucket.name.is_empty()
                && bucket
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
            if !name_ok {
                return Err(invalid(
                    field("name"),
                    format!(
                        "{:?} is not a bucket name: use letters, digits, `_` and `-`",
                        bucket.name
                    ),
                ));
            }
            if self.buckets[..i].iter().any(|b| b.name == bucket.name) {
                return Err(invalid(
                    field("name"),
                    format!("bucket {:?} is listed twice", bucket.name),
                ));
            }
            validate_filter(&bucket.filter).map_err(|err| invalid(field("filter"), err.message))?;
            if !(1..=64).contains(&bucket.history) {
                return Err(invalid(field("history"), "must be between 1 and 64"));
            }
            if bucket.max_value_size == 0 || bucket.max_value_size < -1 {
                return Err(invalid(
                    field("max_value_size"),
                    "must be positive, or -1 for no limit",
                ));
            }
            if !(1..=5).contains(&bucket.replicas) {
                return Err(invalid(field("replicas"), "must be between 1 and 5"));
            }
            if bucket
                .max_staleness
                .is_some_and(|max| max < MIN_MAX_STALENESS)
            {
                return Err(invalid(
                    field("max_staleness"),
                    "must be at least 200ms: the mirror is confirmed current four times per \
                     max_staleness, and each confirmation is a NATS round trip",
                ));
            }
            if bucket.check_interval < Duration::from_millis(50) {
                return Err(invalid(
                    field("check_interval"),
                    "must be at least 50ms: each check is a NATS request",
                ));
            }
            if !bucket.limit_markers.is_zero() && bucket.limit_markers < Duration::from_secs(1) {
                return Err(invalid(
                    field("limit_markers"),
                    "must be 0s (off) or at least 1s, as NATS requires",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn the_documented_example_and_the_dev_config_are_valid() {
        for file in ["config/nearkv.toml", "config/dev.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn the_kubernetes_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml");
        let yaml = std::fs::read_to_string(path).expect("configmap reads");
        // The block scalar under `nearkv.toml: |`, indented by four spaces.
        let toml: String = yaml
            .lines()
            .skip_while(|line| !line.trim_start().starts_with("nearkv.toml: |"))
            .skip(1)
            .take_while(|line| line.is_empty() || line.starts_with("    "))
            .map(|line| format!("{}\n", line.get(4..).unwrap_or("")))
            .collect();
        let config = parse(&toml).unwrap_or_else(|e| panic!("configmap's nearkv.toml: {e}"));
        assert_eq!(
            config.buckets[0].max_staleness,
            Some(Duration::from_secs(30))
        );
        // The saved mirrors go to the emptyDir that deployment.yaml mounts there.
        assert_eq!(
            config.cache.state_dir.as_deref(),
            Some(Path::new("/var/lib/nearkv"))
        );
    }

    #[test]
    fn cache_settings_are_checked() {
        let base = "[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n[[buckets]]\nname = \"b\"\n";
        let with = |cache: &str| parse(&format!("{base}[cache]\n{cache}\n"));
        let config = with("state_dir = \"/tmp/n\"\nsave_interval = \"5s\"").unwrap();
        assert_eq!(config.cache.save_interval, Duration::from_secs(5));
        assert!(with("save_interval = \"1ms\"")
            .unwrap_err()
            .contains("cache.save_interval"));
        assert!(with("state_dir = \"\"")
            .unwrap_err()
            .contains("cache.state_dir"));
        assert!(
            with("statedir = \"/tmp\"").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn the_documented_example_lists_every_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nearkv.toml");
        let example = Config::from_file(&path).expect("example parses");
        let defaults = Config::default();
        // Compared through Debug, so that a field added later is covered without a new line here.
        let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            assert_eq!(format!("{a:#?}"), format!("{b:#?}"));
        };
        same(&example.nats, &defaults.nats);
        same(&example.socket, &defaults.socket);
        same(&example.http, &defaults.http);
        same(&example.log, &defaults.log);
        let bucket = BucketConfig {
            name: String::new(),
            ..example.buckets[0].clone()
        };
        same(&bucket, &BucketConfig::default());
        let example = std::fs::read_to_string(&path).expect("example reads");
        assert!(
            example.contains("# max_staleness = "),
            "max_staleness is unset by default, so the example shows it commented out"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse("[[buckets]]\nname = \"a b\"").unwrap_err();
        assert!(err.contains("buckets[0].name"), "{err}");
        let err = parse("[[buckets]]\nname = \"a\"\nfilter = \"a..b\"").unwrap_err();
        assert!(err.contains("buckets[0].filter"), "{err}");
        let err = parse("[socket]\nmode = \"999\"\n[[buckets]]\nname = \"a\"").unwrap_err();
        assert!(err.contains("socket.mode"), "{err}");
        let err = parse("[socket]\npaht = \"/x\"\n[[buckets]]\nname = \"a\"").unwrap_err();
        assert!(err.contains("paht"), "{err}");
        let err = parse("[[buckets]]\nname = \"a\"\nhistory = 0").unwrap_err();
        assert!(err.contains("buckets[0].history"), "{err}");
        for threads in [0, 257] {
            let err = parse(&format!(
                "[socket]\nthreads = {threads}\n[[buckets]]\nname = \"a\""
            ))
            .unwrap_err();
            assert!(
                err.contains("socket.threads: must be between 1 and 256"),
                "{err}"
            );
        }
        let err = parse(
            "[socket]\nmax_frame_size = 4194304\nmax_buffered_bytes = 8388607\n\
             [[buckets]]\nname = \"a\"",
        )
        .unwrap_err();
        assert!(
            err.contains("socket.max_buffered_bytes: must be at least twice"),
            "{err}"
        );
        let err =
            parse("[nats]\nservers = [\"nats://a:1\", \"nats://b:x\"]\n[[buckets]]\nname = \"a\"")
                .unwrap_err();
        assert!(err.contains("nats.servers[1]"), "{err}");
        let err = parse(
            "[nats]\ntoken = \"t0k3n\"\nuser = \"u\"\npassword = \"pw\"\n[[buckets]]\nname = \"a\"",
        )
        .unwrap_err();
        assert!(err.contains("one authentication method"), "{err}");
        assert!(!err.contains("t0k3n") && !err.contains("pw"), "{err}");
        let config = parse("[nats]\ntoken = \"t0k3n\"\n[[buckets]]\nname = \"a\"").unwrap();
        assert!(
            !format!("{config:?}").contains("t0k3n"),
            "secrets never print"
        );
        let err = parse("").unwrap_err();
        assert!(err.contains("buckets"), "{err}");
        let err = parse("[[buckets]]\nname = \"a\"\nmax_age = \"soon\"").unwrap_err();
        assert!(err.contains("max_age"), "{err}");
        let err = parse("[socket]\ngroup = \"no-such-group-here\"\n[[buckets]]\nname = \"a\"")
            .unwrap_err();
        assert!(err.contains("socket.group"), "{err}");
        let err = parse("[[buckets]]\nname = \"a\"\nmax_staleness = \"10ms\"").unwrap_err();
        assert!(err.contains("buckets[0].max_staleness"), "{err}");
        let ok = parse("[[buckets]]\nname = \"a\"\nmax_staleness = \"5s\"").unwrap();
        assert_eq!(ok.buckets[0].max_staleness, Some(Duration::from_secs(5)));
    }
}
