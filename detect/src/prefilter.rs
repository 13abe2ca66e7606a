//! Which rules are worth evaluating on an event, from the literal text
//! their detections need.
//!
//! Most Sigma selections compare fields with literals (`Image|endswith:
//! /curl`, `CommandLine|contains: base64`). Each such literal is an
//! *atom*: "the field's ASCII-lowercased value contains this text". From a
//! rule's condition we derive a necessary condition over atoms, in
//! conjunctive form (every clause needs one of its atoms present). One
//! Aho-Corasick automaton per field finds every atom present in an event;
//! a rule is evaluated only when its clauses all hold. Anything we cannot
//! turn into atoms (`not`, CIDRs, `exists`, null, a regex without a
//! literal every match holds) leaves no clause, so the rule is evaluated:
//! the filter may let too much through, never too little.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use regex_syntax::hir::{Class, Hir, HirKind};

use crate::condition::Cond;
use crate::field::Field;
use crate::matcher::{FieldMatch, Pattern};
use crate::rule::Rule;
use crate::values::Values;

pub(crate) type Atom = u32;
type Clause = Vec<Atom>;
/// All clauses must hold; no clause: always true.
type Cnf = Vec<Clause>;

/// Words of a [`Bits`] kept inline: one per event for the rules and one
/// for the atoms, and up to 1,024 of each (a few hundred rules) needs no
/// allocation.
const INLINE: usize = 16;

/// A bit per item (rules or atoms), sized once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bits {
    Inline([u64; INLINE]),
    Heap(Vec<u64>),
}

impl Default for Bits {
    fn default() -> Self {
        Bits::Inline([0; INLINE])
    }
}

impl Bits {
    pub(crate) fn new(n: usize) -> Self {
        let words = n.div_ceil(64);
        if words <= INLINE {
            Bits::Inline([0; INLINE])
        } else {
            Bits::Heap(vec![0; words])
        }
    }

    fn words(&self) -> &[u64] {
        match self {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        match self {
            Bits::Inline(w) => w,
            Bits::Heap(w) => w,
        }
    }

    pub(crate) fn all(n: usize) -> Self {
        let mut b = Bits::new(n);
        (0..n).for_each(|i| b.set(i));
        b
    }

    pub(crate) fn set(&mut self, i: usize) {
        self.words_mut()[i / 64] |= 1 << (i % 64);
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        self.words()[i / 64] & (1 << (i % 64)) != 0
    }

    /// Set bits in `self & mask`, ascending.
    pub(crate) fn iter_and<'a>(&'a self, mask: &'a Bits) -> impl Iterator<Item = usize> + 'a {
        self.words()
            .iter()
            .zip(mask.words())
            .enumerate()
            .flat_map(|(w, (a, b))| {
                let mut bits = a & b;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(w * 64 + i)
                })
            })
    }
}

#[derive(Debug, Default)]
struct Atoms {
    ids: HashMap<(Field, String), Atom>,
    list: Vec<(Field, String)>,
}

impl Atoms {
    fn intern(&mut self, f: Field, needle: &str) -> Atom {
        if let Some(&a) = self.ids.get(&(f, needle.to_string())) {
            return a;
        }
        let a = self.list.len() as Atom;
        self.list.push((f, needle.to_string()));
        self.ids.insert((f, needle.to_string()), a);
        a
    }

    /// How selective a clause is likely to be: its shortest needle (a
    /// one-letter needle is in nearly every value), then fewer atoms.
    fn score(&self, c: &Clause) -> (usize, std::cmp::Reverse<usize>) {
        let shortest = c.iter().map(|&a| self.list[a as usize].1.len()).min();
        (shortest.unwrap_or(0), std::cmp::Reverse(c.len()))
    }

