//! The `args` object of each event kind, typed. Each type serialises exactly
//! as the daemon's JSON has always looked (same keys; `null` for a value not
//! known; keys marked optional below are absent rather than null). The
//! daemon builds these from kernel records; a client may parse an event's
//! `args` into the type of its `kind`.

use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn optional_keys_are_absent_not_null() {
        let e = Args {
            fields: Exec {
                filename: None,
                argv: vec![],
                interpreter: None,
                exe_ctime: None,
                argc: None,
                argv_bytes: None,
                cwd: None,
            },
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
}
