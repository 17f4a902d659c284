//! `nearkv serve`: builds the configuration (the file, then the flags on top), sets up logging
//! and signals, and runs [`nearkv::serve`].

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::args::ServeArgs;
use super::EXIT_ERROR;
use nearkv::config::{BucketConfig, Config, LogFormat};

/// Builds the sidecar's configuration: the file, then the flags on top.
fn serve_config(
    args: &ServeArgs,
    socket: Option<PathBuf>,
) -> Result<Config, nearkv::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(urls) = &args.nats_url {
        config.nats.servers = urls.split(',').map(|u| u.trim().to_string()).collect();
    }
    if let Some(socket) = socket {
        config.socket.path = socket;
    }
    if let Some(listen) = &args.http_listen {
        config.http.listen = listen.clone();
    }
    if let Some(level) = &args.log_level {
        config.log.level = level.clone();
    }
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    if let Some(dir) = &args.state_dir {
        config.cache.state_dir = Some(dir.clone());
    }
    if let Some(every) = args.save_interval {
        config.cache.save_interval = every;
    }
    for name in &args.buckets {
        if !config.buckets.iter().any(|b| &b.name == name) {
            config.buckets.push(BucketConfig::named(name));
        }
    }
    if args.create_buckets {
        for bucket in &mut config.buckets {
            bucket.create = true;
        }
    }
    // Validated once, by `nearkv::serve`, which embedders call too.
    Ok(config)
}

pub(super) fn serve(args: ServeArgs, socket: Option<PathBuf>) -> ExitCode {
    let config = match serve_config(&args, socket) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nearkv: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: logs sent to a file or a collector stay plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    nearkv::cache::map_large_allocations();
    raise_open_file_limit();
    // 0 is refused by `nearkv::serve`'s validation, with the field's name.
    match super::runtime(Some(config.socket.threads.max(1))) {
        Ok(runtime) => runtime.block_on(serve_until_signalled(config)),
        Err(code) => code,
    }
}

/// Raises the soft limit on open files to the hard limit, as Go programs do at start. Each client
/// takes a descriptor, and under systemd's default soft limit of 1024 a sidecar with 1,011
/// clients had none left: the next of its `socket.max_connections` (1024) got no answer, and a
/// NATS reconnect then could not have opened its socket.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        ..limit
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            soft_limit = limit.rlim_cur,
            "cannot raise the limit on open files; clients beyond it will not be answered"
        );
    }
}

async fn serve_until_signalled(config: Config) -> ExitCode {
    let shutdown = CancellationToken::new();
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        signal_shutdown.cancel();
    });
    match nearkv::serve(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nearkv: {err}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
