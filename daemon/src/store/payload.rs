//! Payload keys of the block index (BlockCol 8..13; all but ports live in
//! per-block Bloom filters, bloom.rs): the paths, directories, socket
//! addresses and ports an event's `args` name and the trigrams of an
//! exec's command line, derived the same way
//! by the writer, by the one-time backfill of stores written before these
//! keys existed, and by the planner; plus reading them back out of `args`
//! for the re-check of each row a payload filter selects.
//!
//! Paths and addresses are indexed by a 63-bit hash, not interned: most
//! paths are unique (temp files, /proc/<pid>/...), and interning them would
//! grow `strings` and the writer's in-memory map without bound. A hash
//! collision only costs a block scan; every row is re-checked.

use std::net::IpAddr;

use sqlx::{Row, SqlitePool};
use traceed_wire::payload::ArgSource;

use super::{bloom, BlockCol, BLOCK_SHIFT};

/// Kinds whose `args` name a path, and the keys that hold it.
pub(crate) const PATH_KINDS: &[&str] = &["open", "unlink", "chmod", "exec", "mount", "rename"];
/// Kinds with a socket address.
pub(crate) const NET_KINDS: &[&str] = &["connect", "accept", "bind"];

/// Directories above a path that are indexed, from the root. A prefix
/// deeper than this is served by its deepest indexed directory and the
/// re-check; deeper entries would add rows for little gain.
pub(crate) const MAX_DIR_DEPTH: usize = 8;

/// FNV-1a, 63 bits (event_blocks.value is a signed integer). Stable across
/// versions and platforms, unlike std's and foldhash's seeded hashers: the
/// values are stored.
pub(crate) fn hash63(b: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// The paths an event of `kind` names.
pub(crate) fn paths<'a, A: ArgSource>(kind: &str, args: &'a A) -> impl Iterator<Item = &'a str> {
    let keys: &[&str] = match kind {
        "open" | "unlink" | "chmod" => &["path"],
        "exec" => &["filename"],
        "mount" => &["target"],
        "rename" => &["old_path", "new_path"],
        _ => &[],
    };
    keys.iter().filter_map(move |k| args.arg(k)?.as_str())
}

/// Each prefix of `path` that ends in '/', from the root, at most
/// MAX_DIR_DEPTH: `/etc/ssh/x` -> `/`, `/etc/`, `/etc/ssh/`.
pub(crate) fn dirs(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(i, _)| &path[..=i])
        .take(MAX_DIR_DEPTH)
}

/// The keys of one path: its hash and the hash of each of its `dirs`, in
/// one pass (FNV is a running hash: a prefix's hash is the state after it).
fn path_keys(path: &str, f: &mut impl FnMut(BlockCol, i64)) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut depth = 0;
    for &x in path.as_bytes() {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
        if x == b'/' && depth < MAX_DIR_DEPTH {
            depth += 1;
            f(BlockCol::PathDir, (h >> 1) as i64);
        }
    }
    f(BlockCol::Path, (h >> 1) as i64);
}

/// The socket address of a connect/accept/bind (None for unix sockets).
pub(crate) fn ip(kind: &str, args: &impl ArgSource) -> Option<IpAddr> {
    if !NET_KINDS.contains(&kind) {
        return None;
    }
    args.arg("addr")?.as_str()?.parse().ok()
}

pub(crate) fn port(kind: &str, args: &impl ArgSource) -> Option<u16> {
    if !NET_KINDS.contains(&kind) {
        return None;
    }
    u16::try_from(args.arg("port")?.as_u64()?).ok()
}

/// An exec's argv joined by single spaces.
pub(crate) fn cmdline(kind: &str, args: &impl ArgSource) -> Option<String> {
    if kind != "exec" {
        return None;
    }
    Some(args.arg("argv")?.strs()?.join(" "))
}

/// The hash an address is indexed by.
pub(crate) fn addr_key(ip: IpAddr) -> i64 {
    hash63(&traceed_wire::query::normalise(ip))
}

/// The prefix lengths an address's network is indexed at, in the bits of
/// its normalised 16 bytes (an IPv4 /n is 96 + n): IPv4 /8, /16, /24 and
/// IPv6 /32, /48, /64, the blocks people ask about. A CIDR query uses the
/// longest of these within its own prefix; a shorter one scans.
pub(crate) const NET_PREFIXES_V4: [u8; 3] = [104, 112, 120];
pub(crate) const NET_PREFIXES_V6: [u8; 3] = [32, 48, 64];

