//! The ingest pipeline between the kernel and the writer: reads the ring
//! buffer, decodes and enriches records, and hands them to the store's
//! bounded queue without ever blocking on it. Everything that is dropped on
//! the way (kernel could not reserve, record undecodable, queue full)
//! becomes a `lost` event. The `exe` scope key is applied here.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray};

use crate::kernel::source::EventSource;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use traceed_wire::LiveEvent;

use crate::pipeline::clock;
use crate::pipeline::coalesce::Coalescer;
use crate::pipeline::decoder;
use crate::pipeline::proctable::ProcTable;
use crate::service::metrics::Counters;

pub struct Pipeline {
    pub fidelity: &'static str,
    pub tx: mpsc::Sender<LiveEvent>,
    pub counters: Arc<Counters>,
    pub procs: ProcTable,
    containers: crate::pipeline::cgroup::Containers,
    comms: decoder::Comms,
    pub boot_to_wall: i64,
    /// Userspace drops not yet written as a `lost` row: (count, first, last).
    pending_drops: Option<(u64, i64, i64)>,
    /// Undecodable records not yet written as a `lost` row (same shape;
    /// times are when they were read: a malformed record's own is not
    /// to be trusted).
    pending_decode: Option<(u64, i64, i64)>,
    /// `[scope.*] exe`, checked once the process table named the exe.
    pub exe_scope: crate::kernel::scope::ExeScope,
    kernel_lost_seen: u64,
    last_lost_check: i64,
    /// systemd's watchdog, fed from this loop's tick (see notify.rs).
    pub watchdog: Option<crate::service::notify::Watchdog>,
    /// `[events] coalesce`, when on.
    pub coalesce: Option<Coalescer>,
    /// What the coalescer released, on its way to the queue (kept to
    /// reuse its allocation).
    released: Vec<LiveEvent>,
}

impl Pipeline {
    pub fn new(
        fidelity: &'static str,
        tx: mpsc::Sender<LiveEvent>,
        counters: Arc<Counters>,
    ) -> Self {
        // One offset for the decoder and the process table: the table turns
        // wall times back into the boot clock its keys are derived from.
        let boot_to_wall = clock::boot_to_wall_offset();
        Self {
            fidelity,
            tx,
            counters,
            procs: ProcTable::seed_from_proc(boot_to_wall),
            containers: crate::pipeline::cgroup::Containers::new(),
            comms: decoder::Comms::default(),
            boot_to_wall,
            pending_drops: None,
            pending_decode: None,
            exe_scope: Default::default(),
            kernel_lost_seen: 0,
            last_lost_check: now(),
            watchdog: None,
            coalesce: None,
            released: Vec::new(),
        }
    }

