//! tracectl: asks traceed about recorded events over its Unix socket.

mod client;
mod output;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use http_body_util::BodyExt;
use traceed_wire::{Event, EventsPage, Status};

use client::{Api, ClientError};
use output::Format;

#[derive(Parser)]
#[command(
    name = "tracectl",
    version,
    about = "Query and follow events recorded by traceed"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(
        long,
        env = "TRACEED_SOCKET",
        default_value = "/run/traceed/traceed.sock",
        global = true
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List recorded events (oldest first), or follow them live.
    Events(EventsArgs),
    /// Show which rung of the portability ladder runs, and the store's state.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Args)]
struct EventsArgs {
    /// Start of the window: a duration back from now (90s, 15m, 1h, 2d) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// End of the window (exclusive), same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Only these kinds (comma-separated: exec,open,connect,...).
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    ppid: Option<u32>,
    #[arg(long)]
    uid: Option<u32>,
    #[arg(long)]
    comm: Option<String>,
    #[arg(long)]
    exe: Option<String>,
    /// Container id (a prefix, as `docker ps` shows it, is enough).
    #[arg(long)]
    container: Option<String>,
    /// Stop after this many events (default: all that match).
    #[arg(long)]
    limit: Option<u64>,
    /// Print the matching history, then keep printing new events as they happen.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(short = 'o', long, value_enum)]
    output: Option<Format>,
}

const PAGE: u64 = 1000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracectl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`tracectl events | head`) is not an error.
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            let code = e
                .downcast_ref::<ClientError>()
                .map(|c| c.exit_code())
                .unwrap_or(1);
            eprintln!("tracectl: {e}");
            ExitCode::from(code as u8)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Api::new(&cli.socket);
    match cli.command {
        Command::Status { output } => {
            let s: Status = api.get_json("/v1/status").await?;
            let mut out = std::io::stdout().lock();
            match output {
                Format::Table => output::status_text(&s, &mut out)?,
                Format::Json | Format::Jsonl => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?
                }
            }
            Ok(())
        }
        Command::Events(args) => events(&api, args).await,
    }
}

fn query_string(a: &EventsArgs, page: u64, cursor: Option<&str>, follow: bool) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(v) = &a.since {
        q.append_pair("since", v);
    }
    if let Some(v) = &a.until {
        q.append_pair("until", v);
    }
    if !a.kind.is_empty() {
        q.append_pair("kind", &a.kind.join(","));
    }
    for (k, v) in [("pid", a.pid), ("ppid", a.ppid), ("uid", a.uid)] {
        if let Some(v) = v {
            q.append_pair(k, &v.to_string());
        }
    }
    for (k, v) in [
        ("comm", &a.comm),
        ("exe", &a.exe),
        ("container", &a.container),
    ] {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.append_pair("limit", &page.to_string());
    if let Some(c) = cursor {
        q.append_pair("cursor", c);
    }
    if follow {
        q.append_pair("follow", "true");
    }
    q.finish()
}

async fn events(api: &Api, a: EventsArgs) -> anyhow::Result<()> {
    let format = a.output.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Jsonl
    });
    if a.limit == Some(0) {
        anyhow::bail!("--limit must be at least 1");
    }
    let max = a.limit.unwrap_or(u64::MAX);
    let mut out = std::io::stdout().lock();
    if a.follow {
        return follow(api, &a, format, max, &mut out).await;
    }
    let mut all: Vec<Event> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first_json = true;
    let mut printed = 0u64;
    if format == Format::Json {
        out.write_all(b"[")?;
    }
    loop {
        let page = PAGE.min(max - printed);
        let path = format!(
            "/v1/events?{}",
            query_string(&a, page, cursor.as_deref(), false)
        );
        let p: EventsPage = api.get_json(&path).await?;
        printed += p.events.len() as u64;
        match format {
            // A table needs all rows to size its columns.
            Format::Table => all.extend(p.events),
            Format::Jsonl => {
                for e in &p.events {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
            }
            Format::Json => {
                for e in &p.events {
                    if !first_json {
                        out.write_all(b",")?;
                    }
                    first_json = false;
                    serde_json::to_writer(&mut out, e)?;
                }
            }
        }
        cursor = p.next_cursor;
        if cursor.is_none() || printed >= max {
            break;
        }
    }
    match format {
        Format::Json => out.write_all(b"]\n")?,
        Format::Table if all.is_empty() => writeln!(out, "no events match")?,
        Format::Table => writeln!(out, "{}", output::table(&all))?,
        Format::Jsonl => {}
    }
    out.flush()?;
    Ok(())
}

async fn follow(
    api: &Api,
    a: &EventsArgs,
    format: Format,
    max: u64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let path = format!("/v1/events?{}", query_string(a, PAGE, None, true));
    let resp = api.get(&path).await?;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut printed = 0u64;
    if format == Format::Table {
        writeln!(out, "{}", output::HEADER.join("  "))?;
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let e: Event =
                serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            match format {
                Format::Table => writeln!(out, "{}", output::follow_line(&e))?,
                Format::Json | Format::Jsonl => writeln!(out, "{}", serde_json::to_string(&e)?)?,
            }
            out.flush()?;
            printed += 1;
            if printed >= max {
                return Ok(());
            }
        }
    }
    Ok(())
}
