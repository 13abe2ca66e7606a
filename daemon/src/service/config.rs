//! The configuration file (`/etc/traceed/traceed.toml`): parsing, defaults
//! and validation. Unknown keys and impossible values are errors that name
//! the file, line and key, so a typo never silently changes behaviour.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/traceed/traceed.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Auto,
    Core,
    Kernel,
    Fallback,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log_level: String,
    pub mode: Mode,
    /// External BTF for kernels without /sys/kernel/btf/vmlinux.
    pub btf_path: Option<PathBuf>,
    /// A BTFHub-style tree: <btf_dir>/<os-id>/<version-id>/<arch>/<release>.btf[.tar.xz].
    pub btf_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub store: StoreConfig,
    pub export: ExportConfig,
    pub kernel: KernelConfig,
    pub scope: ScopeConfig,
    pub events: EventsConfig,
    pub api: ApiConfig,
    pub detect: DetectConfig,
    /// The file this came from (set by the caller that loaded it): SIGHUP
    /// re-reads its `[detect]` section.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[detect]`: Sigma rules matched live (README "Detection").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Rule files and directories of them (`*.yml`, `*.yaml`, recursively);
    /// a missing one is fine.
    pub rules: Vec<PathBuf>,
    /// Rule ids not to run.
    pub disabled: Vec<String>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            rules: vec![
                "/usr/share/traceed/rules".into(),
                "/etc/traceed/rules.d".into(),
            ],
            disabled: Vec::new(),
        }
    }
}

/// `[api]`: the REST API on the Unix socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Time a client has to send a request's headers, and the idle time
    /// allowed between requests on a kept-alive connection. Not a limit on
    /// how long an answer (a `follow=true` stream) may last.
    #[serde(with = "humanized_duration")]
    pub header_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            header_timeout: crate::api::serve::HEADER_TIMEOUT,
        }
    }
}

/// Bounds of `[api] header_timeout`: below this, a client that is merely
/// slow to write a request line (a loaded host) is cut off; above it, idle
/// connections hold the API's limited slots for long.
const HEADER_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const HEADER_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// The ring buffer's default size holds at least this many records of
/// `max_argv_bytes`, and is at least RING_DEFAULT_MIN.
const RING_RECORDS_MIN: u64 = 128;
const RING_DEFAULT_MIN: u64 = 4 << 20;

/// Bounds of `[events] max_argv_bytes`: below the low one common command
/// lines are already cut; the high one is the kernel's own limit for one
/// string (MAX_ARG_STRLEN) and what a record can hold (`EV_ARGV_CAP`).
pub const MAX_ARGV_BYTES_MIN: u64 = 256;
pub const MAX_ARGV_BYTES_MAX: u64 = 128 << 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Extra syscalls recorded with raw arguments (kind `syscall`).
    pub syscalls: Vec<String>,
    /// An exec's argv is recorded up to this many bytes (NULs included);
    /// beyond, it is cut and the event says `truncated`.
    #[serde(with = "humanized_bytes")]
    pub max_argv_bytes: u64,
    /// Identical opens by one thread within this window become one row
    /// with a `count` (pipeline/coalesce.rs says what that loses); zero,
    /// the default, stores every open.
    #[serde(with = "humanized_duration")]
    pub coalesce: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            syscalls: Vec::new(),
            max_argv_bytes: 32 << 10,
            coalesce: Duration::ZERO,
        }
    }
}

/// Bounds of `[events] coalesce` when on: below the low one little is
/// folded; the high one bounds how late a held open reaches the rules and
/// how much a killed daemon can lose.
const COALESCE_MIN: Duration = Duration::from_millis(10);
const COALESCE_MAX: Duration = Duration::from_secs(60);

/// `[store] commit_interval` at most: events wait that long for live
/// followers and alerts.
const COMMIT_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// `[scope.include]` / `[scope.exclude]`: applied in the kernel, before a
/// record is built (`exe`: in user space, right after decoding). An include list for a key means only matching tasks
/// are recorded; excludes always win.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    pub include: ScopeLists,
    pub exclude: ScopeLists,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeLists {
    pub uid: Vec<u32>,
    pub comm: Vec<String>,
    pub pid: Vec<u32>,
    /// cgroup directories, absolute or relative to /sys/fs/cgroup.
    pub cgroup: Vec<PathBuf>,
    /// Container ids (full or a unique prefix) running at start.
    pub container: Vec<String>,
    pub mnt_ns: Vec<u32>,
    /// Absolute executable paths (symlinks resolved at start), matched in
    /// user space against the file the kernel loaded: unlike `comm`, a
    /// process cannot rename itself out of (or into) this key.
    pub exe: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Append every stored event as one JSON line here; reopened on SIGHUP.
    pub jsonl: Option<PathBuf>,
    /// Ship the history, in id order and exactly once, into ClickHouse.
    pub clickhouse: Option<ClickHouseConfig>,
}

