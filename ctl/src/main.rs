//! tracectl: asks traceed about recorded events over its Unix socket.

mod client;
mod output;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use traceed_wire::{query, Alert, CountsPage, Coverage, Event, EventsPage, EventsQuery, Status};

use client::{Api, ClientError, Lines};
use output::Format;

#[derive(Parser)]
#[command(
    name = "tracectl",
    version,
    about = "Query and follow events recorded by traceed",
    after_help = "Exit status: 0 ok; 1 bad usage or a request the daemon refused; \
                  2 traceed not reachable; 3 permission denied (join group `traceed`).\n\
                  The socket is TRACEED_SOCKET or --socket (default /run/traceed/traceed.sock)."
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
    /// Longest wait for the daemon's answer (e.g. 30s, 2m); a follow waits
    /// this long for its stream to start, then as long as it runs.
    #[arg(long, default_value = "30s", value_parser = parse_timeout, global = true)]
    timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List recorded events (oldest first), or follow them live.
    Events(Box<EventsArgs>),
    /// Show a process's ancestry (up to pid 1) and everything it started.
    Tree {
        /// Process id (host view).
        pid: u32,
        /// When the pid named the process (default now: the live process
        /// with that pid, or the most recent one); a duration back or RFC 3339.
        #[arg(long)]
        at: Option<String>,
        /// Output format (default: an indented tree on a terminal, json otherwise).
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
    },
    /// Show which rung of the portability ladder runs, and the store's state.
    Status {
        /// table: a summary for people; json: the daemon's status object.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Alerts of the Sigma rules (oldest first), each with the matched event
    /// and what the process did in the minute before; or follow them.
    Alerts(AlertsArgs),
    /// Match Sigma rules against the stored history (a retro-hunt): each
    /// match is printed as it is found, with its event and process ancestry.
    Hunt(HuntArgs),
    /// Sigma rules: `rules check PATH...` validates them offline.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Print a shell completion script (e.g. `tracectl completions bash > /etc/bash_completion.d/tracectl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) generated from these definitions
    /// (e.g. `tracectl man > /usr/share/man/man1/tracectl.1`).
    Man,
}

