//! traceed: wires the loader, the ingest pipeline, the store and the API
//! together and runs them until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use traceed::kernel::kobject;
use traceed::service::{cli, config, logging, notify, private, server};

/// sysexits.h EX_CONFIG: the unit sets RestartPreventExitStatus=78 so a
/// broken config file is reported once instead of restarted in a loop.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Before any file is created: the history stays private whatever
    // umask the daemon was started with.
    private::restrict_umask();
    let cli = cli::Cli::parse();
    let notifier = notify::Notifier::from_env();
    let cfg = match load_config(&cli) {
        Ok(cfg) => cfg,
        Err(e) => {
            // Logging is not set up yet (its level comes from this file):
            // stderr is the journal under systemd, a terminal otherwise.
            eprintln!("traceed: {e}");
            notifier.status(&format!("config error: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let run = matches!(cli.command, None | Some(cli::Command::Run));
    if let Err(e) = run.then(|| prepare_files(&cfg)).transpose() {
        eprintln!("traceed: {e}");
        notifier.status(&format!("config error: {e}"));
        return ExitCode::from(EXIT_CONFIG);
    }
    let target = logging::init(&cfg.log_level);
    tracing::debug!(?target, "logging initialised");
    let result = match cli.command.unwrap_or(cli::Command::Run) {
        cli::Command::Run => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")
            .and_then(|rt| rt.block_on(server::run(cfg, notifier))),
        cli::Command::BuildObject { headers, output } => {
            let headers = headers.unwrap_or_else(kobject::default_headers);
            kobject::build(&headers, output.as_deref())
                .map(|b| {
                    println!(
                        "built {} for kernel {} in {:.1} s",
                        b.output.display(),
                        b.release,
                        b.took.as_secs_f64()
                    );
                })
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(error = %msg, "fatal: {msg}");
            notifier.status(&format!("failed: {msg}"));
            ExitCode::FAILURE
        }
    }
}

/// The state and runtime directories private, history files created by an
/// earlier run tightened, and a refusal for anything an untrusted user
/// could change.
fn prepare_files(cfg: &config::Config) -> Result<(), private::PrivacyError> {
    private::prepare_state_dir(&cfg.state_dir)?;
    if let Some(dir) = cfg.socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        private::create_private_dir(dir)?;
    }
    if let Some(export) = &cfg.export.jsonl {
        private::tighten_file(export)?;
    }
    Ok(())
}

fn load_config(cli: &cli::Cli) -> anyhow::Result<config::Config> {
    let explicit = cli.config.as_os_str() != config::DEFAULT_CONFIG;
    if cli.config.exists() {
        private::check_trusted("the config file", &cli.config)?;
    }
    let mut cfg = config::Config::load(&cli.config, explicit)?;
    if let Some(d) = &cli.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(s) = &cli.socket {
        cfg.socket = s.clone();
    }
    if let Some(m) = cli.mode {
        cfg.mode = m;
    }
    if let Some(t) = cli.transport {
        cfg.kernel.transport = t;
    }
    if let Some(b) = &cli.btf {
        cfg.btf_path = Some(b.clone());
    }
    Ok(cfg)
}
