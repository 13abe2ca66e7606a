//! Sigma's names for what traceed records: the logsource categories an
//! event belongs to, the fields a rule may test, and [`WireSubject`], the
//! view of one stored event under those names. The per-process state Sigma
//! needs but one event does not carry (the parent's image and command line,
//! the process's own command line on non-exec events) is kept in a bounded
//! [`ProcessMap`] fed with the events in order.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use traceed_wire::payload::{Arg, ArgSource};
use traceed_wire::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    ProcessCreation,
    FileEvent,
    FileDelete,
    FileRename,
    FileChange,
    NetworkConnection,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::ProcessCreation,
        Category::FileEvent,
        Category::FileDelete,
        Category::FileRename,
        Category::FileChange,
        Category::NetworkConnection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::ProcessCreation => "process_creation",
            Category::FileEvent => "file_event",
            Category::FileDelete => "file_delete",
            Category::FileRename => "file_rename",
            Category::FileChange => "file_change",
            Category::NetworkConnection => "network_connection",
        }
    }

    pub fn from_name(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether a rule of this category may test `f`: the process fields
    /// everywhere, the rest only where an event of the category has them.
    pub fn has_field(self, f: Field) -> bool {
        use Field::*;
        match f {
            Image | CommandLine | ParentImage | ParentCommandLine | User | ProcessId
            | ParentProcessId => true,
            CurrentDirectory => self == Category::ProcessCreation,
            TargetFilename => matches!(
                self,
                Category::FileEvent
                    | Category::FileDelete
                    | Category::FileRename
                    | Category::FileChange
            ),
            DestinationIp | DestinationPort | DestinationHostname | SourceIp | SourcePort
            | Initiated => self == Category::NetworkConnection,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Image,
    CommandLine,
    ParentImage,
    ParentCommandLine,
    User,
    CurrentDirectory,
    ProcessId,
    ParentProcessId,
    TargetFilename,
    DestinationIp,
    DestinationPort,
    DestinationHostname,
    SourceIp,
    SourcePort,
    Initiated,
}

impl Field {
    pub const ALL: [Field; 15] = [
        Field::Image,
        Field::CommandLine,
        Field::ParentImage,
        Field::ParentCommandLine,
        Field::User,
        Field::CurrentDirectory,
        Field::ProcessId,
        Field::ParentProcessId,
        Field::TargetFilename,
        Field::DestinationIp,
        Field::DestinationPort,
        Field::DestinationHostname,
        Field::SourceIp,
        Field::SourcePort,
        Field::Initiated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Image => "Image",
            Field::CommandLine => "CommandLine",
            Field::ParentImage => "ParentImage",
            Field::ParentCommandLine => "ParentCommandLine",
            Field::User => "User",
            Field::CurrentDirectory => "CurrentDirectory",
            Field::ProcessId => "ProcessId",
            Field::ParentProcessId => "ParentProcessId",
            Field::TargetFilename => "TargetFilename",
            Field::DestinationIp => "DestinationIp",
            Field::DestinationPort => "DestinationPort",
            Field::DestinationHostname => "DestinationHostname",
            Field::SourceIp => "SourceIp",
            Field::SourcePort => "SourcePort",
            Field::Initiated => "Initiated",
        }
    }

    /// Sigma field names are matched exactly (SigmaHQ spells them this way).
    pub fn from_name(s: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// What a rule is evaluated against.
pub trait Subject {
    fn in_category(&self, c: Category) -> bool;
    /// The field's value as text (numbers in decimal, booleans `true` /
    /// `false`), `None` when the event has no value for it.
    fn field(&self, f: Field) -> Option<Cow<'_, str>>;
}

// Open flags that mean the file is created or written (x86-64 and arm64
// values; they are the generic ones).
const O_WRONLY: i64 = 0o1;
const O_RDWR: i64 = 0o2;
const O_CREAT: i64 = 0o100;
const O_TRUNC: i64 = 0o1000;

/// A process as its last exec left it.
#[derive(Debug, Clone, Default)]
pub struct ProcInfo {
    pub exe: Option<String>,
    pub cmdline: Option<String>,
}

/// The last exec's image and command line per pid, bounded: when full, the
/// oldest entry goes (exit events remove theirs first, so only processes
/// whose exit was lost or that outlive `cap` newer ones are forgotten).
#[derive(Debug)]
pub struct ProcessMap {
    map: HashMap<u32, ProcInfo>,
    order: VecDeque<u32>,
    cap: usize,
}

impl Default for ProcessMap {
    fn default() -> Self {
        ProcessMap::new(65_536)
    }
}

impl ProcessMap {
    pub fn new(cap: usize) -> Self {
        ProcessMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub fn get(&self, pid: u32) -> Option<&ProcInfo> {
        self.map.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn insert(&mut self, pid: u32, info: ProcInfo) {
        if self.map.insert(pid, info).is_none() {
            self.order.push_back(pid);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // The order queue holds stale pids of removed entries; keep it from
        // growing past a small multiple of the map.
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order.retain(|p| map.contains_key(p));
        }
    }

    /// Call after matching the event, so an exec's ParentImage is the
    /// parent's state before this event.
    pub fn observe<A: ArgSource>(&mut self, ev: &Event<A>) {
        let Some(pid) = ev.pid else { return };
        // Only the thread-group leader's events describe the process.
        if ev.tid.is_some_and(|t| t != pid) && ev.kind != "exec" {
            return;
        }
        match &*ev.kind {
            "exec" if exec_ok(ev) => {
                let info = ProcInfo {
                    exe: exec_image(ev),
                    cmdline: exec_cmdline(ev),
                };
                self.insert(pid, info);
            }
            "fork" => {
                if let Some(parent) = ev.ppid.and_then(|p| self.map.get(&p)).cloned() {
                    self.insert(pid, parent);
                }
            }
            "exit" => {
                self.map.remove(&pid);
            }
            _ => {}
        }
    }
}

fn exec_ok<A>(ev: &Event<A>) -> bool {
    ev.retval.is_none_or(|r| r == 0)
}

fn exec_image<A: ArgSource>(ev: &Event<A>) -> Option<String> {
    ev.exe
        .as_deref()
        .or_else(|| ev.args.arg("filename")?.as_str())
        .map(String::from)
}

fn exec_cmdline<A: ArgSource>(ev: &Event<A>) -> Option<String> {
    Some(ev.args.arg("argv")?.strs()?.join(" "))
}

/// One stored event seen through Sigma's field names. `user` is the name of
/// the event's uid, resolved by the caller (the daemon caches it).
pub struct WireSubject<'a, A = serde_json::Value> {
    ev: &'a Event<A>,
    procs: &'a ProcessMap,
    user: Option<&'a str>,
    /// The exec's own argv joined, else borrowed from the process map.
    cmdline: Option<Cow<'a, str>>,
    categories: u8,
}

fn bit(c: Category) -> u8 {
    1 << (c as u8)
}

impl<'a, A: ArgSource> WireSubject<'a, A> {
    pub fn new(ev: &'a Event<A>, procs: &'a ProcessMap, user: Option<&'a str>) -> Self {
        let args = &ev.args;
        let categories = match &*ev.kind {
            "exec" if exec_ok(ev) => bit(Category::ProcessCreation),
            "open" => {
                let flags = args.arg("flags").and_then(|f| f.as_i64()).unwrap_or(0);
                let writes = flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) != 0;
                if writes && ev.retval.is_none_or(|r| r >= 0) {
                    bit(Category::FileEvent)
                } else {
                    0
                }
            }
            "rename" => bit(Category::FileEvent) | bit(Category::FileRename),
            "unlink" => bit(Category::FileDelete),
            "chmod" => bit(Category::FileChange),
            "connect" | "accept" => {
                let fam = args.arg("family").and_then(|f| f.as_str());
                if matches!(fam, Some("inet" | "inet6")) {
                    bit(Category::NetworkConnection)
                } else {
                    0
                }
            }
            _ => 0,
        };
        let cmdline = if ev.kind == "exec" {
            exec_cmdline(ev).map(Cow::Owned)
        } else {
            ev.pid
                .and_then(|p| procs.get(p))
                .and_then(|i| i.cmdline.as_deref())
                .map(Cow::Borrowed)
        };
        WireSubject {
            ev,
            procs,
            user,
            cmdline,
            categories,
        }
    }

    /// Whether the event is in any category a rule can see (the caller
    /// skips the rest cheaply).
    pub fn is_candidate(&self) -> bool {
        self.categories != 0
    }

    fn arg(&self, key: &str) -> Option<Arg<'a>> {
        self.ev.args.arg(key).filter(|v| !v.is_null())
    }

    fn arg_str(&self, key: &str) -> Option<Cow<'a, str>> {
        self.arg(key).and_then(|v| v.as_str()).map(Cow::Borrowed)
    }

    fn parent(&self) -> Option<&'a ProcInfo> {
        self.ev.ppid.and_then(|p| self.procs.get(p))
    }
}

