//! `INFO`: the server, persistence, replication, clients and keyspace sections Redis clients and
//! tools read, and a `nearkv` section with each bucket's revision, age and state.

use std::fmt::Write;

use bytes::Bytes;

use super::session::{Session, REDIS_VERSION};

pub fn text(session: &Session, section: Option<&Bytes>) -> String {
    let wanted = |name: &str| {
        section.is_none_or(|s| {
            s.eq_ignore_ascii_case(name.as_bytes())
                || s.eq_ignore_ascii_case(b"all")
                || s.eq_ignore_ascii_case(b"default")
                || s.eq_ignore_ascii_case(b"everything")
        })
    };
    let mut out = String::new();
    let cache = &session.ctx.cache;
    if wanted("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nnearkv_version:{}\r\nredis_mode:standalone\r\n\
             os:{}\r\narch_bits:64\r\nprocess_id:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id()
        );
    }
    let statuses: Vec<_> = cache.buckets().map(|b| b.status()).collect();
    if wanted("persistence") {
        // Clients such as ioredis wait while `loading` is 1 before they send commands: here, until
        // every bucket's initial sync is done (reads before that answer NOT_READY).
        let loading = statuses.iter().any(|s| !s.synced);
        let _ = write!(
            out,
            "# Persistence\r\nloading:{}\r\naof_enabled:0\r\n\r\n",
            u8::from(loading)
        );
    }
    if wanted("replication") {
        // Writes are accepted (they go to NATS), so clients that look for a primary find one.
        out.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if wanted("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\n\r\n",
            session.ctx.metrics.connections.get()
        );
    }
    if wanted("keyspace") {
        out.push_str("# Keyspace\r\n");
        for (db, status) in statuses.iter().enumerate() {
            let _ = write!(out, "db{db}:keys={},expires=0,avg_ttl=0\r\n", status.keys);
        }
        out.push_str("\r\n");
    }
    if wanted("nearkv") {
        out.push_str("# Nearkv\r\n");
        for (db, s) in statuses.iter().enumerate() {
            let _ = write!(
                out,
                "db{db}:bucket={},keys={},bytes={},revision={},server_revision={},lag={},age_ms={},\
                 synced={},stale={},connected={},rebuilds={}\r\n",
                s.bucket,
                s.keys,
                s.bytes,
                s.revision,
                s.server_revision,
                s.lag,
                s.age_ms.map_or(-1, |ms| ms as i64),
                u8::from(s.synced),
                u8::from(s.stale),
                u8::from(s.connected),
                s.rebuilds
            );
        }
        out.push_str("\r\n");
    }
    out
}
