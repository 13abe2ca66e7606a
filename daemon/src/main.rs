//! traceed: wires the loader, the ingest pipeline, the store and the API
//! together and runs them until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use traceed::kernel::kobject;
use traceed::service::{cli, config, logging, memory, notify, private, server};

/// sysexits.h EX_CONFIG: the unit sets RestartPreventExitStatus=78 so a
/// broken config file is reported once instead of restarted in a loop.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Before any file is created: the history stays private whatever
    // umask the daemon was started with.
    private::restrict_umask();
    memory::limit_arenas();
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
        cli::Command::Export {
            what:
                cli::ExportCommand::ClickhouseSchema {
                    cluster,
                    database,
                    table,
                    ttl_days,
                    clickhouse_version,
                },
        } => clickhouse_schema(
            &cfg,
            cluster,
            database,
            table,
            ttl_days,
            &clickhouse_version,
        )
        .map(|ddl| print!("{ddl}")),
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
    // Files carry group `traceed` where it exists: looked up once.
    let gid = traceed::service::peer::group_gid();
    private::prepare_state_dir(&cfg.state_dir, gid)?;
    if let Some(dir) = cfg.socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        private::create_private_dir(dir, gid)?;
    }
    if let Some(export) = &cfg.export.jsonl {
        private::tighten_file(export, gid)?;
    }
    traceed::detect::check_paths(&cfg.detect.rules)?;
    Ok(())
}

/// `traceed export clickhouse-schema`: names from the flags, else from
/// `[export.clickhouse]`, else the defaults.
fn clickhouse_schema(
    cfg: &config::Config,
    cluster: Option<String>,
    database: Option<String>,
    table: Option<String>,
    ttl_days: u32,
    version: &str,
) -> anyhow::Result<String> {
    let ch = cfg.export.clickhouse.as_ref();
    let database = database
        .or_else(|| ch.map(|c| c.database.clone()))
        .unwrap_or_else(|| "traceed".into());
    let table = table
        .or_else(|| ch.map(|c| c.table.clone()))
        .unwrap_or_else(|| "events".into());
    for (flag, v) in [
        ("--database", Some(&database)),
        ("--table", Some(&table)),
        ("--cluster", cluster.as_ref()),
    ] {
        if let Some(v) = v {
            anyhow::ensure!(
                config::is_identifier(v),
                "{flag} {v:?}: must be a plain identifier (letters, digits, _)"
            );
        }
    }
    let server_version = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .with_context(|| {
            format!("--clickhouse-version {version:?}: expected MAJOR.MINOR, e.g. 18.16")
        })?;
    Ok(traceed::store::clickhouse::schema(
        &traceed::store::clickhouse::SchemaOptions {
            database,
            table,
            cluster,
            ttl_days,
            server_version,
        },
    ))
}

fn load_config(cli: &cli::Cli) -> anyhow::Result<config::Config> {
    let explicit = cli.config.as_os_str() != config::DEFAULT_CONFIG;
    if cli.config.exists() {
        private::check_trusted("the config file", &cli.config)?;
    }
    let mut cfg = config::Config::load(&cli.config, explicit)?;
    cfg.source = Some(cli.config.clone());
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
