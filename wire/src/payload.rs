//! The `args` object of each event kind, typed. Each type serialises exactly
//! as the daemon's JSON has always looked (same keys; `null` for a value not
//! known; keys marked optional below are absent rather than null). The
//! daemon builds these from kernel records; a client may parse an event's
//! `args` into the type of its `kind`.
//!
//! [`Payload`] is the daemon's own `args`: one of these types as decoded,
//! or JSON (lost rows, rows read back). It is read field by field through
//! [`Arg`] without building a JSON tree, which the hot path cannot afford
//! per event.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A kind's fields plus what every record may add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Args<T> {
    #[serde(flatten)]
    pub fields: T,
    /// A string or argv was cut in the kernel; the key is present only
    /// when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// A byte string of this event was not valid UTF-8: every byte string
    /// of the event (these args, `comm`, `exe`) is in the escaped form of
    /// `crate::bytes`. Present only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub escaped: bool,
}

/// A name where one is known, else the raw number (a syscall number, a
/// bpf command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NameOrNumber {
    Name(String),
    Number(i64),
}

/// `exec`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exec {
    /// As the caller named it.
    pub filename: Option<String>,
    pub argv: Vec<String>,
    /// The file actually loaded when it is not `filename` (a script's
    /// interpreter); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
    /// When the loaded file last changed (RFC 3339); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_ctime: Option<String>,
    /// The argument count, also when `argv` was cut (`truncated`); absent
    /// when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argc: Option<u64>,
    /// The whole argv's length in bytes, each argument with its NUL (as the
    /// kernel counts it), also when `argv` was cut; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_bytes: Option<u64>,
    /// The working directory at exec, absolute; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `fork`: the row is the new task; nothing kind-specific.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fork {}

/// `exit`: `exit_code` is the status passed to exit (0-255), `signal` the
/// terminating signal; one of them is set when the status is known, both
/// are null when it is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub exit_code: Option<u64>,
    pub signal: Option<u64>,
}

/// `open`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    pub path: Option<String>,
    pub flags: i32,
    pub mode: u32,
    /// How many identical opens this row stands for, when more than one
    /// (`[events] coalesce`): the event's `ts` and `retval` are the first
    /// one's. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// When the last of the `count` opens happened (RFC 3339); present
    /// with `count` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

/// `unlink`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unlink {
    pub path: Option<String>,
    pub flags: i32,
}

/// `rename`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rename {
    pub old_path: Option<String>,
    pub new_path: Option<String>,
    pub flags: u32,
}

/// `chmod` (`path` is null for fchmod)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chmod {
    pub path: Option<String>,
    pub mode: u32,
}

/// `mount`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub source: Option<String>,
    pub target: Option<String>,
    pub fstype: Option<String>,
    pub flags: u64,
}

/// `memfd_create`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemfdCreate {
    pub name: Option<String>,
    pub flags: u32,
}

/// `module_load`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleLoad {
    pub name: Option<String>,
}

/// `connect`, `bind`, `accept`: `family` is "inet", "inet6", "unix" or
/// "other"; `port` is null for unix sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sock {
    pub fd: i32,
    pub family: Option<String>,
    pub addr: Option<String>,
    pub port: Option<u16>,
}

/// `setuid`: the uid the caller asked to become (null when setre[s]uid
/// changed neither), and which syscall it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setuid {
    pub uid: Option<u32>,
    pub syscall: String,
}

/// `ptrace`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ptrace {
    pub request: i64,
    pub target_pid: i32,
}

/// `kill` (kill, tkill, tgkill); `target_tid` only for tkill and tgkill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    pub target_pid: i32,
    pub signal: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tid: Option<i32>,
}

/// `bpf`: the command's name (`BPF_PROG_LOAD`), or its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bpf {
    pub cmd: NameOrNumber,
}

/// `syscall`: the generic path, any syscall with its raw arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Syscall {
    /// Its name, or the number when this build does not know it.
    pub syscall: NameOrNumber,
    pub nr: u32,
    pub args: [u64; 6],
}

