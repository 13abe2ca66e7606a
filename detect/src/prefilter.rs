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
//! turn into atoms (`not`, regexes, CIDRs, `exists`, null) leaves no
//! clause, so the rule is evaluated: the filter may let too much through,
//! never too little.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::condition::Cond;
use crate::field::Field;
use crate::matcher::{FieldMatch, Pattern};
use crate::rule::Rule;
use crate::values::Values;

pub(crate) type Atom = u32;
type Clause = Vec<Atom>;
/// All clauses must hold; no clause: always true.
type Cnf = Vec<Clause>;

/// A bit per item (rules or atoms), sized once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }

    pub(crate) fn all(n: usize) -> Self {
        let mut b = Bits::new(n);
        (0..n).for_each(|i| b.set(i));
        b
    }

    pub(crate) fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Set bits in `self & mask`, ascending.
    pub(crate) fn iter_and<'a>(&'a self, mask: &'a Bits) -> impl Iterator<Item = usize> + 'a {
        self.0
            .iter()
            .zip(&mask.0)
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
    /// unconstrained.
    fn any_of(&self, branches: Vec<Cnf>) -> Cnf {
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
            Pattern::Null
            | Pattern::Exists(_)
            | Pattern::Any
            | Pattern::Re(_)
            | Pattern::Cidr(..) => return None,
        };
        (!needle.is_empty()).then(|| self.intern(f, needle))
    }

    fn field_match(&mut self, fm: &FieldMatch) -> Cnf {
        // A value holds when any of its variants does: one clause, unless
        // a variant has no atom.
        let mut value = |variants: &Vec<Pattern>| -> Option<Clause> {
            variants.iter().map(|p| self.pattern(fm.field, p)).collect()
        };
        let per_value: Vec<Option<Clause>> = fm.values.iter().map(&mut value).collect();
        if fm.all {
            per_value.into_iter().flatten().collect()
        } else {
            match per_value.into_iter().collect::<Option<Vec<Clause>>>() {
                Some(cs) if !cs.is_empty() => {
                    let mut c: Clause = cs.concat();
                    c.sort_unstable();
                    c.dedup();
                    vec![c]
                }
                _ => Cnf::new(),
            }
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
    n_atoms: usize,
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
        let n_atoms = atoms.list.len();
        let mut keyed = vec![Vec::new(); n_atoms];
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
                    n_atoms: 0,
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
            n_atoms,
            searchers,
            clauses,
            keyed,
            unkeyed,
        }
    }

    #[cfg(test)]
    pub(crate) fn atom_count(&self) -> usize {
        self.n_atoms
    }

    #[cfg(test)]
    pub(crate) fn memory(&self) -> usize {
        self.searchers.iter().map(|s| s.ac.memory_usage()).sum()
    }

    /// The atoms present in the event's values, and the rules keyed on
    /// them added to `cands`.
    pub(crate) fn scan(&self, v: &Values<'_>, cands: &mut Bits) -> Bits {
        let mut present = Bits::new(self.n_atoms);
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

    /// Whether every clause of rule `r` has an atom in `present`.
    pub(crate) fn may_match(&self, r: usize, present: &Bits) -> bool {
        self.clauses[r]
            .iter()
            .all(|c| c.iter().any(|&a| present.get(a as usize)))
    }
}
