//! Which handler runs each RESP command: reads from memory at once, strings in `strings.rs`,
//! `NEARKV.*` in `nearkv.rs`; and the connection and server commands themselves (`HELLO`,
//! `PING`, `SELECT`, `CLIENT`, `COMMAND`, `CONFIG`, pub/sub subscriptions).

use bytes::Bytes;

use super::encode::{Out, Version};
use super::reply;
use super::session::{arity, bad, integer, is, Handled, Session, REDIS_VERSION};
use super::{nearkv, strings};
use crate::error::Error;
use crate::metrics::ReadTally;

impl Session {
    /// Answers a read from memory at once (`GET`, `MGET`), without the machinery of a command
    /// that may wait; `false` for any other command, which goes to [`Session::execute`].
    pub fn answer_read(
        &mut self,
        args: &[Bytes],
        out: &mut Out<'_>,
        tally: &mut ReadTally,
    ) -> bool {
        let Some(first) = args.first() else {
            return false;
        };
        if self.pubsub.is_active() && self.version == Version::Resp2 {
            return false;
        }
        let handled = if args.len() == 2 && is(first, "GET") {
            strings::get(self, &args[1], out, tally)
        } else if args.len() >= 2 && is(first, "MGET") {
            strings::mget(self, args, out, tally)
        } else {
            return false;
        };
        if let Err(err) = handled {
            reply::error(out, &err);
        }
        true
    }

    /// The command as a write that may be sent along with the writes before it (a plain `SET`, a
    /// `DEL`, a `NEARKV.*` write other than a create); `None` for anything else, including one
    /// it must refuse (run by [`Session::execute`]).
    pub fn pipelined_write(&self, args: &[Bytes]) -> Option<strings::PipelinedWrite> {
        if self.pubsub.is_active() && self.version == Version::Resp2 {
            return None;
        }
        strings::PipelinedWrite::of(args)
    }

