//! Rendering events and status for people (tables, local time) and for
//! programs (json, jsonl: exactly the wire objects).

use std::io::Write;

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Row, Table};
use traceed_wire::{Event, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Jsonl,
}

/// One line of what happened, per kind, for the table's last column.
pub fn summary(e: &Event) -> String {
    let a = &e.args;
    let s = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    match &*e.kind {
        "exec" => {
            let argv: Vec<&str> = a
                .get("argv")
                .and_then(|v| v.as_array())
                .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            let what = if argv.is_empty() {
                s("filename")
            } else {
                argv.join(" ")
            };
            // A failed exec (retval -errno) says why first: the command may
            // be long enough to be cut at the terminal's edge.
            match e.retval {
                Some(r) if r < 0 => format!("[{}] {what}", errno_name(-r)),
                _ => what,
            }
        }
        "exit" => match a.get("signal").and_then(|v| v.as_u64()) {
            Some(sig) => format!("killed by signal {sig}"),
            None => format!(
                "exit code {}",
                a.get("exit_code").and_then(|v| v.as_u64()).unwrap_or(0)
            ),
        },
        "lost" => format!(
            "{} events lost ({}) {} .. {}",
            a.get("count").and_then(|v| v.as_u64()).unwrap_or(0),
            s("source"),
            s("from"),
            s("to")
        ),
        _ => {
            let mut parts: Vec<String> = a
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            parts.sort();
            parts.join(" ")
        }
    }
}

/// The symbolic name of the errors an exec can fail with, else the number.
fn errno_name(errno: i64) -> String {
    let name = match errno {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        7 => "E2BIG",
        8 => "ENOEXEC",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        26 => "ETXTBSY",
        36 => "ENAMETOOLONG",
        40 => "ELOOP",
        80 => "ELIBBAD",
        _ => return format!("errno {errno}"),
    };
    name.into()
}

/// One line of `tracectl tree`: pid, key, user, command line, start,
/// lifetime and how it ended.
fn tree_line(p: &traceed_wire::ProcEntry) -> String {
    let cmd = p
        .cmdline
        .as_deref()
        .or(p.exe.as_deref())
        .or(p.comm.as_deref())
        .unwrap_or("?");
    let start = p.start.map_or_else(|| "start ?".into(), local_time);
    let end = match (p.exit, p.signal, p.exit_code) {
        (None, _, _) => "running".to_string(),
        (Some(_), Some(sig), _) => format!("killed by signal {sig}"),
        (Some(_), None, Some(c)) => format!("exit {c}"),
        (Some(_), None, None) => "exited".to_string(),
    };
    let life = p
        .lifetime_s
        .map_or_else(String::new, |s| format!(" after {s:.3}s"));
    format!(
        "{} [{}] uid={} {}  ({start}, {end}{life})",
        p.pid,
        p.proc,
        opt(&p.uid),
        terminal_safe(cmd)
    )
}

/// `tracectl tree` for a terminal: the ancestry from the top, then the
/// process (marked) and its descendants, indented by depth.
pub fn tree_text(t: &traceed_wire::Tree, out: &mut impl Write) -> std::io::Result<()> {
    let mut depth = 0;
    for a in &t.ancestors {
        writeln!(out, "{}{}", "  ".repeat(depth), tree_line(a))?;
        depth += 1;
    }
    writeln!(out, "{}* {}", "  ".repeat(depth), tree_line(&t.process))?;
    // Children under their parent, oldest first, depth first.
    let mut children: std::collections::HashMap<&str, Vec<&traceed_wire::ProcEntry>> =
        std::collections::HashMap::new();
    for d in &t.descendants {
        let parent = d.parent.as_deref().unwrap_or(t.process.proc.as_str());
        children.entry(parent).or_default().push(d);
    }
    for v in children.values_mut() {
        v.sort_by_key(|p| (p.start, p.pid));
    }
    let mut stack: Vec<(&traceed_wire::ProcEntry, usize)> = children
        .get(t.process.proc.as_str())
        .map(|v| v.iter().rev().map(|p| (*p, depth + 1)).collect())
        .unwrap_or_default();
    while let Some((p, d)) = stack.pop() {
        writeln!(out, "{}{}", "  ".repeat(d), tree_line(p))?;
        if let Some(v) = children.get(p.proc.as_str()) {
            stack.extend(v.iter().rev().map(|c| (*c, d + 1)));
        }
    }
    if t.truncated {
        writeln!(out, "(more descendants than shown)")?;
    }
    Ok(())
}

