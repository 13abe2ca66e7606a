//! Wire types shared by `traceed` and `tracectl`: the event and status
//! objects of the REST API, the error body, the list of event kinds, the
//! query parameters of `GET /v1/events` (`query`) and the parsing of time
//! bounds. Nothing here depends on aya or sqlx, so the client
//! stays small.

pub mod bytes;
pub mod payload;

use std::borrow::Cow;
use std::sync::Arc;

use jiff::{fmt::temporal::DateTimePrinter, Timestamp};
use serde::{Deserialize, Serialize};

pub mod query;
pub use query::EventsQuery;

/// Every event kind the daemon can store, in docs/ARCHITECTURE.md's order.
pub const KINDS: &[&str] = &[
    "exec",
    "fork",
    "exit",
    "open",
    "connect",
    "accept",
    "bind",
    "unlink",
    "rename",
    "chmod",
    "setuid",
    "ptrace",
    "kill",
    "mount",
    "module_load",
    "bpf",
    "memfd_create",
    "syscall",
    "lost",
];

pub fn is_kind(s: &str) -> bool {
    KINDS.contains(&s)
}

/// `s` borrowed from `names` when it is one of them (no allocation), else
/// owned.
pub fn static_name(names: &'static [&'static str], s: &str) -> Cow<'static, str> {
    match names.iter().find(|n| **n == s) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(s.to_string()),
    }
}

/// Which rung of the portability ladder recorded an event.
pub const FIDELITIES: &[&str] = &["core", "kernel", "fallback"];

/// A Sigma rule's match (`GET /v1/alerts`), with what happened before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: i64,
    pub rule_id: String,
    pub title: String,
    /// informational, low, medium, high or critical.
    pub level: String,
    pub tags: Vec<String>,
    pub event_id: i64,
    /// The matched event's time; RFC 3339 on the wire.
    #[serde(with = "ts_rfc3339")]
    pub ts: i64,
    pub pid: Option<u32>,
    /// The matched event; null once retention deleted it.
    pub event: Option<Event>,
    /// The same process's events in the minute before the match (oldest
    /// first, at most 100), from the store.
    pub context: Vec<Event>,
    /// The process's ancestors as they were, oldest first (pid 1 first
    /// when recorded) down to its parent; empty when the store has no such
    /// process.
    #[serde(default)]
    pub ancestry: Vec<ProcEntry>,
}

/// Detection counts in `Status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectStatus {
    pub rules_loaded: u64,
    /// Rules using a feature traceed does not support (logged with the
    /// file and the feature).
    pub rules_skipped: u64,
    /// Rule files that could not be read or parsed.
    pub rule_errors: u64,
    pub alerts_total: u64,
    /// Events the detector fell too far behind to see.
    pub dropped_events: u64,
}

/// One stored event. Unknown fields are `None` and serialize as `null`.
/// `args` is JSON for clients; the daemon holds it typed
/// ([`LiveEvent`]) from decoding until it is stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<A = serde_json::Value> {
    pub id: i64,
    /// Wall-clock nanoseconds since the Unix epoch; RFC 3339 on the wire.
    #[serde(with = "ts_rfc3339")]
    pub ts: i64,
    /// One of [`KINDS`]; static in the daemon, so building an event does
    /// not allocate it.
    pub kind: Cow<'static, str>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Shared: the daemon hands one process's comm, exe and container to
    /// each of its events without copying them.
    pub comm: Option<Arc<str>>,
    pub ns_pid: Option<u32>,
    pub exe: Option<Arc<str>>,
    pub cgroup_id: Option<u64>,
    pub container_id: Option<Arc<str>>,
    pub mnt_ns: Option<u32>,
    pub pid_ns: Option<u32>,
    pub retval: Option<i64>,
    pub args: A,
    /// One of [`FIDELITIES`].
    pub fidelity: Cow<'static, str>,
    /// The process instance, different for two processes that shared a
    /// pid; 16 hex digits on the wire, null when unknown.
    #[serde(default)]
    pub proc: Option<ProcKey>,
    /// What the daemon's process table knew when it saw the event, for the
    /// store's `procs` table; never on the wire, never stored per event.
    #[serde(skip)]
    pub lineage: Option<Lineage>,
}