#[derive(Args)]
struct AlertsArgs {
    /// Start of the window: a duration back from now (90s, 15m, 1h, 2d) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// End of the window (exclusive), same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Minimum level: informational, low, medium, high, critical.
    #[arg(long)]
    level: Option<String>,
    /// Only this rule id.
    #[arg(long)]
    rule: Option<String>,
    /// Keep printing new alerts as they are raised.
    #[arg(short = 'f', long)]
    follow: bool,
    /// table: for people; json: the API's objects; jsonl: one per line.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

#[derive(Args)]
struct HuntArgs {
    /// Rule files (.yml/.yaml) or directories of them.
    #[arg(required = true)]
    rules: Vec<PathBuf>,
    /// Start of the window: a duration back from now (90s, 15m, 1h, 30d) or an RFC 3339 time.
    #[arg(long, default_value = "30d")]
    since: String,
    /// End of the window (exclusive), same forms as --since (default: when the hunt starts).
    #[arg(long)]
    until: Option<String>,
    /// table: for people; json: the API's match objects; jsonl: one per line.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Load rule files and directories as the daemon would and print what
    /// it would say: exit 0 when every rule loads, 1 when one is skipped or
    /// broken. Needs no daemon.
    Check {
        /// Rule files (.yml/.yaml) or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
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
    /// Only events of this process id (host view).
    #[arg(long)]
    pid: Option<u32>,
    /// Only events whose parent process id is this.
    #[arg(long)]
    ppid: Option<u32>,
    /// Only events of this user id.
    #[arg(long)]
    uid: Option<u32>,
    /// Only events of tasks with this exact command name (comm, up to 15 bytes).
    #[arg(long)]
    comm: Option<String>,
    /// Only events of processes running this executable (exact path).
    #[arg(long)]
    exe: Option<String>,
    /// Container id (a prefix, as `docker ps` shows it, is enough).
    #[arg(long)]
    container: Option<String>,
    /// Only events recorded by this rung: core, kernel or fallback.
    #[arg(long, value_parser = ["core", "kernel", "fallback"])]
    fidelity: Option<String>,
    /// Only events naming this path (open, unlink, chmod, exec, mount target, either side of a rename): exact, or a prefix ending in '*' (/etc/*).
    #[arg(long)]
    path: Option<String>,
    /// Only connect/accept/bind with this address or in this CIDR block (10.0.0.5, 10.0.0.0/8, ::1, fd00::/8).
    #[arg(long)]
    addr: Option<String>,
    /// Only connect/accept/bind with this port.
    #[arg(long)]
    port: Option<u16>,
    /// Only execs whose argv, joined by spaces, contains this text.
    #[arg(long)]
    cmdline: Option<String>,
    /// Only events whose syscall returned an error.
    #[arg(long)]
    failed: bool,
    /// Instead of events, the most frequent values of this field among them, with counts.
    #[arg(long, value_name = "FIELD", conflicts_with_all = ["follow", "limit"])]
    count_by: Option<String>,
    /// With --count-by: how many values to list (the rest are counted as other).
    #[arg(long, requires = "count_by", default_value_t = traceed_wire::DEFAULT_TOP as u64, value_parser = clap::value_parser!(u64).range(1..=traceed_wire::MAX_TOP as u64))]
    top: u64,
    /// Oldest first (asc, the default) or newest first (desc).
    #[arg(long, value_enum, default_value = "asc", conflicts_with = "follow")]
    order: Order,
    /// Stop after this many events (default: all that match).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Print the matching history, then keep printing new events as they happen.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only events of this process (pid at --at) and of everything it
    /// started, at any depth.
    #[arg(long, conflicts_with = "follow")]
    descendants_of: Option<u32>,
    /// With --descendants-of: when the pid named the process (default now).
    #[arg(long, requires = "descendants_of")]
    at: Option<String>,
    /// Events fetched per request while paging (tests use small pages).
    #[arg(long, hide = true, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=u64::from(query::MAX_LIMIT)))]
    page_size: u64,
    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(short = 'o', long, value_enum)]
    output: Option<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Order {
    Asc,
    Desc,
}

fn main() -> ExitCode {
    // docs/ARCHITECTURE.md: 1 is bad usage (clap's own default would be 2, which here
    // means "daemon unreachable").
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
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
        // A closed pipe (`tracectl events | head`) is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<ClientError>()
                .map(|c| c.exit_code())
                .unwrap_or(1);
            eprintln!("tracectl: {e}");
            ExitCode::from(code as u8)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match traceed_wire::parse_duration(s) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{s:?} is not a duration like 30s or 2m")),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Api::new(&cli.socket, cli.timeout);
    match cli.command {
        Command::Status { output } => {
            let s: serde_json::Value = api.get_json("/v1/status").await?;
            let mut out = std::io::stdout().lock();
            match output {
                Format::Table => {
                    let s: Status = serde_json::from_value(s)
                        .map_err(|e| ClientError::Protocol(format!("status: {e}")))?;
                    output::status_text(&s, &mut out)?
                }
                // Exactly what the daemon sent, including fields this
                // tracectl does not know yet.
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?,
                Format::Jsonl => writeln!(out, "{}", serde_json::to_string(&s)?)?,
            }
            Ok(())
        }
        Command::Events(args) => events(&api, *args).await,
        Command::Rules {
            command: RulesCommand::Check { paths },
        } => rules_check(&paths),
        Command::Alerts(a) => alerts(&api, &a).await,
        Command::Hunt(h) => hunt(&api, &h).await,
        Command::Tree { pid, at, output } => {
            let q = serde_urlencoded::to_string([("pid", Some(pid.to_string())), ("at", at)])?;
            let t: serde_json::Value = api.get_json(&format!("/v1/tree?{q}")).await?;
            let coverage = t
                .get("coverage")
                .and_then(|c| serde_json::from_value::<Coverage>(c.clone()).ok());
            warn_incomplete(coverage.as_ref());
            let format = output.unwrap_or(if std::io::stdout().is_terminal() {
                Format::Table
            } else {
                Format::Json
            });
            let mut out = std::io::stdout().lock();
            match format {
                Format::Table => {
                    let t: traceed_wire::Tree = serde_json::from_value(t)
                        .map_err(|e| ClientError::Protocol(format!("tree: {e}")))?;
                    output::tree_text(&t, &mut out)?
                }
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&t)?)?,
                Format::Jsonl => writeln!(out, "{}", serde_json::to_string(&t)?)?,
            }
            out.flush()?;
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut cmd, "tracectl", &mut out);
            out.flush()?;
            Ok(())
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            man_page(&mut out)?;
            out.flush()?;
            Ok(())
        }
    }
}

