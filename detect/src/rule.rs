//! Reading Sigma rule files: what traceed supports and the messages for
//! what it does not. A file either yields a [`Rule`], a [`Skipped`] (valid
//! Sigma using a feature traceed lacks: named, never fatal) or a
//! [`LoadError`] (unreadable, too large, not YAML: file and line named).
//! The daemon and `tracectl rules check` print these same messages.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;

use crate::condition::{self, Cond};
use crate::field::{Category, Field, Subject};
use crate::matcher::{self, FieldMatch, Scalar, Unsupported};
use crate::values::{FieldSet, Values};

/// Larger rule text is refused: Sigma rules are a few KB.
pub const MAX_RULE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Informational => "informational",
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }

    pub fn from_name(s: &str) -> Option<Level> {
        [
            Level::Informational,
            Level::Low,
            Level::Medium,
            Level::High,
            Level::Critical,
        ]
        .into_iter()
        .find(|l| l.name().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub level: Level,
    pub tags: Vec<String>,
    pub category: Category,
    /// Where it was read from ("-" for text given directly).
    pub source: String,
    names: Vec<String>,
    /// Per selection: any of these maps, each all of its entries.
    pub(crate) selections: Vec<Vec<Vec<FieldMatch>>>,
    pub(crate) condition: Cond,
    fields: FieldSet,
}

impl Rule {
    /// One rule on its own; [`crate::Engine`] shares the field reads
    /// between rules.
    pub fn matches(&self, s: &dyn Subject) -> bool {
        s.in_category(self.category) && self.eval(&Values::load(s, self.fields))
    }

    /// The detection on `v`, which holds at least [`Rule::fields`] (the
    /// caller has checked the category).
    pub(crate) fn eval(&self, v: &Values<'_>) -> bool {
        let sels = &self.selections;
        self.condition
            .eval(&mut |i| sels[i].iter().any(|map| map.iter().all(|fm| fm.matches(v))))
    }

    /// The fields the detection reads.
    pub fn fields(&self) -> FieldSet {
        self.fields
    }

    pub fn selection_names(&self) -> &[String] {
        &self.names
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: rule text is {size} bytes, over the {limit} byte limit", limit = MAX_RULE_BYTES)]
    TooLarge { file: String, size: usize },
    #[error("{file}:{line}: YAML error: {message}")]
    Yaml {
        file: String,
        line: usize,
        message: String,
    },
}

/// A rule traceed cannot run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub title: Option<String>,
    pub feature: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.title {
            Some(t) => write!(
                f,
                "{}: rule '{}' skipped: unsupported {}",
                self.file, t, self.feature
            ),
            None => write!(
                f,
                "{}: rule skipped: unsupported {}",
                self.file, self.feature
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<LoadError>,
}

impl RuleSet {
    fn add(&mut self, file: &str, text: &str) {
        match parse_rule(file, text) {
            Ok(Ok(r)) => self.rules.push(r),
            Ok(Err(s)) => self.skipped.push(s),
            Err(e) => self.errors.push(e),
        }
    }
}

fn yaml_error(file: &str, e: &serde_norway::Error) -> LoadError {
    LoadError::Yaml {
        file: file.into(),
        line: e.location().map(|l| l.line()).unwrap_or(0),
        message: e.to_string(),
    }
}

/// One rule's text. The outer error is the file's fault (not YAML, too
/// large); the inner is a valid rule traceed skips.
pub fn parse_rule(file: &str, text: &str) -> Result<Result<Rule, Skipped>, LoadError> {
    if text.len() > MAX_RULE_BYTES {
        return Err(LoadError::TooLarge {
            file: file.into(),
            size: text.len(),
        });
    }
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        docs.push(Value::deserialize(doc).map_err(|e| yaml_error(file, &e))?);
    }
    let skip = |title: Option<String>, feature: String| {
        Ok(Err(Skipped {
            file: file.into(),
            title,
            feature,
        }))
    };
    if docs.len() != 1 {
        return skip(
            None,
            format!(
                "rule file with {} YAML documents (rule collections)",
                docs.len()
            ),
        );
    }
    let doc = &docs[0];
    let get = |k: &str| doc.get(k);
    let text_of = |v: Option<&Value>| v.and_then(|v| v.as_str()).map(String::from);
    let title = text_of(get("title"));
    if !doc.is_mapping() {
        return skip(None, "document: not a mapping".into());
    }
    if get("correlation").is_some() {
        return skip(title, "correlation rule".into());
    }
    if get("filter").is_some() && get("detection").is_none() {
        return skip(title, "filter rule (meta filter)".into());
    }
    let Some(t) = title.clone() else {
        return skip(None, "rule without a title".into());
    };
    let id = text_of(get("id")).unwrap_or_else(|| t.clone());
    let level = match get("level").and_then(|v| v.as_str()) {
        None => Level::Medium,
        Some(l) => match Level::from_name(l) {
            Some(l) => l,
            None => return skip(title, format!("level '{l}'")),
        },
    };
    let tags = match get("tags").and_then(|v| v.as_sequence()) {
        Some(s) => s
            .iter()
            .filter_map(|t| t.as_str())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    let ls = get("logsource");
    let ls_str = |k: &str| ls.and_then(|l| l.get(k)).and_then(|v| v.as_str());
    match ls_str("product") {
        Some("linux") => {}
        Some(p) => return skip(title, format!("logsource product '{p}'")),
        None => return skip(title, "logsource without product: linux".into()),
    }
    if let Some(svc) = ls_str("service") {
        return skip(title, format!("logsource service '{svc}'"));
    }
    let category = match ls_str("category") {
        Some(c) => match Category::from_name(c) {
            Some(c) => c,
            None => return skip(title, format!("logsource category '{c}'")),
        },
        None => return skip(title, "logsource without a category".into()),
    };
    let Some(det) = get("detection").and_then(|d| d.as_mapping()) else {
        return skip(title, "rule without a detection mapping".into());
    };
    match compile_detection(det, category) {
        Ok((names, selections, condition)) => Ok(Ok(Rule {
            fields: selections
                .iter()
                .flatten()
                .flatten()
                .fold(FieldSet::default(), |mut s, fm| {
                    s.insert(fm.field);
                    s
                }),
            id,
            title: t,
            level,
            tags,
            category,
            source: file.into(),
            names,
            selections,
            condition,
        })),
        Err(Unsupported(f)) => skip(title, f),
    }
}

type Compiled = (Vec<String>, Vec<Vec<Vec<FieldMatch>>>, Cond);

fn compile_detection(
    det: &serde_norway::Mapping,
    category: Category,
) -> Result<Compiled, Unsupported> {
    let mut names = Vec::new();
    let mut selections = Vec::new();
    let mut condition = None;
    for (k, v) in det {
        let Some(k) = k.as_str() else {
            return Err(Unsupported("detection: a non-string key".into()));
        };
        match k {
            "condition" => condition = Some(v),
            "timeframe" => return Err(Unsupported("timeframe (aggregation)".into())),
            _ => {
                names.push(k.to_string());
                selections.push(compile_selection(k, v, category)?);
            }
        }
    }
    let cond = match condition {
        Some(Value::String(s)) => condition::parse(s, &names)?,
        Some(Value::Sequence(list)) => {
            let mut v = Vec::new();
            for c in list {
                let s = c
                    .as_str()
                    .ok_or_else(|| Unsupported("condition: not a string".into()))?;
                v.push(condition::parse(s, &names)?);
            }
            Cond::Or(v)
        }
        _ => return Err(Unsupported("detection without a condition".into())),
    };
    Ok((names, selections, cond))
}

fn scalar(v: &Value) -> Result<Scalar<'_>, Unsupported> {
    Ok(match v {
        Value::Null => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => Scalar::Str(Cow::Owned(n.to_string())),
        Value::String(s) => Scalar::Str(Cow::Borrowed(s)),
        _ => return Err(Unsupported("a nested value in a selection".into())),
    })
}

fn compile_map(
    m: &serde_norway::Mapping,
    category: Category,
) -> Result<Vec<FieldMatch>, Unsupported> {
    let mut out = Vec::new();
    for (k, v) in m {
        let key = k
            .as_str()
            .ok_or_else(|| Unsupported("selection: a non-string key".into()))?;
        let mut parts = key.split('|');
        let fname = parts.next().unwrap_or("");
        let mods: Vec<&str> = parts.collect();
        if fname.is_empty() {
            return Err(Unsupported(
                "keyword search ('|' key without a field)".into(),
            ));
        }
        let field =
            Field::from_name(fname).ok_or_else(|| Unsupported(format!("field '{fname}'")))?;
        if !category.has_field(field) {
            return Err(Unsupported(format!(
                "field '{fname}' in category {}",
                category.name()
            )));
        }
        let values = match v {
            Value::Sequence(s) => s.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(v)?],
        };
        out.push(matcher::compile(field, &mods, &values)?);
    }
    Ok(out)
}

fn compile_selection(
    name: &str,
    v: &Value,
    category: Category,
) -> Result<Vec<Vec<FieldMatch>>, Unsupported> {
    match v {
        Value::Mapping(m) => Ok(vec![compile_map(m, category)?]),
        Value::Sequence(items) if items.iter().all(|i| i.is_mapping()) => items
            .iter()
            .filter_map(|i| i.as_mapping())
            .map(|m| compile_map(m, category))
            .collect(),
        Value::Sequence(_) | Value::String(_) => {
            Err(Unsupported(format!("keyword search (selection '{name}')")))
        }
        _ => Err(Unsupported(format!(
            "selection '{name}': not a mapping or list"
        ))),
    }
}

fn is_rule_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if is_rule_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Every `*.yml`/`*.yaml` under the given directories (recursively, in
/// path order) and the given files. A missing path is not an error when
/// `missing_ok` (the daemon's default directories need not exist).
pub fn load_paths(paths: &[PathBuf], missing_ok: bool) -> RuleSet {
    let mut set = RuleSet::default();
    for p in paths {
        let shown = p.display().to_string();
        let mut files = Vec::new();
        match std::fs::metadata(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => continue,
            Err(e) => {
                set.errors.push(LoadError::Io {
                    file: shown,
                    source: e,
                });
                continue;
            }
            Ok(m) if m.is_dir() => {
                if let Err(e) = collect(p, &mut files) {
                    set.errors.push(LoadError::Io {
                        file: shown,
                        source: e,
                    });
                    continue;
                }
                files.sort();
            }
            Ok(_) => files.push(p.clone()),
        }
        for f in files {
            let name = f.display().to_string();
            match std::fs::metadata(&f) {
                Ok(m) if m.len() > MAX_RULE_BYTES as u64 => {
                    set.errors.push(LoadError::TooLarge {
                        file: name,
                        size: m.len() as usize,
                    });
                    continue;
                }
                _ => {}
            }
            match std::fs::read_to_string(&f) {
                Ok(text) => set.add(&name, &text),
                Err(e) => set.errors.push(LoadError::Io {
                    file: name,
                    source: e,
                }),
            }
        }
    }
    set
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    pub(crate) struct Fake {
        pub fields: HashMap<Field, String>,
        pub category: Option<Category>,
    }

    impl Subject for Fake {
        fn in_category(&self, c: Category) -> bool {
            self.category.is_none_or(|x| x == c)
        }
        fn field(&self, f: Field) -> Option<Cow<'_, str>> {
            self.fields.get(&f).map(|s| Cow::Borrowed(s.as_str()))
        }
    }

    fn rule(text: &str) -> Rule {
        parse_rule("t.yml", text).unwrap().unwrap()
    }

    fn skipped(text: &str) -> String {
        parse_rule("t.yml", text).unwrap().unwrap_err().to_string()
    }

    fn ev(cat: Category, f: &[(Field, &str)]) -> Fake {
        Fake {
            fields: f.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            category: Some(cat),
        }
    }

    const HEAD: &str = "title: T\nid: 11111111-2222-3333-4444-555555555555\nlevel: high\ntags: [attack.t1059]\nlogsource: {product: linux, category: process_creation}\n";

    #[test]
    fn full_rule_with_lists_and_filters() {
        let r = rule(&format!(
            "{HEAD}detection:\n  sel_img:\n    Image|endswith: [/bash, /sh]\n  sel_cmd:\n    - CommandLine|contains: /dev/tcp/\n    - CommandLine|contains|all: [' -i', '>&']\n  filter:\n    ParentImage|startswith: /usr/lib/\n  condition: sel_img and 1 of sel_cmd* and not filter\n"
        ));
        assert_eq!(r.level, Level::High);
        assert_eq!(r.tags, vec!["attack.t1059"]);
        use Field::*;
        let pc = Category::ProcessCreation;
        assert!(r.matches(&ev(
            pc,
            &[
                (Image, "/usr/bin/bash"),
                (CommandLine, "bash -c 'x >/dev/tcp/1/2'")
            ]
        )));
        assert!(r.matches(&ev(pc, &[(Image, "/bin/sh"), (CommandLine, "sh -i 2>&1")])));
        assert!(!r.matches(&ev(pc, &[(Image, "/bin/sh"), (CommandLine, "sh -i")])));
        assert!(!r.matches(&ev(
            pc,
            &[
                (Image, "/bin/sh"),
                (CommandLine, "x /dev/tcp/"),
                (ParentImage, "/usr/lib/x")
            ]
        )));
        // Another category never matches.
        assert!(!r.matches(&ev(
            Category::FileEvent,
            &[(Image, "/bin/sh"), (CommandLine, "/dev/tcp/")]
        )));
    }

    #[test]
    fn condition_list_is_or_and_numbers_compare_as_text() {
        let r = rule(
            "title: N\nlogsource: {product: linux, category: network_connection}\ndetection:\n  a:\n    DestinationPort: 4444\n  b:\n    Initiated: 'false'\n    SourceIp|cidr: 10.0.0.0/8\n  condition: [a, b]\n",
        );
        assert_eq!(r.id, "N");
        assert_eq!(r.level, Level::Medium);
        use Field::*;
        let nc = Category::NetworkConnection;
        assert!(r.matches(&ev(nc, &[(DestinationPort, "4444"), (Initiated, "true")])));
        assert!(r.matches(&ev(nc, &[(SourceIp, "10.2.3.4"), (Initiated, "false")])));
        assert!(!r.matches(&ev(nc, &[(SourceIp, "10.2.3.4"), (Initiated, "true")])));
    }

    #[test]
    fn unsupported_features_are_named() {
        assert!(skipped("title: W\nlogsource: {product: windows, category: process_creation}\ndetection: {s: {Image: x}, condition: s}\n")
            .contains("logsource product 'windows'"));
        assert!(skipped("title: A\nlogsource: {product: linux, service: auditd}\ndetection: {s: {type: x}, condition: s}\n")
            .contains("logsource service 'auditd'"));
        assert!(skipped(&format!(
            "{HEAD}detection: {{s: {{Hashes: x}}, condition: s}}\n"
        ))
        .contains("field 'Hashes'"));
        assert!(skipped(&format!(
            "{HEAD}detection: {{s: {{Image|gt: 3}}, condition: s}}\n"
        ))
        .contains("modifier 'gt'"));
        assert!(skipped(&format!(
            "{HEAD}detection: {{s: {{Image: x}}, condition: s | count() > 5}}\n"
        ))
        .contains("aggregation"));
        assert!(skipped(&format!(
            "{HEAD}detection: {{s: {{Image: x}}, timeframe: 5m, condition: s}}\n"
        ))
        .contains("timeframe"));
        assert!(skipped(&format!(
            "{HEAD}detection: {{k: [evil, worse], condition: k}}\n"
        ))
        .contains("keyword search"));
        assert!(skipped(&format!(
            "{HEAD}detection: {{s: {{DestinationIp: 1.2.3.4}}, condition: s}}\n"
        ))
        .contains("field 'DestinationIp' in category process_creation"));
        assert!(
            skipped("title: C\ncorrelation: {type: event_count, rules: [x]}\n")
                .contains("correlation rule")
        );
        let s = skipped("title: X\n---\ntitle: Y\n");
        assert!(s.contains("2 YAML documents"), "{s}");
        assert!(s.starts_with("t.yml: rule skipped: unsupported"), "{s}");
    }

    #[test]
    fn yaml_error_names_file_and_line() {
        let e = parse_rule("bad.yml", "title: x\ndetection:\n  sel: [a\n  b: c\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("bad.yml:"), "{m}");
        assert!(
            matches!(e, LoadError::Yaml { line, .. } if line >= 3),
            "{m}"
        );
    }

    #[test]
    fn too_large_is_refused() {
        let text = format!("title: big\n# {}\n", "x".repeat(MAX_RULE_BYTES));
        let e = parse_rule("big.yml", &text).unwrap_err();
        assert!(e.to_string().contains("over the 1048576 byte limit"), "{e}");
    }

    #[test]
    fn load_paths_reads_dirs_and_reports_each_file() {
        let dir = std::env::temp_dir().join(format!("traceed-detect-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("a.yml"),
            format!("{HEAD}detection: {{s: {{Image: x}}, condition: s}}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("sub/b.yaml"), "title: [\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let set = load_paths(&[dir.clone(), dir.join("missing")], true);
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.errors.len(), 1);
        assert!(set.errors[0].to_string().contains("sub/b.yaml:"));
        let strict = load_paths(&[dir.join("missing")], false);
        assert_eq!(strict.errors.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
