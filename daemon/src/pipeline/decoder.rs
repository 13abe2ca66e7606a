//! Turns a raw record from the kernel (`struct event` of
//! daemon-ebpf/include/events.h) into a wire `Event`. The Rust mirror of the
//! header is checked at compile time against offsets measured from the C
//! header by build.rs.

use std::mem::{offset_of, size_of};

use serde_json::{json, Map, Value};
use traceed_wire::Event;

#[allow(dead_code)] // EVENT_SIZE is only read by tests
mod layout {
    include!(concat!(env!("OUT_DIR"), "/layout.rs"));
}

pub mod syscall_table {
    include!(concat!(env!("OUT_DIR"), "/syscalls.rs"));

    pub fn name(nr: u32) -> Option<&'static str> {
        SYSCALLS.iter().find(|(_, n)| *n == nr).map(|(s, _)| *s)
    }

    pub fn number(name: &str) -> Option<u32> {
        SYSCALLS.iter().find(|(s, _)| *s == name).map(|(_, n)| *n)
    }
}

pub const TASK_COMM_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawHeader {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub retval: i64,
    pub kind: u32,
    pub flags: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub ns_pid: u32,
    pub mnt_ns: u32,
    pub pid_ns: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub args: [u64; 6],
    pub str_len: [u16; 4],
    pub data_len: u32,
    pub aux: u32,
}

macro_rules! same_offset {
    ($($field:ident => $c:ident),* $(,)?) => {
        $(const _: () = assert!(offset_of!(RawHeader, $field) == layout::$c, concat!("events.h and decoder.rs disagree on ", stringify!($field)));)*
    };
}
const _: () = assert!(size_of::<RawHeader>() == layout::HEADER_SIZE);
same_offset!(
    ts_ns => OFF_TS_NS, cgroup_id => OFF_CGROUP_ID, retval => OFF_RETVAL, kind => OFF_KIND,
    flags => OFF_FLAGS, pid => OFF_PID, tid => OFF_TID, ppid => OFF_PPID, uid => OFF_UID,
    gid => OFF_GID, ns_pid => OFF_NS_PID, mnt_ns => OFF_MNT_NS, pid_ns => OFF_PID_NS,
    comm => OFF_COMM, args => OFF_ARGS, str_len => OFF_STR_LEN, data_len => OFF_DATA_LEN,
);

// enum variant of syscalls.h: which syscall of a kind.
const V_T: u32 = 5;
const V_TG: u32 = 6;
const V_RE: u32 = 3;
const V_RES: u32 = 4;

/// Indexed by `enum bpf_cmd`.
const BPF_CMDS: &[&str] = &[
    "BPF_MAP_CREATE",
    "BPF_MAP_LOOKUP_ELEM",
    "BPF_MAP_UPDATE_ELEM",
    "BPF_MAP_DELETE_ELEM",
    "BPF_MAP_GET_NEXT_KEY",
    "BPF_PROG_LOAD",
    "BPF_OBJ_PIN",
    "BPF_OBJ_GET",
    "BPF_PROG_ATTACH",
    "BPF_PROG_DETACH",
    "BPF_PROG_TEST_RUN",
    "BPF_PROG_GET_NEXT_ID",
    "BPF_MAP_GET_NEXT_ID",
    "BPF_PROG_GET_FD_BY_ID",
    "BPF_MAP_GET_FD_BY_ID",
    "BPF_OBJ_GET_INFO_BY_FD",
    "BPF_PROG_QUERY",
    "BPF_RAW_TRACEPOINT_OPEN",
    "BPF_BTF_LOAD",
    "BPF_BTF_GET_FD_BY_ID",
    "BPF_TASK_FD_QUERY",
    "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
    "BPF_MAP_FREEZE",
    "BPF_BTF_GET_NEXT_ID",
    "BPF_MAP_LOOKUP_BATCH",
    "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
    "BPF_MAP_UPDATE_BATCH",
    "BPF_MAP_DELETE_BATCH",
    "BPF_LINK_CREATE",
    "BPF_LINK_UPDATE",
    "BPF_LINK_GET_FD_BY_ID",
    "BPF_LINK_GET_NEXT_ID",
    "BPF_ENABLE_STATS",
    "BPF_ITER_CREATE",
    "BPF_LINK_DETACH",
    "BPF_PROG_BIND_MAP",
    "BPF_TOKEN_CREATE",
];

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// (family, addr, port) of a raw `struct sockaddr`.
fn sockaddr(b: &[u8]) -> (Option<&'static str>, Option<String>, Option<u16>) {
    if b.len() < 2 {
        return (None, None, None);
    }
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        AF_INET if b.len() >= 8 => {
            let ip = std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            (Some("inet"), Some(ip.to_string()), Some(port(b)))
        }
        AF_INET6 if b.len() >= 24 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[8..24]);
            (
                Some("inet6"),
                Some(std::net::Ipv6Addr::from(o).to_string()),
                Some(port(b)),
            )
        }
        AF_UNIX => {
            let path = &b[2..];
            // Abstract sockets start with NUL; show them as '@name'.
            let s = match path.first() {
                Some(0) => format!("@{}", cstr(&path[1..])),
                _ => cstr(path),
            };
            (Some("unix"), Some(s), None)
        }
        _ => (Some("other"), None, None),
    }
}

