//! Counters shared by the pipeline and the API (status, /metrics), and their
//! Prometheus rendering. The pipeline bumps plain atomics (no registry on the
//! hot path); `/metrics` reads them at scrape time through a collector.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::store::live::Live;

#[derive(Default)]
pub struct Counters {
    pub events_total: AtomicU64,
    pub lost_kernel: AtomicU64,
    pub lost_userspace: AtomicU64,
    pub lost_store: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Opens folded into another open's row (`[events] coalesce`).
    pub coalesced: AtomicU64,
    pub queue_depth: AtomicU64,
    /// Transactions the store writer committed (one per batch).
    pub commits: AtomicU64,
    /// `store::heavy_bytes` of the events in that queue (exec command
    /// lines), bounded by `store::QUEUE_HEAVY_BYTES`.
    pub queue_heavy_bytes: AtomicU64,
    /// Events a `follow` reader was too slow to receive (still in the store).
    pub follow_dropped: AtomicU64,
    /// Retro-hunts running now (`POST /v1/hunt`).
    pub hunts_active: AtomicU64,
    /// Hunts stopped because their client went away.
    pub hunts_abandoned: AtomicU64,
    /// Wall clock minus event time of the newest committed event, ns; -1
    /// until the first event.
    pub ingest_lag_ns: AtomicI64,
    by_kind: Mutex<BTreeMap<String, u64>>,
    /// `[export.clickhouse]`: the sink's progress, set once when it starts.
    pub export: OnceLock<Arc<crate::store::clickhouse::ExportState>>,
    /// `[detect]`: rule and alert counts, set once when the detector starts.
    pub detect: OnceLock<Arc<crate::detect::Stats>>,
}

