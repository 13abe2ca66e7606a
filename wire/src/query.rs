//! The query parameters of `GET /v1/events`, listed once: tracectl
//! serialises an [`EventsQuery`] into the query string, the daemon
//! deserialises one from it (strictly: every refusal is a message naming
//! the parameter), and the OpenAPI drift test checks the document's
//! parameters against [`PARAMS`].
//!
//! Deserialising checks each parameter on its own, in the order given: an
//! unknown, repeated or empty parameter, a malformed number, time, kind,
//! container id, fidelity, cursor, order or follow flag. What needs more
//! than one parameter or the clock (resolving times against now, `since`
//! after `until`, `order=desc` with `follow`) is the daemon's.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Events per page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Largest `limit` accepted.
pub const MAX_LIMIT: u32 = 10_000;
/// Longest container id accepted (a full docker/containerd id is 64 hex).
pub const MAX_CONTAINER: usize = 64;
/// comm is 15 bytes in the kernel; exe a path. Anything longer cannot match.
pub const MAX_TEXT: usize = 4096;

/// The JSON Schema `type` of a parameter's value in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Boolean,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
        }
    }
}

/// One query parameter of `GET /v1/events`, as documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    pub ty: ParamType,
    pub description: &'static str,
}

const fn param(name: &'static str, ty: ParamType, description: &'static str) -> Param {
    Param {
        name,
        ty,
        description,
    }
}

/// Every parameter `GET /v1/events` accepts, in the order of the OpenAPI
/// document (and of [`EventsQuery`]'s fields).
pub const PARAMS: &[Param] = &[
    param(
        "since",
        ParamType::String,
        "Start of the window, inclusive: a duration back from now (`90s`, `15m`, `1h`, `2d`, `1h 30m`) or an RFC 3339 time.",
    ),
    param(
        "until",
        ParamType::String,
        "End of the window, exclusive; same forms as `since`. Must not be before `since`.",
    ),
    param(
        "kind",
        ParamType::String,
        "Comma-separated event kinds; an unknown kind is a 400 that lists the known ones.",
    ),
    param(
        "pid",
        ParamType::Integer,
        "Process id of the acting task (host view).",
    ),
    param("ppid", ParamType::Integer, "Parent process id."),
    param("uid", ParamType::Integer, "User id of the acting task."),
    param(
        "comm",
        ParamType::String,
        "Exact command name (the kernel's comm, at most 15 bytes; longer values match nothing).",
    ),
    param("exe", ParamType::String, "Exact executable path."),
    param(
        "container",
        ParamType::String,
        "Container id or a prefix of it (hex, case-insensitive), as `docker ps` shows it.",
    ),
    param(
        "fidelity",
        ParamType::String,
        "Only events recorded by this rung of the portability ladder.",
    ),
    param(
        "path",
        ParamType::String,
        "A path: exact (`/etc/shadow`), or a prefix ending in `*` (`/etc/*`, `/etc/pass*`); `*` anywhere else is a 400. Matches the path of open, unlink and chmod, the exec filename, the mount target and either side of a rename.",
    ),
    param(
        "addr",
        ParamType::String,
        "An IPv4 or IPv6 address (`10.1.2.3`, `::1`) or a CIDR block (`10.0.0.0/8`, `fd00::/8`); matches the address of connect, accept and bind. An IPv4 address also matches its IPv4-mapped IPv6 form.",
    ),
    param(
        "port",
        ParamType::Integer,
        "A port (0-65535); matches connect, accept and bind.",
    ),
    param(
        "cmdline",
        ParamType::String,
        "A substring of an exec's argv joined by single spaces (case-sensitive); matches exec events.",
    ),
    param(
        "failed",
        ParamType::Boolean,
        "`true`: only events whose syscall returned an error (a negative retval). `false` is the same as not giving it.",
    ),
    param(
        "limit",
        ParamType::Integer,
        "Events per page (default 1000).",
    ),
    param(
        "cursor",
        ParamType::String,
        "Continue after the last page: pass `next_cursor` exactly as returned (opaque). Stable under concurrent inserts.",
    ),
    param(
        "order",
        ParamType::String,
        "`asc` (oldest first, the default) or `desc` (newest first). `desc` cannot be combined with `follow=true`.",
    ),
    param(
        "follow",
        ParamType::Boolean,
        "Stream instead of paging: NDJSON, one event per line, first the history the other filters select, then live events as they are stored, with no gap and no duplicate between the two. A reader too slow for the live stream gets a `lost` line (`args.source` = `follower`, `args.count` = events skipped before filtering: an upper bound) and continues; the skipped events are in the store. The stream ends only when the client closes it.",
    ),
    param(
        "descendants_of",
        ParamType::Integer,
        "Only events of the process with this pid at `at` (default now: the live process with that pid, else the most recent one) and of every process it started, at any depth (process instances, so a reused pid never joins). A pid with no such process is a 404. At most 100000 processes are followed. Cannot be combined with `follow=true`.",
    ),
    param(
        "at",
        ParamType::String,
        "With `descendants_of`: the time at which the pid names the process; same forms as `since`.",
    ),
];