impl<A: ArgSource> Subject for WireSubject<'_, A> {
    fn in_category(&self, c: Category) -> bool {
        self.categories & bit(c) != 0
    }

    fn field(&self, f: Field) -> Option<Cow<'_, str>> {
        let ev = self.ev;
        let connect = ev.kind == "connect";
        let num = |n: Option<u64>| n.map(|n| Cow::Owned(n.to_string()));
        match f {
            Field::Image => ev.exe.as_deref().map(Cow::Borrowed).or_else(|| {
                if ev.kind == "exec" {
                    self.arg_str("filename")
                } else {
                    None
                }
            }),
            Field::CommandLine => self.cmdline.as_deref().map(Cow::Borrowed),
            Field::ParentImage => self
                .parent()
                .and_then(|p| p.exe.as_deref())
                .map(Cow::Borrowed),
            Field::ParentCommandLine => self
                .parent()
                .and_then(|p| p.cmdline.as_deref())
                .map(Cow::Borrowed),
            Field::User => self.user.map(Cow::Borrowed),
            // Null until the exec payload records the working directory.
            Field::CurrentDirectory => self.arg_str("cwd"),
            Field::ProcessId => num(ev.pid.map(u64::from)),
            Field::ParentProcessId => num(ev.ppid.map(u64::from)),
            Field::TargetFilename => match &*ev.kind {
                "rename" => self.arg_str("new_path"),
                _ => self.arg_str("path"),
            },
            Field::DestinationIp if connect => self.arg_str("addr"),
            Field::DestinationPort if connect => num(self.arg("port").and_then(|p| p.as_u64())),
            Field::SourceIp if !connect => self.arg_str("addr"),
            Field::SourcePort if !connect => num(self.arg("port").and_then(|p| p.as_u64())),
            Field::DestinationIp
            | Field::DestinationPort
            | Field::SourceIp
            | Field::SourcePort
            | Field::DestinationHostname => None,
            Field::Initiated => match &*ev.kind {
                "connect" => Some(Cow::Borrowed("true")),
                "accept" => Some(Cow::Borrowed("false")),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn exec(pid: u32, ppid: u32, exe: &str, argv: &[&str]) -> Event {
        Event {
            pid: Some(pid),
            tid: Some(pid),
            ppid: Some(ppid),
            exe: Some(exe.into()),
            retval: Some(0),
            args: json!({"filename": exe, "argv": argv}),
            ..Event::new("exec", 1, "core")
        }
    }

    #[test]
    fn failed_execs_are_no_process_creation_and_cwd_is_current_directory() {
        let procs = ProcessMap::new(2);
        let mut ok = exec(12, 1, "/usr/bin/id", &["id"]);
        ok.retval = None;
        ok.args["cwd"] = json!("/srv/app");
        let s = WireSubject::new(&ok, &procs, None);
        assert!(s.in_category(Category::ProcessCreation));
        assert_eq!(
            s.field(Field::CurrentDirectory).as_deref(),
            Some("/srv/app")
        );
        let mut failed = ok.clone();
        failed.retval = Some(-2);
        let s = WireSubject::new(&failed, &procs, None);
        assert!(!s.in_category(Category::ProcessCreation));
    }

    #[test]
    fn parent_fields_come_from_the_process_map() {
        let mut procs = ProcessMap::new(2);
        let parent = exec(10, 1, "/tmp/dropper", &["/tmp/dropper", "-x"]);
        procs.observe(&parent);
        let child = exec(11, 10, "/usr/bin/bash", &["bash", "-i"]);
        let s = WireSubject::new(&child, &procs, Some("root"));
        assert!(s.in_category(Category::ProcessCreation));
        assert_eq!(s.field(Field::Image).as_deref(), Some("/usr/bin/bash"));
        assert_eq!(s.field(Field::CommandLine).as_deref(), Some("bash -i"));
        assert_eq!(s.field(Field::ParentImage).as_deref(), Some("/tmp/dropper"));
        assert_eq!(
            s.field(Field::ParentCommandLine).as_deref(),
            Some("/tmp/dropper -x")
        );
        assert_eq!(s.field(Field::User).as_deref(), Some("root"));
        assert_eq!(s.field(Field::ProcessId).as_deref(), Some("11"));
        assert_eq!(s.field(Field::CurrentDirectory), None);
        procs.observe(&child);
        // A file event of the child carries its command line.
        let open = Event {
            pid: Some(11),
            tid: Some(11),
            ppid: Some(10),
            retval: Some(3),
            args: json!({"path": "/etc/x", "flags": 0o101, "mode": 0o644}),
            ..Event::new("open", 2, "core")
        };
        let s = WireSubject::new(&open, &procs, None);
        assert!(s.in_category(Category::FileEvent));
        assert_eq!(s.field(Field::TargetFilename).as_deref(), Some("/etc/x"));
        assert_eq!(s.field(Field::CommandLine).as_deref(), Some("bash -i"));
        // A read-only open is no file_event.
        let ro = Event {
            args: json!({"path": "/etc/shadow", "flags": 0, "mode": 0}),
            ..open
        };
        assert!(!WireSubject::new(&ro, &procs, None).is_candidate());
        // Bounded: a third process evicts the oldest.
        procs.observe(&exec(12, 1, "/bin/x", &["x"]));
        assert_eq!(procs.len(), 2);
        assert!(procs.get(10).is_none());
    }

    #[test]
    fn connect_and_accept_directions() {
        let procs = ProcessMap::default();
        let c = Event {
            pid: Some(5),
            args: json!({"fd": 3, "family": "inet", "addr": "10.1.1.1", "port": 4444}),
            ..Event::new("connect", 1, "core")
        };
        let s = WireSubject::new(&c, &procs, None);
        assert_eq!(s.field(Field::Initiated).as_deref(), Some("true"));
        assert_eq!(s.field(Field::DestinationIp).as_deref(), Some("10.1.1.1"));
        assert_eq!(s.field(Field::DestinationPort).as_deref(), Some("4444"));
        assert_eq!(s.field(Field::SourceIp), None);
        let a = Event {
            kind: "accept".into(),
            ..c.clone()
        };
        let s = WireSubject::new(&a, &procs, None);
        assert_eq!(s.field(Field::Initiated).as_deref(), Some("false"));
        assert_eq!(s.field(Field::SourceIp).as_deref(), Some("10.1.1.1"));
        assert_eq!(s.field(Field::DestinationIp), None);
        let unix = Event {
            args: json!({"fd": 3, "family": "unix", "addr": "/run/x", "port": null}),
            ..c
        };
        assert!(!WireSubject::new(&unix, &procs, None).is_candidate());
    }
}
