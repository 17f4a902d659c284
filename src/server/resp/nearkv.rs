//! `NEARKV.*`: everything protocol v1 can do, through the same commands, with its options as
//! words: revisions, compare-and-set, strong and `min_revision` reads, NATS key filters.

use std::time::Instant;

use bytes::Bytes;

use super::encode::Out;
use super::reply::{RespReply, Style};
use super::session::{arity, bad, is, text, Handled, Session};
use crate::cmd::{self, Command};
use crate::error::Error;
use crate::protocol::{Consistency, ReadOptions, WriteOptions};

fn number(args: &[Bytes], at: usize, option: &str) -> Result<u64, Error> {
    args.get(at)
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| bad(format!("{option} takes a non-negative integer")))
}

pub(super) fn write_options(
    args: &[Bytes],
    from: usize,
    ttl_allowed: bool,
) -> Result<WriteOptions, Error> {
    let mut write = WriteOptions::default();
    let mut i = from;
    while i < args.len() {
        if is(&args[i], "IFREV") {
            write.expect_revision = Some(number(args, i + 1, "IFREV")?);
        } else if is(&args[i], "TTL") && ttl_allowed {
            write.ttl_ms = Some(number(args, i + 1, "TTL")?);
        } else if is(&args[i], "TIMEOUT") {
            write.timeout_ms = Some(number(args, i + 1, "TIMEOUT")?);
        } else {
            return Err(bad(format!(
                "syntax error at '{}': the options are IFREV n{} and TIMEOUT ms",
                String::from_utf8_lossy(&args[i]),
                if ttl_allowed { ", TTL ms" } else { "" }
            )));
        }
        i += 2;
    }
    Ok(write)
}

pub async fn execute(
    session: &mut Session,
    name: &str,
    args: &[Bytes],
    out: &mut Out<'_>,
) -> Handled {
    let started = Instant::now();
    let command = match name {
        "NEARKV.GET" => {
            let (bucket, key) = session.locate(args.get(1).ok_or_else(|| arity(name))?)?;
            let mut read = ReadOptions::default();
            let mut i = 2;
            while i < args.len() {
                if is(&args[i], "MINREV") {
                    read.min_revision = Some(number(args, i + 1, "MINREV")?);
                    i += 1;
                } else if is(&args[i], "STRONG") {
                    read.consistency = Consistency::Strong;
                } else if is(&args[i], "ALLOWSTALE") {
                    read.allow_stale = true;
                } else if is(&args[i], "TIMEOUT") {
                    read.timeout_ms = Some(number(args, i + 1, "TIMEOUT")?);
                    i += 1;
                } else {
                    return Err(bad(format!(
                        "syntax error at '{}': the options are MINREV n, STRONG, ALLOWSTALE and \
                         TIMEOUT ms",
                        String::from_utf8_lossy(&args[i])
                    )));
                }
                i += 1;
            }
            Command::Get(cmd::Get::new(bucket.name(), key, read))
        }
        "NEARKV.SET" => {
            if args.len() < 3 {
                return Err(arity(name));
            }
            let (bucket, key) = session.locate(&args[1])?;
            let write = write_options(args, 3, true)?;
            Command::Put(cmd::Put::new(bucket.name(), key, args[2].clone(), write))
        }
        "NEARKV.DEL" | "NEARKV.PURGE" => {
            let (bucket, key) = session.locate(args.get(1).ok_or_else(|| arity(name))?)?;
            let write = write_options(args, 2, false)?;
            if name == "NEARKV.DEL" {
                Command::Delete(cmd::Delete::new(bucket.name(), key, write))
            } else {
                Command::Purge(cmd::Purge::new(bucket.name(), key, write))
            }
        }
        "NEARKV.KEYS" => {
            if args.len() > 2 {
                return Err(arity(name));
            }
            // `bucket:filter` or a filter of the selected database; NATS wildcards (`*`, `>`).
            let (bucket, filter) = match args.get(1) {
                Some(arg) => {
                    let (bucket, filter) = session.locate(arg)?;
                    (bucket, Some(filter))
                }
                None => (session.selected()?, None),
            };
            Command::Keys(cmd::Keys::new(bucket.name(), filter, false))
        }
        "NEARKV.STATUS" => {
            if args.len() > 2 {
                return Err(arity(name));
            }
            let bucket = args.get(1).map(text).transpose()?;
            Command::Status(cmd::Status::new(bucket))
        }
        _ => return Err(arity(name)),
    };
    let op = command.op();
    let bucket = command.bucket().unwrap_or("").to_string();
    let mut reply = RespReply {
        out,
        style: Style::Nearkv,
    };
    let outcome = command.answer(&session.ctx.cache, &mut reply).await;
    let label = session
        .ctx
        .cache
        .bucket(&bucket)
        .map_or("", |b| b.name())
        .to_string();
    session.ctx.count(&label, op, started, outcome);
    Ok(())
}