    /// Runs one command and appends its reply to `out`.
    pub async fn execute(&mut self, args: &[Bytes], out: &mut Out<'_>) {
        let Some(first) = args.first() else {
            return;
        };
        let mut upper = [0u8; 32];
        let name = if first.len() <= upper.len() {
            let name = &mut upper[..first.len()];
            name.copy_from_slice(first);
            name.make_ascii_uppercase();
            std::str::from_utf8(name).unwrap_or("")
        } else {
            ""
        };
        if self.pubsub.is_active() && self.version == Version::Resp2 && !allowed_subscribed(name) {
            out.error(
                "ERR",
                &format!(
                    "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
                     RESET are allowed in this context",
                    name.to_ascii_lowercase()
                ),
            );
            return;
        }
        let handled = match name {
            "GET" | "MGET" | "SET" | "SETNX" | "SETEX" | "PSETEX" | "MSET" | "DEL" | "UNLINK"
            | "GETDEL" | "EXISTS" | "STRLEN" | "TYPE" | "TTL" | "PTTL" | "KEYS" | "SCAN"
            | "DBSIZE" => strings::execute(self, name, args, out).await,
            "NEARKV.GET" | "NEARKV.SET" | "NEARKV.DEL" | "NEARKV.PURGE" | "NEARKV.KEYS"
            | "NEARKV.STATUS" => nearkv::execute(self, name, args, out).await,
            "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
                self.pubsub(name, args, out)
            }
            "PING" => self.ping(args, out),
            "ECHO" => match args.len() {
                2 => {
                    out.bulk(&args[1]);
                    Ok(())
                }
                _ => Err(arity(name)),
            },
            "QUIT" => {
                self.quit = true;
                out.ok();
                Ok(())
            }
            "RESET" => {
                self.reset();
                out.version = self.version;
                out.simple("RESET");
                Ok(())
            }
            "HELLO" => self.hello(args, out),
            "AUTH" => Err(bad(
                "nearkv has no passwords: access to the socket is granted by the peer's user or \
                 group (socket.allow_uids / allow_gids); connect without a password or username",
            )),
            "SELECT" => self.select(args, out),
            "CLIENT" => self.client(args, out),
            "COMMAND" => command_info(args, out),
            "INFO" => {
                out.text(&super::info::text(self, args.get(1)));
                Ok(())
            }
            "CONFIG" => config(args, out, self.ctx.cache.buckets().count()),
            "ROLE" => match args.len() {
                // A primary without replicas: writes are accepted (they go to NATS).
                1 => {
                    out.array(3);
                    out.bulk(b"master");
                    out.int(0);
                    out.array(0);
                    Ok(())
                }
                _ => Err(arity(name)),
            },
            _ => Err(unknown(first, args)),
        };
        if let Err(err) = handled {
            reply::error(out, &err);
        }
    }

    fn ping(&mut self, args: &[Bytes], out: &mut Out<'_>) -> Handled {
        if args.len() > 2 {
            return Err(arity("ping"));
        }
        if self.pubsub.is_active() && self.version == Version::Resp2 {
            out.array(2);
            out.bulk(b"pong");
            out.bulk(args.get(1).map_or(&b""[..], |a| &a[..]));
        } else {
            match args.get(1) {
                Some(message) => out.bulk(message),
                None => out.simple("PONG"),
            }
        }
        Ok(())
    }

    fn hello(&mut self, args: &[Bytes], out: &mut Out<'_>) -> Handled {
        let mut rest = args.iter().skip(1);
        let version = match rest.next().map(integer) {
            None => self.version,
            Some(Ok(2)) => Version::Resp2,
            Some(Ok(3)) => Version::Resp3,
            Some(_) => {
                out.error(
                    "NOPROTO",
                    "unsupported protocol version: nearkv speaks RESP2 and RESP3",
                );
                return Ok(());
            }
        };
        // Every option is checked before anything changes, as Redis does.
        let mut name = None;
        while let Some(option) = rest.next() {
            if is(option, "AUTH") {
                return Err(bad(
                    "nearkv has no passwords: access to the socket is granted by the peer's user \
                     or group (socket.allow_uids / allow_gids); send HELLO without AUTH",
                ));
            } else if is(option, "SETNAME") {
                name = Some(rest.next().ok_or_else(|| arity("hello"))?.clone());
            } else {
                return Err(bad(format!(
                    "syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(option)
                )));
            }
        }
        self.version = version;
        if name.is_some() {
            self.name = name;
        }
        // The reply to `HELLO 3` is already in RESP3.
        out.version = version;
        out.map(7);
        out.bulk(b"server");
        out.bulk(b"nearkv");
        out.bulk(b"version");
        out.bulk(REDIS_VERSION.as_bytes());
        out.bulk(b"proto");
        out.int(if self.version == Version::Resp3 { 3 } else { 2 });
        out.bulk(b"id");
        out.int(self.id as i64);
        out.bulk(b"mode");
        out.bulk(b"standalone");
        out.bulk(b"role");
        out.bulk(b"master");
        out.bulk(b"modules");
        out.array(0);
        Ok(())
    }

    fn select(&mut self, args: &[Bytes], out: &mut Out<'_>) -> Handled {
        if args.len() != 2 {
            return Err(arity("select"));
        }
        let db = integer(&args[1])?;
        let buckets = self.ctx.cache.buckets().count();
        if db < 0 || db as usize >= buckets {
            return Err(bad(format!(
                "DB index is out of range: database N is the N-th configured bucket, and this \
                 sidecar mirrors {buckets}"
            )));
        }
        self.db = db as usize;
        out.ok();
        Ok(())
    }

    fn client(&mut self, args: &[Bytes], out: &mut Out<'_>) -> Handled {
        let Some(sub) = args.get(1) else {
            return Err(arity("client"));
        };
        if is(sub, "SETNAME") && args.len() == 3 {
            if args[2].iter().any(|&b| b == b' ' || b == b'\n') {
                return Err(bad(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            self.name = (!args[2].is_empty()).then(|| args[2].clone());
            out.ok();
        } else if is(sub, "GETNAME") && args.len() == 2 {
            match &self.name {
                Some(name) => out.bulk(name),
                None => out.null(),
            }
        } else if is(sub, "SETINFO") && args.len() == 4 {
            out.ok();
        } else if is(sub, "ID") && args.len() == 2 {
            out.int(self.id as i64);
        } else if (is(sub, "INFO") || is(sub, "LIST")) && args.len() == 2 {
            out.text(&format!("{}\n", self.client_line()));
        } else {
            return Err(bad(format!(
                "unknown subcommand or wrong number of arguments for 'CLIENT {}': nearkv \
                 supports CLIENT SETNAME, GETNAME, SETINFO, ID, INFO and LIST",
                String::from_utf8_lossy(sub)
            )));
        }
        Ok(())
    }

    fn pubsub(&mut self, name: &str, args: &[Bytes], out: &mut Out<'_>) -> Handled {
        let subscribe = name == "SUBSCRIBE" || name == "PSUBSCRIBE";
        if subscribe && args.len() < 2 {
            return Err(arity(name));
        }
        let patterns = name.starts_with('P');
        let cache = self.ctx.cache.clone();
        let names: Vec<Bytes> = args[1..].to_vec();
        if subscribe {
            self.pubsub.subscribe(&cache, patterns, names, out);
        } else {
            self.pubsub.unsubscribe(patterns, names, out);
        }
        Ok(())
    }
}

/// Commands a RESP2 connection may send while subscribed.
fn allowed_subscribed(name: &str) -> bool {
    matches!(
        name,
        "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "QUIT" | "RESET"
    )
}

fn unknown(first: &Bytes, args: &[Bytes]) -> Error {
    let mut with = String::new();
    for arg in args.iter().skip(1).take(8) {
        with.push_str(&format!(
            "'{}' ",
            String::from_utf8_lossy(&arg[..arg.len().min(64)])
        ));
    }
    bad(format!(
        "unknown command '{}', with args beginning with: {with}(nearkv serves strings, \
         NEARKV.* and keyspace notifications: see docs/RESP.md)",
        String::from_utf8_lossy(&first[..first.len().min(64)])
    ))
}

/// The commands nearkv serves, with their Redis arity (negative: at least), for `COMMAND`.
pub const COMMANDS: &[(&str, i64)] = &[
    ("get", 2),
    ("mget", -2),
    ("set", -3),
    ("setnx", 3),
    ("setex", 4),
    ("psetex", 4),
    ("mset", -3),
    ("del", -2),
    ("unlink", -2),
    ("getdel", 2),
    ("exists", -2),
    ("strlen", 2),
    ("type", 2),
    ("ttl", 2),
    ("pttl", 2),
    ("keys", 2),
    ("scan", -2),
    ("dbsize", 1),
    ("ping", -1),
    ("echo", 2),
    ("quit", -1),
    ("reset", 1),
    ("hello", -1),
    ("auth", -2),
    ("select", 2),
    ("client", -2),
    ("command", -1),
    ("info", -1),
    ("config", -2),
    ("role", 1),
    ("subscribe", -2),
    ("psubscribe", -2),
    ("unsubscribe", -1),
    ("punsubscribe", -1),
    ("nearkv.get", -2),
    ("nearkv.set", -3),
    ("nearkv.del", -2),
    ("nearkv.purge", -2),
    ("nearkv.keys", -1),
    ("nearkv.status", -1),
];

fn command_info(args: &[Bytes], out: &mut Out<'_>) -> Handled {
    match args.get(1) {
        None => {
            out.array(COMMANDS.len());
            for (name, arity) in COMMANDS {
                let first_key = i64::from(!matches!(*name, "ping" | "echo" | "quit" | "reset" | "hello" | "auth" | "select" | "client" | "command" | "info" | "config" | "role" | "dbsize" | "scan" | "keys" | "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "nearkv.keys" | "nearkv.status"));
                out.array(6);
                out.bulk(name.as_bytes());
                out.int(*arity);
                out.array(0);
                out.int(first_key);
                out.int(if *name == "mget" || *name == "del" || *name == "unlink" || *name == "exists" { -1 } else { first_key });
                out.int(if *name == "mset" { 2 } else { first_key });
            }
        }
        Some(sub) if is(sub, "COUNT") => out.int(COMMANDS.len() as i64),
        // Clients (redis-cli) ask for documentation to show hints; nearkv has none to give.
        Some(sub) if is(sub, "DOCS") => out.map(0),
        Some(sub) if is(sub, "INFO") => {
            out.array(args.len() - 2);
            for _ in 2..args.len() {
                out.null_array();
            }
        }
        Some(sub) => {
            return Err(bad(format!(
                "unknown subcommand 'COMMAND {}': nearkv supports COMMAND, COMMAND COUNT, DOCS and INFO",
                String::from_utf8_lossy(sub)
            )))
        }
    }
    Ok(())
}

/// `CONFIG GET/SET` of `notify-keyspace-events` only: keyspace notifications are always on for
/// subscribers, so setting it (as invalidation libraries do) succeeds and changes nothing. Other
/// parameters read as absent (an empty answer, as Redis gives for an unknown one), which is what
/// tools such as redis-benchmark handle.
fn config(args: &[Bytes], out: &mut Out<'_>, buckets: usize) -> Handled {
    let Some(sub) = args.get(1) else {
        return Err(arity("config"));
    };
    if is(sub, "GET") && args.len() >= 3 {
        // What nearkv can say of Redis's parameters: notifications always on, no persistence of
        // its own (the data lives in NATS), and one database per configured bucket.
        let databases = buckets.to_string();
        let known = [
            ("notify-keyspace-events", "KEA"),
            ("save", ""),
            ("appendonly", "no"),
            ("databases", databases.as_str()),
        ];
        let found: Vec<&(&str, &str)> = known
            .iter()
            .filter(|(name, _)| {
                args[2..]
                    .iter()
                    .any(|p| super::glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
            })
            .collect();
        out.map(found.len());
        for (name, value) in found {
            out.bulk(name.as_bytes());
            out.bulk(value.as_bytes());
        }
        Ok(())
    } else if is(sub, "SET") && args.len() == 4 && is(&args[2], "notify-keyspace-events") {
        out.ok();
        Ok(())
    } else {
        Err(bad(
            "nearkv supports CONFIG GET and CONFIG SET notify-keyspace-events only (keyspace \
             notifications are always on); configure the sidecar in its TOML file",
        ))
    }
}