impl Counters {
    /// Count a committed batch by kind (one lock per batch, one map
    /// update per run of one kind: a loop's batch is mostly one kind).
    pub fn count_stored_all<'a>(&self, kinds: impl ExactSizeIterator<Item = &'a str>) {
        self.events_total.fetch_add(kinds.len() as u64, Relaxed);
        let mut m = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let mut add = |kind: &str, n: u64| match m.get_mut(kind) {
            Some(c) => *c += n,
            None => {
                m.insert(kind.to_string(), n);
            }
        };
        let mut run: Option<(&str, u64)> = None;
        for kind in kinds {
            match &mut run {
                Some((k, n)) if *k == kind => *n += 1,
                _ => {
                    if let Some((k, n)) = run.replace((kind, 1)) {
                        add(k, n);
                    }
                }
            }
        }
        if let Some((k, n)) = run {
            add(k, n);
        }
    }

    pub fn add_lost_store(&self, n: u64) {
        self.lost_store.fetch_add(n, Relaxed);
    }

    pub fn lost_total(&self) -> u64 {
        self.lost_kernel.load(Relaxed)
            + self.lost_userspace.load(Relaxed)
            + self.lost_store.load(Relaxed)
            + self.decode_errors.load(Relaxed)
    }

    fn by_kind(&self) -> Vec<(String, u64)> {
        let m = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Measures ingest lag from the writer's live feed (each batch right after
/// its commit; the lag of its newest event), so the store needs no extra
/// hook. A
/// receiver that falls behind just skips ahead: it never slows the writer.
pub fn spawn_lag_watch(live: &Live, counters: Arc<Counters>) {
    counters.ingest_lag_ns.store(-1, Relaxed);
    let mut feed = live.subscribe();
    tokio::spawn(async move {
        while let Some(r) = feed.recv().await {
            if let Some(e) = r.batch.events.last() {
                let lag = traceed_wire::now_ns().saturating_sub(e.ts).max(0);
                counters.ingest_lag_ns.store(lag, Relaxed);
            }
        }
    });
}

type StatusLabels = [(&'static str, u16); 1];

/// The `/metrics` registry: the pipeline's counters (read at scrape time)
/// plus what the API counts itself.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
}

/// Reads `Counters` and the database size on each scrape.
struct PipelineCollector {
    counters: Arc<Counters>,
    db_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for PipelineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipelineCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge<N>(enc: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for PipelineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.counters;
        {
            let proto = ConstCounter::new(0u64);
            let mut fam = enc.encode_descriptor(
                "traceed_events",
                "Events stored, by kind.",
                None,
                proto.metric_type(),
            )?;
            for (kind, n) in c.by_kind() {
                let labels = [("kind", kind.as_str())];
                ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
            }
        }
        {
            let proto = ConstCounter::new(0u64);
            let mut fam = enc.encode_descriptor(
                "traceed_lost_events",
                "Events dropped before they reached the store, by where they were dropped.",
                None,
                proto.metric_type(),
            )?;
            for (source, n) in [
                ("kernel", c.lost_kernel.load(Relaxed)),
                ("userspace", c.lost_userspace.load(Relaxed)),
                ("store", c.lost_store.load(Relaxed)),
                ("decode", c.decode_errors.load(Relaxed)),
            ] {
                let labels = [("source", source)];
                ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut enc,
            "traceed_follow_dropped_events",
            "Live events a slow follow=true reader did not receive (they are in the store).",
            c.follow_dropped.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "traceed_hunts_active",
            "Retro-hunts (POST /v1/hunt) scanning now.",
            c.hunts_active.load(Relaxed) as i64,
        )?;
        counter(
            &mut enc,
            "traceed_hunts_abandoned",
            "Retro-hunts stopped because their client went away.",
            c.hunts_abandoned.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "traceed_coalesced_opens",
            "Opens stored as part of another open's row ([events] coalesce): its args.count.",
            c.coalesced.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "traceed_decode_errors",
            "Kernel records that could not be decoded.",
            c.decode_errors.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "traceed_store_commits",
            "Transactions the store writer committed, one per batch of events ([store] commit_interval).",
            c.commits.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "traceed_queue_depth",
            "Events waiting in the queue between the pipeline and the store writer.",
            c.queue_depth.load(Relaxed) as i64,
        )?;
        gauge(
            &mut enc,
            "traceed_queue_heavy_bytes",
            "Bytes of exec command lines (and their other strings) in that queue; past 32 MiB further execs are dropped and counted as lost.",
            c.queue_heavy_bytes.load(Relaxed) as i64,
        )?;
        gauge(
            &mut enc,
            "traceed_db_bytes",
            "Size of the SQLite database including its WAL, bytes.",
            (self.db_bytes)() as i64,
        )?;
        let lag = c.ingest_lag_ns.load(Relaxed);
        if lag >= 0 {
            gauge(
                &mut enc,
                "traceed_ingest_lag_seconds",
                "Time from the newest committed event's timestamp to its commit.",
                lag as f64 / 1e9,
            )?;
        }
        if let Some(x) = c.export.get() {
            encode_export(&mut enc, x)?;
        }
        if let Some(d) = c.detect.get() {
            {
                let proto = ConstCounter::new(0u64);
                let mut fam = enc.encode_descriptor(
                    "traceed_alerts",
                    "Sigma rule matches, by rule id.",
                    None,
                    proto.metric_type(),
                )?;
                for (rule, n) in d.per_rule() {
                    let labels = [("rule", rule.as_str())];
                    ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
                }
            }
            counter(
                &mut enc,
                "traceed_detect_events",
                "Stored events the detector handled.",
                d.events.load(Relaxed),
            )?;
            counter(
                &mut enc,
                "traceed_detect_dropped_events",
                "Events the detector fell too far behind to match (they are in the store).",
                d.dropped_events.load(Relaxed),
            )?;
            gauge(
                &mut enc,
                "traceed_rules_loaded",
                "Sigma rules active.",
                d.rules_loaded.load(Relaxed) as i64,
            )?;
            gauge(
                &mut enc,
                "traceed_rules_skipped",
                "Sigma rules skipped for an unsupported feature.",
                d.rules_skipped.load(Relaxed) as i64,
            )?;
        }
        Ok(())
    }
}

/// `[export.clickhouse]`: the same numbers as `export` in /v1/status.
fn encode_export(
    enc: &mut DescriptorEncoder,
    x: &crate::store::clickhouse::ExportState,
) -> std::fmt::Result {
    counter(
        enc,
        "traceed_export_events",
        "Events ClickHouse acknowledged since start.",
        x.events_shipped(),
    )?;
    counter(
        enc,
        "traceed_export_bytes",
        "Bytes of JSONEachRow ClickHouse acknowledged since start.",
        x.bytes_shipped(),
    )?;
    counter(
        enc,
        "traceed_export_errors",
        "Failed export attempts (unreachable, non-200 answer) since start.",
        x.errors(),
    )?;
    counter(
        enc,
        "traceed_export_lost_events",
        "Events retention deleted before they were shipped (each also a lost row, source export).",
        x.events_lost(),
    )?;
    gauge(
        enc,
        "traceed_export_cursor",
        "Highest event id ClickHouse acknowledged.",
        x.cursor(),
    )?;
    gauge(
        enc,
        "traceed_export_lag_events",
        "Events stored after the export cursor.",
        x.lag_events() as i64,
    )?;
    gauge(
        enc,
        "traceed_export_lag_seconds",
        "Age of the oldest event not yet shipped (0 when caught up).",
        x.lag_seconds(),
    )?;
    let ok = x.last_success_ns();
    if ok > 0 {
        gauge(
            enc,
            "traceed_export_last_success_timestamp_seconds",
            "When ClickHouse last acknowledged a batch (Unix time).",
            ok as f64 / 1e9,
        )?;
    }
    Ok(())
}

impl Metrics {
    pub fn new(
        counters: Arc<Counters>,
        db_bytes: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "traceed_api_requests",
            "API requests answered, by HTTP status.",
            requests.clone(),
        );
        registry.register_collector(Box::new(PipelineCollector {
            counters,
            db_bytes: Box::new(db_bytes),
        }));
        Self { registry, requests }
    }

    pub fn count_request(&self, status: u16) {
        self.requests.get_or_create(&[("status", status)]).inc();
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug
        // in a metric name, caught by the tests.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let c = Arc::new(Counters::default());
        c.count_stored_all(["exec", "exec", "exit", "exec"].into_iter());
        c.lost_kernel.store(3, Relaxed);
        c.queue_depth.store(7, Relaxed);
        c.commits.store(5, Relaxed);
        c.queue_heavy_bytes.store(65536, Relaxed);
        c.ingest_lag_ns.store(1_500_000_000, Relaxed);
        let m = Metrics::new(c, || 4096);
        m.count_request(200);
        m.count_request(404);
        m.count_request(200);
        let text = m.render();
        for line in [
            "traceed_events_total{kind=\"exec\"} 3",
            "traceed_events_total{kind=\"exit\"} 1",
            "traceed_lost_events_total{source=\"kernel\"} 3",
            "traceed_lost_events_total{source=\"userspace\"} 0",
            "traceed_queue_depth 7",
            "traceed_store_commits_total 5",
            "traceed_queue_heavy_bytes 65536",
            "traceed_db_bytes 4096",
            "traceed_ingest_lag_seconds 1.5",
            "traceed_api_requests_total{status=\"200\"} 2",
            "traceed_api_requests_total{status=\"404\"} 1",
            "# TYPE traceed_events_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