    fn handle_record(&mut self, buf: &[u8]) {
        let decoded = decoder::parse(buf).and_then(|rec| {
            decoder::to_event(&rec, self.boot_to_wall, self.fidelity, &mut self.comms)
        });
        let decoder::Decoded {
            event: mut ev,
            paths_at,
            start_boot,
            cwd_id,
            opened_dir,
        } = match decoded {
            Ok(d) => d,
            Err(e) => {
                self.counters.decode_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "undecodable record");
                let t = now();
                self.pending_decode = Some(match self.pending_decode {
                    Some((n, from, _)) => (n + 1, from, t),
                    None => (1, t, t),
                });
                return;
            }
        };
        self.procs.enrich(&mut ev, start_boot);
        if !self.exe_scope.admits(&ev) {
            return;
        }
        self.procs
            .absolutize(&mut ev, &paths_at, cwd_id, opened_dir);
        if let Some(cg) = ev.cgroup_id {
            ev.container_id = self.containers.container_of(cg);
        }
        self.offer(ev);
    }

    /// Pass an event on, through the coalescer when there is one.
    fn offer(&mut self, ev: LiveEvent) {
        match self.coalesce.as_mut() {
            None => self.send(ev),
            Some(c) => {
                let mut out = std::mem::take(&mut self.released);
                c.push(ev, &mut out);
                self.send_all(out);
            }
        }
    }

    /// Opens held by `[events] coalesce`, to be released on a later drain.
    fn holding(&self) -> bool {
        self.coalesce.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// Pass on the held opens whose window has ended; all of them when
    /// `all` (the daemon stops).
    fn release_held(&mut self, all: bool) {
        let Some(c) = self.coalesce.as_mut() else {
            return;
        };
        // Per drain, not per event: folding happens only while opens are
        // held, and every drain with opens held comes through here.
        self.counters.coalesced.store(c.folded, Relaxed);
        if c.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.released);
        if all {
            c.flush(&mut out);
        } else {
            c.expire(now(), &mut out);
        }
        self.send_all(out);
    }

    fn send_all(&mut self, mut out: Vec<LiveEvent>) {
        for ev in out.drain(..) {
            self.send(ev);
        }
        self.released = out;
    }

    /// Queue an event for the writer; never waits.
    fn send(&mut self, ev: LiveEvent) {
        let ts = ev.ts;
        // Counted before the send, so the writer never subtracts first;
        // given back when the event does not go in.
        let heavy = crate::store::heavy_bytes(&ev) as u64;
        let queued = &self.counters.queue_heavy_bytes;
        let refused = if heavy > 0
            && queued.fetch_add(heavy, Relaxed) + heavy > crate::store::QUEUE_HEAVY_BYTES as u64
        {
            Some(ev)
        } else {
            self.tx.try_send(ev).err().map(|e| e.into_inner())
        };
        if let Some(ev) = refused {
            if heavy > 0 {
                queued.fetch_sub(heavy, Relaxed);
            }
            // A coalesced row dropped is every open it stood for, from its
            // first to its last (released late: maybe before earlier drops).
            let (n, last) = match &ev.args {
                traceed_wire::payload::Payload::Open(a) => (
                    a.fields.count.map_or(1, u64::from),
                    a.fields
                        .last
                        .as_deref()
                        .and_then(|t| traceed_wire::parse_time_spec(t, 0).ok())
                        .unwrap_or(ts),
                ),
                _ => (1, ts),
            };
            self.counters.lost_userspace.fetch_add(n, Relaxed);
            self.pending_drops = Some(match self.pending_drops {
                Some((k, from, to)) => (k + n, from.min(ts), to.max(last)),
                None => (n, ts, last),
            });
        }
    }

    /// Turn loss since the last call into `lost` rows.
    fn account_loss(&mut self, lost_map: Option<&PerCpuArray<MapData, u64>>) {
        let now = now();
        if let Some((n, from, to)) = self.pending_decode {
            if self
                .tx
                .try_send(LiveEvent::lost(Some(n), "decode", from, to, self.fidelity))
                .is_ok()
            {
                self.pending_decode = None;
            }
        }
        if let Some((n, from, to)) = self.pending_drops {
            if self
                .tx
                .try_send(LiveEvent::lost(
                    Some(n),
                    "userspace",
                    from,
                    to,
                    self.fidelity,
                ))
                .is_ok()
            {
                self.pending_drops = None;
            }
        }
        if let Some(map) = lost_map {
            if let Ok(per_cpu) = map.get(&0, 0) {
                let total: u64 = per_cpu.iter().sum();
                let delta = total.saturating_sub(self.kernel_lost_seen);
                // Only advance once the row is queued: if the queue is full,
                // the next tick carries the larger delta over a wider range.
                if delta > 0 {
                    let ev = LiveEvent::lost(
                        Some(delta),
                        "kernel",
                        self.last_lost_check,
                        now,
                        self.fidelity,
                    );
                    if self.tx.try_send(ev).is_err() {
                        return;
                    }
                    self.kernel_lost_seen = total;
                    self.counters.lost_kernel.fetch_add(delta, Relaxed);
                    tracing::warn!(count = delta, "kernel dropped events (ring buffer full)");
                }
            }
        }
        self.last_lost_check = now;
    }
}

fn now() -> i64 {
    traceed_wire::now_ns()
}

/// Per-CPU perf buffers are read one after the other, so a record can be
/// read before an older one of another CPU (a child's first event before
/// its fork record): each drain's records are put in time order, and those
/// younger than this are held for the next drain, by when every CPU's
/// older records are in their buffers. The ring buffer is one queue in
/// reservation order and needs none of this.
const REORDER_NS: u64 = 10_000_000;

#[derive(Default)]
struct Reorder {
    held: Vec<Vec<u8>>,
}

impl Reorder {
    fn ts(rec: &[u8]) -> u64 {
        use crate::pipeline::contract::{OFF_TS_NS, SIZE_TS_NS};
        rec.get(OFF_TS_NS..OFF_TS_NS + SIZE_TS_NS)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    }

    /// Hand over, oldest first, every held record at or before `horizon`
    /// (boot-clock ns; everything when None).
    fn release(&mut self, horizon: Option<u64>, f: &mut dyn FnMut(&[u8])) {
        self.held.sort_by_key(|r| Self::ts(r));
        let n = match horizon {
            Some(h) => self.held.partition_point(|r| Self::ts(r) <= h),
            None => self.held.len(),
        };
        for r in self.held.drain(..n) {
            f(&r);
        }
    }
}