/// `[export.clickhouse]`: the sink in `store::clickhouse`. Only `url` is
/// required; everything else has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. "http://127.0.0.1:8123".
    pub url: String,
    #[serde(default = "clickhouse_defaults::database")]
    pub database: String,
    /// The table inserted into: the `Distributed` table on a cluster.
    #[serde(default = "clickhouse_defaults::table")]
    pub table: String,
    #[serde(default = "clickhouse_defaults::user")]
    pub user: String,
    /// A file holding the password (trailing newline ignored); refused when
    /// every user may read it.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// https only: a PEM file with the CA certificate(s) that signed the
    /// server's; when set, only these are trusted [default: the system's
    /// roots].
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Events per INSERT, at most. ClickHouse pays per INSERT (a part to
    /// write and later merge): on 2 cores 18.16 took 10,000-row batches at
    /// ~100k rows/s and 50,000-row ones at 320k-490k/s (BENCHMARKS.md).
    #[serde(default = "clickhouse_defaults::batch_size")]
    pub batch_size: usize,
    /// How often to look for new events once caught up.
    #[serde(default = "clickhouse_defaults::interval", with = "humanized_duration")]
    pub interval: Duration,
    /// The `host` column of every row [default: this machine's hostname].
    #[serde(default = "clickhouse_defaults::host")]
    pub host: String,
}

mod clickhouse_defaults {
    pub fn database() -> String {
        "traceed".into()
    }
    pub fn table() -> String {
        "events".into()
    }
    pub fn user() -> String {
        "default".into()
    }
    pub fn batch_size() -> usize {
        50_000
    }
    pub fn interval() -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    pub fn host() -> String {
        super::hostname()
    }
}

/// This machine's hostname (gethostname(2)); "localhost" if it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if rc == 0 && !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}

/// A ClickHouse identifier traceed interpolates into SQL: plain names only.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