/// One field of an event's `args`, borrowed: what a filter, a rule or the
/// store reads without a JSON tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Str(&'a str),
    Strs(&'a [String]),
    Uints(&'a [u64]),
    /// A field of JSON args.
    Json(&'a Value),
}

impl<'a> Arg<'a> {
    pub fn is_null(&self) -> bool {
        matches!(self, Arg::Null | Arg::Json(Value::Null))
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Arg::Str(s) => Some(s),
            Arg::Json(v) => v.as_str(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Arg::Int(i) => Some(i),
            Arg::Uint(u) => i64::try_from(u).ok(),
            Arg::Json(v) => v.as_i64(),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Arg::Int(i) => u64::try_from(i).ok(),
            Arg::Uint(u) => Some(u),
            Arg::Json(v) => v.as_u64(),
            _ => None,
        }
    }

    /// The strings of a list (argv); None when this is not a list. An
    /// element that is not a string is left out.
    pub fn strs(&self) -> Option<Vec<&'a str>> {
        match *self {
            Arg::Strs(l) => Some(l.iter().map(String::as_str).collect()),
            Arg::Json(Value::Array(a)) => Some(a.iter().filter_map(Value::as_str).collect()),
            _ => None,
        }
    }

    /// Append the field as JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing numbers, strings and JSON values into memory cannot fail.
        let _ = match *self {
            Arg::Null => {
                out.extend_from_slice(b"null");
                Ok(())
            }
            Arg::Bool(b) => serde_json::to_writer(&mut *out, &b),
            Arg::Int(i) => serde_json::to_writer(&mut *out, &i),
            Arg::Uint(u) => serde_json::to_writer(&mut *out, &u),
            Arg::Str(s) => serde_json::to_writer(&mut *out, s),
            Arg::Strs(l) => serde_json::to_writer(&mut *out, l),
            Arg::Uints(l) => serde_json::to_writer(&mut *out, l),
            Arg::Json(v) => serde_json::to_writer(&mut *out, v),
        };
    }
}

/// The field as JSON text.
impl fmt::Display for Arg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_json(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// A field type of the payloads: how it reads as an [`Arg`], and its byte
/// strings for the escaped form and path resolution.
pub trait FieldValue {
    fn arg(&self) -> Arg<'_>;
    fn strings_mut(&mut self, _f: &mut dyn FnMut(&mut String)) {}
}

impl FieldValue for String {
    fn arg(&self) -> Arg<'_> {
        Arg::Str(self)
    }
    fn strings_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        f(self)
    }
}

impl FieldValue for Vec<String> {
    fn arg(&self) -> Arg<'_> {
        Arg::Strs(self)
    }
    fn strings_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        self.iter_mut().for_each(f)
    }
}

impl FieldValue for [u64; 6] {
    fn arg(&self) -> Arg<'_> {
        Arg::Uints(self)
    }
}

impl FieldValue for NameOrNumber {
    fn arg(&self) -> Arg<'_> {
        match self {
            NameOrNumber::Name(s) => Arg::Str(s),
            NameOrNumber::Number(n) => Arg::Int(*n),
        }
    }
    fn strings_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        if let NameOrNumber::Name(s) = self {
            f(s)
        }
    }
}

impl<T: FieldValue> FieldValue for Option<T> {
    fn arg(&self) -> Arg<'_> {
        self.as_ref().map_or(Arg::Null, T::arg)
    }
    fn strings_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        if let Some(v) = self {
            v.strings_mut(f)
        }
    }
}

macro_rules! int_fields {
    ($($t:ty => $v:ident),*) => {$(
        impl FieldValue for $t {
            fn arg(&self) -> Arg<'_> {
                Arg::$v((*self).into())
            }
        }
    )*};
}
int_fields!(i32 => Int, i64 => Int, u16 => Uint, u32 => Uint, u64 => Uint);

/// A payload's fields in the order and presence serde gives them.
pub trait Fields {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'static str, Arg<'a>));
    fn strings_mut(&mut self, f: &mut dyn FnMut(&'static str, &mut String));
}

/// `Fields` for a payload struct: `req` fields are always present (null
/// when None), `opt` ones are absent when None (as their
/// `skip_serializing_if`). A unit test holds this to the serde derive.
macro_rules! fields {
    ($t:ty { $($how:ident $k:ident),* }) => {
        impl Fields for $t {
            #[allow(unused_variables)]
            fn visit<'a>(&'a self, f: &mut dyn FnMut(&'static str, Arg<'a>)) {
                $(fields!(@$how self, f, $k);)*
            }
            #[allow(unused_variables)]
            fn strings_mut(&mut self, f: &mut dyn FnMut(&'static str, &mut String)) {
                $(self.$k.strings_mut(&mut |s| f(stringify!($k), s));)*
            }
        }
    };
    (@req $s:ident, $f:ident, $k:ident) => {
        $f(stringify!($k), $s.$k.arg())
    };
    (@opt $s:ident, $f:ident, $k:ident) => {
        if let Some(v) = &$s.$k {
            $f(stringify!($k), v.arg())
        }
    };
}

fields!(Exec { req filename, req argv, opt interpreter, opt exe_ctime, opt argc, opt argv_bytes, opt cwd });
fields!(Fork {});
fields!(Exit { req exit_code, req signal });
fields!(Open { req path, req flags, req mode, opt count, opt last });
fields!(Unlink { req path, req flags });
fields!(Rename { req old_path, req new_path, req flags });
fields!(Chmod { req path, req mode });
fields!(Mount { req source, req target, req fstype, req flags });
fields!(MemfdCreate { req name, req flags });
fields!(ModuleLoad { req name });
fields!(Sock { req fd, req family, req addr, req port });
fields!(Setuid { req uid, req syscall });
fields!(Ptrace { req request, req target_pid });
fields!(Kill { req target_pid, req signal, opt target_tid });
fields!(Bpf { req cmd });
fields!(Syscall { req syscall, req nr, req args });

impl<T: Fields> Fields for Args<T> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'static str, Arg<'a>)) {
        self.fields.visit(f);
        if self.truncated {
            f("truncated", Arg::Bool(true));
        }
        if self.escaped {
            f("escaped", Arg::Bool(true));
        }
    }
    fn strings_mut(&mut self, f: &mut dyn FnMut(&'static str, &mut String)) {
        self.fields.strings_mut(f)
    }
}

