//! Where the daemon's log goes: the systemd journal, with each tracing field
//! as a journal field (`journalctl -u traceed RUNG=fallback`), when systemd
//! connected stderr to the journal and the journal socket answers; plain
//! text on stderr otherwise (a terminal, a container, the test harness).
//! The filter is `RUST_LOG` when set, else the config's `log_level`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where `init` sent the log, for entries written outside tracing.
static TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();

/// A detection alert: a journal entry of its own with the syslog PRIORITY
/// of the rule's level (2 crit .. 6 info; tracing's levels cannot say
/// "crit") and the given fields; on stderr a tracing warning.
pub fn alert_entry(priority: u8, message: &str, fields: &[(&str, &str)]) {
    if TARGET.get() == Some(&Target::Journald) && journal_send(priority, message, fields).is_ok() {
        return;
    }
    let f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::warn!(priority, "{message} [{}]", f.join(" "));
}

/// The journal's native protocol: one datagram of KEY=value lines (values
/// here never hold a newline: they are escaped first).
fn journal_send(priority: u8, message: &str, fields: &[(&str, &str)]) -> std::io::Result<()> {
    let clean = |s: &str| s.replace('\n', " ");
    let mut d = format!(
        "PRIORITY={priority}\nSYSLOG_IDENTIFIER=traceed\nMESSAGE={}\n",
        clean(message)
    );
    for (k, v) in fields {
        d.push_str(&format!("{k}={}\n", clean(v)));
    }
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.send_to(d.as_bytes(), "/run/systemd/journal/socket")?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Journald,
    Stderr,
}

/// Install the global subscriber. `level` is an EnvFilter directive string
/// already checked by the config (`info`, `traceed=debug,warn`, ...).
pub fn init(level: &str) -> Target {
    let (filter, bad_env) = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    let registry = tracing_subscriber::registry().with(filter);
    let target = if stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
        match tracing_journald::layer() {
            Ok(layer) => {
                // Bare field names: RUNG=, EVENTS=, ERROR= rather than F_RUNG=.
                registry
                    .with(
                        layer
                            .with_field_prefix(None)
                            .with_syslog_identifier("traceed".into()),
                    )
                    .init();
                Target::Journald
            }
            Err(e) => {
                registry.with(stderr_layer()).init();
                tracing::warn!(error = %e, "the journal socket does not answer: logging to stderr");
                Target::Stderr
            }
        }
    } else {
        registry.with(stderr_layer()).init();
        Target::Stderr
    };
    if let Some(e) = bad_env {
        tracing::warn!("ignoring RUST_LOG: {e}; using log_level = {level:?}");
    }
    let _ = TARGET.set(target);
    target
}

fn stderr_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // Under systemd without the journal (StandardError=file:...) the
    // manager's own timestamps are absent, so always keep ours.
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
}

/// RUST_LOG wins when it parses; a malformed RUST_LOG must not silence the
/// daemon, so it falls back to the config level and says why.
fn filter(rust_log: Option<&str>, level: &str) -> (EnvFilter, Option<String>) {
    if let Some(env) = rust_log.filter(|s| !s.trim().is_empty()) {
        match EnvFilter::builder().parse(env) {
            Ok(f) => return (f, None),
            Err(e) => {
                return (
                    EnvFilter::builder()
                        .parse(level)
                        .unwrap_or_else(|_| EnvFilter::new("info")),
                    Some(e.to_string()),
                )
            }
        }
    }
    (
        EnvFilter::builder()
            .parse(level)
            .unwrap_or_else(|_| EnvFilter::new("info")),
        None,
    )
}

/// systemd sets JOURNAL_STREAM=<dev>:<inode> of the stream it connected to
/// stderr; it is ours only if fd 2 is still that very stream (a child that
/// inherited the variable but has stderr redirected must not use it).
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat on fd 2 into a zeroed stat owned by this frame.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(2, &mut st) != 0 {
            return false;
        }
        st
    };
    st.st_dev == dev && st.st_ino == ino
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_config_level() {
        let (f, bad) = filter(Some("traceed=trace"), "warn");
        assert!(bad.is_none());
        assert_eq!(f.to_string(), "traceed=trace");
        let (f, bad) = filter(None, "warn");
        assert!(bad.is_none());
        assert_eq!(f.to_string(), "warn");
    }

    #[test]
    fn malformed_rust_log_falls_back_and_says_so() {
        let (f, bad) = filter(Some("traceed=loudest"), "debug");
        assert_eq!(f.to_string(), "debug");
        assert!(bad.is_some());
    }

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        // The real fd 2 of this test process, whatever it is: the
        // variable naming it is accepted, any other inode is not.
        let st = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(2, &mut st), 0);
            st
        };
        let me = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(stderr_is_journal(Some(&me)));
        let other = format!("{}:{}", st.st_dev, st.st_ino + 1);
        assert!(!stderr_is_journal(Some(&other)));
    }
}