async fn alerts(api: &Api, a: &AlertsArgs) -> anyhow::Result<()> {
    let mut q: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("since", &a.since),
        ("until", &a.until),
        ("level", &a.level),
        ("rule", &a.rule),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    if a.follow {
        q.push(("follow", "true".into()));
    }
    let path = format!("/v1/alerts?{}", serde_urlencoded::to_string(&q)?);
    let mut out = std::io::stdout().lock();
    let print = |al: &Alert, out: &mut std::io::StdoutLock| -> anyhow::Result<()> {
        match a.output {
            Format::Table => output::alert_text(al, out)?,
            Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(al)?)?,
            Format::Jsonl => writeln!(out, "{}", serde_json::to_string(al)?)?,
        }
        out.flush()?;
        Ok(())
    };
    if !a.follow {
        let list: Vec<Alert> = api.get_json(&path).await?;
        if a.output == Format::Json {
            writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            return Ok(());
        }
        for al in &list {
            print(al, &mut out)?;
        }
        return Ok(());
    }
    let mut lines = Lines::new(api.get(&path).await?);
    while let Some(al) = lines.next::<Alert>().await? {
        print(&al, &mut out)?;
    }
    Ok(())
}

/// The hunt's body: every rule file, checked locally first (the same
/// messages as `rules check`), joined as YAML documents.
fn hunt_body(paths: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    let set = traceed_detect::load_paths(paths, false);
    for s in &set.skipped {
        eprintln!("warning: {s}");
    }
    for e in &set.errors {
        eprintln!("error: {e}");
    }
    if !set.skipped.is_empty() || !set.errors.is_empty() {
        anyhow::bail!(
            "{} of the rules would not run",
            set.skipped.len() + set.errors.len()
        );
    }
    if set.rules.is_empty() {
        anyhow::bail!("no rule found in the given paths");
    }
    let mut body = String::new();
    for r in &set.rules {
        let text = std::fs::read_to_string(&r.source)?;
        body.push_str("---\n");
        body.push_str(&text);
        if !text.ends_with('\n') {
            body.push('\n');
        }
    }
    Ok(body.into_bytes())
}

