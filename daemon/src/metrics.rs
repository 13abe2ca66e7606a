//! Counters shared by the pipeline and the API (status, /metrics).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Counters {
    pub events_total: AtomicU64,
    pub lost_kernel: AtomicU64,
    pub lost_userspace: AtomicU64,
    pub lost_store: AtomicU64,
    pub decode_errors: AtomicU64,
    pub queue_depth: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn count_stored(&self, kind: &str) {
        self.events_total.fetch_add(1, Relaxed);
        let mut m = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                m.insert(kind.to_string(), 1);
            }
        }
    }

    pub fn add_lost_store(&self, n: u64) {
        self.lost_store.fetch_add(n, Relaxed);
    }

    pub fn lost_total(&self) -> u64 {
        self.lost_kernel.load(Relaxed)
            + self.lost_userspace.load(Relaxed)
            + self.lost_store.load(Relaxed)
    }
}