pub const EF_TRUNCATED: u32 = 1 << 0;
pub const EF_HAS_NS: u32 = 1 << 1;
pub const EF_HAS_PPID: u32 = 1 << 2;
pub const EF_HAS_RETVAL: u32 = 1 << 3;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the {1}-byte header")]
    Short(usize, usize),
    #[error("record declares {declared} data bytes but carries {actual}")]
    DataLen { declared: usize, actual: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

/// A decoded record before enrichment: the header plus its strings.
pub struct Record<'a> {
    pub h: RawHeader,
    pub strs: [Option<&'a [u8]>; 4],
}

pub fn parse(buf: &[u8]) -> Result<Record<'_>, DecodeError> {
    if buf.len() < layout::HEADER_SIZE {
        return Err(DecodeError::Short(buf.len(), layout::HEADER_SIZE));
    }
    // SAFETY: length checked above; RawHeader is plain old data and the
    // read is unaligned-safe.
    let h: RawHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let data = &buf[layout::HEADER_SIZE..];
    let declared = h.data_len as usize;
    if declared > data.len() {
        return Err(DecodeError::DataLen {
            declared,
            actual: data.len(),
        });
    }
    let mut strs = [None; 4];
    let mut off = 0usize;
    for (i, len) in h.str_len.iter().enumerate() {
        let len = *len as usize;
        if len == 0 || off + len > declared {
            continue;
        }
        strs[i] = Some(&data[off..off + len]);
        off += len;
    }
    Ok(Record { h, strs })
}

pub fn kind_name(kind: u32) -> Option<&'static str> {
    Some(match kind {
        1 => "exec",
        2 => "fork",
        3 => "exit",
        4 => "open",
        5 => "connect",
        6 => "accept",
        7 => "bind",
        8 => "unlink",
        9 => "rename",
        10 => "chmod",
        11 => "setuid",
        12 => "ptrace",
        13 => "kill",
        14 => "mount",
        15 => "module_load",
        16 => "bpf",
        17 => "memfd_create",
        18 => "syscall",
        _ => return None,
    })
}