async fn hunt(api: &Api, h: &HuntArgs) -> anyhow::Result<()> {
    let body = hunt_body(&h.rules)?;
    let mut q: Vec<(&str, String)> = vec![("since", h.since.clone())];
    if let Some(u) = &h.until {
        q.push(("until", u.clone()));
    }
    let path = format!("/v1/hunt?{}", serde_urlencoded::to_string(&q)?);
    let progress = h.output == Format::Table && std::io::stderr().is_terminal();
    let mut lines = Lines::new(api.post(&path, body).await?);
    let mut out = std::io::stdout().lock();
    let started = std::time::Instant::now();
    let mut all: Vec<serde_json::Value> = Vec::new();
    let mut shown = false;
    let clear = |shown: &mut bool| {
        if *shown {
            eprint!("\r\x1b[K");
            *shown = false;
        }
    };
    while let Some(v) = lines.next::<serde_json::Value>().await? {
        if let Some(p) = v.get("progress") {
            if progress {
                let n = |k: &str| p.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                let (scanned, total, matches) = (n("scanned"), n("total"), n("matches"));
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = scanned as f64 / secs;
                let left = if rate > 0.0 {
                    format!("{:.0}s left", total.saturating_sub(scanned) as f64 / rate)
                } else {
                    "-".into()
                };
                eprint!(
                        "\r\x1b[Kscanned {scanned} of {total} events, {rate:.0}/s, {matches} matches, {left}"
                    );
                shown = true;
            }
            continue;
        }
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            clear(&mut shown);
            anyhow::bail!("the hunt failed: {e}");
        }
        if let Some(s) = v.get("summary") {
            clear(&mut shown);
            let coverage = s
                .get("coverage")
                .and_then(|c| serde_json::from_value::<Coverage>(c.clone()).ok());
            warn_incomplete(coverage.as_ref());
            if h.output == Format::Table {
                eprintln!(
                    "{} events scanned, {} matches",
                    s.get("scanned").and_then(|x| x.as_u64()).unwrap_or(0),
                    s.get("matches").and_then(|x| x.as_u64()).unwrap_or(0)
                );
            }
            continue;
        }
        let Some(m) = v.get("match") else {
            continue;
        };
        clear(&mut shown);
        match h.output {
            Format::Table => hunt_text(m, &mut out)?,
            Format::Json => all.push(m.clone()),
            Format::Jsonl => writeln!(out, "{}", serde_json::to_string(m)?)?,
        }
        out.flush()?;
    }
    clear(&mut shown);
    if h.output == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        out.flush()?;
    }
    Ok(())
}

fn hunt_text(m: &serde_json::Value, out: &mut impl Write) -> anyhow::Result<()> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let rule = &m["rule"];
    let ev: Option<Event> = serde_json::from_value(m["event"].clone()).ok();
    let (when, id, what) = match &ev {
        Some(e) => (
            output::local_time(e.ts),
            e.id.to_string(),
            output::summary(e),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    writeln!(
        out,
        "{when}  [{}] {} ({})  event {id}",
        output::terminal_safe(&s(&rule["level"])),
        output::terminal_safe(&s(&rule["title"])),
        output::terminal_safe(&s(&rule["id"])),
    )?;
    writeln!(out, "    {}", output::terminal_safe(&what))?;
    if let Some(anc) = m["ancestry"].as_array() {
        let chain: Vec<String> = anc
            .iter()
            .map(|p| {
                format!(
                    "{}({})",
                    output::terminal_safe(p["exe"].as_str().or(p["comm"].as_str()).unwrap_or("?")),
                    p["pid"]
                )
            })
            .collect();
        if !chain.is_empty() {
            writeln!(out, "    ancestry: {}", chain.join(" > "))?;
        }
    }
    Ok(())
}

fn rules_check(paths: &[PathBuf]) -> anyhow::Result<()> {
    let set = traceed_detect::load_paths(paths, false);
    let mut out = std::io::stdout().lock();
    for r in &set.rules {
        writeln!(
            out,
            "{}: ok: {} ({}, {})",
            r.source,
            r.id,
            r.title,
            r.level.name()
        )?;
    }
    for s in &set.skipped {
        eprintln!("warning: {s}");
    }
    for e in &set.errors {
        eprintln!("error: {e}");
    }
    writeln!(
        out,
        "{} rules loaded, {} skipped, {} errors",
        set.rules.len(),
        set.skipped.len(),
        set.errors.len()
    )?;
    out.flush()?;
    if set.skipped.is_empty() && set.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of the rules would not run",
            set.skipped.len() + set.errors.len()
        )
    }
}

