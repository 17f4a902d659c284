use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = nearkv::cli::Cli::parse();
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
    runtime.block_on(nearkv::cli::run(cli))
}