pub fn local_time(ns: i64) -> String {
    let Ok(ts) = jiff::Timestamp::from_nanosecond(ns as i128) else {
        return ns.to_string();
    };
    let zoned = ts.to_zoned_datetime(jiff::tz::TimeZone::system());
    zoned.strftime("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

/// `s` with everything that would act on a terminal instead of showing
/// written out: C0 and C1 controls and DEL (`\n`, `\r`, `\t`, else
/// `\xNN` or `\u{NN}`), and the invisible format characters that reorder
/// or hide text (bidi overrides and isolates, zero-width characters, line
/// and paragraph separators, BOM) as `\u{NNNN}`. Names are chosen by the
/// traced processes, so a file name must not be able to rewrite the
/// screen or pass for another.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            '\u{80}'..='\u{9f}'
            | '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub fn event_row(e: &Event) -> Vec<String> {
    vec![
        local_time(e.ts),
        terminal_safe(&e.kind),
        opt(&e.pid),
        opt(&e.ppid),
        opt(&e.uid),
        terminal_safe(&opt(&e.comm)),
        terminal_safe(&summary(e)),
    ]
}

pub const HEADER: [&str; 7] = ["TIME", "KIND", "PID", "PPID", "UID", "COMM", "DETAILS"];

/// The terminal's width, when stdout is one.
pub fn terminal_width() -> Option<u16> {
    Table::new().width()
}

/// A table of events; with a width, long cells are cut to one line each
/// (marked with "...") so every row fits the terminal.
pub fn table(events: &[Event], width: Option<u16>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(HEADER);
    if let Some(w) = width {
        t.set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(w);
    } else {
        t.set_content_arrangement(ContentArrangement::Disabled);
    }
    for e in events {
        let mut row = Row::from(event_row(e));
        if width.is_some() {
            row.max_height(1);
        }
        t.add_row(row);
    }
    t
}

/// The header above `follow_line`s, in the same columns.
pub fn follow_header() -> String {
    let h = HEADER;
    format!(
        "{:<23}  {:<8} {:>7} {:>7} {:>5} {:<15} {}",
        h[0], h[1], h[2], h[3], h[4], h[5], h[6]
    )
}

/// One plain line per live event (follow mode cannot redraw a table), cut
/// to `width` characters when printing to a terminal.
pub fn follow_line(e: &Event, width: Option<u16>) -> String {
    let r = event_row(e);
    let line = format!(
        "{}  {:<8} {:>7} {:>7} {:>5} {:<15} {}",
        r[0], r[1], r[2], r[3], r[4], r[5], r[6]
    );
    match width {
        Some(w) if line.chars().count() > w as usize => {
            let keep = (w as usize).saturating_sub(3);
            let mut cut: String = line.chars().take(keep).collect();
            cut.push_str("...");
            cut
        }
        _ => line,
    }
}

/// An alert for people: the match, then the process's minute before it.
pub fn alert_text(a: &traceed_wire::Alert, out: &mut impl Write) -> std::io::Result<()> {
    let exe = a
        .event
        .as_ref()
        .and_then(|e| e.exe.as_deref())
        .unwrap_or("-");
    writeln!(
        out,
        "{}  {:<8} {} [{}]  pid {}  {}",
        local_time(a.ts),
        terminal_safe(&a.level.to_uppercase()),
        terminal_safe(&a.title),
        terminal_safe(&a.rule_id),
        a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        terminal_safe(exe)
    )?;
    if let Some(e) = &a.event {
        writeln!(
            out,
            "    matched  {} {}",
            e.kind,
            terminal_safe(&summary(e))
        )?;
    }
    if !a.ancestry.is_empty() {
        let chain: Vec<String> = a
            .ancestry
            .iter()
            .map(|p| {
                let name = p.exe.as_deref().or(p.comm.as_deref()).unwrap_or("?");
                format!("{}({})", terminal_safe(name), p.pid)
            })
            .collect();
        writeln!(out, "    ancestry: {}", chain.join(" > "))?;
    }
    if !a.context.is_empty() {
        writeln!(
            out,
            "    the minute before ({} events of this process):",
            a.context.len()
        )?;
        for e in &a.context {
            writeln!(
                out,
                "      {}  {} {}",
                local_time(e.ts),
                e.kind,
                terminal_safe(&summary(e))
            )?;
        }
    }
    Ok(())
}

pub fn status_text(s: &Status, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "traceed {} — up {}s", s.version, s.uptime_s)?;
    writeln!(
        out,
        "rung:       {}{}",
        s.rung,
        s.btf_source
            .as_ref()
            .map(|b| format!(" (BTF from {b})"))
            .unwrap_or_default()
    )?;
    if let Some(k) = &s.kernel_object {
        let how = match k.build_ms {
            Some(ms) if k.built_now => format!("built at start in {:.1} s", ms as f64 / 1000.0),
            _ => "prebuilt".into(),
        };
        writeln!(out, "object:     {} (kernel {}, {how})", k.path, k.release)?;
    }
    for r in &s.refused {
        writeln!(out, "  not {}: {}", r.rung, r.reason)?;
    }
    writeln!(out, "transport:  {}", s.transport)?;
    writeln!(out, "programs:   {}", s.programs.join(", "))?;
    for h in &s.skipped_hooks {
        writeln!(out, "  skipped {}: {}", h.hook, h.reason)?;
    }
    if let Some(a) = &s.attach {
        let families: Vec<String> = a
            .families
            .iter()
            .map(|f| format!("{} {}", f.family, f.method))
            .collect();
        writeln!(out, "attach:     {}", families.join(", "))?;
        if let Some(why) = &a.fentry_refused {
            writeln!(out, "  no fexit: {}", why)?;
        }
    }
    writeln!(
        out,
        "events:     {} stored since start ({:.1}/s), {} lost",
        s.events_total, s.events_per_s, s.lost_total
    )?;
    writeln!(
        out,
        "store:      {} ({:.1} MiB, schema v{}, oldest {}, retention {})",
        s.db_path,
        s.db_bytes as f64 / (1024.0 * 1024.0),
        s.schema_version,
        s.oldest_ts.map(local_time).unwrap_or_else(|| "-".into()),
        s.retention
    )?;
    if let Some(d) = &s.detect {
        writeln!(
            out,
            "detection:  {} rules active, {} skipped (unsupported), {} unreadable; {} alerts, {} events missed",
            d.rules_loaded, d.rules_skipped, d.rule_errors, d.alerts_total, d.dropped_events
        )?;
    }
    if let Some(x) = &s.export {
        export_text(x, out)?;
    }
    Ok(())
}