impl ClickHouseConfig {
    /// Values that parse but cannot work: Err((dotted key, message)).
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = &self.url;
        let uri: axum::http::Uri = url.parse().map_err(|e| {
            (
                "export.clickhouse.url",
                format!("export.clickhouse.url = {url:?}: not a URL ({e}); e.g. \"http://127.0.0.1:8123\""),
            )
        })?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            other => {
                return Err((
                    "export.clickhouse.url",
                    format!(
                        "export.clickhouse.url = {url:?}: the scheme must be http:// or https:// (ClickHouse's HTTP interface), not {}",
                        other.map(|s| format!("{s}://")).unwrap_or_else(|| "none".into())
                    ),
                ))
            }
        }
        if let Some(ca) = &self.ca_file {
            let key = "export.clickhouse.ca_file";
            if uri.scheme_str() != Some("https") {
                return Err((
                    key,
                    format!(
                        "{key} = {:?}: only used with an https:// url",
                        ca.display().to_string()
                    ),
                ));
            }
            self.ca_certificates().map_err(|m| (key, m))?;
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err((
                "export.clickhouse.url",
                format!("export.clickhouse.url = {url:?}: names no host"),
            ));
        }
        if uri.query().is_some() {
            return Err((
                "export.clickhouse.url",
                format!(
                    "export.clickhouse.url = {url:?}: must not carry a query string (traceed sets the query and its settings)"
                ),
            ));
        }
        for (key, v) in [
            ("export.clickhouse.database", &self.database),
            ("export.clickhouse.table", &self.table),
        ] {
            if !is_identifier(v) {
                return Err((
                    key,
                    format!("{key} = {v:?}: must be a plain identifier (letters, digits, _; not starting with a digit)"),
                ));
            }
        }
        if self.user.is_empty() || self.user.chars().any(|c| c.is_control()) {
            return Err((
                "export.clickhouse.user",
                format!(
                    "export.clickhouse.user = {:?}: must be a user name",
                    self.user
                ),
            ));
        }
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return Err((
                "export.clickhouse.batch_size",
                format!(
                    "export.clickhouse.batch_size = {}: must be between 1 and 1000000",
                    self.batch_size
                ),
            ));
        }
        if self.interval.is_zero() {
            return Err((
                "export.clickhouse.interval",
                "export.clickhouse.interval must be greater than 0".into(),
            ));
        }
        if self.host.is_empty() || self.host.chars().any(|c| c.is_control()) {
            return Err((
                "export.clickhouse.host",
                format!(
                    "export.clickhouse.host = {:?}: must be a non-empty label",
                    self.host
                ),
            ));
        }
        self.password()
            .map_err(|m| ("export.clickhouse.password_file", m))?;
        Ok(())
    }

    /// The certificates of `ca_file` (empty without one); a file that
    /// cannot be read or holds no PEM certificate is an error.
    pub fn ca_certificates(
        &self,
    ) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let key = "export.clickhouse.ca_file";
        let shown = path.display().to_string();
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{key} = {shown:?}: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{key} = {shown:?}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
        Ok(certs)
    }

    /// The password from `password_file` (None without one). The file must
    /// exist and must not be readable by every user.
    pub fn password(&self) -> Result<Option<String>, String> {
        use std::os::unix::fs::PermissionsExt;
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let key = "export.clickhouse.password_file";
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("{key} = {:?}: {e}", path.display().to_string()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o004 != 0 {
            return Err(format!(
                "{key} = {:?}: every user can read it (mode {mode:04o}); `chmod o-r {}` (e.g. 0640 root:traceed)",
                path.display().to_string(),
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{key} = {:?}: {e}", path.display().to_string()))?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    #[serde(with = "humanized_duration")]
    pub max_age: Duration,
    pub batch_size: usize,
    pub queue_capacity: usize,
    /// Delete the oldest events while the database is larger than this.
    #[serde(with = "humanized_bytes")]
    pub max_bytes: u64,
    /// Delete the oldest events while the state filesystem has less free
    /// space than this (0 disables). Default 64 MiB.
    #[serde(with = "humanized_bytes")]
    pub min_free_bytes: u64,
    /// Least time between two commits while the writer's queue holds less
    /// than a batch: fewer, larger transactions at low rates, at the cost
    /// of that much more latency for live followers and alerts. Zero:
    /// commit as soon as the previous batch is written.
    #[serde(with = "humanized_duration")]
    pub commit_interval: Duration,
}

/// How records reach user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The BPF ring buffer where the kernel has one (5.8+), else perf.
    Auto,
    Ringbuf,
    Perf,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Ringbuf => "ringbuf",
            Transport::Perf => "perf",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    pub transport: Transport,
    /// Size of the BPF ring buffer, bytes (a power of two, multiple of the
    /// page size; with perf buffers, the total over the CPUs). 64 bits so
    /// that a size past what the kernel takes gets its own message. Unset:
    /// `Config::ring_buffer_bytes` sizes it from `max_argv_bytes`.
    pub ring_buffer_bytes: Option<u64>,
    /// Rung 3: compile the kernel-specific object at start when none is
    /// installed and this kernel's headers, clang and llc are present.
    pub build_objects: bool,
    /// CO-RE rungs: attach fexit programs (BPF trampolines) instead of
    /// syscall tracepoints where the kernel allows them; false keeps
    /// tracepoints everywhere.
    pub fentry: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            mode: Mode::Auto,
            btf_path: None,
            btf_dir: None,
            state_dir: "/var/lib/traceed".into(),
            socket: "/run/traceed/traceed.sock".into(),
            store: StoreConfig::default(),
            export: ExportConfig::default(),
            kernel: KernelConfig::default(),
            scope: ScopeConfig::default(),
            events: EventsConfig::default(),
            api: ApiConfig::default(),
            detect: DetectConfig::default(),
            source: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 86400),
            batch_size: 4096,
            queue_capacity: 65536,
            max_bytes: 2 << 30,
            // A floor that keeps the host writable, not a share of the disk:
            // on a small filesystem a 1 GiB floor would delete all history.
            min_free_bytes: 64 << 20,
            commit_interval: Duration::from_millis(200),
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Auto,
            ring_buffer_bytes: None,
            build_objects: true,
            fentry: true,
        }
    }
}