    fn best<'c>(&self, cnf: &'c Cnf) -> Option<&'c Clause> {
        cnf.iter().max_by_key(|c| self.score(c))
    }

    /// Any of the branches: one clause holding the best clause of each
    /// (each branch implies its own), or nothing if a branch is
    /// unconstrained; a single branch as it is.
    fn any_of(&self, mut branches: Vec<Cnf>) -> Cnf {
        if branches.len() == 1 {
            return branches.pop().unwrap_or_default();
        }
        let mut clause = Clause::new();
        for b in &branches {
            match self.best(b) {
                Some(c) => clause.extend_from_slice(c),
                None => return Cnf::new(),
            }
        }
        if clause.is_empty() {
            return Cnf::new();
        }
        clause.sort_unstable();
        clause.dedup();
        vec![clause]
    }

    /// The literal a value matching `p` must contain (lowercased).
    fn pattern(&mut self, f: Field, p: &Pattern) -> Option<Atom> {
        let needle = match p {
            Pattern::Exact(s) | Pattern::Prefix(s) | Pattern::Suffix(s) | Pattern::Contains(s) => {
                s.as_str()
            }
            Pattern::Glob { lit, .. } => lit.as_str(),
            Pattern::Re(_)
            | Pattern::Null
            | Pattern::Exists(_)
            | Pattern::Any
            | Pattern::Cidr(..) => return None,
        };
        (!needle.is_empty()).then(|| self.intern(f, needle))
    }

    /// What a value matching `p` must contain: one clause, or for a regex
    /// the clauses of [`Atoms::regex`].
    fn pattern_cnf(&mut self, f: Field, p: &Pattern) -> Cnf {
        match p {
            Pattern::Re(re) => match regex_syntax::Parser::new().parse(re.as_str()) {
                Ok(hir) => self.regex(f, &hir),
                Err(_) => Cnf::new(),
            },
            p => self
                .pattern(f, p)
                .map(|a| vec![vec![a]])
                .unwrap_or_default(),
        }
    }

    /// Ends a run of text in a concatenation: a clause unless a clause
    /// already holds all of it.
    fn flush(&mut self, f: Field, out: &mut Cnf, run: &mut String, carried: &mut usize) {
        if run.len() > *carried {
            out.push(vec![self.intern(f, run)]);
        }
        run.clear();
        *carried = 0;
    }

    /// Text every match of `hir` contains once ASCII-lowercased: runs of
    /// a concatenation that match one text (up to ASCII case), the
    /// required text of repeated (at least once) and grouped parts, any of
    /// an alternation's.
    fn regex(&mut self, f: Field, hir: &Hir) -> Cnf {
        if let Some(t) = exact_text(hir) {
            return if t.is_empty() {
                Cnf::new()
            } else {
                vec![vec![self.intern(f, &t)]]
            };
        }
        match hir.kind() {
            HirKind::Concat(subs) => {
                let mut out = Cnf::new();
                // The text matched by consecutive one-text parts; `carried`
                // is the length of its start that a clause already holds.
                let mut run = String::new();
                let mut carried = 0;
                for sub in subs {
                    match (exact_text(sub), sub.kind()) {
                        (Some(t), _) => run.push_str(&t),
                        // `t+` after a run extends it; the last `t` starts
                        // the next one.
                        (None, HirKind::Repetition(r)) if r.min >= 1 => match exact_text(&r.sub) {
                            Some(t) if !t.is_empty() => {
                                run.push_str(&t.repeat(r.min.min(16) as usize));
                                self.flush(f, &mut out, &mut run, &mut carried);
                                carried = t.len();
                                run = t;
                            }
                            _ => {
                                self.flush(f, &mut out, &mut run, &mut carried);
                                let inner = self.regex(f, sub);
                                out.extend(inner);
                            }
                        },
                        (None, _) => {
                            self.flush(f, &mut out, &mut run, &mut carried);
                            let inner = self.regex(f, sub);
                            out.extend(inner);
                        }
                    }
                }
                self.flush(f, &mut out, &mut run, &mut carried);
                out
            }
            HirKind::Alternation(subs) => {
                let branches = subs.iter().map(|s| self.regex(f, s)).collect();
                self.any_of(branches)
            }
            HirKind::Repetition(r) if r.min >= 1 => self.regex(f, &r.sub),
            HirKind::Capture(c) => self.regex(f, &c.sub),
            _ => Cnf::new(),
        }
    }

    fn field_match(&mut self, fm: &FieldMatch) -> Cnf {
        // A value holds when any of its variants does.
        let per_value: Vec<Cnf> = fm
            .values
            .iter()
            .map(|variants| {
                let branches = variants
                    .iter()
                    .map(|p| self.pattern_cnf(fm.field, p))
                    .collect();
                self.any_of(branches)
            })
            .collect();
        if fm.all {
            per_value.concat()
        } else {
            self.any_of(per_value)
        }
    }

    fn selection(&mut self, maps: &[Vec<FieldMatch>]) -> Cnf {
        let branches = maps
            .iter()
            .map(|m| m.iter().flat_map(|fm| self.field_match(fm)).collect())
            .collect();
        self.any_of(branches)
    }

    fn cond(&mut self, c: &Cond, sels: &[Cnf]) -> Cnf {
        match c {
            Cond::Sel(i) => sels[*i].clone(),
            Cond::Not(_) => Cnf::new(),
            Cond::And(cs) => cs.iter().flat_map(|c| self.cond(c, sels)).collect(),
            Cond::Or(cs) => {
                let branches = cs.iter().map(|c| self.cond(c, sels)).collect();
                self.any_of(branches)
            }
        }
    }
}