/// The key of the network of `addr` (normalised) at prefix length `bits`.
pub(crate) fn net_key(addr: &[u8; 16], bits: u8) -> i64 {
    let mut b = [0u8; 17];
    for (i, (o, a)) in b.iter_mut().zip(addr).enumerate() {
        let keep = (bits as usize).saturating_sub(i * 8).min(8);
        *o = a & (0xffu16 << (8 - keep)) as u8;
    }
    b[16] = bits;
    hash63(&b)
}

/// The indexed prefix lengths of an address (normalised): IPv4-mapped or
/// IPv6.
pub(crate) fn net_prefixes(addr: &[u8; 16]) -> &'static [u8; 3] {
    let v4 = addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    if v4 {
        &NET_PREFIXES_V4
    } else {
        &NET_PREFIXES_V6
    }
}

/// Every payload key of one event.
pub(crate) fn keys(kind: &str, args: &impl ArgSource, mut f: impl FnMut(BlockCol, i64)) {
    for p in paths(kind, args) {
        path_keys(p, &mut f);
    }
    if let Some(ip) = ip(kind, args) {
        f(BlockCol::Addr, addr_key(ip));
        let a = traceed_wire::query::normalise(ip);
        for &bits in net_prefixes(&a) {
            f(BlockCol::AddrNet, net_key(&a, bits));
        }
    }
    if let Some(p) = port(kind, args) {
        f(BlockCol::Port, i64::from(p));
    }
    if let Some(c) = cmdline(kind, args) {
        for g in bloom::trigrams(&c) {
            f(BlockCol::CmdGram, g);
        }
    }
}

/// Rows read per statement by the backfill.
const BACKFILL_BATCH: i64 = 20_000;

/// The rows of PATH_KINDS and NET_KINDS after an id (a test checks the
/// list).
const BACKFILL_SELECT: &str = "SELECT e.id, k.s AS kind, e.args, ak.s AS args_keys FROM events e \
     JOIN strings k ON k.id = e.kind LEFT JOIN strings ak ON ak.id = e.args_keys \
     WHERE e.id > ? AND e.kind IN (SELECT id FROM strings WHERE s IN \
     ('open', 'unlink', 'chmod', 'exec', 'mount', 'rename', 'connect', 'accept', 'bind')) \
     ORDER BY e.id LIMIT ?";

/// The rows of NET_KINDS after an id.
const BACKFILL_NET_SELECT: &str =
    "SELECT e.id, k.s AS kind, e.args, ak.s AS args_keys FROM events e \
     JOIN strings k ON k.id = e.kind LEFT JOIN strings ak ON ak.id = e.args_keys \
     WHERE e.id > ? AND e.kind IN (SELECT id FROM strings WHERE s IN \
     ('connect', 'accept', 'bind')) \
     ORDER BY e.id LIMIT ?";

/// The exec rows after an id.
const BACKFILL_EXEC_SELECT: &str =
    "SELECT e.id, k.s AS kind, e.args, ak.s AS args_keys FROM events e \
     JOIN strings k ON k.id = e.kind LEFT JOIN strings ak ON ak.id = e.args_keys \
     WHERE e.id > ? AND e.kind IN (SELECT id FROM strings WHERE s = 'exec') \
     ORDER BY e.id LIMIT ?";

/// One-time indexing passes over rows stored before their keys existed:
/// (meta key, rows, which keys, what the journal says).
type Pass = (
    &'static str,
    &'static str,
    fn(BlockCol) -> bool,
    &'static str,
);
const PASSES: [Pass; 3] = [
    (
        "payload_index",
        BACKFILL_SELECT,
        |_| true,
        "indexing the paths and addresses of stored events (one-time)",
    ),
    // Networks came after addresses (CIDR queries): only their keys.
    (
        "net_index",
        BACKFILL_NET_SELECT,
        |c| c == BlockCol::AddrNet,
        "indexing the networks of stored connections (one-time)",
    ),
    // Command-line trigrams came last (`--cmdline` through the index).
    (
        "cmdline_index",
        BACKFILL_EXEC_SELECT,
        |c| c == BlockCol::CmdGram,
        "indexing the command lines of stored execs (one-time)",
    ),
];

/// Index the payload keys of rows stored before they existed, once (the
/// `payload_index` meta key records that it ran). Hashes are computed in
/// Rust, so this cannot be a SQL migration. Runs at open, before the writer
/// starts; each batch commits on its own, so an interrupted backfill
/// resumes where it stopped (OR IGNORE).
pub(crate) async fn backfill(
    pool: &SqlitePool,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), sqlx::Error> {
    for pass in PASSES {
        backfill_pass(pool, pass, progress).await?;
    }
    Ok(())
}

