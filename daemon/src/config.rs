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
    pub kernel: KernelConfig,
    pub scope: ScopeConfig,
    pub events: EventsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Extra syscalls recorded with raw arguments (kind `syscall`).
    pub syscalls: Vec<String>,
}

/// `[scope.include]` / `[scope.exclude]`: applied in the kernel, before a
/// record is built. An include list for a key means only matching tasks
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    #[serde(with = "humanized_duration")]
    pub max_age: Duration,
    pub batch_size: usize,
    pub queue_capacity: usize,
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
    /// Size of the BPF ring buffer, bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Rung 3: compile the kernel-specific object at start when none is
    /// installed and this kernel's headers, clang and llc are present.
    pub build_objects: bool,
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
            kernel: KernelConfig::default(),
            scope: ScopeConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 86400),
            batch_size: 4096,
            queue_capacity: 65536,
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Auto,
            ring_buffer_bytes: 8 << 20,
            build_objects: true,
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

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: describe_toml_error(text, &e),
        })?;
        cfg.validate().map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let rb = self.kernel.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return Err(format!(
                "kernel.ring_buffer_bytes = {rb}: must be a power of two of at least 4096"
            ));
        }
        if self.store.batch_size == 0 || self.store.queue_capacity < self.store.batch_size {
            return Err("store.batch_size must be >= 1 and <= store.queue_capacity".into());
        }
        for c in self
            .scope
            .include
            .comm
            .iter()
            .chain(&self.scope.exclude.comm)
        {
            if c.is_empty() || c.len() > 15 {
                return Err(format!(
                    "scope comm '{c}': must be 1 to 15 bytes (the kernel keeps 15 bytes of a task's name)"
                ));
            }
        }
        for name in &self.events.syscalls {
            if crate::decoder::syscall_table::number(name).is_none() {
                return Err(format!(
                    "events.syscalls: '{name}' is not an x86_64 syscall name (e.g. \"ioctl\", \"mprotect\")"
                ));
            }
        }
        if self.store.max_age.is_zero() {
            return Err("store.max_age must be greater than 0".into());
        }
        Ok(())
    }
}

/// toml's own message plus "line N" so journald readers find it quickly.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
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
            serde::de::Error::custom(format!("'{s}' is not a duration (e.g. \"30d\", \"12h\")"))
        })
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
        assert_eq!(c.kernel.ring_buffer_bytes, 8 << 20);
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
}
