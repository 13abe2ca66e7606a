//! One event's field values, read from the [`Subject`] once and
//! ASCII-lowercased once, then shared by every rule tried on the event.
//! Reading a field is a JSON look-up (or a number formatted), and Sigma's
//! string compares are case-insensitive: doing both per rule and per
//! pattern was most of the matching cost.

use std::borrow::Cow;

use crate::field::{Field, Subject};

/// A set of fields, one bit per [`Field`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldSet(u16);

impl FieldSet {
    pub const ALL: FieldSet = FieldSet((1 << Field::ALL.len()) - 1);

    pub fn insert(&mut self, f: Field) {
        self.0 |= 1 << f as u16;
    }

    pub fn contains(self, f: Field) -> bool {
        self.0 & (1 << f as u16) != 0
    }

    pub fn union(self, o: FieldSet) -> FieldSet {
        FieldSet(self.0 | o.0)
    }
}

/// A present field value: as recorded (for regexes, CIDRs, globs) and
/// ASCII-lowercased (for the literal compares, whose needles are
/// lowercased when the rule is compiled).
#[derive(Debug, Clone, Copy)]
pub struct Val<'v> {
    pub raw: &'v str,
    pub lower: &'v str,
}

#[derive(Debug, Default)]
struct Slot<'s> {
    raw: Option<Cow<'s, str>>,
    /// Only when `raw` has an ASCII capital; else `raw` is its own lowercase.
    lower: Option<String>,
}

#[derive(Debug)]
pub struct Values<'s> {
    slots: [Slot<'s>; Field::ALL.len()],
}

impl<'s> Values<'s> {
    /// Reads the fields in `want` (the others stay absent: callers ask for
    /// every field their rules use).
    pub fn load(s: &'s dyn Subject, want: FieldSet) -> Self {
        let mut slots: [Slot<'s>; Field::ALL.len()] = Default::default();
        for f in Field::ALL {
            if !want.contains(f) {
                continue;
            }
            let raw = s.field(f);
            let lower = raw
                .as_deref()
                .filter(|r| r.bytes().any(|b| b.is_ascii_uppercase()))
                .map(str::to_ascii_lowercase);
            slots[f as usize] = Slot { raw, lower };
        }
        Values { slots }
    }

    pub fn get(&self, f: Field) -> Option<Val<'_>> {
        let slot = &self.slots[f as usize];
        let raw = slot.raw.as_deref()?;
        Some(Val {
            raw,
            lower: slot.lower.as_deref().unwrap_or(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::tests::Fake;

    #[test]
    fn loads_only_wanted_fields_and_lowercases_ascii_only() {
        let mut s = Fake::default();
        s.fields.insert(Field::Image, "/USR/Bin/ÉCHO".into());
        s.fields.insert(Field::User, "root".into());
        let mut want = FieldSet::default();
        want.insert(Field::Image);
        let v = Values::load(&s, want);
        let img = v.get(Field::Image).unwrap();
        assert_eq!(img.raw, "/USR/Bin/ÉCHO");
        assert_eq!(img.lower, "/usr/bin/Écho");
        assert!(v.get(Field::User).is_none());
        let all = Values::load(&s, FieldSet::ALL);
        assert_eq!(all.get(Field::User).unwrap().lower, "root");
        assert!(all.get(Field::CommandLine).is_none());
    }
}
