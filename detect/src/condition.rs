//! The `condition:` expression: `and`, `or`, `not`, parentheses,
//! `1 of x*` / `all of x*` / `1 of them` / `all of them`, over the rule's
//! named selections. Precedence: `not` over `and` over `or`. An aggregation
//! (`| count() ...`) is reported as unsupported.

use crate::matcher::Unsupported;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Sel(usize),
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

impl Cond {
    pub fn eval(&self, sel: &mut dyn FnMut(usize) -> bool) -> bool {
        match self {
            Cond::Sel(i) => sel(*i),
            Cond::Not(c) => !c.eval(sel),
            Cond::And(cs) => cs.iter().all(|c| c.eval(sel)),
            Cond::Or(cs) => cs.iter().any(|c| c.eval(sel)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    And,
    Or,
    Not,
    Of(bool), // true: all of, false: 1 of
    Ident(String),
}

fn lex(s: &str) -> Result<Vec<Tok>, Unsupported> {
    if s.contains('|') {
        return Err(Unsupported("aggregation in condition ('|')".into()));
    }
    let spaced = s.replace('(', " ( ").replace(')', " ) ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let t = match w.to_ascii_lowercase().as_str() {
            "(" => Tok::Open,
            ")" => Tok::Close,
            "and" => Tok::And,
            "or" => Tok::Or,
            "not" => Tok::Not,
            q @ ("1" | "all" | "any")
                if words
                    .get(i + 1)
                    .is_some_and(|n| n.eq_ignore_ascii_case("of")) =>
            {
                i += 1;
                Tok::Of(q == "all")
            }
            _ if w
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '*' | '-' | '.')) =>
            {
                Tok::Ident(w.to_string())
            }
            _ => return Err(Unsupported(format!("condition token '{w}'"))),
        };
        out.push(t);
        i += 1;
    }
    Ok(out)
}

fn glob_match(pat: &str, name: &str) -> bool {
    match pat.split_once('*') {
        None => pat == name,
        Some((pre, rest)) => {
            if !name.starts_with(pre) {
                return false;
            }
            let tail = &name[pre.len()..];
            (0..=tail.len()).any(|k| tail.is_char_boundary(k) && glob_match(rest, &tail[k..]))
        }
    }
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    names: &'a [String],
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn or(&mut self) -> Result<Cond, Unsupported> {
        let mut v = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap_or(Cond::Or(vec![]))
        } else {
            Cond::Or(v)
        })
    }

    fn and(&mut self) -> Result<Cond, Unsupported> {
        let mut v = vec![self.not()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            v.push(self.not()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap_or(Cond::And(vec![]))
        } else {
            Cond::And(v)
        })
    }

    fn not(&mut self) -> Result<Cond, Unsupported> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond, Unsupported> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match t {
            Some(Tok::Open) => {
                let c = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(Unsupported("condition: missing ')'".into()));
                }
                self.pos += 1;
                Ok(c)
            }
            Some(Tok::Of(all)) => {
                let Some(Tok::Ident(pat)) = self.toks.get(self.pos).cloned() else {
                    return Err(Unsupported("condition: 'of' without a name pattern".into()));
                };
                self.pos += 1;
                let hits: Vec<Cond> = self
                    .names
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| {
                        if pat == "them" {
                            !n.starts_with('_')
                        } else {
                            glob_match(&pat, n)
                        }
                    })
                    .map(|(i, _)| Cond::Sel(i))
                    .collect();
                if hits.is_empty() {
                    return Err(Unsupported(format!(
                        "condition: '{pat}' names no selection"
                    )));
                }
                Ok(if all { Cond::And(hits) } else { Cond::Or(hits) })
            }
            Some(Tok::Ident(name)) => match self.names.iter().position(|n| *n == name) {
                Some(i) => Ok(Cond::Sel(i)),
                None => Err(Unsupported(format!(
                    "condition: undefined selection '{name}'"
                ))),
            },
            Some(t) => Err(Unsupported(format!("condition: unexpected {t:?}"))),
            None => Err(Unsupported("condition: unexpected end".into())),
        }
    }
}

/// Parses `s` over the selection names `names` (indices into it).
pub fn parse(s: &str, names: &[String]) -> Result<Cond, Unsupported> {
    let toks = lex(s)?;
    if toks.is_empty() {
        return Err(Unsupported("empty condition".into()));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        names,
    };
    let c = p.or()?;
    if p.pos != p.toks.len() {
        return Err(Unsupported(format!(
            "condition: trailing {:?}",
            p.toks[p.pos]
        )));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["sel", "sel_a", "sel_b", "filter", "_hidden"]
            .map(String::from)
            .to_vec()
    }

    fn eval(c: &str, truth: [bool; 5]) -> bool {
        parse(c, &names()).unwrap().eval(&mut |i| truth[i])
    }

    #[test]
    fn precedence_and_parentheses() {
        // not > and > or
        assert!(eval(
            "sel or sel_a and sel_b",
            [true, false, false, false, false]
        ));
        assert!(!eval(
            "(sel or sel_a) and sel_b",
            [true, false, false, false, false]
        ));
        assert!(eval(
            "sel and not filter",
            [true, false, false, false, false]
        ));
        assert!(!eval(
            "sel and not filter",
            [true, false, false, true, false]
        ));
        assert!(eval(
            "not (sel and filter)",
            [true, false, false, false, false]
        ));
        assert!(eval(
            "sel AND NOT filter",
            [true, false, false, false, false]
        ));
    }

    #[test]
    fn of_forms() {
        assert!(eval("1 of sel_*", [false, false, true, false, false]));
        assert!(!eval("all of sel_*", [false, false, true, false, false]));
        assert!(eval("all of sel_*", [false, true, true, false, false]));
        assert!(eval("1 of them", [false, false, false, true, false]));
        // them leaves out names starting with '_'.
        assert!(!eval("1 of them", [false, false, false, false, true]));
        assert!(!eval("all of them", [true, true, true, false, true]));
        assert!(eval("all of them", [true, true, true, true, false]));
        assert!(eval("any of sel*", [true, false, false, false, false]));
        assert!(eval(
            "sel and 1 of sel_* and not filter",
            [true, true, false, false, false]
        ));
    }

    #[test]
    fn unsupported_is_named() {
        let e = parse("sel | count() by User > 3", &names()).unwrap_err();
        assert!(e.0.contains("aggregation"), "{e:?}");
        assert!(parse("nope", &names())
            .unwrap_err()
            .0
            .contains("undefined selection 'nope'"));
        assert!(parse("1 of x*", &names())
            .unwrap_err()
            .0
            .contains("names no selection"));
        assert!(parse("(sel", &names()).is_err());
        assert!(parse("sel sel_a", &names()).is_err());
    }
}