/// The query string of `GET /v1/events` for these arguments: one page of
/// `page` events after `cursor`, or the stream when `follow`.
fn query_string(
    a: &EventsArgs,
    page: u64,
    cursor: Option<&str>,
    follow: bool,
) -> anyhow::Result<String> {
    let q = EventsQuery {
        since: a.since.clone(),
        until: a.until.clone(),
        kind: a.kind.clone(),
        pid: a.pid,
        ppid: a.ppid,
        uid: a.uid,
        comm: a.comm.clone(),
        exe: a.exe.clone(),
        container: a.container.clone(),
        fidelity: a.fidelity.clone(),
        path: a.path.clone(),
        addr: a.addr.clone(),
        port: a.port,
        cmdline: a.cmdline.clone(),
        failed: a.failed,
        // --page-size is at most MAX_LIMIT, so is what is left of --limit.
        limit: Some(u32::try_from(page).unwrap_or(query::MAX_LIMIT)),
        cursor: cursor.map(str::to_owned),
        order: (a.order == Order::Desc).then_some(query::Order::Desc),
        follow,
        descendants_of: a.descendants_of,
        at: a.at.clone(),
    };
    Ok(serde_urlencoded::to_string(&q)?)
}

async fn events(api: &Api, a: EventsArgs) -> anyhow::Result<()> {
    let format = a.output.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Jsonl
    });
    let max = a.limit.unwrap_or(u64::MAX);
    let mut out = std::io::stdout().lock();
    if let Some(by) = &a.count_by {
        return counts(api, &a, by, format, &mut out).await;
    }
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
        let page = a.page_size.min(max - printed);
        let path = format!(
            "/v1/events?{}",
            query_string(&a, page, cursor.as_deref(), false)?
        );
        let p: EventsPage = api.get_json(&path).await?;
        if cursor.is_none() {
            // Every page carries the coverage of the whole window: warn once.
            warn_incomplete(p.coverage.as_ref());
        }
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
                    out.write_all(serde_json::to_string(e)?.as_bytes())?;
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
        Format::Table => writeln!(out, "{}", output::table(&all, output::terminal_width()))?,
        Format::Jsonl => {}
    }
    out.flush()?;
    Ok(())
}

/// `--count-by`: a table on a terminal, else the JSON answer.
async fn counts(
    api: &Api,
    a: &EventsArgs,
    by: &str,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut qs = query_string(a, 1, None, false)?;
    // Counts take the filters, not paging.
    qs = qs
        .split('&')
        .filter(|kv| !kv.starts_with("limit="))
        .collect::<Vec<_>>()
        .join("&");
    let extra = serde_urlencoded::to_string([("by", by), ("top", &a.top.to_string())])?;
    let sep = if qs.is_empty() { "" } else { "&" };
    let p: CountsPage = api
        .get_json(&format!("/v1/events/counts?{qs}{sep}{extra}"))
        .await?;
    warn_incomplete(Some(&p.coverage));
    match format {
        Format::Table => {
            writeln!(out, "{:>12}  {by}", "COUNT")?;
            for c in &p.counts {
                writeln!(out, "{:>12}  {}", traceed_wire::thousands(c.count), c.value)?;
            }
            if p.other > 0 {
                writeln!(out, "{:>12}  (other)", traceed_wire::thousands(p.other))?;
            }
            writeln!(out, "{:>12}  (total)", traceed_wire::thousands(p.total))?;
        }
        Format::Json | Format::Jsonl => writeln!(out, "{}", serde_json::to_string(&p)?)?,
    }
    out.flush()?;
    Ok(())
}

/// The one stderr line of an incomplete answer; stdout and the exit status
/// are unchanged.
fn warn_incomplete(c: Option<&Coverage>) {
    if let Some(w) = c.and_then(Coverage::warning) {
        eprintln!("{w}");
    }
}