/// The one text `hir` matches, ASCII-lowercased, if it matches one (up to
/// ASCII case: `(?i)a` is the class `[Aa]`; `(?i)k` also holds the Kelvin
/// sign, so it is not one text).
fn exact_text(hir: &Hir) -> Option<String> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(String::new()),
        HirKind::Literal(l) => std::str::from_utf8(&l.0).ok().map(str::to_ascii_lowercase),
        HirKind::Class(c) => class_char(c).map(String::from),
        HirKind::Capture(c) => exact_text(&c.sub),
        HirKind::Repetition(r) if Some(r.min) == r.max && r.min <= 16 => {
            exact_text(&r.sub).map(|t| t.repeat(r.min as usize))
        }
        HirKind::Concat(subs) => subs.iter().map(exact_text).collect(),
        _ => None,
    }
}

/// The one character a class's members are once ASCII-lowercased.
fn class_char(c: &Class) -> Option<char> {
    let mut one = None;
    let mut same = |ch: char| match one {
        None => {
            one = Some(ch);
            true
        }
        Some(o) => o == ch,
    };
    match c {
        Class::Unicode(u) => {
            for r in u.ranges() {
                if u32::from(r.end()) - u32::from(r.start()) > 4 {
                    return None;
                }
                for ch in r.start()..=r.end() {
                    if !same(ch.to_ascii_lowercase()) {
                        return None;
                    }
                }
            }
        }
        Class::Bytes(b) => {
            for r in b.ranges() {
                for byte in r.start()..=r.end() {
                    if !byte.is_ascii() || !same(char::from(byte.to_ascii_lowercase())) {
                        return None;
                    }
                }
            }
        }
    }
    one
}

/// One automaton over a field's needles; pattern id `i` is `atoms[i]`.
#[derive(Debug)]
struct Searcher {
    field: Field,
    ac: AhoCorasick,
    atoms: Vec<Atom>,
}

/// The atoms of a rule set, the automata that find them, and each rule's
/// necessary condition.
#[derive(Debug, Default)]
pub(crate) struct Prefilter {
    /// Per atom: its field and needle.
    atoms: Vec<(Field, String)>,
    searchers: Vec<Searcher>,
    /// Per rule: its clauses, the best first.
    clauses: Vec<Cnf>,
    /// Per atom: the rules whose first clause holds it.
    keyed: Vec<Vec<usize>>,
    /// Rules with no clause: evaluated on every event of their category.
    pub(crate) unkeyed: Bits,
}

