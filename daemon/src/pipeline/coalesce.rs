//! `[events] coalesce`: repeated identical opens by one thread within a
//! window become one row with a `count` (off by default).
//!
//! An open is held from its arrival until its window (counted from its own
//! time) ends; identical opens arriving meanwhile only raise its count and
//! move its `last` time. "Identical" is every field of the event but its
//! time and, for a successful open, the fd it returned: same process
//! instance and thread, same credentials, comm, exe and cgroup, same path
//! byte for byte, flags, mode and error. So a hostile name that differs by
//! one byte is never folded into a benign one.
//!
//! What a user gives up, and what is kept: each open after the first loses
//! its own time (the row keeps the first and the last) and its fd; a held
//! open reaches the store, the live feed and the rules up to one window
//! late, and after events of other processes that happened later (a
//! process's own exec and exit release its held opens first, so its
//! timeline stays in order). Counts of events (`/v1/events/counts`) count
//! rows. A daemon killed with SIGKILL loses what it holds (at most one
//! window); a normal stop stores it.

use std::collections::hash_map::{Entry, HashMap};
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use traceed_wire::payload::{Args, Open, Payload};
use traceed_wire::LiveEvent;

/// Held opens at most. Beyond, a new open is passed on at once (never
/// dropped): the cost is bounded (~400 bytes each), whatever the workload.
pub const MAX_HELD: usize = 4096;

/// Deadlines queued at most before the stale ones are dropped.
const ORDER_MAX: usize = 4 * MAX_HELD;

struct Held {
    ev: LiveEvent,
    count: u32,
    last: i64,
}

impl Held {
    /// A first open, held from now on (boxed: see `Coalescer::held`).
    fn first(ev: LiveEvent) -> Box<Self> {
        Box::new(Self {
            last: ev.ts,
            ev,
            count: 1,
        })
    }
}

pub struct Coalescer {
    window_ns: i64,
    /// Boxed: the table's slots stay 16 bytes, and it never shrinks.
    held: HashMap<u64, Box<Held>>,
    /// (first ts, key) in arrival order: windows end in this order.
    order: VecDeque<(i64, u64)>,
    hasher: RandomState,
    /// Opens folded into a held one so far.
    pub folded: u64,
}

/// The open's fields, when `ev` is an open.
fn open_args(ev: &LiveEvent) -> Option<&Args<Open>> {
    match &ev.args {
        Payload::Open(a) if ev.kind == "open" => Some(a),
        _ => None,
    }
}

/// The fd of a successful open is not part of its identity; an error is.
fn result_class(retval: Option<i64>) -> Option<i64> {
    retval.map(|r| r.min(0))
}

/// Whether `b` may be folded into the held `a` (see the module comment).
fn same(a: &LiveEvent, b: &LiveEvent) -> bool {
    let (Some(x), Some(y)) = (open_args(a), open_args(b)) else {
        return false;
    };
    x.fields.path == y.fields.path
        && x.fields.flags == y.fields.flags
        && x.fields.mode == y.fields.mode
        && x.truncated == y.truncated
        && x.escaped == y.escaped
        && result_class(a.retval) == result_class(b.retval)
        && a.proc == b.proc
        && a.pid == b.pid
        && a.tid == b.tid
        && a.ppid == b.ppid
        && a.uid == b.uid
        && a.gid == b.gid
        && a.comm == b.comm
        && a.ns_pid == b.ns_pid
        && a.exe == b.exe
        && a.cgroup_id == b.cgroup_id
        && a.container_id == b.container_id
        && a.mnt_ns == b.mnt_ns
        && a.pid_ns == b.pid_ns
        && a.fidelity == b.fidelity
}