async fn follow(
    api: &Api,
    a: &EventsArgs,
    format: Format,
    max: u64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let path = format!("/v1/events?{}", query_string(a, a.page_size, None, true)?);
    let resp = api.get(&path).await?;
    let coverage = resp
        .headers()
        .get(traceed_wire::COVERAGE_HEADER)
        .and_then(|v| serde_json::from_slice::<Coverage>(v.as_bytes()).ok());
    warn_incomplete(coverage.as_ref());
    let mut lines = Lines::new(resp);
    let mut printed = 0u64;
    let width = output::terminal_width();
    if format == Format::Table {
        writeln!(out, "{}", output::follow_header())?;
    }
    while let Some(e) = lines.next::<Event>().await? {
        match format {
            Format::Table => writeln!(out, "{}", output::follow_line(&e, width))?,
            Format::Json | Format::Jsonl => writeln!(out, "{}", serde_json::to_string(&e)?)?,
        }
        out.flush()?;
        printed += 1;
        if printed >= max {
            return Ok(());
        }
    }
    Ok(())
}

/// The man page, rendered from the clap definitions: the main page, then
/// each subcommand's synopsis, description and options, so one
/// `man tracectl` shows every flag.
fn man_page(out: &mut impl Write) -> std::io::Result<()> {
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("tracectl {}", sub.get_name());
        let man = clap_mangen::Man::new(sub.clone().bin_name(name));
        man.render_synopsis_section(out)?;
        man.render_description_section(out)?;
        man.render_options_section(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> EventsArgs {
        let cli = Cli::try_parse_from([&["tracectl", "events"], argv].concat()).unwrap();
        match cli.command {
            Command::Events(a) => *a,
            _ => unreachable!(),
        }
    }

    /// What tracectl sends is what the daemon's strict parsing reads back.
    #[test]
    fn query_string_is_what_the_daemon_reads() {
        let a = args(&[
            "--since",
            "1h 30m",
            "--until",
            "2026-11-24T20:50:45Z",
            "--kind",
            "exec,open",
            "--pid",
            "7",
            "--ppid",
            "1",
            "--uid",
            "0",
            "--comm",
            "a b&c=d",
            "--exe",
            "/usr/bin/x+y",
            "--container",
            "3f4e2a",
            "--fidelity",
            "core",
            "--path",
            "/etc/*",
            "--addr",
            "10.0.0.0/8",
            "--port",
            "443",
            "--cmdline",
            "base64 -d",
            "--failed",
            "--order",
            "desc",
        ]);
        let qs = query_string(&a, 100, Some("i2a"), false).unwrap();
        let back: EventsQuery = serde_urlencoded::from_str(&qs).unwrap();
        assert_eq!(
            back,
            EventsQuery {
                since: Some("1h 30m".into()),
                until: Some("2026-11-24T20:50:45Z".into()),
                kind: vec!["exec".into(), "open".into()],
                pid: Some(7),
                ppid: Some(1),
                uid: Some(0),
                comm: Some("a b&c=d".into()),
                exe: Some("/usr/bin/x+y".into()),
                container: Some("3f4e2a".into()),
                fidelity: Some("core".into()),
                path: Some("/etc/*".into()),
                addr: Some("10.0.0.0/8".into()),
                port: Some(443),
                cmdline: Some("base64 -d".into()),
                failed: true,
                limit: Some(100),
                cursor: Some("i2a".into()),
                order: Some(query::Order::Desc),
                follow: false,
                descendants_of: None,
                at: None,
            }
        );
        let qs = query_string(
            &args(&["--descendants-of", "42", "--at", "10m"]),
            5,
            None,
            false,
        )
        .unwrap();
        assert_eq!(qs, "limit=5&descendants_of=42&at=10m");
        // Defaults are not sent; follow is.
        assert_eq!(
            query_string(&args(&["-f"]), 1000, None, true).unwrap(),
            "limit=1000&follow=true"
        );
    }
}