fn boot_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Drain `source` into the pipeline, through `reorder` for perf buffers.
/// True when nothing came and nothing is held back for later (by the
/// reordering or `[events] coalesce`): the drain timer may then slow down.
fn drain(
    source: &mut EventSource,
    reorder: &mut Option<Reorder>,
    p: &mut Pipeline,
    last: bool,
) -> bool {
    let mut n = 0usize;
    let held = match reorder {
        None => {
            source.drain(&mut |rec| {
                n += 1;
                p.handle_record(rec)
            });
            false
        }
        Some(r) => {
            let horizon = (!last).then(|| boot_now_ns().saturating_sub(REORDER_NS));
            source.drain(&mut |rec| {
                n += 1;
                r.held.push(rec.to_vec())
            });
            r.release(horizon, &mut |rec| p.handle_record(rec));
            !r.held.is_empty()
        }
    };
    p.release_held(last);
    n == 0 && !held && !p.holding()
}

/// Longest a record waits in the ring while records keep coming (after a
/// quiet spell, up to DRAIN_INTERVAL_IDLE). Below
/// the rate at which the programs' wake-ups take over (1/16 of the ring
/// pending), each drain is one batch and one SQLite commit, whose cost is
/// shared by the batch: 100 ms took the daemon's CPU per event at 10k
/// opens/s from 2.2-2.7 to 1.8-1.9 µs, but the bench's peak RSS from 39-42
/// to 44-52 MiB (BENCHMARKS.md, "Fewer commits at low rates: measured, not
/// adopted").
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// The drain timer doubles after each drain that found nothing, up to
/// this: an idle daemon woke 20 times a second (3.1 ms of CPU a second,
/// ~100 context switches) to find an empty ring. The first record after a
/// quiet spell waits up to this long; a burst still wakes the reader
/// through the programs' wake-ups, and any record brings DRAIN_INTERVAL
/// back.
pub const DRAIN_INTERVAL_IDLE: Duration = Duration::from_millis(400);

/// The next drain interval after one that found nothing.
fn slower(d: Duration) -> Duration {
    (d * 2).min(DRAIN_INTERVAL_IDLE)
}