/// `order=`: oldest first (the default) or newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    Desc,
}

/// The parameters of `GET /v1/events`; `None` (empty, false) is "not
/// given". Times stay strings (a duration back from now or RFC 3339, see
/// [`crate::parse_time_spec`]): the daemon resolves them against its clock.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct EventsQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Sent as one comma-separated value.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "comma_list")]
    pub kind: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// A container id or a prefix of it; lower case once deserialised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<String>,
    /// Checked by [`PathMatch::parse`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Checked by [`Cidr::parse`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub failed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page, as returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    #[serde(skip_serializing_if = "is_false")]
    pub follow: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descendants_of: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

fn comma_list<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.join(","))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The opaque keyset cursor of `next_cursor`: the last id of a page.
pub fn encode_cursor(id: i64) -> String {
    format!("i{id:x}")
}

/// The id in a cursor [`encode_cursor`] made; None for anything else.
pub fn decode_cursor(s: &str) -> Option<i64> {
    let hex = s.strip_prefix('i')?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(hex, 16).ok().filter(|v| *v >= 0)
}

/// The message of a refused `cursor`.
pub const BAD_CURSOR: &str =
    "parameter 'cursor': not a cursor this server issued (pass next_cursor exactly as returned)";

fn parse_num(name: &str, v: &str) -> Result<u32, String> {
    // `+5` parses as a Rust integer; a query parameter is digits only.
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "parameter '{name}': '{v}' is not a non-negative integer"
        ));
    }
    v.parse().map_err(|_| {
        format!(
            "parameter '{name}': '{v}' is out of range (0..={})",
            u32::MAX
        )
    })
}