/// A C string up to its first NUL, lossily as UTF-8.
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// argv as the kernel keeps it: NUL-separated, NUL-terminated.
fn split_argv(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    b.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Build the event (without id, exe, container: enrichment fills those).
pub fn to_event(
    rec: &Record<'_>,
    boot_to_wall_ns: i64,
    fidelity: &str,
) -> Result<Event, DecodeError> {
    let h = &rec.h;
    let kind = kind_name(h.kind).ok_or(DecodeError::Kind(h.kind))?;
    let s = |i: usize| rec.strs[i].map(cstr);
    let mut args = Map::new();
    let a = &h.args;
    // Syscall arguments arrive as u64 slots; C ints are their low 32 bits.
    let int = |v: u64| v as u32 as i32;
    match kind {
        "exec" => {
            args.insert("filename".into(), json!(s(0)));
            let argv = rec.strs[1].map(split_argv).unwrap_or_default();
            args.insert("argv".into(), json!(argv));
            if let Some(interp) = s(2).filter(|i| Some(i) != s(0).as_ref()) {
                args.insert("interpreter".into(), json!(interp));
            }
            if a[3] != 0 {
                args.insert(
                    "exe_ctime".into(),
                    json!(traceed_wire::format_ts(a[3] as i64)),
                );
            }
        }
        "exit" => {
            // A process killed by a signal passed no status to exit.
            let sig = a[1];
            let (code, sig) = if sig == 0 {
                (json!(a[0]), Value::Null)
            } else {
                (Value::Null, json!(sig))
            };
            args.insert("exit_code".into(), code);
            args.insert("signal".into(), sig);
        }
        "open" => {
            args.insert("path".into(), json!(s(0)));
            args.insert("flags".into(), json!(int(a[0])));
            args.insert("mode".into(), json!(a[1] as u32));
        }
        "unlink" => {
            args.insert("path".into(), json!(s(0)));
            args.insert("flags".into(), json!(int(a[1])));
        }
        "rename" => {
            args.insert("old_path".into(), json!(s(0)));
            args.insert("new_path".into(), json!(s(1)));
            args.insert("flags".into(), json!(a[1] as u32));
        }
        "chmod" => {
            args.insert("path".into(), json!(s(0)));
            args.insert("mode".into(), json!(a[0] as u32));
        }
        "mount" => {
            args.insert("source".into(), json!(s(0)));
            args.insert("target".into(), json!(s(1)));
            args.insert("fstype".into(), json!(s(2)));
            args.insert("flags".into(), json!(a[0]));
        }
        "memfd_create" => {
            args.insert("name".into(), json!(s(0)));
            args.insert("flags".into(), json!(a[0] as u32));
        }
        "module_load" => {
            args.insert("name".into(), json!(s(0)));
        }
        "connect" | "bind" | "accept" => {
            args.insert("fd".into(), json!(int(a[0])));
            let (family, addr, port) = rec.strs[0].map(sockaddr).unwrap_or((None, None, None));
            args.insert("family".into(), json!(family));
            args.insert("addr".into(), json!(addr));
            args.insert("port".into(), json!(port));
        }
        "setuid" => {
            // The uid the caller asked to become: setuid's argument,
            // setre[s]uid's euid unless it is -1 ("unchanged"), then ruid.
            let unchanged = |v: u64| v as u32 == u32::MAX;
            let uid = match h.aux {
                V_RE | V_RES if !unchanged(a[1]) => Some(a[1] as u32),
                V_RE | V_RES if !unchanged(a[0]) => Some(a[0] as u32),
                V_RE | V_RES => None,
                _ => Some(a[0] as u32),
            };
            args.insert("uid".into(), json!(uid));
            let sys = match h.aux {
                V_RE => "setreuid",
                V_RES => "setresuid",
                _ => "setuid",
            };
            args.insert("syscall".into(), json!(sys));
        }
        "ptrace" => {
            args.insert("request".into(), json!(a[0] as i64));
            args.insert("target_pid".into(), json!(int(a[1])));
        }
        "kill" => {
            let (target, sig) = match h.aux {
                V_TG => (int(a[0]), int(a[2])),
                _ => (int(a[0]), int(a[1])),
            };
            args.insert("target_pid".into(), json!(target));
            args.insert("signal".into(), json!(sig));
            if h.aux == V_T || h.aux == V_TG {
                args.insert(
                    "target_tid".into(),
                    json!(int(a[if h.aux == V_TG { 1 } else { 0 }])),
                );
            }
        }
        "syscall" => {
            let name = syscall_table::name(h.aux).map_or_else(|| json!(h.aux), |n| json!(n));
            args.insert("syscall".into(), name);
            args.insert("nr".into(), json!(h.aux));
            args.insert("args".into(), json!(a));
        }
        "bpf" => {
            let cmd = int(a[0]);
            args.insert(
                "cmd".into(),
                BPF_CMDS
                    .get(cmd as usize)
                    .map_or_else(|| json!(cmd), |n| json!(n)),
            );
        }
        _ => {}
    }
    if h.flags & EF_TRUNCATED != 0 {
        args.insert("truncated".into(), json!(true));
    }
    let has_ns = h.flags & EF_HAS_NS != 0;
    let ns = |v: u32| has_ns.then_some(v);
    Ok(Event {
        id: 0,
        ts: (h.ts_ns as i64).saturating_add(boot_to_wall_ns),
        kind: kind.to_string(),
        pid: Some(h.pid),
        tid: Some(h.tid),
        ppid: (h.flags & EF_HAS_PPID != 0).then_some(h.ppid),
        uid: Some(h.uid),
        gid: Some(h.gid),
        comm: Some(cstr(&h.comm)),
        ns_pid: ns(h.ns_pid),
        exe: None,
        cgroup_id: (h.cgroup_id != 0).then_some(h.cgroup_id),
        container_id: None,
        mnt_ns: ns(h.mnt_ns),
        pid_ns: ns(h.pid_ns),
        retval: (h.flags & EF_HAS_RETVAL != 0).then_some(h.retval),
        args: Value::Object(args),
        fidelity: fidelity.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, strs: &[&[u8]]) -> Vec<u8> {
        let mut h: RawHeader = unsafe { std::mem::zeroed() };
        h.kind = kind;
        h.pid = 42;
        h.tid = 43;
        h.flags = EF_HAS_PPID;
        h.ppid = 1;
        h.comm[..4].copy_from_slice(b"true");
        let mut data = Vec::new();
        for (i, s) in strs.iter().enumerate() {
            h.str_len[i] = s.len() as u16;
            data.extend_from_slice(s);
        }
        h.data_len = data.len() as u32;
        let mut buf = vec![0u8; size_of::<RawHeader>()];
        unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast(), h) };
        buf.extend_from_slice(&data);
        buf
    }

    #[test]
    fn header_matches_c_layout() {
        // The const asserts above are the real check; this keeps a test
        // that fails loudly if someone removes them.
        assert_eq!(size_of::<RawHeader>(), layout::HEADER_SIZE);
        assert_eq!(offset_of!(RawHeader, data_len), layout::OFF_DATA_LEN);
        assert_eq!(layout::EVENT_SIZE, layout::HEADER_SIZE + 8192);
    }

    #[test]
    fn exec_decodes_filename_and_argv() {
        let buf = record(1, &[b"/bin/true\0", b"true\0--marker\0x y\0"]);
        let rec = parse(&buf).unwrap();
        let e = to_event(&rec, 1000, "core").unwrap();
        assert_eq!(e.kind, "exec");
        assert_eq!(e.pid, Some(42));
        assert_eq!(e.ppid, Some(1));
        assert_eq!(e.comm.as_deref(), Some("true"));
        assert_eq!(e.mnt_ns, None, "namespaces unknown without EF_HAS_NS");
        assert_eq!(e.args["filename"], "/bin/true");
        assert_eq!(e.args["argv"], json!(["true", "--marker", "x y"]));
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(matches!(parse(&[0u8; 10]), Err(DecodeError::Short(10, _))));
        let mut buf = record(1, &[b"/bin/true\0"]);
        buf.truncate(buf.len() - 3);
        assert!(matches!(parse(&buf), Err(DecodeError::DataLen { .. })));
        let buf = record(999, &[]);
        assert_eq!(
            to_event(&parse(&buf).unwrap(), 0, "core").unwrap_err(),
            DecodeError::Kind(999)
        );
    }
}