impl Coalescer {
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            window_ns: i64::try_from(window.as_nanos()).unwrap_or(i64::MAX),
            held: HashMap::new(),
            order: VecDeque::new(),
            hasher: RandomState::new(),
            folded: 0,
        }
    }

    fn key(&self, ev: &LiveEvent, a: &Args<Open>) -> u64 {
        let mut h = self.hasher.build_hasher();
        (&ev.proc, ev.pid, ev.tid, &a.fields.path, a.fields.flags).hash(&mut h);
        result_class(ev.retval).hash(&mut h);
        h.finish()
    }

    /// Take `ev`: hold it, fold it into a held one, or pass it (and what it
    /// releases) to `out`, oldest first.
    pub fn push(&mut self, ev: LiveEvent, out: &mut Vec<LiveEvent>) {
        let Some(a) = open_args(&ev) else {
            // A process's exec or exit ends what it holds: its opens are
            // stored before the event that changed or ended it.
            if matches!(&*ev.kind, "exec" | "exit") && ev.pid.is_some() {
                self.release_process(&ev, out);
            }
            out.push(ev);
            return;
        };
        let key = self.key(&ev, a);
        let room = self.held.len() < MAX_HELD;
        match self.held.entry(key) {
            Entry::Occupied(mut e)
                if same(&e.get().ev, &ev)
                    && ev.ts < e.get().ev.ts.saturating_add(self.window_ns) =>
            {
                let h = e.get_mut();
                h.count = h.count.saturating_add(1);
                h.last = h.last.max(ev.ts);
                self.folded += 1;
            }
            Entry::Occupied(mut e) => {
                // Another open under the same hash, or the held one's
                // window ended before this one came (and before the clock
                // released it): the held one goes now, the new one is held
                // in its place.
                let ts = ev.ts;
                let old = e.insert(Held::first(ev));
                out.push(finish(*old));
                self.remember(ts, key);
            }
            Entry::Vacant(e) if room => {
                let ts = ev.ts;
                e.insert(Held::first(ev));
                self.remember(ts, key);
            }
            Entry::Vacant(_) => out.push(ev),
        }
    }

    /// Queue a held open's deadline. Opens released early (their process's
    /// exit, a window ended on arrival) leave stale entries behind until
    /// their own deadline; with short-lived processes and a long window
    /// those would pile up, so past a bound the queue keeps only the live
    /// ones (at most MAX_HELD): amortised O(1), at most ~256 KiB.
    fn remember(&mut self, ts: i64, key: u64) {
        self.order.push_back((ts, key));
        if self.order.len() > ORDER_MAX {
            let held = &self.held;
            self.order
                .retain(|(ts, k)| held.get(k).is_some_and(|h| h.ev.ts == *ts));
        }
    }

    /// Release every held open whose window has ended by `now` (wall ns).
    pub fn expire(&mut self, now: i64, out: &mut Vec<LiveEvent>) {
        while let Some(&(ts, key)) = self.order.front() {
            if ts.saturating_add(self.window_ns) > now {
                break;
            }
            self.order.pop_front();
            // The key may have been released early and held again since:
            // then this entry is stale and the newer one has its own.
            if self.held.get(&key).is_some_and(|h| h.ev.ts == ts) {
                out.push(finish(*self.held.remove(&key).expect("present")));
            }
        }
    }

    /// Release everything (the daemon stops).
    pub fn flush(&mut self, out: &mut Vec<LiveEvent>) {
        self.expire(i64::MAX, out);
    }

    fn release_process(&mut self, ev: &LiveEvent, out: &mut Vec<LiveEvent>) {
        if self.held.is_empty() {
            return;
        }
        let start = out.len();
        let mine: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.ev.pid == ev.pid && h.ev.proc == ev.proc)
            .map(|(&k, _)| k)
            .collect();
        for k in mine {
            out.extend(self.held.remove(&k).map(|h| finish(*h)));
        }
        out[start..].sort_by_key(|e| e.ts);
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The row a held open becomes.
fn finish(h: Held) -> LiveEvent {
    let mut ev = h.ev;
    if h.count > 1 {
        if let Payload::Open(a) = &mut ev.args {
            a.fields.count = Some(h.count);
            a.fields.last = Some(traceed_wire::format_ts(h.last));
        }
    }
    ev
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    const SEC: i64 = 1_000_000_000;

    /// An open by `pid` (its only thread) as the pipeline hands it over.
    pub(crate) fn open(pid: u32, path: &str, ts: i64, retval: i64) -> LiveEvent {
        let mut ev = LiveEvent::new("open", ts, "core");
        ev.pid = Some(pid);
        ev.tid = Some(pid);
        ev.uid = Some(1000);
        ev.comm = Some(Arc::from("cat"));
        ev.proc = Some(traceed_wire::ProcKey(pid.into()));
        ev.retval = Some(retval);
        ev.args = Payload::Open(Args {
            fields: Open {
                path: Some(path.into()),
                flags: 0,
                mode: 0,
                count: None,
                last: None,
            },
            truncated: false,
            escaped: false,
        });
        ev
    }

    fn other(kind: &'static str, pid: u32, ts: i64) -> LiveEvent {
        let mut ev = open(pid, "", ts, 0);
        ev.kind = kind.into();
        ev.args = Payload::Json(serde_json::json!({}));
        ev
    }

    fn fields(ev: &LiveEvent) -> &Open {
        &open_args(ev).unwrap().fields
    }

    #[test]
    fn identical_opens_within_the_window_become_one_row() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let mut out = Vec::new();
        for i in 0..50 {
            // A successful open's fd may differ each time.
            c.push(open(7, "/etc/hosts", 10 * SEC + i, 3 + i % 2), &mut out);
        }
        assert!(out.is_empty(), "held until the window ends");
        assert_eq!(c.folded, 49);
        c.expire(11 * SEC - 1, &mut out);
        assert!(out.is_empty(), "the window is counted from the first open");
        c.expire(11 * SEC, &mut out);
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(e.ts, 10 * SEC, "the first one's time");
        assert_eq!(e.retval, Some(3), "the first one's fd");
        assert_eq!(fields(e).count, Some(50));
        assert_eq!(
            fields(e).last.as_deref(),
            Some(traceed_wire::format_ts(10 * SEC + 49).as_str())
        );
        assert!(c.is_empty());
    }

    #[test]
    fn an_open_after_the_window_starts_a_new_row_even_before_the_clock_releases() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let mut out = Vec::new();
        c.push(open(7, "/a", SEC, 3), &mut out);
        c.push(open(7, "/a", 2 * SEC - 1, 3), &mut out);
        c.push(open(7, "/a", 2 * SEC, 3), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].ts, fields(&out[0]).count), (SEC, Some(2)));
        c.flush(&mut out);
        assert_eq!((out[1].ts, fields(&out[1]).count), (2 * SEC, None));
    }

    #[test]
    fn a_lone_open_is_stored_as_it_was() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let mut out = Vec::new();
        let ev = open(7, "/etc/hosts", SEC, 3);
        c.push(ev.clone(), &mut out);
        c.flush(&mut out);
        assert_eq!(out, vec![ev], "no count, no last: the event unchanged");
    }

    #[test]
    fn anything_that_differs_keeps_its_own_row() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let mut out = Vec::new();
        let base = open(7, "/etc/hosts", SEC, 3);
        let mut variants = vec![base.clone()];
        variants.push(open(7, "/etc/hosts\u{200b}", SEC, 3));
        variants.push(open(8, "/etc/hosts", SEC, 3));
        variants.push(open(7, "/etc/hosts", SEC, -2));
        variants.push(open(7, "/etc/hosts", SEC, -13));
        let mut v = base.clone();
        v.tid = Some(9);
        variants.push(v);
        let mut v = base.clone();
        v.uid = Some(0);
        variants.push(v);
        let mut v = base.clone();
        v.comm = Some(Arc::from("evil"));
        variants.push(v);
        let mut v = base.clone();
        if let Payload::Open(a) = &mut v.args {
            a.fields.flags = 0o1;
        }
        variants.push(v);
        let mut v = base.clone();
        if let Payload::Open(a) = &mut v.args {
            a.escaped = true;
        }
        variants.push(v);
        let n = variants.len();
        for v in variants {
            c.push(v, &mut out);
        }
        c.flush(&mut out);
        assert_eq!(out.len(), n);
        assert!(out.iter().all(|e| fields(e).count.is_none()));
    }

    #[test]
    fn other_kinds_pass_at_once_and_exit_releases_its_process_first() {
        let mut c = Coalescer::new(Duration::from_secs(60));
        let mut out = Vec::new();
        c.push(open(7, "/a", SEC, 3), &mut out);
        c.push(open(7, "/a", SEC + 1, 3), &mut out);
        c.push(open(8, "/b", SEC + 2, 3), &mut out);
        c.push(other("connect", 7, SEC + 3), &mut out);
        assert_eq!(out.len(), 1, "a connect is never held");
        c.push(other("exit", 7, SEC + 4), &mut out);
        let kinds: Vec<_> = out.iter().map(|e| (&*e.kind, e.pid)).collect();
        assert_eq!(
            kinds,
            [("connect", Some(7)), ("open", Some(7)), ("exit", Some(7))]
        );
        assert_eq!(fields(&out[1]).count, Some(2));
        assert_eq!(c.len(), 1, "pid 8's open is still held");
        c.flush(&mut out);
        assert_eq!(out.last().unwrap().pid, Some(8));
    }

    #[test]
    fn an_open_held_again_after_release_gets_its_own_window() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let mut out = Vec::new();
        c.push(open(7, "/a", SEC, 3), &mut out);
        c.push(other("exec", 7, SEC + 1), &mut out);
        assert_eq!(out.len(), 2);
        c.push(open(7, "/a", SEC + 2, 3), &mut out);
        c.expire(2 * SEC + 1, &mut out);
        assert_eq!(
            out.len(),
            2,
            "the stale deadline of the first must not end the second"
        );
        c.expire(2 * SEC + 2, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn opens_released_early_leave_a_bounded_deadline_queue() {
        // Short-lived processes under a long window: each one's open is
        // held, then released by its exit long before its deadline.
        let mut c = Coalescer::new(Duration::from_secs(60));
        let mut out = Vec::new();
        let n = 10 * ORDER_MAX as u32;
        for pid in 0..n {
            let ts = SEC + i64::from(pid);
            c.push(open(pid, "/etc/ld.so.cache", ts, 3), &mut out);
            c.push(other("exit", pid, ts), &mut out);
        }
        assert!(c.is_empty());
        assert!(c.order.len() <= ORDER_MAX, "{}", c.order.len());
        assert_eq!(out.len(), 2 * n as usize, "every open and exit passed on");
    }

    #[test]
    fn the_number_held_is_bounded_and_nothing_is_dropped() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let mut out = Vec::new();
        let n = MAX_HELD + 100;
        for i in 0..n {
            c.push(open(7, &format!("/f{i}"), SEC, 3), &mut out);
        }
        assert_eq!(c.len(), MAX_HELD);
        assert_eq!(out.len(), 100, "beyond the bound, passed on at once");
        c.flush(&mut out);
        assert_eq!(out.len(), n);
    }
}