impl EventsQuery {
    /// Set parameter `k` from its value `v`, checking both; `k` must not
    /// have been set before.
    fn set(&mut self, k: &str, v: String) -> Result<(), String> {
        if v.is_empty() {
            return Err(format!("parameter '{k}' is empty"));
        }
        let time = |v: String| match crate::parse_time_spec(&v, 0) {
            // Whether a time parses does not depend on the clock.
            Ok(_) => Ok(Some(v)),
            Err(e) => Err(format!("parameter '{k}': {e}")),
        };
        let text = |v: String| {
            if v.len() > MAX_TEXT || v.contains('\0') {
                Err(format!(
                    "parameter '{k}': longer than {MAX_TEXT} bytes or contains NUL"
                ))
            } else {
                Ok(Some(v))
            }
        };
        match k {
            "since" => self.since = time(v)?,
            "until" => self.until = time(v)?,
            "kind" => {
                if v.len() > MAX_TEXT {
                    return Err(format!("parameter 'kind': longer than {MAX_TEXT} bytes"));
                }
                for kind in v.split(',') {
                    if !crate::is_kind(kind) {
                        return Err(format!(
                            "parameter 'kind': unknown kind '{kind}'; known: {}",
                            crate::KINDS.join(", ")
                        ));
                    }
                    if !self.kind.iter().any(|k| k == kind) {
                        self.kind.push(kind.to_string());
                    }
                }
            }
            "pid" => self.pid = Some(parse_num(k, &v)?),
            "ppid" => self.ppid = Some(parse_num(k, &v)?),
            "uid" => self.uid = Some(parse_num(k, &v)?),
            "comm" => self.comm = text(v)?,
            "exe" => self.exe = text(v)?,
            "container" => {
                if v.len() > MAX_CONTAINER || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "parameter 'container': '{v}' is not a container id \
                         (1 to {MAX_CONTAINER} hex digits; a prefix is enough)"
                    ));
                }
                self.container = Some(v.to_ascii_lowercase());
            }
            "fidelity" => {
                if !crate::FIDELITIES.contains(&v.as_str()) {
                    return Err(format!(
                        "parameter 'fidelity': '{v}' is not one of {}",
                        crate::FIDELITIES.join(", ")
                    ));
                }
                self.fidelity = Some(v);
            }
            "path" => {
                PathMatch::parse(&v).map_err(|e| format!("parameter 'path': {e}"))?;
                self.path = text(v)?;
            }
            "addr" => {
                Cidr::parse(&v).map_err(|e| format!("parameter 'addr': {e}"))?;
                self.addr = Some(v);
            }
            "port" => {
                let n = parse_num(k, &v)
                    .ok()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| format!("parameter 'port': '{v}' is not a port (0-65535)"))?;
                self.port = Some(n);
            }
            "cmdline" => self.cmdline = text(v)?,
            "failed" => {
                self.failed = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("parameter 'failed': '{v}' is not true or false")),
                }
            }
            "limit" => {
                let n = parse_num(k, &v).map_err(|_| {
                    format!("parameter 'limit': '{v}' is not an integer in 1..={MAX_LIMIT}")
                })?;
                if !(1..=MAX_LIMIT).contains(&n) {
                    return Err(format!("parameter 'limit': {n} is outside 1..={MAX_LIMIT}"));
                }
                self.limit = Some(n);
            }
            "cursor" => {
                if decode_cursor(&v).is_none() {
                    return Err(BAD_CURSOR.into());
                }
                self.cursor = Some(v);
            }
            "order" => {
                self.order = Some(match v.as_str() {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    _ => return Err(format!("parameter 'order': '{v}' is not asc or desc")),
                })
            }
            "follow" => {
                self.follow = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("parameter 'follow': '{v}' is not true or false")),
                }
            }
            "descendants_of" => self.descendants_of = Some(parse_num(k, &v)?),
            "at" => self.at = time(v)?,
            _ => unreachable!("checked against PARAMS"),
        }
        Ok(())
    }
}

/// `path=`: an exact path or a prefix (the text before a trailing `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    /// Only a trailing `*` is special: a path may hold any other byte, and a
    /// glob could not use the index.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(b) => (b, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!(
                "'{s}': '*' is only allowed at the end (a prefix such as /etc/*); globs are not supported"
            ));
        }
        Ok(if prefix {
            Self::Prefix(body.to_string())
        } else {
            Self::Exact(body.to_string())
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// `addr=`: an address block, IPv4 held as its IPv4-mapped IPv6 form so a
/// v4 address matches whichever way a socket reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u8; 16],
    /// Leading bits that must match, 0..=128 (an IPv4 /n is 96 + n).
    pub bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: std::net::IpAddr = ip.parse().map_err(|_| {
            format!(
                "'{s}' is not an IP address or CIDR block (10.0.0.1, 10.0.0.0/8, ::1, fd00::/8)"
            )
        })?;
        let (max, base) = if ip.is_ipv4() { (32u8, 96u8) } else { (128, 0) };
        let bits = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("'{s}': prefix length '{l}' is not in 0..={max}")),
            },
        };
        let mut c = Self {
            addr: normalise(ip),
            bits: base + bits,
        };
        // The block's own address: 10.1.2.3/8 is 10.0.0.0/8.
        c.addr = c.masked(c.addr);
        Ok(c)
    }

    /// One address, not a block.
    pub fn is_host(&self) -> bool {
        self.bits == 128
    }

    fn masked(&self, mut a: [u8; 16]) -> [u8; 16] {
        for (i, b) in a.iter_mut().enumerate() {
            let keep = (self.bits as usize).saturating_sub(i * 8).min(8);
            *b &= (0xffu16 << (8 - keep)) as u8;
        }
        a
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.masked(normalise(ip)) == self.addr
    }
}

/// The 16 bytes an address is compared and indexed by (IPv4 mapped).
pub fn normalise(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Strict: an unknown, repeated or empty parameter, or a malformed value,
/// is an error whose message names the parameter.
impl<'de> Deserialize<'de> for EventsQuery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EventsQueryVisitor)
    }
}

struct EventsQueryVisitor;

