//! traceed: wires the loader, the ingest pipeline, the store and the API
//! together and runs them until SIGTERM/SIGINT.

mod api;
mod cgroup;
mod cli;
mod clock;
mod config;
mod decoder;
mod ingest;
mod kobject;
mod loader;
mod metrics;
mod proctable;
mod scope;
mod server;
mod source;
mod store;
mod tracefs;

use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let explicit = cli.config.as_os_str() != config::DEFAULT_CONFIG;
    let mut cfg = config::Config::load(&cli.config, explicit)?;
    if let Some(d) = cli.state_dir {
        cfg.state_dir = d;
    }
    if let Some(s) = cli.socket {
        cfg.socket = s;
    }
    if let Some(m) = cli.mode {
        cfg.mode = m;
    }
    if let Some(t) = cli.transport {
        cfg.kernel.transport = t;
    }
    if let Some(b) = cli.btf {
        cfg.btf_path = Some(b);
    }
    init_logging(&cfg.log_level);
    match cli.command.unwrap_or(cli::Command::Run) {
        cli::Command::Run => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(server::run(cfg)),
        cli::Command::BuildObject { headers, output } => {
            let headers = headers.unwrap_or_else(kobject::default_headers);
            let b = kobject::build(&headers, output.as_deref())?;
            println!(
                "built {} for kernel {} in {:.1} s",
                b.output.display(),
                b.release,
                b.took.as_secs_f64()
            );
            Ok(())
        }
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