/// The parent instance and start of the event's process, as the daemon's
/// process table derived them (internal: pipeline -> writer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lineage {
    /// Key of the parent process instance, when known.
    pub parent: Option<u64>,
    /// Wall-clock start of the process (ns since the epoch), when known.
    pub start: Option<i64>,
    /// Processes the store has not been told of yet, read from /proc: the
    /// event's own (when older than the daemon) and its ancestors, so a
    /// tree reaches pid 1 even through processes that recorded nothing.
    pub announce: Vec<Announced>,
}

/// A process instance the daemon met in /proc (internal, see [`Lineage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub key: u64,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub parent: Option<u64>,
    pub uid: Option<u32>,
    pub start: i64,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
}

/// A process instance's key ([`Event::proc`]). A number in the daemon, so
/// an event does not carry a string of it; 16 lower-case hex digits in JSON
/// and wherever it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey(pub u64);

impl std::fmt::Display for ProcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ProcKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_proc_key(s)
            .map(ProcKey)
            .ok_or_else(|| format!("process key {s:?}: expected 16 hex digits"))
    }
}

impl Serialize for ProcKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProcKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A process key as the API shows it: 16 lower-case hex digits.
pub fn proc_key_hex(key: u64) -> String {
    ProcKey(key).to_string()
}

/// The inverse of [`proc_key_hex`]; None unless exactly 16 hex digits.
pub fn parse_proc_key(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// An event as the daemon builds it, with typed args, before it is stored.
pub type LiveEvent = Event<payload::Payload>;

impl<A> Event<A> {
    /// The same event with its args converted.
    pub fn map_args<B>(self, f: impl FnOnce(A) -> B) -> Event<B> {
        Event {
            id: self.id,
            ts: self.ts,
            kind: self.kind,
            pid: self.pid,
            tid: self.tid,
            ppid: self.ppid,
            uid: self.uid,
            gid: self.gid,
            comm: self.comm,
            ns_pid: self.ns_pid,
            exe: self.exe,
            cgroup_id: self.cgroup_id,
            container_id: self.container_id,
            mnt_ns: self.mnt_ns,
            pid_ns: self.pid_ns,
            retval: self.retval,
            args: f(self.args),
            fidelity: self.fidelity,
            proc: self.proc,
            lineage: self.lineage,
        }
    }
}

impl<A: From<serde_json::Value>> Event<A> {
    /// An event with only what every row has; every other field unknown.
    pub fn new(kind: &str, ts: i64, fidelity: &str) -> Self {
        Self {
            id: 0,
            ts,
            kind: static_name(KINDS, kind),
            pid: None,
            tid: None,
            ppid: None,
            uid: None,
            gid: None,
            comm: None,
            ns_pid: None,
            exe: None,
            cgroup_id: None,
            container_id: None,
            mnt_ns: None,
            pid_ns: None,
            retval: None,
            args: serde_json::Value::Object(Default::default()).into(),
            fidelity: static_name(FIDELITIES, fidelity),
            proc: None,
            lineage: None,
        }
    }

    /// A `lost` event as docs/ARCHITECTURE.md shapes it: `count` events were dropped
    /// at `source` (`kernel`, `userspace`, `follower`, `downtime`) between
    /// `from` and `to`; the row is stamped `to`. `count` is None (null)
    /// where it is unknowable (downtime).
    pub fn lost(count: Option<u64>, source: &str, from: i64, to: i64, fidelity: &str) -> Self {
        Self {
            args: serde_json::json!({
                "count": count,
                "source": source,
                "from": format_ts(from),
                "to": format_ts(to),
            })
            .into(),
            ..Self::new("lost", to, fidelity)
        }
    }
}

/// `GET /v1/events` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub next_cursor: Option<String>,
    /// Loss in the query's time window (the same on every page). Absent
    /// from daemons older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
}

/// Whether loss intersects an answer's time window: the stored `lost` rows
/// (kernel, userspace, downtime) whose span overlaps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// No loss intersects the window.
    pub complete: bool,
    /// Events lost in the gaps; null when a gap's count is unknowable
    /// (downtime).
    pub lost: Option<u64>,
    /// Oldest first; at most [`MAX_GAPS`], the rest merged into the last.
    pub gaps: Vec<Gap>,
}

