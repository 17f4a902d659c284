//! The client subcommands: each is one call of [`nearkv::Client`], printed by [`Output`].

use std::io::Read;
use std::process::ExitCode;

use futures::StreamExt;
use serde_json::json;

use super::args::Command;
use super::output::{entry_json, now_nanos, status_table, Failure, Output};
use super::{EXIT_ERROR, EXIT_NOT_FOUND};
use nearkv::client::{Client, WatchEvent};
use nearkv::protocol::{Consistency, ReadOptions, WriteOptions};

pub(super) async fn client_command(
    command: Command,
    socket: &std::path::Path,
    output: &Output,
) -> Result<ExitCode, Failure> {
    let client = Client::connect(socket).await?;
    match command {
        // `run` and `run_command` handle these before they get here.
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
                        nearkv::keys::quote(&key)
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
