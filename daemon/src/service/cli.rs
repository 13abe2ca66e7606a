//! Command-line interface of `traceed`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::service::config::Mode;

#[derive(Parser, Debug)]
#[command(
    name = "traceed",
    version,
    about = "Linux runtime-security tracing daemon"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, default_value = crate::service::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Directory for events.db (overrides the config).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Unix socket of the API (overrides the config).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Force a rung of the portability ladder (overrides the config).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// How records reach user space (overrides the config).
    #[arg(long, value_enum)]
    pub transport: Option<crate::service::config::Transport>,
    /// External BTF file for the CO-RE object (overrides the config).
    #[arg(long)]
    pub btf: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Compile the kernel-specific eBPF object (no CO-RE) for the kernel
    /// whose headers are given, for hosts without BTF. Needs clang and llvm.
    BuildObject {
        /// Kernel header tree [default: /lib/modules/$(uname -r)/build].
        #[arg(long)]
        headers: Option<PathBuf>,
        /// Where to write the object [default: ./<release>.bpf.o]; traceed
        /// looks for <release>.bpf.o in /usr/lib/traceed/objects and
        /// <state>/objects.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print what other stores need to receive the history.
    Export {
        #[command(subcommand)]
        what: ExportCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Print the ClickHouse DDL for `[export.clickhouse]`: the
    /// ReplacingMergeTree table (by day, with retention), a Distributed
    /// table over a cluster, and a view with the columns of events_view.
    ClickhouseSchema {
        /// A cluster in ClickHouse's remote_servers: adds <table>_local on
        /// every shard and a Distributed <table> over them.
        #[arg(long)]
        cluster: Option<String>,
        /// [default: export.clickhouse.database, else traceed]
        #[arg(long)]
        database: Option<String>,
        /// The table traceed inserts into [default: export.clickhouse.table, else events].
        #[arg(long)]
        table: Option<String>,
        /// Keep this many days in ClickHouse (0: keep everything).
        #[arg(long, default_value_t = 90)]
        ttl_days: u32,
        /// The oldest ClickHouse the DDL must run on (MAJOR.MINOR); 19.6 and
        /// later get a TTL clause, older ones a partition-dropping recipe.
        #[arg(long, default_value = "18.16")]
        clickhouse_version: String,
    },
}