/// Fields `GET /v1/events/counts?by=` groups by.
pub const COUNT_BY: &[&str] = &["exe", "comm", "path", "addr", "port", "kind", "uid"];
/// Values listed when `top` is not given, and the most accepted.
pub const DEFAULT_TOP: usize = 20;
pub const MAX_TOP: usize = 1000;

/// `GET /v1/events/counts` answer: the most frequent values of one field
/// among the events the filters select.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountsPage {
    pub by: String,
    /// Most frequent first (ties by value).
    pub counts: Vec<Count>,
    /// Events counted under a value not listed (beyond `top`, or a value
    /// first seen after the distinct-value cap was reached).
    pub other: u64,
    /// Events counted (those that have the field).
    pub total: u64,
    pub coverage: Coverage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Count {
    pub value: String,
    pub count: u64,
}

/// The response header of `GET /v1/events?follow=true` holding the
/// [`Coverage`] (JSON) of the history part of the stream.
pub const COVERAGE_HEADER: &str = "x-traceed-coverage";

/// Gaps listed one by one; beyond this the last gap absorbs the rest.
pub const MAX_GAPS: usize = 100;

/// One `lost` row as coverage reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// RFC 3339, as the `lost` row's `args.from` and `args.to`.
    pub from: String,
    pub to: String,
    /// `kernel`, `userspace` or `downtime` (several, comma-separated, for
    /// a merged gap).
    pub source: String,
    pub count: Option<u64>,
}

impl Coverage {
    /// The one line tracectl prints on stderr for an incomplete answer.
    pub fn warning(&self) -> Option<String> {
        if self.complete || self.gaps.is_empty() {
            return None;
        }
        let from = self.gaps.iter().map(|g| g.from.as_str()).min()?;
        let to = self.gaps.iter().map(|g| g.to.as_str()).max()?;
        let mut why: Vec<&str> = Vec::new();
        for g in &self.gaps {
            for s in g.source.split(',') {
                let w = match s {
                    "kernel" => "kernel ring buffer full",
                    "userspace" => "traceed could not keep up or store them",
                    "downtime" => "traceed was not running",
                    other => other,
                };
                if !why.contains(&w) {
                    why.push(w);
                }
            }
        }
        let what = match self.lost {
            Some(n) => format!("{} events", thousands(n)),
            None => "an unknown number of events".into(),
        };
        Some(format!(
            "warning: {what} lost between {from} and {to} ({}); this answer may be incomplete",
            why.join("; ")
        ))
    }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One process instance in a `GET /v1/tree` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcEntry {
    /// The instance key (as `Event::proc`).
    pub proc: String,
    pub pid: u32,
    pub ppid: Option<u32>,
    /// The parent instance's key, when known.
    pub parent: Option<String>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    /// The last exec's argv joined by spaces (null: no exec recorded).
    pub cmdline: Option<String>,
    #[serde(default, with = "opt_ts_rfc3339")]
    pub start: Option<i64>,
    #[serde(default, with = "opt_ts_rfc3339")]
    pub exit: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    /// exit - start in seconds; null while running or when either is unknown.
    pub lifetime_s: Option<f64>,
}

/// `GET /v1/tree` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub process: ProcEntry,
    /// From the oldest known ancestor (pid 1 when recorded) down to the
    /// parent.
    pub ancestors: Vec<ProcEntry>,
    /// Every process it started, at any depth; each after its parent.
    pub descendants: Vec<ProcEntry>,
    /// More descendants exist than the answer holds.
    pub truncated: bool,
    /// Loss over the lifetimes the answer spans (the process and its
    /// descendants, from the earliest start to the last exit, or now while
    /// any runs): a tree built over a gap may miss processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
}

