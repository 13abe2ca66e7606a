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
pub mod values;

pub use field::{Category, Field, ProcessMap, Subject, WireSubject};
pub use rule::{load_paths, parse_rule, Level, LoadError, Rule, RuleSet, Skipped, MAX_RULE_BYTES};
pub use values::{FieldSet, Values};

/// Rules indexed by category, so an event is tried only against the rules
/// that can see it, on field values read once per event.
#[derive(Debug, Default)]
pub struct Engine {
    rules: Vec<Rule>,
    by_category: [Vec<usize>; Category::ALL.len()],
    /// The fields any rule of the category reads.
    fields: [FieldSet; Category::ALL.len()],
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut by_category: [Vec<usize>; Category::ALL.len()] = Default::default();
        let mut fields = [FieldSet::default(); Category::ALL.len()];
        for (i, r) in rules.iter().enumerate() {
            by_category[r.category as usize].push(i);
            fields[r.category as usize] = fields[r.category as usize].union(r.fields());
        }
        Engine {
            rules,
            by_category,
            fields,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Appends to `out` every rule the subject matches (each at most once,
    /// even when the event is in several categories).
    pub fn matches<'a>(&'a self, subject: &dyn Subject, out: &mut Vec<&'a Rule>) {
        let cats = Category::ALL.map(|c| subject.in_category(c));
        let want = Category::ALL
            .into_iter()
            .filter(|c| cats[*c as usize])
            .fold(FieldSet::default(), |w, c| w.union(self.fields[c as usize]));
        if !cats.contains(&true) {
            return;
        }
        let values = Values::load(subject, want);
        for c in Category::ALL {
            if !cats[c as usize] {
                continue;
            }
            for &i in &self.by_category[c as usize] {
                let rule = &self.rules[i];
                if rule.eval(&values) && !out.iter().any(|r| std::ptr::eq(*r, rule)) {
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

    fn env_usize(key: &str, default: usize) -> usize {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Command lines of a busy build/dev host: most are benign, a few
    /// carry literals SigmaHQ rules look for (curl, chmod, /tmp/, base64),
    /// so candidate rules do get evaluated.
    const EXECS: [(&str, &str); 10] = [
        ("/usr/bin/bash", "bash -c echo build step && make -j2 all"),
        (
            "/usr/bin/cc",
            "cc -O2 -c -o /home/u/src/main.o /home/u/src/main.c",
        ),
        ("/usr/bin/git", "git -C /home/u/src status --porcelain"),
        (
            "/usr/bin/curl",
            "curl -fsSL https://example.org/release.tar.gz -o /tmp/r.tgz",
        ),
        ("/usr/bin/tar", "tar -xzf /tmp/r.tgz -C /tmp/build"),
        ("/usr/bin/chmod", "chmod +x /tmp/build/install.sh"),
        ("/usr/bin/python3", "python3 -m pip install --user requests"),
        ("/usr/bin/ls", "ls -la /home/u/src"),
        ("/usr/bin/base64", "base64 /home/u/.ssh/id_ed25519.pub"),
        ("/usr/bin/systemctl", "systemctl status nginx.service"),
    ];

    /// Matching cost per event (BENCHMARKS.md). Rules: packaging/rules plus
    /// the directories in TRACEED_BENCH_RULES (colon-separated), e.g. a
    /// local archive of SigmaHQ's rules/linux; TRACEED_BENCH_PAD=N adds
    /// copies (renamed ids) of the non-packaged rules up to N rules, so a
    /// 200-rule set costs what 200 real rules of that mix cost.
    /// TRACEED_BENCH_ROUNDS repeats the pass (min/median/max reported).
    #[test]
    #[ignore = "a measurement: cargo test --release -p traceed-detect -- --ignored --nocapture"]
    fn matching_cost_per_event() {
        let packaged = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules");
        let own = load_paths(std::slice::from_ref(&packaged), false)
            .rules
            .len();
        let mut paths = vec![packaged];
        if let Ok(extra) = std::env::var("TRACEED_BENCH_RULES") {
            paths.extend(extra.split(':').map(PathBuf::from));
        }
        let mut rules = load_paths(&paths, false).rules;
        let pad = env_usize("TRACEED_BENCH_PAD", 0);
        let extra: Vec<Rule> = rules[own..].to_vec();
        for (k, r) in extra.iter().cycle().enumerate() {
            if rules.len() >= pad || extra.is_empty() {
                break;
            }
            let mut c = r.clone();
            c.id = format!("{}-copy{}", r.id, k / extra.len() + 1);
            rules.push(c);
        }
        let engine = Engine::new(rules);
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
                0 => {
                    let (exe, cmd) = EXECS[(i as usize / 10) % EXECS.len()];
                    Event {
                        kind: "exec".into(),
                        exe: Some(exe.into()),
                        args: json!({"filename": exe, "argv": cmd.split(' ').collect::<Vec<_>>()}),
                        ..base
                    }
                }
                1..=2 => Event {
                    args: json!({"path": format!("/home/u/src/f{i}.o"), "flags": 0o1101, "mode": 0o644}),
                    ..base
                },
                3 => Event {
                    args: json!({"path": format!("/tmp/build/t{i}.tmp"), "flags": 0o101, "mode": 0o600}),
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
        let rounds = env_usize("TRACEED_BENCH_ROUNDS", 5).max(1);
        let mut per_event = Vec::with_capacity(rounds);
        let mut hits = 0usize;
        for _ in 0..rounds {
            let mut procs = ProcessMap::default();
            hits = 0;
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
            per_event.push(t0.elapsed().as_nanos() as f64 / events.len() as f64);
        }
        per_event.sort_by(f64::total_cmp);
        println!(
            "{} rules, {} events x {} rounds, {} matches per round: ns/event min {:.0} median {:.0} max {:.0} ({:.2} M events/s on one core at the median)",
            engine.rules().len(),
            events.len(),
            rounds,
            hits,
            per_event[0],
            per_event[rounds / 2],
            per_event[rounds - 1],
            1e3 / per_event[rounds / 2]
        );
    }
}
