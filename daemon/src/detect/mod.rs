//! Live detection: loads the `[detect]` Sigma rules (parsing and matching
//! are the `traceed-detect` crate, shared with tracectl), checks the rule
//! paths are trusted like the config file, and runs the detector task. The
//! detector reads the writer's live broadcast (events arrive with their ids,
//! after commit), so it is off the ingest path: when it falls behind, the
//! broadcast skips it ahead and the skipped events are counted as
//! `traceed_detect_dropped_events`, never slowing ingest. A match becomes
//! an `alerts` row, a journal entry at the rule's priority and a
//! per-rule counter.

pub mod alerts;

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use traceed_detect::{Engine, Level, ProcessMap, Rule, WireSubject};
use traceed_wire::LiveEvent;

use crate::service::config::DetectConfig;
use crate::service::private::{self, PrivacyError};
use crate::store::live::Feed;
use crate::store::Store;

/// What `tracectl status` and `/metrics` report about detection.
#[derive(Debug, Default)]
pub struct Stats {
    pub rules_loaded: AtomicU64,
    pub rules_skipped: AtomicU64,
    pub rule_errors: AtomicU64,
    pub alerts_total: AtomicU64,
    /// Events the detector never saw because it fell behind the broadcast.
    pub dropped_events: AtomicU64,
    /// Events it handled (matched against the rules when any are loaded):
    /// with `dropped_events`, every stored event is one or the other.
    pub events: AtomicU64,
    /// Alerts that could not be stored (the journal entry was still made).
    pub alert_store_errors: AtomicU64,
    per_rule: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn per_rule(&self) -> Vec<(String, u64)> {
        let m = self.per_rule.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn count_match(&self, rule_id: &str) {
        self.alerts_total.fetch_add(1, Relaxed);
        let mut m = self.per_rule.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(rule_id.to_string()).or_default() += 1;
    }
}

fn rule_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.push(p.clone());
            rule_files(&p, out)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Every configured rule path, and what is inside the directories, must be
/// owned by root or the service user and not writable by others: a rule
/// set is as sensitive as the config (an attacker who can edit it can
/// disable the rule that would catch them). Missing paths are fine.
pub fn check_paths(paths: &[PathBuf]) -> Result<(), PrivacyError> {
    for p in paths {
        let md = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(PrivacyError::Io {
                    path: p.clone(),
                    source,
                })
            }
        };
        private::check_trusted("the rules path", p)?;
        if md.is_dir() {
            let mut inside = Vec::new();
            rule_files(p, &mut inside).map_err(|source| PrivacyError::Io {
                path: p.clone(),
                source,
            })?;
            for f in inside {
                private::check_trusted("the rules path", &f)?;
            }
        }
    }
    Ok(())
}

/// Loads the rules, logs each skip and error (file and feature or line
/// named), drops the disabled ids, and records the counts.
pub fn load(cfg: &DetectConfig, stats: &Stats) -> Engine {
    let set = traceed_detect::load_paths(&cfg.rules, true);
    for s in &set.skipped {
        tracing::warn!(file = %s.file, feature = %s.feature, "{s}");
    }
    for e in &set.errors {
        tracing::error!("rule not loaded: {e}");
    }
    let total = set.rules.len();
    let rules: Vec<Rule> = set
        .rules
        .into_iter()
        .filter(|r| !cfg.disabled.contains(&r.id))
        .collect();
    stats.rules_loaded.store(rules.len() as u64, Relaxed);
    stats.rules_skipped.store(set.skipped.len() as u64, Relaxed);
    stats.rule_errors.store(set.errors.len() as u64, Relaxed);
    tracing::info!(
        rules = rules.len(),
        disabled = total - rules.len(),
        skipped = set.skipped.len(),
        errors = set.errors.len(),
        "detection rules loaded: {} active, {} disabled, {} skipped, {} with errors",
        rules.len(),
        total - rules.len(),
        set.skipped.len(),
        set.errors.len()
    );
    Engine::new(rules)
}

/// SIGHUP: re-check and reload. An untrusted path keeps the old rules.
pub fn reload(cfg: &DetectConfig, stats: &Stats, engine: &watch::Sender<Arc<Engine>>) {
    if let Err(e) = check_paths(&cfg.rules) {
        tracing::error!("rules not reloaded, keeping the previous set: {e}");
        return;
    }
    engine.send_replace(Arc::new(load(cfg, stats)));
}

/// The user name of a uid, cached (the detector asks once per uid).
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: zeroed passwd and a buffer owned by this frame, sizes given.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out);
        if rc != 0 || out.is_null() || pw.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Journal priorities by Sigma level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::High => 3,
        Level::Medium => 4,
        Level::Low => 5,
        Level::Informational => 6,
    }
}

pub struct Detector {
    engine: watch::Receiver<Arc<Engine>>,
    procs: ProcessMap,
    users: HashMap<u32, Option<String>>,
    store: Store,
    stats: Arc<Stats>,
}

/// Bound of the uid → name cache (uids on a host are few; this only stops
/// a flood of odd uids from growing it).
const USER_CACHE: usize = 4096;

impl Detector {
    pub fn new(engine: watch::Receiver<Arc<Engine>>, store: Store, stats: Arc<Stats>) -> Self {
        Detector {
            engine,
            procs: ProcessMap::default(),
            users: HashMap::default(),
            store,
            stats,
        }
    }

    pub async fn run(mut self, mut live: Feed) {
        while let Some(r) = live.recv().await {
            if r.skipped > 0 {
                self.stats.dropped_events.fetch_add(r.skipped, Relaxed);
            }
            let events = &r.batch.events;
            self.stats.events.fetch_add(events.len() as u64, Relaxed);
            // The rules in force, once per batch: a reload applies from the
            // next batch, milliseconds later.
            let engine = self.engine.borrow().clone();
            for ev in events {
                self.handle(&engine, ev).await;
            }
        }
    }

    async fn handle(&mut self, engine: &Engine, ev: &LiveEvent) {
        let mut hits: Vec<&Rule> = Vec::new();
        if !engine.rules().is_empty() {
            if let Some(uid) = ev.uid {
                if !self.users.contains_key(&uid) {
                    if self.users.len() >= USER_CACHE {
                        self.users.clear();
                    }
                    self.users.insert(uid, user_name(uid));
                }
            }
            let user = ev
                .uid
                .and_then(|u| self.users.get(&u))
                .and_then(|u| u.as_deref());
            let subject = WireSubject::new(ev, &self.procs, user);
            if subject.is_candidate() {
                engine.matches(&subject, &mut hits);
            }
        }
        for rule in hits {
            self.stats.count_match(&rule.id);
            crate::service::logging::alert_entry(
                priority(rule.level),
                &format!(
                    "alert: {} (rule {}, level {}) pid {} exe {} event {}",
                    rule.title,
                    rule.id,
                    rule.level.name(),
                    ev.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    ev.exe.as_deref().unwrap_or("-"),
                    ev.id
                ),
                &[
                    ("RULE_ID", &rule.id),
                    ("RULE_LEVEL", rule.level.name()),
                    ("EVENT_ID", &ev.id.to_string()),
                    ("PID", &ev.pid.map(|p| p.to_string()).unwrap_or_default()),
                ],
            );
            if let Err(e) = alerts::insert(&self.store, rule, ev).await {
                self.stats.alert_store_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, rule = %rule.id, "alert not stored");
            }
        }
        self.procs.observe(ev);
    }
}