impl Tree {
    /// The time window the tree's answer depends on (ns): the earliest
    /// start of the process and its descendants, and the last exit (None
    /// while any of them still runs).
    pub fn window(&self) -> (Option<i64>, Option<i64>) {
        let all = || std::iter::once(&self.process).chain(&self.descendants);
        let from = all().filter_map(|p| p.start).min();
        let to = all()
            .map(|p| p.exit)
            .try_fold(i64::MIN, |m, e| e.map(|e| m.max(e)));
        (from, to)
    }
}

/// Every 4xx answer carries this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A rung above the chosen one, and why it was not used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub rung: String,
    pub reason: String,
}

/// A hook that was not attached, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedHook {
    pub hook: String,
    pub reason: String,
}

/// How the syscall hooks are attached (issue 17): a BPF trampoline
/// (`fexit` on the syscall's function) where the kernel allows it, else the
/// syscall's tracepoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachStatus {
    /// One entry per hook family, e.g. `{"family": "open", "method":
    /// "fexit"}`; methods: `fexit`, `tracepoint`, `fexit+tracepoint`.
    pub families: Vec<FamilyAttach>,
    /// Why fexit is not used (the kernel's answer to the probe, the rung,
    /// or the config); null when it is.
    pub fentry_refused: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilyAttach {
    pub family: String,
    pub method: String,
}

/// The kernel-specific object a daemon on rung `kernel-object` runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelObject {
    pub path: String,
    /// The release recorded in the object (equal to the running kernel's).
    pub release: String,
    /// Compiled at this start (none was installed or cached).
    pub built_now: bool,
    /// How long that compile took, when built now.
    pub build_ms: Option<u64>,
}

/// `GET /v1/status` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub rung: String,
    pub btf_source: Option<String>,
    /// Rung `kernel-object`: which object was loaded and whether it was
    /// compiled at this start (null on the other rungs: unknown fields are null).
    #[serde(default)]
    pub kernel_object: Option<KernelObject>,
    pub refused: Vec<Refusal>,
    pub programs: Vec<String>,
    pub skipped_hooks: Vec<SkippedHook>,
    /// How syscall hooks are attached; absent from an older daemon.
    #[serde(default)]
    pub attach: Option<AttachStatus>,
    pub transport: String,
    pub events_total: u64,
    pub lost_total: u64,
    pub events_per_s: f64,
    pub db_path: String,
    pub db_bytes: u64,
    pub schema_version: i64,
    #[serde(with = "opt_ts_rfc3339")]
    pub oldest_ts: Option<i64>,
    pub retention: String,
    /// "ok", or why the store is not writing (e.g. disk full) and since when.
    #[serde(default)]
    pub store_state: String,
    pub version: String,
    pub uptime_s: u64,
    /// `[export.clickhouse]`: how far the shipping is; null when not configured.
    #[serde(default)]
    pub export: Option<ExportStatus>,
    /// `[detect]`: rules and alerts; absent from an older daemon.
    #[serde(default)]
    pub detect: Option<DetectStatus>,
}

/// The history shipped to another store (ClickHouse), in `Status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportStatus {
    /// "clickhouse".
    pub sink: String,
    /// Where to: URL, database and table.
    pub target: String,
    /// The `host` label on every shipped row.
    pub host: String,
    /// This store's random id (the second part of a row's key), null until read.
    pub store_id: Option<String>,
    /// ClickHouse's `SELECT version()`, null until it answered.
    pub server_version: Option<String>,
    /// The highest event id ClickHouse acknowledged (0: none yet).
    pub cursor: i64,
    /// Events stored after the cursor (by id).
    pub lag_events: u64,
    /// Age of the oldest event not yet shipped, seconds (0 when caught up).
    pub lag_s: f64,
    /// Events and bytes of JSON acknowledged since the daemon started.
    pub events_shipped: u64,
    pub bytes_shipped: u64,
    /// Failed attempts (connection errors, non-200 answers) since start.
    pub errors: u64,
    /// Events retention deleted before they were shipped, since start
    /// (`traceed_export_lost_events_total`); the store also has each range
    /// as a `lost` row with source `export`. 0 from an older daemon.
    #[serde(default)]
    pub events_lost: u64,
    /// The most recent failure, with the first line of ClickHouse's answer.
    pub last_error: Option<String>,
    #[serde(default, with = "opt_ts_rfc3339")]
    pub last_error_ts: Option<i64>,
    /// When ClickHouse last acknowledged a batch.
    #[serde(default, with = "opt_ts_rfc3339")]
    pub last_success_ts: Option<i64>,
    /// Columns traceed ships that the table lacks (a table made by an
    /// older `clickhouse-schema`): rows are shipped without them until the
    /// table has them (`ALTER TABLE … ADD COLUMN`, then a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_columns: Vec<String>,
    /// The insert format: `RowBinary` when the table's columns have the
    /// types `clickhouse-schema` gives them, else `JSONEachRow`; null until
    /// the table's columns were read.
    #[serde(default)]
    pub format: Option<String>,
}