/// Read access to `args` by key, typed or JSON alike.
pub trait ArgSource {
    fn arg(&self, key: &str) -> Option<Arg<'_>>;
}

impl ArgSource for Value {
    fn arg(&self, key: &str) -> Option<Arg<'_>> {
        self.get(key).map(Arg::Json)
    }
}

macro_rules! payload {
    ($($v:ident($t:ty)),* $(,)?) => {
        /// An event's `args` as the daemon holds it: typed as decoded from
        /// a kernel record, or JSON (lost rows, events read back). It
        /// serialises as the JSON object of its kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Payload {
            $($v($t),)*
            Json(Value),
        }

        impl Payload {
            /// Each field in serialised order (a JSON object's in its
            /// order; nothing for JSON that is not an object).
            pub fn each<'a>(&'a self, f: &mut dyn FnMut(&'a str, Arg<'a>)) {
                match self {
                    $(Payload::$v(a) => a.visit(&mut |k, v| f(k, v)),)*
                    Payload::Json(Value::Object(m)) => {
                        m.iter().for_each(|(k, v)| f(k, Arg::Json(v)))
                    }
                    Payload::Json(_) => {}
                }
            }

            /// Every byte string with its key, to rewrite in place. JSON
            /// args give their top-level strings and string lists.
            pub fn strings_mut(&mut self, f: &mut dyn FnMut(&str, &mut String)) {
                match self {
                    $(Payload::$v(a) => a.strings_mut(&mut |k, s| f(k, s)),)*
                    Payload::Json(v) => json_strings_mut(v, f),
                }
            }

            /// Whether the byte strings are in the escaped form.
            pub fn escaped(&self) -> bool {
                match self {
                    $(Payload::$v(a) => a.escaped,)*
                    Payload::Json(v) => v.get("escaped") == Some(&Value::Bool(true)),
                }
            }

            /// Mark the byte strings escaped (the caller escapes them).
            pub fn set_escaped(&mut self) {
                match self {
                    $(Payload::$v(a) => a.escaped = true,)*
                    Payload::Json(Value::Object(m)) => {
                        m.insert("escaped".into(), Value::Bool(true));
                    }
                    Payload::Json(_) => {}
                }
            }
        }

        impl Serialize for Payload {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Payload::$v(a) => a.serialize(s),)*
                    Payload::Json(v) => v.serialize(s),
                }
            }
        }

        $(impl From<$t> for Payload {
            fn from(a: $t) -> Self {
                Payload::$v(a)
            }
        })*
    };
}

// Exec is boxed: it is twice the size of the next variant, and every event
// is moved through the pipeline's queues whatever its kind.
payload!(
    Exec(Box<Args<Exec>>),
    Fork(Args<Fork>),
    Exit(Args<Exit>),
    Open(Args<Open>),
    Sock(Args<Sock>),
    Unlink(Args<Unlink>),
    Rename(Args<Rename>),
    Chmod(Args<Chmod>),
    Mount(Args<Mount>),
    MemfdCreate(Args<MemfdCreate>),
    ModuleLoad(Args<ModuleLoad>),
    Setuid(Args<Setuid>),
    Ptrace(Args<Ptrace>),
    Kill(Args<Kill>),
    Bpf(Args<Bpf>),
    Syscall(Args<Syscall>),
);

impl From<Args<Exec>> for Payload {
    fn from(a: Args<Exec>) -> Self {
        Payload::Exec(Box::new(a))
    }
}

