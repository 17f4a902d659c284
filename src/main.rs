use std::process::ExitCode;

use clap::Parser;

mod bench;
mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("nearkv: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(cli::run(cli))
}