/// `[export.clickhouse]`: where the history goes and how far behind it is.
fn export_text(x: &traceed_wire::ExportStatus, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "export:     {} → {} as host {}{}",
        x.sink,
        x.target,
        x.host,
        match (&x.server_version, &x.format) {
            (Some(v), Some(f)) => format!(" (ClickHouse {v}, {f})"),
            (Some(v), None) => format!(" (ClickHouse {v})"),
            _ => String::new(),
        }
    )?;
    // Loss next to the cursor: a cursor that moved on does not say whether
    // everything before it arrived.
    let lost = match x.events_lost {
        0 => "none lost".to_string(),
        n => format!("{n} lost: retention deleted them before shipping (lost rows, source export)"),
    };
    writeln!(
        out,
        "  shipped through id {}; lag {} events ({:.1} s); {} events, {:.1} MiB since start; {lost}",
        x.cursor,
        x.lag_events,
        x.lag_s,
        x.events_shipped,
        x.bytes_shipped as f64 / (1024.0 * 1024.0)
    )?;
    if let Some(e) = &x.last_error {
        let when = x
            .last_error_ts
            .map(local_time)
            .unwrap_or_else(|| "-".into());
        let recovered = match (x.last_error_ts, x.last_success_ts) {
            (Some(e), Some(ok)) if ok > e => " (shipping again since)",
            _ => "",
        };
        writeln!(
            out,
            "  last error at {when}{recovered} ({} in all): {e}",
            x.errors
        )?;
    }
    if !x.missing_columns.is_empty() {
        writeln!(
            out,
            "  warning: the table has no column {}: rows are shipped without it (the journal has the ALTER TABLE to run)",
            x.missing_columns.join(", ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(argv: &[&str]) -> Event {
        Event {
            id: 1,
            pid: Some(4242),
            tid: Some(4242),
            ppid: Some(1),
            uid: Some(0),
            gid: Some(0),
            comm: Some("sh".into()),
            args: serde_json::json!({ "argv": argv }),
            ..Event::new("exec", 1_764_017_445_123_456_789, "core")
        }
    }

    #[test]
    fn export_status_shows_loss_next_to_the_cursor() {
        let mut x = traceed_wire::ExportStatus {
            sink: "clickhouse".into(),
            target: "http://ch:8123 traceed.events".into(),
            host: "web-1".into(),
            store_id: None,
            server_version: Some("18.16.1".into()),
            cursor: 42,
            lag_events: 3,
            lag_s: 1.5,
            events_shipped: 42,
            bytes_shipped: 1 << 20,
            errors: 0,
            events_lost: 0,
            last_error: None,
            last_error_ts: None,
            last_success_ts: None,
            missing_columns: Vec::new(),
            format: Some("RowBinary".into()),
        };
        let text = |x: &traceed_wire::ExportStatus| {
            let mut v = Vec::new();
            export_text(x, &mut v).unwrap();
            String::from_utf8(v).unwrap()
        };
        let t = text(&x);
        assert!(
            t.contains("shipped through id 42; lag 3 events (1.5 s); 42 events, 1.0 MiB since start; none lost\n"),
            "{t}"
        );
        x.events_lost = 7;
        let t = text(&x);
        assert!(
            t.contains("; 7 lost: retention deleted them before shipping"),
            "{t}"
        );
    }

    #[test]
    fn table_fits_the_terminal_width() {
        let long = "x".repeat(500);
        let events = [exec(&["/bin/sh", "-c", &long]), exec(&["true"])];
        let text = table(&events, Some(80)).to_string();
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} > 80: {line}",
                line.chars().count()
            );
        }
        assert!(text.contains("..."), "long cell not marked as cut:\n{text}");
        assert!(text.contains("true") && text.contains("4242"));
        assert_eq!(
            text.lines().count(),
            2 + 1 + 2 + 1,
            "one line per row:\n{text}"
        );
        // Not a terminal: nothing is cut.
        assert!(table(&events, None).to_string().contains(&long));
    }

    #[test]
    fn follow_lines_are_cut_to_width() {
        let long = "y".repeat(300);
        let l = follow_line(&exec(&[&long]), Some(60));
        assert_eq!(l.chars().count(), 60);
        assert!(l.ends_with("..."));
        assert!(follow_line(&exec(&[&long]), None).ends_with(&long));
    }

    /// Everything a hostile name could use on a terminal: line breaks,
    /// ESC sequences, carriage return, bidi overrides and isolates, C1 CSI,
    /// zero-width characters.
    const HOSTILE: &str =
        "a\nb\x1b[2J\x1b]0;title\x07c\rd\u{202e}txt.exe\u{2066}e\u{9b}31m\u{200b}\x7f\tz";

    fn assert_inert(text: &str) {
        for c in text.chars() {
            let bad = (c.is_control() && c != '\n')
                || matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
            assert!(!bad, "raw {c:?} in {text:?}");
        }
    }

    #[test]
    fn control_characters_are_written_out() {
        assert_eq!(
            terminal_safe(HOSTILE),
            "a\\nb\\x1b[2J\\x1b]0;title\\x07c\\rd\\u{202e}txt.exe\\u{2066}e\\u{9b}31m\\u{200b}\\x7f\\tz"
        );
        assert_eq!(terminal_safe("plain é/ü 日本"), "plain é/ü 日本");
        let mut open = exec(&[]);
        open.kind = "open".into();
        open.comm = Some(HOSTILE.into());
        open.args = serde_json::json!({"path": HOSTILE, "flags": 0, "mode": 0});
        let argv = exec(&[HOSTILE, HOSTILE]);
        for width in [None, Some(300)] {
            let text = table(&[open.clone(), argv.clone()], width).to_string();
            assert_inert(&text);
            // One line per row plus the frame: no name broke a line.
            assert_eq!(text.lines().count(), 2 + 1 + 2 + 1, "{text}");
            assert!(text.contains("\\u{202e}"), "{text}");
        }
        for e in [&open, &argv] {
            let line = follow_line(e, None);
            assert_inert(&line);
            assert_eq!(line.lines().count(), 1);
        }
    }

    #[test]
    fn failed_exec_shows_its_error() {
        let mut e = exec(&["/nope", "-x"]);
        assert_eq!(summary(&e), "/nope -x");
        e.retval = Some(-2);
        assert_eq!(summary(&e), "[ENOENT] /nope -x");
        e.retval = Some(-13);
        assert!(table(&[e.clone()], None)
            .to_string()
            .contains("[EACCES] /nope -x"));
        e.retval = Some(-99);
        assert_eq!(summary(&e), "[errno 99] /nope -x");
    }

    #[test]
    fn local_time_has_milliseconds() {
        let t = local_time(1_764_017_445_123_456_789);
        assert!(t.ends_with(".123"), "{t}");
        assert_eq!(t.len(), "2025-11-24 20:50:45.123".len());
    }
}
