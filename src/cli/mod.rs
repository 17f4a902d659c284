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
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::serve(args, cli.socket).await,
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