/// Format wall-clock nanoseconds as RFC 3339 UTC with nanoseconds.
pub fn format_ts(ns: i64) -> String {
    let ts = Timestamp::from_nanosecond(ns as i128).unwrap_or(Timestamp::UNIX_EPOCH);
    DateTimePrinter::new()
        .precision(Some(9))
        .timestamp_to_string(&ts)
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("'{0}' is neither a duration (e.g. 90s, 15m, 1h, 2d) nor an RFC 3339 time (e.g. 2026-11-24T20:50:45Z)")]
pub struct TimeSpecError(pub String);

/// Longest time spec accepted (the longest RFC 3339 time is 35 bytes).
pub const MAX_TIME_SPEC: usize = 256;

/// Parse a `--since`/`--until` value: a duration before `now_ns` ("1h",
/// "15m", "2d 3h") or an absolute RFC 3339 time. Returns wall-clock ns.
pub fn parse_time_spec(s: &str, now_ns: i64) -> Result<i64, TimeSpecError> {
    if s.len() > MAX_TIME_SPEC {
        let head: String = s.chars().take(32).collect();
        return Err(TimeSpecError(format!("{head}... ({} bytes)", s.len())));
    }
    let t = s.trim();
    if let Ok(ts) = t.parse::<Timestamp>() {
        return i64::try_from(ts.as_nanosecond()).map_err(|_| TimeSpecError(s.into()));
    }
    let d = parse_duration(t).ok_or_else(|| TimeSpecError(s.into()))?;
    let ns = i64::try_from(d.as_nanos()).map_err(|_| TimeSpecError(s.into()))?;
    Ok(now_ns.saturating_sub(ns))
}

/// A human duration ("90s", "15m", "1h 30m", "2d", "1w"); "0" is now.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(s).ok()
}

pub fn now_ns() -> i64 {
    i64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

mod ts_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ts(*ns))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        let ts: jiff::Timestamp = s.parse().map_err(serde::de::Error::custom)?;
        i64::try_from(ts.as_nanosecond()).map_err(serde::de::Error::custom)
    }
}

