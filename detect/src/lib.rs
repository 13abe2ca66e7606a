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
