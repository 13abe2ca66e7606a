//! The systemd service-manager protocol (sd_notify): READY once the daemon
//! serves, STATUS with the rung and event rate, WATCHDOG from the ingest
//! loop while the pipeline makes progress, RELOADING around SIGHUP and
//! STOPPING on shutdown. Without NOTIFY_SOCKET (not started by systemd, or
//! a unit that is not Type=notify) every call does nothing.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::mpsc;

use crate::service::metrics::Counters;

/// Sends state changes to systemd. Cheap to copy; failures are logged, never
/// fatal (a daemon must not die because its manager went away).
#[derive(Clone, Copy, Debug)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    pub fn status(&self, text: &str) {
        self.send(&[NotifyState::Status(text)]);
    }

    /// RELOADING=1 with the monotonic timestamp that systemd >= 253 wants
    /// (older versions ignore the extra field).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// Still starting, with good reason: systemd's start timeout moves to
    /// `more` from now, and STATUS= says why.
    pub fn extend_start(&self, more: Duration, why: &str) {
        let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
        self.send(&[
            NotifyState::ExtendTimeoutUsec(usec),
            NotifyState::Watchdog,
            NotifyState::Status(why),
        ]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }
}

/// Keeps systemd's watchdog fed from the ingest loop's tick, but only while
/// the writer keeps up: a writer that holds events in its queue without
/// storing (or failing) any of them for a whole tick is wedged, and then the
/// pings stop so systemd restarts the service after WatchdogSec.
pub struct Watchdog {
    notifier: Notifier,
    counters: Arc<Counters>,
    last_done: u64,
}

impl Watchdog {
    /// Some when systemd asked this process for keep-alives (WatchdogSec=).
    pub fn from_env(notifier: Notifier, counters: Arc<Counters>) -> Option<Self> {
        let period = sd_notify::watchdog_enabled()?;
        if period < Duration::from_secs(3) {
            tracing::warn!(
                watchdog_ms = period.as_millis() as u64,
                "WatchdogSec is below 3 s: the ingest loop pings once a second, expect spurious restarts"
            );
        }
        tracing::info!(
            watchdog_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        Some(Self {
            notifier,
            last_done: writer_done(&counters),
            counters,
        })
    }

    /// Called by the ingest loop once per tick. The loop running at all
    /// proves the reader is alive; the queue proves the writer is.
    pub fn tick<T>(&mut self, queue: &mpsc::Sender<T>) {
        let done = writer_done(&self.counters);
        let queue_empty = queue.capacity() == queue.max_capacity();
        if writer_healthy(self.last_done, done, queue_empty) {
            self.notifier.watchdog();
        }
        self.last_done = done;
    }
}

/// Rows the writer has finished with, stored or given up on: both are
/// progress, a batch that neither lands nor fails is not.
fn writer_done(c: &Counters) -> u64 {
    c.events_total.load(Relaxed) + c.lost_store.load(Relaxed)
}

/// Idle (nothing queued) or moving (finished rows since the last tick).
fn writer_healthy(last_done: u64, done: u64, queue_empty: bool) -> bool {
    queue_empty || done != last_done
}

/// The STATUS= line: what `systemctl status traceed` shows under the unit.
pub fn status_line(rung: &str, rate: f64, total: u64, lost: u64) -> String {
    format!("rung {rung}; {rate:.1} events/s; {total} stored; {lost} lost")
}

/// Appended to STATUS= when the ClickHouse export is more than a minute behind.
pub fn export_suffix(lag_s: f64, lag_events: u64) -> String {
    if lag_s <= 60.0 {
        return String::new();
    }
    format!(
        "; export lag {}s ({lag_events} events)",
        lag_s.round() as u64
    )
}

/// Refresh STATUS= every `every` with the rate over the last interval.
pub async fn status_loop(
    notifier: Notifier,
    rung: &'static str,
    counters: Arc<Counters>,
    every: Duration,
) {
    if !notifier.enabled() {
        return;
    }
    let mut last = (Instant::now(), counters.events_total.load(Relaxed));
    // The first refresh after a full interval: a rate needs one.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let total = counters.events_total.load(Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let rate = total.saturating_sub(last.1) as f64 / secs;
        let mut line = status_line(rung, rate, total, counters.lost_total());
        if let Some(x) = counters.export.get() {
            line.push_str(&export_suffix(x.lag_seconds(), x.lag_events()));
        }
        notifier.status(&line);
        last = (now, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wedged_writer_stops_the_pings() {
        // Idle: nothing queued, nothing done.
        assert!(writer_healthy(10, 10, true));
        // Busy and moving.
        assert!(writer_healthy(10, 500, false));
        // Events waiting and not one finished in a whole tick: wedged.
        assert!(!writer_healthy(10, 10, false));
    }

    #[tokio::test]
    async fn tick_reads_the_real_queue() {
        let counters = Arc::new(Counters::default());
        let (tx, mut rx) = mpsc::channel::<u32>(4);
        let mut w = Watchdog {
            notifier: Notifier { enabled: false },
            counters: counters.clone(),
            last_done: 0,
        };
        tx.try_send(1).unwrap();
        // Queued, nothing stored: the decision is "no ping", and the
        // baseline stays where it was.
        let done = writer_done(&counters);
        assert!(!writer_healthy(
            w.last_done,
            done,
            tx.capacity() == tx.max_capacity()
        ));
        w.tick(&tx);
        assert_eq!(w.last_done, 0);
        // The writer takes it and stores it: progress.
        rx.recv().await.unwrap();
        counters.count_stored_all(["exec"].into_iter());
        assert!(writer_healthy(w.last_done, writer_done(&counters), false));
        w.tick(&tx);
        assert_eq!(w.last_done, 1);
    }

    #[test]
    fn status_line_names_rung_and_rate() {
        assert_eq!(
            status_line("core-kernel-btf", 12.345, 100, 2),
            "rung core-kernel-btf; 12.3 events/s; 100 stored; 2 lost"
        );
    }

    #[test]
    fn export_lag_shows_after_a_minute() {
        assert_eq!(export_suffix(59.0, 10), "");
        assert_eq!(export_suffix(61.2, 1234), "; export lag 61s (1234 events)");
    }

    #[test]
    fn without_notify_socket_nothing_is_sent() {
        // from_env reads the real environment; cargo test does not run
        // under systemd, so there is no socket and every call is a no-op.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            let n = Notifier::from_env();
            assert!(!n.enabled());
            n.ready();
            n.status("x");
            n.watchdog();
        }
    }
}
