//! How client subcommands print: values and tables for people, one JSON line per result with
//! `--json`, and every error as one line on stderr.

use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

use nearkv::client::ClientError;
use nearkv::protocol::{BucketStatus, Entry};

/// An entry as JSON: `value` is the text when it is UTF-8, else `value_base64` holds the bytes.
pub(super) fn entry_json(entry: &Entry) -> Value {
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

pub(super) fn now_nanos() -> i64 {
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

pub(super) fn status_table(buckets: &[BucketStatus], now: i64) -> String {
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

pub(super) struct Output {
    pub json: bool,
}

impl Output {
    pub(super) fn raw(&self, bytes: &[u8]) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    }

    pub(super) fn text(&self, line: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    pub(super) fn line(&self, value: &Value) {
        self.text(&value.to_string());
    }

    pub(super) fn revision(&self, revision: u64) {
        if self.json {
            self.line(&json!({ "revision": revision }));
        } else {
            self.text(&revision.to_string());
        }
    }

    /// One line on stderr: `nearkv: <code>: <message>`, or with `--json` an `error` object with
    /// the same code.
    pub(super) fn error(&self, failure: &Failure) {
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
pub(super) enum Failure {
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
