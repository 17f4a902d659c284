//! The `nearkv` command: `serve` runs the sidecar; the other subcommands are a client of it.
//!
//! Exit codes: 0 success, 1 `get` found no such key, 2 any error (one line on stderr).
//!
//! - `args.rs`: what the command line accepts;
//! - `serve.rs`: `nearkv serve`, the configuration built from the file and the flags;
//! - `commands.rs`: the client subcommands, one call of [`nearkv::Client`] each;
//! - `output.rs`: how their results and errors are printed (text, or JSON with `--json`).

mod args;
mod commands;
mod output;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

pub use args::Cli;
use args::Command;
use nearkv::config::DEFAULT_SOCKET_PATH;
use output::Output;

pub(crate) const EXIT_NOT_FOUND: u8 = 1;
pub(crate) const EXIT_ERROR: u8 = 2;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        // `serve` sizes its runtime from its configuration.
        Command::Serve(args) => serve::serve(args, cli.socket),
        command => match runtime(None) {
            Ok(runtime) => runtime.block_on(run_command(command, cli.socket, cli.json)),
            Err(code) => code,
        },
    }
}

/// A runtime with `threads` worker threads; `Some(1)` runs everything on the calling thread, and
/// `None` gives one worker per core.
fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build().map_err(|err| {
        eprintln!("nearkv: cannot start the async runtime: {err}");
        ExitCode::from(EXIT_ERROR)
    })
}

async fn run_command(command: Command, socket: Option<PathBuf>, json: bool) -> ExitCode {
    match command {
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
            let socket = socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
            match crate::bench::run(&args, &socket).await {
                Ok(report) => {
                    if json {
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
            let socket = socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
            let output = Output { json };
            match commands::client_command(command, &socket, &output).await {
                Ok(code) => code,
                Err(err) => {
                    output.error(&err);
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
    }
}
