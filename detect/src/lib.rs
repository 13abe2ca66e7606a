//! Sigma rules for traceed, shared by the daemon (live matching, hunts) and
//! tracectl (`rules check`): nothing here touches the kernel or the store.
//!
//! - [`rule`]: reading rule files, what is supported, the messages;
//! - [`field`]: Sigma's field and category names, and how a traceed event
//!   maps onto them;
//! - [`matcher`]: one field value against its modifiers;
//! - [`condition`]: the `condition:` expression.

pub mod condition;
pub mod field;
pub mod matcher;
pub mod rule;

pub use field::{Category, Field, ProcessMap, Subject, WireSubject};
pub use rule::{load_paths, parse_rule, Level, LoadError, Rule, RuleSet, Skipped, MAX_RULE_BYTES};

/// Rules indexed by category, so an event is tried only against the rules
/// that can see it.
#[derive(Debug, Default)]
pub struct Engine {
    rules: Vec<Rule>,
    by_category: [Vec<usize>; Category::ALL.len()],
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut by_category: [Vec<usize>; Category::ALL.len()] = Default::default();
        for (i, r) in rules.iter().enumerate() {
            by_category[r.category as usize].push(i);
        }
        Engine { rules, by_category }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Appends to `out` every rule the subject matches (each at most once,
    /// even when the event is in several categories).
    pub fn matches<'a>(&'a self, subject: &dyn Subject, out: &mut Vec<&'a Rule>) {
        for c in Category::ALL {
            if !subject.in_category(c) {
                continue;
            }
            for &i in &self.by_category[c as usize] {
                let rule = &self.rules[i];
                if rule.matches(subject) && !out.iter().any(|r| std::ptr::eq(*r, rule)) {
                    out.push(rule);
                }
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use std::path::PathBuf;
    use std::time::Instant;

    use serde_json::json;
    use traceed_wire::Event;

    use super::*;

    /// Matching cost per event (BENCHMARKS.md). Rules: packaging/rules plus
    /// the directories in TRACEED_BENCH_RULES (colon-separated), e.g. a
    /// local archive of SigmaHQ's rules/linux.
    #[test]
    #[ignore = "a measurement: cargo test --release -p traceed-detect -- --ignored --nocapture"]
    fn matching_cost_per_event() {
        let mut paths = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules")];
        if let Ok(extra) = std::env::var("TRACEED_BENCH_RULES") {
            paths.extend(extra.split(':').map(PathBuf::from));
        }
        let set = load_paths(&paths, false);
        let engine = Engine::new(set.rules);
        let mut procs = ProcessMap::default();
        // A mix like a busy host's: execs, writes, reads (not candidates),
        // connects, exits.
        let mk = |i: u32| -> Event {
            let pid = 1000 + i % 5000;
            let base = Event {
                pid: Some(pid),
                tid: Some(pid),
                ppid: Some(1000 + (i / 7) % 5000),
                uid: Some(1000),
                exe: Some("/usr/bin/python3".into()),
                retval: Some(0),
                ..Event::new("open", i64::from(i), "core")
            };
            match i % 10 {
                0 => Event {
                    kind: "exec".into(),
                    exe: Some("/usr/bin/bash".into()),
                    args: json!({"filename": "/usr/bin/bash", "argv": ["bash", "-c", format!("echo build step {i} && make -j2 all")]}),
                    ..base
                },
                1..=3 => Event {
                    args: json!({"path": format!("/home/u/src/f{i}.o"), "flags": 0o1101, "mode": 0o644}),
                    ..base
                },
                4..=7 => Event {
                    args: json!({"path": format!("/usr/lib/x{i}.so"), "flags": 0, "mode": 0}),
                    ..base
                },
                8 => Event {
                    kind: "connect".into(),
                    args: json!({"fd": 3, "family": "inet", "addr": "10.0.0.5", "port": 443}),
                    ..base
                },
                _ => Event {
                    kind: "exit".into(),
                    args: json!({"exit_code": 0, "signal": null}),
                    ..base
                },
            }
        };
        let events: Vec<Event> = (0..200_000).map(mk).collect();
        let mut hits = 0usize;
        let t0 = Instant::now();
        for ev in &events {
            let s = WireSubject::new(ev, &procs, Some("u"));
            let mut out = Vec::new();
            if s.is_candidate() {
                engine.matches(&s, &mut out);
            }
            hits += out.len();
            procs.observe(ev);
        }
        let el = t0.elapsed();
        println!(
            "{} rules, {} events, {} matches: {:.0} ns/event ({:.2} M events/s on one core)",
            engine.rules().len(),
            events.len(),
            hits,
            el.as_nanos() as f64 / events.len() as f64,
            events.len() as f64 / el.as_secs_f64() / 1e6
        );
    }
}