impl Config {
    /// Load `path`. A missing file at the default location means defaults;
    /// a missing file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    /// SIGHUP: the `[detect]` section of the file this config came from,
    /// which must still pass the start's trust check and parse whole. The
    /// other sections apply at start only.
    pub fn reread_detect(&self) -> Result<DetectConfig, String> {
        let Some(path) = &self.source else {
            return Ok(self.detect.clone());
        };
        if path.exists() {
            crate::service::private::check_trusted("the config file", path)
                .map_err(|e| e.to_string())?;
        }
        Ok(Self::load(path, false).map_err(|e| e.to_string())?.detect)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: describe_toml_error(text, &e),
        })?;
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Parse {
                path: path.into(),
                message: match key_line(text, key) {
                    Some(line) => format!("line {line}: {message}"),
                    None => message,
                },
            })?;
        Ok(cfg)
    }

    /// The ring buffer's size: as configured, else room for
    /// RING_RECORDS_MIN execs with a whole command line (4 MiB with the
    /// default 32 KiB argv; 16 MiB at the 128 KiB maximum). Measured in
    /// BENCHMARKS.md: 4 MiB loses nothing at any rate this host's open or
    /// exec loops reach with 32 KiB argv, and takes 8 MiB less RSS than
    /// 8 MiB (the kernel maps the data twice); at 128 KiB argv it lost
    /// execs in a burst that 8 MiB took.
    pub fn ring_buffer_bytes(&self) -> u64 {
        self.kernel.ring_buffer_bytes.unwrap_or_else(|| {
            (RING_RECORDS_MIN * self.events.max_argv_bytes)
                .next_power_of_two()
                .max(RING_DEFAULT_MIN)
        })
    }

    /// Values that parse but cannot work: Err((dotted key, message)).
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let rb = self.ring_buffer_bytes();
        if !rb.is_power_of_two() || rb < 4096 {
            return Err((
                "kernel.ring_buffer_bytes",
                format!("kernel.ring_buffer_bytes = {rb}: must be a power of two of at least 4096"),
            ));
        }
        if let Some(why) = ring_buffer_too_large(rb, host_memory_bytes()) {
            return Err((
                "kernel.ring_buffer_bytes",
                format!("kernel.ring_buffer_bytes = {rb}: {why}"),
            ));
        }
        if self.store.queue_capacity == 0 {
            return Err((
                "store.queue_capacity",
                "store.queue_capacity = 0: the queue between the ring buffer and the writer must hold at least one batch (default 65536)".into(),
            ));
        }
        if self.store.batch_size == 0 || self.store.queue_capacity < self.store.batch_size {
            return Err((
                "store.batch_size",
                "store.batch_size must be >= 1 and <= store.queue_capacity".into(),
            ));
        }
        for c in self
            .scope
            .include
            .comm
            .iter()
            .chain(&self.scope.exclude.comm)
        {
            if c.is_empty() || c.len() > 15 {
                let key = if self.scope.include.comm.contains(c) {
                    "scope.include.comm"
                } else {
                    "scope.exclude.comm"
                };
                return Err((
                    key,
                    format!(
                        "scope comm '{c}': must be 1 to 15 bytes (the kernel keeps 15 bytes of a task's name)"
                    ),
                ));
            }
        }
        for (key, list) in [
            ("scope.include.exe", &self.scope.include.exe),
            ("scope.exclude.exe", &self.scope.exclude.exe),
        ] {
            if let Some(p) = list.iter().find(|p| !p.is_absolute()) {
                return Err((
                    key,
                    format!(
                        "{key} '{}': must be an absolute path (the kernel's path of the loaded executable)",
                        p.display()
                    ),
                ));
            }
        }
        for name in &self.events.syscalls {
            if crate::pipeline::decoder::syscall_table::number(name).is_none() {
                return Err((
                    "events.syscalls",
                    format!(
                        "events.syscalls: '{name}' is not an x86_64 syscall name (e.g. \"ioctl\", \"mprotect\")"
                    ),
                ));
            }
        }
        let a = self.events.max_argv_bytes;
        if !(MAX_ARGV_BYTES_MIN..=MAX_ARGV_BYTES_MAX).contains(&a) {
            return Err((
                "events.max_argv_bytes",
                format!(
                    "events.max_argv_bytes = {a}: must be between {MAX_ARGV_BYTES_MIN} and \
                     {MAX_ARGV_BYTES_MAX} bytes (\"256B\" to \"128KiB\")"
                ),
            ));
        }
        let w = self.events.coalesce;
        if !w.is_zero() && !(COALESCE_MIN..=COALESCE_MAX).contains(&w) {
            return Err((
                "events.coalesce",
                format!(
                    "events.coalesce = {w:?}: must be \"0s\" (off) or between {COALESCE_MIN:?} \
                     and {COALESCE_MAX:?} (how long an open waits for identical ones)"
                ),
            ));
        }
        if self.store.commit_interval > COMMIT_INTERVAL_MAX {
            return Err((
                "store.commit_interval",
                format!(
                    "store.commit_interval = {:?}: must be at most {COMMIT_INTERVAL_MAX:?} (\"0s\" \
                     commits as soon as the previous batch is written)",
                    self.store.commit_interval
                ),
            ));
        }
        if self.store.max_age.is_zero() {
            return Err((
                "store.max_age",
                "store.max_age must be greater than 0".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return Err((
                "log_level",
                format!(
                    "log_level = {:?}: {e} (use error, warn, info, debug, trace or RUST_LOG-style directives)",
                    self.log_level
                ),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err((
                "state_dir",
                format!("state_dir = {:?}: must be an absolute path", self.state_dir),
            ));
        }
        if !self.socket.is_absolute() {
            return Err((
                "socket",
                format!("socket = {:?}: must be an absolute path", self.socket),
            ));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err((
                "socket",
                format!(
                    "socket = {:?}: {} bytes, a Unix socket path can have at most 107",
                    self.socket,
                    self.socket.as_os_str().len()
                ),
            ));
        }
        let t = self.api.header_timeout;
        if !(HEADER_TIMEOUT_MIN..=HEADER_TIMEOUT_MAX).contains(&t) {
            return Err((
                "api.header_timeout",
                format!(
                    "api.header_timeout = {t:?}: must be between {HEADER_TIMEOUT_MIN:?} and \
                     {HEADER_TIMEOUT_MAX:?} (the time a client has to send a request's headers)"
                ),
            ));
        }
        if let Some(ch) = &self.export.clickhouse {
            ch.validate()?;
        }
        if self.store.max_bytes < 1 << 20 {
            return Err((
                "store.max_bytes",
                "store.max_bytes must be at least 1MiB".into(),
            ));
        }
        Ok(())
    }
}

/// The largest ring buffer the kernel sizes: a map's size is a 32-bit
/// count, so the largest power of two is 2 GiB.
const RING_BUFFER_MAX: u64 = 1 << 31;

/// Why a ring buffer of `bytes` cannot be had, if it cannot: past what the
/// kernel sizes, or more than half the host's memory (the buffer is
/// locked kernel memory, taken at start whether or not it is ever used).
fn ring_buffer_too_large(bytes: u64, memory: Option<u64>) -> Option<String> {
    if bytes > RING_BUFFER_MAX {
        return Some(format!(
            "more than the kernel allows for one BPF ring buffer ({RING_BUFFER_MAX} bytes, 2 GiB)"
        ));
    }
    let memory = memory?;
    (bytes > memory / 2).then(|| {
        format!(
            "more than half of this host's memory ({} MiB); the ring buffer is locked kernel memory (default 4 MiB)",
            memory >> 20
        )
    })
}

/// Physical memory, from sysinfo(2).
fn host_memory_bytes() -> Option<u64> {
    // SAFETY: sysinfo fills the struct it is given.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    (unsafe { libc::sysinfo(&mut si) } == 0)
        .then(|| (si.totalram as u64).saturating_mul(u64::from(si.mem_unit.max(1))))
}

/// The line where a dotted key (`kernel.ring_buffer_bytes`) is set, found
/// either as `key =` under its `[table]` or as the dotted key itself. A
/// plain scan: the file already parsed, so only comments and strings can
/// mislead it, and a miss merely drops the line number.
fn key_line(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        let Some((lhs, _)) = line.split_once('=') else {
            continue;
        };
        let lhs = lhs.trim().trim_matches('"');
        let full = if current.is_empty() {
            lhs.to_string()
        } else {
            format!("{current}.{lhs}")
        };
        if full == dotted || (current == table && lhs == key) {
            return Some(i + 1);
        }
    }
    None
}

/// toml's own message plus "line N" so journald readers find it quickly.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            // Some messages ("duplicate key") do not say which key: quote
            // what the span covers when it is a short single-line token.
            let at = text
                .get(span.start..span.end.min(text.len()))
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 80 && !t.contains('\n'))
                .filter(|t| !msg.contains(*t));
            match at {
                Some(t) => format!("line {line}: {msg} (at `{t}`)"),
                None => format!("line {line}: {msg}"),
            }
        }
        None => msg,
    }
}