fn json_strings_mut(v: &mut Value, f: &mut dyn FnMut(&str, &mut String)) {
    let Value::Object(m) = v else { return };
    for (k, v) in m.iter_mut() {
        match v {
            Value::String(s) => f(k, s),
            Value::Array(a) => a.iter_mut().for_each(|v| {
                if let Value::String(s) = v {
                    f(k, s)
                }
            }),
            _ => {}
        }
    }
}

impl Payload {
    /// The field `key`, if present.
    pub fn get(&self, key: &str) -> Option<Arg<'_>> {
        if let Payload::Json(v) = self {
            return v.get(key).map(Arg::Json);
        }
        let mut found = None;
        self.each(&mut |k, v| {
            if found.is_none() && k == key {
                found = Some(v);
            }
        });
        found
    }

    /// The args as a JSON tree (tests, rare paths).
    pub fn to_value(&self) -> Value {
        match self {
            Payload::Json(v) => v.clone(),
            // Plain structs of numbers and strings: cannot fail.
            p => serde_json::to_value(p).unwrap_or_default(),
        }
    }
}

impl ArgSource for Payload {
    fn arg(&self, key: &str) -> Option<Arg<'_>> {
        self.get(key)
    }
}

impl Default for Payload {
    /// Empty args: `{}`.
    fn default() -> Self {
        Payload::Json(Value::Object(Default::default()))
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Json(v)
    }
}