mod opt_ts_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ns {
            Some(ns) => s.serialize_str(&super::format_ts(*ns)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let ts: jiff::Timestamp = s.parse().map_err(serde::de::Error::custom)?;
        i64::try_from(ts.as_nanosecond())
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_keys_are_16_hex_digits_on_the_wire() {
        let mut e: Event = Event::new("exit", 1, "core");
        e.proc = Some(ProcKey(0x00ab_cdef_0123_4567));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["proc"], "00abcdef01234567");
        let back: Event = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.proc, e.proc);
        let mut none = json.clone();
        none["proc"] = serde_json::Value::Null;
        assert_eq!(serde_json::from_value::<Event>(none).unwrap().proc, None);
        for bad in ["abc", "00abcdef0123456g", "00abcdef012345678"] {
            let mut j = json.clone();
            j["proc"] = bad.into();
            let err = serde_json::from_value::<Event>(j).unwrap_err().to_string();
            assert!(err.contains("16 hex digits"), "{bad}: {err}");
        }
    }

    #[test]
    fn ts_has_nanoseconds() {
        assert_eq!(
            format_ts(1_764_017_445_123_456_789),
            "2025-11-24T20:50:45.123456789Z"
        );
        assert_eq!(
            format_ts(1_764_017_445_000_000_000),
            "2025-11-24T20:50:45.000000000Z"
        );
    }

    #[test]
    fn time_specs() {
        let now = 10_000_000_000_000;
        assert_eq!(parse_time_spec("1h", now).unwrap(), now - 3_600_000_000_000);
        assert_eq!(parse_time_spec("90s", now).unwrap(), now - 90_000_000_000);
        assert_eq!(parse_time_spec("0", now).unwrap(), now);
        assert_eq!(
            parse_time_spec("2d", now).unwrap(),
            now - 2 * 86_400_000_000_000
        );
        assert_eq!(
            parse_time_spec("2025-11-24T20:50:45Z", now).unwrap(),
            1_764_017_445_000_000_000
        );
        for bad in ["", "yesterday", "1x", "-1h", "12"] {
            assert!(parse_time_spec(bad, now).is_err(), "{bad:?} accepted");
        }
        // Padding is trimmed, but not without bound.
        let padded = format!("1h{}", " ".repeat(MAX_TIME_SPEC - 2));
        assert!(parse_time_spec(&padded, now).is_ok());
        let e = parse_time_spec(&format!("{padded} "), now).unwrap_err();
        assert!(e.to_string().contains("257 bytes"), "{e}");
    }

    #[test]
    fn coverage_warning() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(
            Coverage {
                complete: true,
                ..Default::default()
            }
            .warning(),
            None
        );
        let gap = |from: &str, to: &str, source: &str, count| Gap {
            from: from.into(),
            to: to.into(),
            source: source.into(),
            count,
        };
        let c = Coverage {
            complete: false,
            lost: Some(1234),
            gaps: vec![gap(
                "2026-12-01T10:00:00Z",
                "2026-12-01T10:05:00Z",
                "kernel",
                Some(1234),
            )],
        };
        assert_eq!(
            c.warning().unwrap(),
            "warning: 1,234 events lost between 2026-12-01T10:00:00Z and 2026-12-01T10:05:00Z \
             (kernel ring buffer full); this answer may be incomplete"
        );
        let c = Coverage {
            complete: false,
            lost: None,
            gaps: vec![
                gap(
                    "2026-12-01T09:00:00Z",
                    "2026-12-01T09:30:00Z",
                    "downtime",
                    None,
                ),
                gap(
                    "2026-12-01T10:00:00Z",
                    "2026-12-01T10:05:00Z",
                    "kernel",
                    Some(3),
                ),
            ],
        };
        let w = c.warning().unwrap();
        assert!(w.starts_with("warning: an unknown number of events lost between 2026-12-01T09:00:00Z and 2026-12-01T10:05:00Z (traceed was not running; kernel ring buffer full)"), "{w}");
    }

    #[test]
    fn lost_event_json() {
        let e: Event = Event::lost(Some(7), "kernel", 1_000_000_000, 2_000_000_001, "core");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":0,"ts":"1970-01-01T00:00:02.000000001Z","kind":"lost","pid":null,"tid":null,"ppid":null,"uid":null,"gid":null,"comm":null,"ns_pid":null,"exe":null,"cgroup_id":null,"container_id":null,"mnt_ns":null,"pid_ns":null,"retval":null,"args":{"count":7,"from":"1970-01-01T00:00:01.000000000Z","source":"kernel","to":"1970-01-01T00:00:02.000000001Z"},"fidelity":"core","proc":null}"#
        );
        let d: Event = Event::lost(None, "downtime", 0, 5, "fallback");
        assert_eq!(
            serde_json::to_string(&d.args).unwrap(),
            r#"{"count":null,"from":"1970-01-01T00:00:00.000000000Z","source":"downtime","to":"1970-01-01T00:00:00.000000005Z"}"#
        );
    }

    #[test]
    fn event_roundtrip() {
        let e = Event {
            id: 7,
            pid: Some(1),
            tid: Some(1),
            uid: Some(0),
            gid: Some(0),
            comm: Some("sh".into()),
            args: serde_json::json!({"argv": ["sh"]}),
            ..Event::new("exec", 1_764_017_445_123_456_789, "core")
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["ts"], "2025-11-24T20:50:45.123456789Z");
        assert!(j["ppid"].is_null());
        let back: Event = serde_json::from_value(j).unwrap();
        assert_eq!(back, e);
    }
}