impl Prefilter {
    pub(crate) fn new(rules: &[Rule]) -> Self {
        let mut atoms = Atoms::default();
        let mut clauses = Vec::with_capacity(rules.len());
        for r in rules {
            let sels: Vec<Cnf> = r.selections.iter().map(|s| atoms.selection(s)).collect();
            let mut cnf = atoms.cond(&r.condition, &sels);
            for c in &mut cnf {
                c.sort_unstable();
                c.dedup();
            }
            cnf.sort();
            cnf.dedup();
            // The key clause (indexed) first: the most selective.
            if let Some(best) = atoms.best(&cnf).cloned() {
                cnf.retain(|c| *c != best);
                cnf.insert(0, best);
            }
            clauses.push(cnf);
        }
        let mut keyed = vec![Vec::new(); atoms.list.len()];
        let mut unkeyed = Bits::new(rules.len());
        for (r, cnf) in clauses.iter().enumerate() {
            match cnf.first() {
                Some(key) => key.iter().for_each(|&a| keyed[a as usize].push(r)),
                None => unkeyed.set(r),
            }
        }
        let mut searchers = Vec::new();
        for f in Field::ALL {
            let (ids, needles): (Vec<Atom>, Vec<&str>) = atoms
                .list
                .iter()
                .enumerate()
                .filter(|(_, (af, _))| *af == f)
                .map(|(i, (_, n))| (i as Atom, n.as_str()))
                .unzip();
            if needles.is_empty() {
                continue;
            }
            let built = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&needles);
            let Ok(ac) = built else {
                // Beyond the automaton's size limits: no filtering at all
                // rather than rules wrongly skipped.
                return Prefilter {
                    atoms: Vec::new(),
                    searchers: Vec::new(),
                    clauses: vec![Cnf::new(); rules.len()],
                    keyed: Vec::new(),
                    unkeyed: Bits::all(rules.len()),
                };
            };
            searchers.push(Searcher {
                field: f,
                ac,
                atoms: ids,
            });
        }
        Prefilter {
            atoms: atoms.list,
            searchers,
            clauses,
            keyed,
            unkeyed,
        }
    }

    #[cfg(test)]
    pub(crate) fn atom_count(&self) -> usize {
        self.atoms.len()
    }

    #[cfg(test)]
    pub(crate) fn memory(&self) -> usize {
        self.searchers.iter().map(|s| s.ac.memory_usage()).sum()
    }

    /// The atoms present in the event's values, and the rules keyed on
    /// them added to `cands`.
    pub(crate) fn scan(&self, v: &Values<'_>, cands: &mut Bits) -> Bits {
        let mut present = Bits::new(self.atoms.len());
        for s in &self.searchers {
            let Some(val) = v.get(s.field) else { continue };
            for m in s.ac.find_overlapping_iter(val.lower) {
                let a = s.atoms[m.pattern().as_usize()] as usize;
                if !present.get(a) {
                    present.set(a);
                    for &r in &self.keyed[a] {
                        cands.set(r);
                    }
                }
            }
        }
        present
    }

    /// Rule `r`'s clauses as needles.
    #[cfg(test)]
    pub(crate) fn needles(&self, r: usize) -> Vec<Vec<&str>> {
        self.clauses[r]
            .iter()
            .map(|c| {
                c.iter()
                    .map(|&a| self.atoms[a as usize].1.as_str())
                    .collect()
            })
            .collect()
    }

    /// Whether every clause of rule `r` has an atom in `present`.
    pub(crate) fn may_match(&self, r: usize, present: &Bits) -> bool {
        self.clauses[r]
            .iter()
            .all(|c| c.iter().any(|&a| present.get(a as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::parse_rule;

    fn needles(detection: &str) -> Vec<Vec<String>> {
        let text = format!(
            "title: t\nlogsource: {{product: linux, category: process_creation}}\ndetection:\n{detection}"
        );
        let rule = parse_rule("t.yml", &text).unwrap().unwrap();
        let p = Prefilter::new(std::slice::from_ref(&rule));
        let mut n: Vec<Vec<String>> = p
            .needles(0)
            .into_iter()
            .map(|c| {
                let mut c: Vec<String> = c.into_iter().map(String::from).collect();
                c.sort();
                c
            })
            .collect();
        n.sort();
        n
    }

    fn cnf(clauses: &[&[&str]]) -> Vec<Vec<String>> {
        clauses
            .iter()
            .map(|c| c.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn literal_patterns_and_conditions() {
        assert_eq!(
            needles("  s:\n    Image|endswith: [/Curl, /wget]\n    CommandLine|contains|all: [' -o ', http]\n  condition: s\n"),
            cnf(&[&[" -o "], &["/curl", "/wget"], &["http"]])
        );
        // `not` constrains nothing; `or` keeps the best clause of each side.
        assert_eq!(
            needles("  a:\n    Image|endswith: /nc\n    CommandLine|contains: ' -e '\n  b:\n    CommandLine|contains: /dev/tcp/\n  f:\n    User: root\n  condition: (a or b) and not f\n"),
            cnf(&[&[" -e ", "/dev/tcp/"]])
        );
        // A side without literals leaves the rule unfiltered.
        assert!(needles(
            "  a:\n    Image|endswith: /nc\n  b:\n    CommandLine|re: '.*'\n  condition: a or b\n"
        )
        .is_empty());
        assert!(needles("  f:\n    Image|endswith: /nc\n  condition: not f\n").is_empty());
    }

    #[test]
    fn regex_literals() {
        let re = |r: &str| {
            needles(&format!(
                "  s:\n    CommandLine|re: '{r}'\n  condition: s\n"
            ))
        };
        assert_eq!(
            re(r"\b(curl|wget)\s[^|]*\|\s*sh\b"),
            cnf(&[&["curl", "wget"], &["sh"], &["|"]])
        );
        assert_eq!(
            re(r"^(\S*/)?(insmod|modprobe)\s"),
            cnf(&[&["insmod", "modprobe"]])
        );
        // Case-insensitive: one text per ASCII-case class, broken at k and
        // s (the Kelvin sign and the long s are their case forms too).
        assert_eq!(re(r"(?i)ChMoD\s+\+x"), cnf(&[&["+x"], &["chmod"]]));
        assert_eq!(re(r"(?i)kill -s"), cnf(&[&["ill -"]]));
        assert_eq!(re(r"x{3}y+(ab)?z*"), cnf(&[&["xxxy"]]));
        assert_eq!(re(r"-e\s+(ab)+c"), cnf(&[&["-e"], &["ab"], &["abc"]]));
        assert!(re(r"a|b*").is_empty());
        assert!(re(r"[0-9]+").is_empty());
    }
}