/// A client cannot know the type without the kind: args read back are JSON.
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Payload::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An exec with nothing known.
    fn bare_exec() -> Exec {
        Exec {
            filename: None,
            argv: vec![],
            interpreter: None,
            exe_ctime: None,
            argc: None,
            argv_bytes: None,
            cwd: None,
        }
    }

    #[test]
    fn optional_keys_are_absent_not_null() {
        let e = Args {
            fields: bare_exec(),
            truncated: false,
            escaped: false,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"filename": null, "argv": []})
        );
        let k = Args {
            fields: Kill {
                target_pid: 3,
                signal: 9,
                target_tid: Some(4),
            },
            truncated: true,
            escaped: false,
        };
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(
            v,
            json!({"target_pid": 3, "signal": 9, "target_tid": 4, "truncated": true})
        );
        assert_eq!(serde_json::from_value::<Args<Kill>>(v).unwrap(), k);
        let f = Args {
            fields: Fork {},
            truncated: false,
            escaped: false,
        };
        assert_eq!(serde_json::to_value(&f).unwrap(), json!({}));
        let b = Bpf {
            cmd: NameOrNumber::Number(99),
        };
        assert_eq!(serde_json::to_value(&b).unwrap(), json!({"cmd": 99}));
    }

    /// `each` as a JSON object, to compare with serde's own output.
    fn via_each(p: &Payload) -> (Value, Vec<String>) {
        let mut m = serde_json::Map::new();
        let mut keys = Vec::new();
        p.each(&mut |k, v| {
            keys.push(k.to_string());
            let mut out = Vec::new();
            v.write_json(&mut out);
            m.insert(k.into(), serde_json::from_slice(&out).unwrap());
        });
        (Value::Object(m), keys)
    }

    fn args<T>(fields: T, truncated: bool, escaped: bool) -> Args<T> {
        Args {
            fields,
            truncated,
            escaped,
        }
    }

    /// Args with neither `truncated` nor `escaped`.
    fn plain<T>(fields: T) -> Payload
    where
        Args<T>: Into<Payload>,
    {
        args(fields, false, false).into()
    }

    fn samples() -> Vec<Payload> {
        let s = |x: &str| Some(x.to_string());
        let full = Exec {
            filename: s("/bin/sh"),
            argv: vec!["sh".into(), "-c".into(), "a\\b \"q\"".into()],
            interpreter: s("/usr/bin/dash"),
            exe_ctime: s("2026-01-01T00:00:00Z"),
            argc: Some(3),
            argv_bytes: Some(14),
            cwd: s("/root"),
        };
        vec![
            args(full, true, true).into(),
            plain(bare_exec()),
            plain(Fork {}),
            plain(Exit {
                exit_code: Some(1),
                signal: None,
            }),
            plain(Open {
                path: s("/etc/ü"),
                flags: -1,
                mode: 0o644,
                count: None,
                last: None,
            }),
            plain(Open {
                path: s("/etc/hosts"),
                flags: 0,
                mode: 0,
                count: Some(3),
                last: s("2026-12-04T16:00:00.000000001Z"),
            }),
            args(
                Open {
                    path: None,
                    flags: 0,
                    mode: 0,
                    count: None,
                    last: None,
                },
                true,
                false,
            )
            .into(),
            plain(Unlink {
                path: s("x"),
                flags: 512,
            }),
            plain(Rename {
                old_path: s("a"),
                new_path: None,
                flags: 1,
            }),
            plain(Chmod {
                path: None,
                mode: 0o755,
            }),
            plain(Mount {
                source: s("tmpfs"),
                target: s("/mnt"),
                fstype: None,
                flags: u64::MAX,
            }),
            plain(MemfdCreate {
                name: s("m"),
                flags: 1,
            }),
            args(ModuleLoad { name: None }, false, false).into(),
            plain(Sock {
                fd: 3,
                family: s("inet"),
                addr: s("10.0.0.1"),
                port: Some(443),
            }),
            plain(Sock {
                fd: -1,
                family: s("unix"),
                addr: s("/run/x"),
                port: None,
            }),
            plain(Setuid {
                uid: None,
                syscall: "setresuid".into(),
            }),
            plain(Ptrace {
                request: -5,
                target_pid: 7,
            }),
            plain(Kill {
                target_pid: 1,
                signal: 9,
                target_tid: Some(2),
            }),
            plain(Kill {
                target_pid: 1,
                signal: 9,
                target_tid: None,
            }),
            plain(Bpf {
                cmd: NameOrNumber::Name("BPF_PROG_LOAD".into()),
            }),
            plain(Bpf {
                cmd: NameOrNumber::Number(99),
            }),
            plain(Syscall {
                syscall: NameOrNumber::Number(451),
                nr: 451,
                args: [0, 1, u64::MAX, 3, 4, 5],
            }),
        ]
    }

    #[test]
    fn fields_are_what_serde_serialises() {
        for p in samples() {
            let serde = serde_json::to_value(&p).unwrap();
            let (each, keys) = via_each(&p);
            assert_eq!(each, serde, "{p:?}");
            assert_eq!(keys.len(), serde.as_object().unwrap().len(), "{p:?}");
            for k in keys {
                assert_eq!(
                    p.get(&k).map(|a| a.to_string()),
                    Some(serde[&k].to_string())
                );
            }
            assert_eq!(p.get("nonesuch"), None);
            assert_eq!(
                p.escaped(),
                serde.get("escaped") == Some(&Value::Bool(true))
            );
            // JSON args read the same through the same accessors.
            let back: Payload = serde_json::from_value(serde.clone()).unwrap();
            assert_eq!(via_each(&back).0, serde);
            assert_eq!(back.to_value(), p.to_value());
        }
    }

    #[test]
    fn strings_mut_reaches_every_string_with_its_key() {
        for mut p in samples() {
            let mut want = p.to_value();
            p.strings_mut(&mut |_, s| s.push('!'));
            fn bang(v: &mut Value) {
                match v {
                    Value::String(s) => s.push('!'),
                    Value::Array(a) => a.iter_mut().for_each(bang),
                    Value::Object(m) => m.values_mut().for_each(bang),
                    _ => {}
                }
            }
            bang(&mut want);
            assert_eq!(p.to_value(), want);
        }
        let mut p: Payload = args(
            Rename {
                old_path: Some("a".into()),
                new_path: Some("b".into()),
                flags: 0,
            },
            false,
            false,
        )
        .into();
        p.strings_mut(&mut |k, s| {
            if k == "new_path" {
                *s = "/abs/b".into()
            }
        });
        assert_eq!(p.get("new_path").and_then(|a| a.as_str()), Some("/abs/b"));
        assert_eq!(p.get("old_path").and_then(|a| a.as_str()), Some("a"));
        p.set_escaped();
        assert!(p.escaped());
        assert_eq!(p.to_value()["escaped"], true);
    }

    #[test]
    fn an_event_stays_small_to_move() {
        // Every event is moved through two queues; Exec alone is boxed.
        assert!(std::mem::size_of::<Payload>() <= 96);
    }

    #[test]
    fn arg_conversions() {
        assert_eq!(Arg::Uint(u64::MAX).as_i64(), None);
        assert_eq!(Arg::Int(-1).as_u64(), None);
        assert_eq!(Arg::Int(5).as_u64(), Some(5));
        assert!(Arg::Json(&Value::Null).is_null());
        assert_eq!(
            Arg::Json(&json!(["a", 1, "b"])).strs(),
            Some(vec!["a", "b"])
        );
        assert_eq!(Arg::Str("x").strs(), None);
        assert_eq!(Arg::Str("a\"b").to_string(), r#""a\"b""#);
    }
}