/// A registration-only wrapper: the fd is owned by the `EventSource`,
/// which outlives every `AsyncFd` made from it (both live in `run`).
struct Fd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Read records until `stop` turns true, then drain what is left (programs
/// are detached by then) and return.
pub async fn run(
    mut source: EventSource,
    pending: Vec<Vec<u8>>,
    lost_map: Option<PerCpuArray<MapData, u64>>,
    mut p: Pipeline,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for rec in pending {
        p.handle_record(&rec);
    }
    let mut reorder = matches!(source, EventSource::Perf(_)).then(Reorder::default);
    let mut fds = Vec::new();
    for fd in source.fds() {
        // SAFETY: `source` keeps the fd open and unchanged until this
        // function returns, after every AsyncFd here is dropped.
        let afd = unsafe { AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the event source with tokio: {e}"))?;
        fds.push(afd);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The programs wake us only when the ring is filling up; a trickle of
    // events is collected by this timer instead (bounded latency).
    let mut every = DRAIN_INTERVAL;
    let drain_timer = tokio::time::sleep(every);
    tokio::pin!(drain_timer);
    loop {
        tokio::select! {
            _ = any_readable(&fds) => {
                drain(&mut source, &mut reorder, &mut p, false);
                every = DRAIN_INTERVAL;
                drain_timer.as_mut().reset(tokio::time::Instant::now() + every);
            }
            _ = &mut drain_timer => {
                let idle = drain(&mut source, &mut reorder, &mut p, false);
                every = if idle { slower(every) } else { DRAIN_INTERVAL };
                drain_timer.as_mut().reset(tokio::time::Instant::now() + every);
            }
            _ = tick.tick() => {
                p.account_loss(lost_map.as_ref());
                if let Some(w) = p.watchdog.as_mut() {
                    w.tick(&p.tx);
                }
            }
            _ = stop.changed() => {
                drain(&mut source, &mut reorder, &mut p, true);
                p.account_loss(lost_map.as_ref());
                return Ok(());
            }
        }
    }
}

/// Resolves once any fd is readable, clearing its readiness so the next
/// wait blocks until the kernel signals new data.
async fn any_readable(fds: &[AsyncFd<Fd>]) {
    std::future::poll_fn(|cx| {
        let mut ready = false;
        for fd in fds {
            if let std::task::Poll::Ready(Ok(mut g)) = fd.poll_read_ready(cx) {
                g.clear_ready();
                ready = true;
            }
        }
        if ready {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decoder::tests::Rng;

    #[test]
    fn the_drain_timer_slows_down_to_the_idle_bound() {
        let mut d = DRAIN_INTERVAL;
        let mut seen = vec![d];
        while d < DRAIN_INTERVAL_IDLE {
            d = slower(d);
            seen.push(d);
        }
        assert_eq!(slower(d), DRAIN_INTERVAL_IDLE);
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400]);
    }

    #[test]
    fn every_undecodable_record_is_a_counted_lost_row() {
        let (tx, mut rx) = mpsc::channel(100_000);
        let counters = Arc::new(Counters::default());
        let mut p = Pipeline::new("core", tx, counters.clone());
        let mut rng = Rng(0x1055_1055);
        let mut failures = 0u64;
        let mut decoded = 0u64;
        for _ in 0..20_000 {
            let rec = rng.malformed_record();
            let fails = decoder::parse(&rec)
                .and_then(|r| decoder::to_event(&r, 0, "core", &mut decoder::Comms::default()))
                .is_err();
            failures += u64::from(fails);
            decoded += u64::from(!fails);
            p.handle_record(&rec);
        }
        p.account_loss(None);
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert!(failures > 1000, "generator too tame: {failures}");
        assert_eq!(counters.decode_errors.load(Relaxed), failures);
        let lost: Vec<&LiveEvent> = events.iter().filter(|e| e.kind == "lost").collect();
        assert_eq!(lost.len(), 1, "one row for the burst: {lost:?}");
        assert_eq!(lost[0].args.to_value()["source"], "decode");
        assert_eq!(lost[0].args.to_value()["count"], failures);
        assert_eq!(events.len() as u64, decoded + 1);
    }

    #[test]
    fn a_dropped_coalesced_row_is_lost_as_every_open_it_stood_for() {
        let (tx, mut rx) = mpsc::channel(1);
        let counters = Arc::new(Counters::default());
        let mut p = Pipeline::new("core", tx, counters.clone());
        p.coalesce = Some(Coalescer::new(Duration::from_secs(1)));
        let open = |ts| crate::pipeline::coalesce::tests::open(7, "/etc/hosts", ts, 3);
        let t0 = 1_000_000_000_000;
        for i in 0..3 {
            p.offer(open(t0 + i));
        }
        // The queue's one slot taken: the row is dropped on release.
        p.send(LiveEvent::new("fork", t0 + 5, "core"));
        p.release_held(true);
        assert_eq!(counters.lost_userspace.load(Relaxed), 3);
        assert_eq!(p.pending_drops, Some((3, t0, t0 + 2)));
        assert_eq!(rx.try_recv().unwrap().kind, "fork");
    }

    /// Execs past QUEUE_HEAVY_BYTES of command lines are dropped and
    /// counted even though the queue has slots; other events still pass,
    /// and what the writer takes makes room again.
    #[test]
    fn long_command_lines_are_bounded_in_the_queue_by_bytes() {
        use traceed_wire::payload::{Args, Exec};
        let (tx, mut rx) = mpsc::channel(100_000);
        let counters = Arc::new(Counters::default());
        let mut p = Pipeline::new("core", tx, counters.clone());
        let exec = |ts| {
            let mut e = LiveEvent::new("exec", ts, "core");
            e.args = Args {
                fields: Exec {
                    filename: None,
                    argv: vec!["y".repeat(128 << 10)],
                    interpreter: None,
                    exe_ctime: None,
                    argc: Some(1),
                    argv_bytes: None,
                    cwd: None,
                },
                truncated: false,
                escaped: false,
            }
            .into();
            e
        };
        let each = crate::store::heavy_bytes(&exec(0));
        let fits = crate::store::QUEUE_HEAVY_BYTES / each;
        for i in 0..fits + 10 {
            p.send(exec(1_000 + i as i64));
        }
        p.send(LiveEvent::new("fork", 5_000, "core"));
        assert_eq!(rx.len(), fits + 1);
        assert_eq!(counters.lost_userspace.load(Relaxed), 10);
        assert_eq!(
            counters.queue_heavy_bytes.load(Relaxed),
            (fits * each) as u64
        );
        let first = rx.try_recv().unwrap();
        let w = crate::store::heavy_bytes(&first) as u64;
        counters.queue_heavy_bytes.fetch_sub(w, Relaxed);
        p.send(exec(6_000));
        assert_eq!(rx.len(), fits + 1);
        assert_eq!(counters.lost_userspace.load(Relaxed), 10);
    }
}