async fn backfill_pass(
    pool: &SqlitePool,
    (meta, select, wanted, what): Pass,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), sqlx::Error> {
    let from: Option<i64> = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(meta)
        .fetch_optional(pool)
        .await?;
    let Some(mut after) = (match from {
        // Done.
        Some(v) if v < 0 => None,
        Some(v) => Some(v),
        None => Some(0),
    }) else {
        return Ok(());
    };
    let mut logged = false;
    loop {
        let rows = sqlx::query(select)
            .bind(after)
            .bind(BACKFILL_BATCH)
            .fetch_all(pool)
            .await?;
        let mut tx = pool.begin().await?;
        let mut seen = foldhash::HashSet::default();
        let mut blooms: foldhash::HashMap<i64, Vec<u8>> = Default::default();
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            let kind: String = r.try_get("kind")?;
            let args = super::query::decode_args(
                &r.try_get::<String, _>("args")?,
                r.try_get::<Option<String>, _>("args_keys")?.as_deref(),
            );
            let block = id >> BLOCK_SHIFT;
            keys(&kind, &args, |col, v| {
                if !wanted(col) {
                } else if bloom::holds(col) {
                    let bits = blooms.entry(block).or_insert_with(|| vec![0; bloom::BYTES]);
                    bloom::insert(bits, col, v);
                } else {
                    seen.insert((col as i64, v, block));
                }
            });
            after = id;
        }
        if !rows.is_empty() && !logged {
            tracing::info!("{what}");
            logged = true;
        }
        if !rows.is_empty() {
            progress(&format!("{what}: at event id {after}"));
        }
        // A block split across two batches: OR into what the first wrote.
        for (block, mut filter) in blooms {
            let old: Vec<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT slice, bits FROM block_blooms WHERE block = ?")
                    .bind(block)
                    .fetch_all(&mut *tx)
                    .await?;
            for (slice, bits) in old {
                bloom::merge(&mut filter, slice as usize, &bits);
            }
            for (slice, bits) in bloom::slices(&filter) {
                sqlx::query(
                    "INSERT OR REPLACE INTO block_blooms (slice, block, bits) VALUES (?, ?, ?)",
                )
                .bind(slice as i64)
                .bind(block)
                .bind(bits)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (col, v, block) in seen {
            sqlx::query("INSERT OR IGNORE INTO event_blocks (col, value, block) VALUES (?, ?, ?)")
                .bind(col)
                .bind(v)
                .bind(block)
                .execute(&mut *tx)
                .await?;
        }
        let done = (rows.len() as i64) < BACKFILL_BATCH;
        sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
            .bind(meta)
            .bind(if done { -1 } else { after })
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keys_in_one_pass_are_the_hashes_of_path_and_dirs() {
        for p in [
            "/etc/ssh/sshd_config",
            "/",
            "",
            "rel/x",
            "/a/b/c/d/e/f/g/h/i/j/k",
            "/ü/é/",
        ] {
            let mut want = vec![];
            for d in dirs(p) {
                want.push((BlockCol::PathDir, hash63(d.as_bytes())));
            }
            want.push((BlockCol::Path, hash63(p.as_bytes())));
            let mut got = vec![];
            path_keys(p, &mut |c, v| got.push((c, v)));
            assert_eq!(got, want, "{p}");
        }
    }

    #[test]
    fn dirs_of_a_path() {
        assert_eq!(
            dirs("/etc/ssh/sshd_config").collect::<Vec<_>>(),
            ["/", "/etc/", "/etc/ssh/"]
        );
        assert_eq!(dirs("/etc/").collect::<Vec<_>>(), ["/", "/etc/"]);
        assert_eq!(dirs("rel").count(), 0);
        assert_eq!(dirs("/a/b/c/d/e/f/g/h/i/j/k").count(), MAX_DIR_DEPTH);
    }

    #[test]
    fn backfill_reads_every_payload_kind() {
        for k in PATH_KINDS.iter().chain(NET_KINDS) {
            assert!(BACKFILL_SELECT.contains(&format!("'{k}'")), "{k}");
        }
    }

    #[test]
    fn hash_is_stable() {
        // Stored values: changing the hash needs a new backfill.
        assert_eq!(hash63(b""), (0xcbf2_9ce4_8422_2325u64 >> 1) as i64);
        assert!(hash63(b"/etc/shadow") >= 0);
        assert_ne!(hash63(b"/etc/"), hash63(b"/etc"));
    }
}