impl<'de> Visitor<'de> for EventsQueryVisitor {
    type Value = EventsQuery;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the query parameters of GET /v1/events")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventsQuery, A::Error> {
        let mut q = EventsQuery::default();
        let mut seen = [false; PARAMS.len()];
        while let Some((k, v)) = map.next_entry::<String, String>()? {
            let Some(i) = PARAMS.iter().position(|p| p.name == k) else {
                let names: Vec<&str> = PARAMS.iter().map(|p| p.name).collect();
                return Err(de::Error::custom(format!(
                    "unknown parameter '{k}'; accepted: {}",
                    names.join(", ")
                )));
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(de::Error::custom(format!(
                    "parameter '{k}' given more than once"
                )));
            }
            q.set(&k, v).map_err(de::Error::custom)?;
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the table lists is what the struct serialises, in that order.
    #[test]
    fn params_are_the_fields() {
        let all = EventsQuery {
            since: Some("1h".into()),
            until: Some("5m".into()),
            kind: vec!["exec".into(), "open".into()],
            pid: Some(1),
            ppid: Some(2),
            uid: Some(3),
            comm: Some("sh".into()),
            exe: Some("/bin/sh".into()),
            container: Some("abc".into()),
            fidelity: Some("core".into()),
            path: Some("/etc/*".into()),
            addr: Some("10.0.0.0/8".into()),
            port: Some(443),
            cmdline: Some("base64 -d".into()),
            failed: true,
            limit: Some(10),
            cursor: Some(encode_cursor(42)),
            order: Some(Order::Desc),
            follow: true,
            descendants_of: Some(4),
            at: Some("1m".into()),
        };
        let v = serde_json::to_value(&all).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut names: Vec<&str> = PARAMS.iter().map(|p| p.name).collect();
        names.sort();
        assert_eq!(keys, names);
        assert_eq!(v["kind"], "exec,open");
        assert_eq!(v["order"], "desc");
        let none = serde_json::to_value(EventsQuery::default()).unwrap();
        assert_eq!(none, serde_json::json!({}), "nothing given, nothing sent");
    }

    #[test]
    fn descendants_of_and_at_are_checked() {
        let mut q = EventsQuery::default();
        q.set("descendants_of", "7".into()).unwrap();
        q.set("at", "5m".into()).unwrap();
        assert_eq!(q.descendants_of, Some(7));
        assert_eq!(q.at.as_deref(), Some("5m"));
        let e = q.set("at", "later".into()).unwrap_err();
        assert!(e.contains("parameter 'at'"), "{e}");
        let e = q.set("descendants_of", "x".into()).unwrap_err();
        assert!(e.contains("parameter 'descendants_of'"), "{e}");
    }

    #[test]
    fn payload_parameters() {
        let q = |s: &str| {
            let mut q = EventsQuery::default();
            for kv in s.split('&') {
                let (k, v) = kv.split_once('=').unwrap();
                q.set(k, v.to_string())?;
            }
            Ok::<_, String>(q)
        };
        assert!(q("path=/etc/*&addr=10.0.0.0/8&port=22&cmdline=a b&failed=true").is_ok());
        for (bad, name) in [
            ("path=/etc/*.conf", "'path'"),
            ("path=*", ""),
            ("addr=10.0.0.300", "'addr'"),
            ("addr=10.0.0.0/33", "'addr'"),
            ("addr=::1/129", "'addr'"),
            ("addr=10.0.0.0/+8", "'addr'"),
            ("port=65536", "'port'"),
            ("port=-1", "'port'"),
            ("failed=yes", "'failed'"),
        ] {
            match q(bad) {
                Err(e) => assert!(e.contains(name), "{bad}: {e}"),
                Ok(_) => assert!(name.is_empty(), "{bad} accepted"),
            }
        }
        assert_eq!(
            PathMatch::parse("/etc/pass*"),
            Ok(PathMatch::Prefix("/etc/pass".into()))
        );
        let net = Cidr::parse("10.1.2.3/8").unwrap();
        assert!(net.contains("10.200.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().is_host());
        assert!(Cidr::parse("127.0.0.1/32").unwrap().is_host());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn cursor_roundtrip() {
        for id in [0, 1, 255, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        }
        for bad in [
            "",
            "i",
            "zz",
            "123",
            "i-1",
            "i+1",
            "i10000000000000000",
            "ig",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }
}