mod humanized_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        traceed_wire::parse_duration(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{s}' is not a duration (e.g. \"30d\", \"12h\", \"10s\", \"500ms\")"
            ))
        })
    }
}

/// A byte size: an integer, or a string with a unit ("2GiB", "512MiB",
/// "1G", "64k"; units are powers of 1024).
mod humanized_bytes {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }

    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return None,
        };
        n.checked_mul(mult)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("'{s}' is not a size (e.g. \"2GiB\", \"512MiB\")"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse(
            "mode = \"core\"\n[store]\nmax_age = \"2d\"\n",
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Core);
        assert_eq!(c.store.max_age, Duration::from_secs(2 * 86400));
        assert_eq!(c.ring_buffer_bytes(), 4 << 20);
        assert_eq!(c.store.max_bytes, 2 << 30);
        assert!(c.export.jsonl.is_none());
    }

    #[test]
    fn store_sizes_and_export() {
        let c = Config::parse(
            "[store]\nmax_bytes = \"512MiB\"\nmin_free_bytes = 0\n[export]\njsonl = \"/tmp/e.jsonl\"\n",
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(c.store.max_bytes, 512 << 20);
        assert_eq!(c.store.min_free_bytes, 0);
        assert_eq!(c.export.jsonl.as_deref(), Some(Path::new("/tmp/e.jsonl")));
        let err = Config::parse("[store]\nmax_bytes = \"2 parsecs\"\n", Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("parsecs"), "{err}");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = Config::parse(
            "mode = \"auto\"\n[store]\nmax_agee = \"2d\"\n",
            Path::new("/etc/t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/t.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("max_agee"), "{err}");
    }

    #[test]
    fn impossible_values_rejected() {
        let err = Config::parse("[kernel]\nring_buffer_bytes = 1000\n", Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ring_buffer_bytes"), "{err}");
        assert!(Config::parse("mode = \"sideways\"\n", Path::new("t")).is_err());
    }

    #[test]
    fn a_ring_buffer_past_the_kernel_or_half_the_memory_is_refused() {
        let gib = 1u64 << 30;
        assert_eq!(ring_buffer_too_large(8 << 20, Some(gib)), None);
        assert_eq!(ring_buffer_too_large(2 * gib, None), None);
        let big = ring_buffer_too_large(4 * gib, Some(64 * gib)).unwrap();
        assert!(big.contains("kernel allows"), "{big}");
        let mem = ring_buffer_too_large(gib, Some(gib)).unwrap();
        assert!(
            mem.contains("half of this host's memory (1024 MiB)"),
            "{mem}"
        );
        assert_eq!(ring_buffer_too_large(gib / 2, Some(gib)), None);
    }

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/traceed/traceed.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn impossible_values_name_file_line_and_key() {
        let e = err("log_level = \"info\"\n\n[kernel]\n# comment\nring_buffer_bytes = 1000\n");
        assert!(e.contains("/etc/traceed/traceed.toml"), "{e}");
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("ring_buffer_bytes"), "{e}");
        let e = err("[store]\nbatch_size = 10\nqueue_capacity = 5\n");
        assert!(
            e.contains("line 2") && e.contains("store.batch_size"),
            "{e}"
        );
        let e = err("[store]\nqueue_capacity = 0\n");
        assert!(
            e.contains("line 2") && e.contains("store.queue_capacity = 0"),
            "{e}"
        );
        let e = err("[kernel]\nring_buffer_bytes = 4294967296\n");
        assert!(
            e.contains("line 2") && e.contains("more than the kernel allows"),
            "{e}"
        );
        let e = err("store.max_age = \"0s\"\n");
        assert!(e.contains("line 1") && e.contains("max_age"), "{e}");
        let e = err("mode = \"auto\"\nstate_dir = \"var/lib/traceed\"\n");
        assert!(e.contains("line 2") && e.contains("state_dir"), "{e}");
        let long = format!("socket = \"/run/{}.sock\"\n", "x".repeat(120));
        let e = err(&long);
        assert!(e.contains("line 1") && e.contains("107"), "{e}");
        let e = err("[scope.exclude]\nexe = [\"/usr/bin/curl\", \"curl\"]\n");
        assert!(
            e.contains("line 2") && e.contains("scope.exclude.exe") && e.contains("'curl'"),
            "{e}"
        );
    }

    #[test]
    fn max_argv_bytes_default_units_and_bounds() {
        let d = Config::parse("", Path::new("t")).unwrap();
        assert_eq!(d.events.max_argv_bytes, 32 << 10);
        let c = Config::parse("[events]\nmax_argv_bytes = \"128KiB\"\n", Path::new("t")).unwrap();
        assert_eq!(c.events.max_argv_bytes, 128 << 10);
        // The ring follows the argv cap unless it is set.
        assert_eq!(d.ring_buffer_bytes(), 4 << 20);
        assert_eq!(c.ring_buffer_bytes(), 16 << 20);
        let c = Config::parse(
            "[events]\nmax_argv_bytes = \"40KiB\"\n[kernel]\nring_buffer_bytes = 65536\n",
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(c.ring_buffer_bytes(), 65536);
        let c = Config::parse("[events]\nmax_argv_bytes = \"40KiB\"\n", Path::new("t")).unwrap();
        assert_eq!(c.ring_buffer_bytes(), 8 << 20);
        let c = Config::parse("[events]\nmax_argv_bytes = 256\n", Path::new("t")).unwrap();
        assert_eq!(c.events.max_argv_bytes, 256);
        for v in ["255", "\"129KiB\"", "0"] {
            let e = err(&format!("[events]\nmax_argv_bytes = {v}\n"));
            assert!(
                e.contains("line 2") && e.contains("events.max_argv_bytes") && e.contains("128KiB"),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn store_commit_interval_default_override_and_bound() {
        let d = Config::default().store.commit_interval;
        assert_eq!(d, Duration::from_millis(200));
        let c = Config::parse("[store]\ncommit_interval = \"0s\"\n", Path::new("t")).unwrap();
        assert!(c.store.commit_interval.is_zero());
        let c = Config::parse("[store]\ncommit_interval = \"1s\"\n", Path::new("t")).unwrap();
        assert_eq!(c.store.commit_interval, Duration::from_secs(1));
        let e = err("[store]\ncommit_interval = \"6s\"\n");
        assert!(
            e.contains("line 2") && e.contains("store.commit_interval") && e.contains("5s"),
            "{e}"
        );
        let e = err("[store]\ncommit_interval = \"soon\"\n");
        assert!(e.contains("line 2") && e.contains("not a duration"), "{e}");
    }

    #[test]
    fn events_coalesce_default_off_override_and_bounds() {
        assert!(Config::default().events.coalesce.is_zero());
        let c = Config::parse("[events]\ncoalesce = \"1s\"\n", Path::new("t")).unwrap();
        assert_eq!(c.events.coalesce, Duration::from_secs(1));
        let c = Config::parse("[events]\ncoalesce = \"0s\"\n", Path::new("t")).unwrap();
        assert!(c.events.coalesce.is_zero());
        for v in ["5ms", "2m"] {
            let e = err(&format!("[events]\ncoalesce = \"{v}\"\n"));
            assert!(
                e.contains("line 2") && e.contains("events.coalesce") && e.contains("(off)"),
                "{e}"
            );
        }
        let e = err("[events]\ncoalesce = \"often\"\n");
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn api_header_timeout_default_override_and_bounds() {
        let d = Config::parse("", Path::new("t")).unwrap();
        assert_eq!(d.api.header_timeout, Duration::from_secs(10));
        let c = Config::parse("[api]\nheader_timeout = \"500ms\"\n", Path::new("t")).unwrap();
        assert_eq!(c.api.header_timeout, Duration::from_millis(500));
        for (v, shown) in [("10ms", "10ms"), ("1h", "3600s"), ("0s", "0ns")] {
            let e = err(&format!(
                "mode = \"auto\"\n[api]\nheader_timeout = \"{v}\"\n"
            ));
            assert!(
                e.contains("/etc/traceed/traceed.toml")
                    && e.contains("line 3")
                    && e.contains(&format!("api.header_timeout = {shown}:"))
                    && e.contains("between 100ms and 600s"),
                "{e}"
            );
        }
        let e = err("[api]\nheader_timeout = \"soon\"\n");
        assert!(
            e.contains("line 2") && e.contains("'soon' is not a duration"),
            "{e}"
        );
        let e = err("[api]\nheader_timeout = 10\n");
        assert!(e.contains("line 2"), "{e}");
        let e = err("[api]\nheader_timout = \"10s\"\n");
        assert!(e.contains("line 2") && e.contains("header_timout"), "{e}");
    }

    #[test]
    fn clickhouse_defaults_and_refusals_name_the_key() {
        let c = Config::parse(
            "[export.clickhouse]\nurl = \"http://127.0.0.1:8123\"\n",
            Path::new("t"),
        )
        .unwrap();
        let ch = c.export.clickhouse.unwrap();
        assert_eq!(ch.database, "traceed");
        assert_eq!(ch.table, "events");
        assert_eq!(ch.user, "default");
        assert_eq!(ch.batch_size, 50_000);
        assert_eq!(ch.interval, Duration::from_secs(1));
        assert_eq!(ch.host, hostname());
        assert!(ch.password_file.is_none());
        let base = "[export.clickhouse]\nurl = \"http://127.0.0.1:8123\"\n";
        for (extra, key, line) in [
            ("", "url = \"ftp://x:1\"", "line 2"),
            ("ca_file = \"/nonexistent/ca.pem\"\n", "", "line 3"),
            ("batch_size = 0\n", "", "line 3"),
            ("table = \"ev; DROP\"\n", "", "line 3"),
            ("interval = \"0s\"\n", "", "line 3"),
            ("password_file = \"/nonexistent/pw\"\n", "", "line 3"),
        ] {
            let text = if key.is_empty() {
                format!("{base}{extra}")
            } else {
                format!("[export.clickhouse]\n{key}\n")
            };
            let e = err(&text);
            let want = if key.is_empty() {
                extra.split(' ').next().unwrap().to_string()
            } else {
                "url".into()
            };
            assert!(
                e.contains(line) && e.contains(&format!("export.clickhouse.{want}")),
                "{text:?}: {e}"
            );
        }
        // https is accepted; a CA file must hold a certificate.
        let https = "[export.clickhouse]\nurl = \"https://x:8443\"\n";
        assert!(Config::parse(https, Path::new("t")).is_ok());
        let e = err(&format!("{https}ca_file = \"/dev/null\"\n"));
        assert!(
            e.contains("export.clickhouse.ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
        assert!(err("[export.clickhouse]\ndatabase = \"x\"\n").contains("url"));
        // A world-readable password file is refused; a private one is read.
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("traceed-cfg-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!("{base}password_file = \"{}\"\n", pw.display());
        let e = err(&text);
        assert!(
            e.contains("export.clickhouse.password_file") && e.contains("0644"),
            "{e}"
        );
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = Config::parse(&text, Path::new("t")).unwrap();
        assert_eq!(
            c.export.clickhouse.unwrap().password().unwrap().as_deref(),
            Some("s3cret")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_log_level_is_rejected_with_its_line() {
        let e = err("\nlog_level = \"traceed=loudest\"\n");
        assert!(e.contains("line 2") && e.contains("log_level"), "{e}");
        let ok = Config::parse("log_level = \"traceed=debug,warn\"\n", Path::new("t")).unwrap();
        assert_eq!(ok.log_level, "traceed=debug,warn");
    }

    #[test]
    fn broken_toml_and_wrong_types_name_the_line() {
        let e = err("mode = \"auto\"\n[store\nmax_age = 3\n");
        assert!(e.contains("line 2"), "{e}");
        let e = err("[store]\nbatch_size = \"many\"\n");
        assert!(
            e.contains("line 2") && e.contains("batch_size") || e.contains("line 2"),
            "{e}"
        );
        let e = err("[store]\nmax_age = \"forever\"\n");
        assert!(e.contains("line 2") && e.contains("forever"), "{e}");
        let e = err("[store]\nbatch_size = 1\n[store]\nmax_age = \"1d\"\n");
        assert!(e.contains("line 3") && e.contains("store"), "{e}");
        let e = err("log_level = \"info\"\nlog_level = \"debug\"\n");
        assert!(e.contains("line 2") && e.contains("log_level"), "{e}");
        let e = err("[colour]\nx = 1\n");
        assert!(e.contains("line 1") && e.contains("colour"), "{e}");
    }

    #[test]
    fn the_shipped_default_config_is_valid_and_all_commented() {
        let text = include_str!("../../../packaging/traceed.toml");
        let c = Config::parse(text, Path::new("packaging/traceed.toml")).unwrap();
        let d = Config::default();
        assert_eq!(c.log_level, d.log_level);
        assert_eq!(c.state_dir, d.state_dir);
        assert_eq!(c.kernel.ring_buffer_bytes, d.kernel.ring_buffer_bytes);
        assert_eq!(c.api.header_timeout, d.api.header_timeout);
        // Every key the daemon knows is documented there, as a commented
        // default, so uncommenting one line changes one thing.
        for key in [
            "log_level",
            "mode",
            "btf_path",
            "state_dir",
            "socket",
            "max_age",
            "batch_size",
            "queue_capacity",
            "ring_buffer_bytes",
            "btf_dir",
            "transport",
            "fentry",
            "syscalls",
            "uid",
            "comm",
            "pid",
            "cgroup",
            "container",
            "mnt_ns",
            "header_timeout",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("# {key} ="))
                        || l.trim_start().starts_with(&format!("#{key} ="))),
                "packaging/traceed.toml does not document {key}"
            );
        }
        // Uncommenting every default line must still parse (the comments
        // are real values, not prose).
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        Config::parse(&uncommented, Path::new("uncommented")).unwrap();
    }
}
