//! Reads: the `Query` the API builds, and its plan against the store (time
//! bounds to id bounds, strings to their interned ids, the block index
//! choosing which id ranges to scan), then the pages of rows it selects.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use traceed_wire::payload::ArgSource;
use traceed_wire::query::{Cidr, PathMatch};
use traceed_wire::{static_name, Coverage, Event, Gap, FIDELITIES, KINDS};

use super::payload::{self, NET_KINDS, PATH_KINDS};
use super::{bloom, BlockCol, Store, StoreError, BLOCK_SHIFT};

/// How far ingest order may lag wall-clock order (CPU ring jitter, decode
/// delays). Time bounds are turned into id bounds with this much slack, then
/// applied exactly on `ts`.
const TS_SLACK_NS: i64 = 2_000_000_000;

/// A validated query; the API builds it from request parameters.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub kinds: Vec<String>,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub container: Option<String>,
    pub fidelity: Option<String>,
    /// Only events of these process instances (keys as stored); Some(empty)
    /// matches nothing. `descendants_of` resolves to this.
    pub procs: Option<Vec<i64>>,
    /// Payload filters (store/payload.rs): served by the block index where
    /// they can be, always re-checked on the decoded row.
    pub path: Option<PathMatch>,
    pub addr: Option<Cidr>,
    pub port: Option<u16>,
    pub cmdline: Option<String>,
    /// Only rows whose syscall failed (retval < 0).
    pub failed: bool,
    /// Rows with id strictly after (asc) or before (desc) this one.
    pub after_id: Option<i64>,
    pub desc: bool,
    pub limit: u32,
}

impl Query {
    /// Does a live event pass the filters (the SQL WHERE, in Rust)? It must
    /// select exactly what `Store::query` selects, or `follow` would differ
    /// from a plain query.
    pub fn matches<A: ArgSource>(&self, e: &Event<A>) -> bool {
        self.since.is_none_or(|s| e.ts >= s)
            && self.until.is_none_or(|u| e.ts < u)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| *k == *e.kind))
            && self.pid.is_none_or(|v| e.pid == Some(v))
            && self.ppid.is_none_or(|v| e.ppid == Some(v))
            && self.uid.is_none_or(|v| e.uid == Some(v))
            && self
                .comm
                .as_ref()
                .is_none_or(|v| e.comm.as_deref() == Some(v.as_str()))
            && self
                .exe
                .as_ref()
                .is_none_or(|v| e.exe.as_deref() == Some(v.as_str()))
            && self.container.as_ref().is_none_or(|v| {
                e.container_id
                    .as_ref()
                    .is_some_and(|c| c.starts_with(v.as_str()))
            })
            && self
                .fidelity
                .as_ref()
                .is_none_or(|v| e.fidelity == v.as_str())
            && self
                .procs
                .as_ref()
                .is_none_or(|set| e.proc.is_some_and(|k| set.contains(&(k.0 as i64))))
            && (!self.failed || e.retval.is_some_and(|r| r < 0))
            && self.matches_payload(e)
    }

    /// The payload filters alone: what the SQL of a scan cannot check.
    fn matches_payload<A: ArgSource>(&self, e: &Event<A>) -> bool {
        let (k, a) = (&*e.kind, &e.args);
        self.path
            .as_ref()
            .is_none_or(|m| payload::paths(k, a).any(|p| m.matches(p)))
            && self
                .addr
                .is_none_or(|c| payload::ip(k, a).is_some_and(|ip| c.contains(ip)))
            && self.port.is_none_or(|p| payload::port(k, a) == Some(p))
            && self
                .cmdline
                .as_ref()
                .is_none_or(|t| payload::cmdline(k, a).is_some_and(|c| c.contains(t.as_str())))
    }

    fn has_payload(&self) -> bool {
        self.path.is_some() || self.addr.is_some() || self.port.is_some() || self.cmdline.is_some()
    }
}

/// Every read goes through the strings table for the interned columns.
const SELECT: &str = "SELECT e.id, e.ts, k.s AS kind, e.pid, e.tid, e.ppid, e.uid, e.gid, \
     c.s AS comm, e.ns_pid, x.s AS exe, e.cgroup_id, ct.s AS container_id, \
     e.mnt_ns + 4026531840 AS mnt_ns, e.pid_ns + 4026531840 AS pid_ns, \
     e.retval, e.args, ak.s AS args_keys, f.s AS fidelity, e.proc \
     FROM events e \
     LEFT JOIN strings k ON k.id = e.kind \
     LEFT JOIN strings c ON c.id = e.comm \
     LEFT JOIN strings x ON x.id = e.exe \
     LEFT JOIN strings ct ON ct.id = e.container_id \
     LEFT JOIN strings f ON f.id = e.fidelity \
     LEFT JOIN strings ak ON ak.id = e.args_keys";

impl Store {
    /// ts of the oldest stored event (ids follow time).
    pub async fn oldest_ts(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT ts FROM events ORDER BY id LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The first id whose ts is >= `ts`, by binary search over the rowid:
    /// ids follow arrival order and ts follows ids within TS_SLACK_NS, which
    /// callers subtract (a rowid probe is a few page reads; ~25 probes on
    /// 10M rows). None when every event is older.
    pub(crate) async fn first_id_at(&self, ts: i64) -> Result<Option<i64>, StoreError> {
        let mut c = self.pool.acquire().await?;
        match id_bounds(&mut c).await? {
            Some(ids) => first_id_at(&mut c, ts, ids).await,
            None => Ok(None),
        }
    }

    /// Run `q`, returning at most `q.limit` events and whether more follow.
    ///
    /// All reads share one snapshot (a read transaction), so the block list
    /// and the row ranges agree with each other and with the writer's
    /// commits. With an indexed filter the most selective one drives: its
    /// blocks are read in id order, adjacent blocks merged into one rowid
    /// range, and each range is scanned with every filter until the page is
    /// full. Without one the id range from the time bounds is scanned.
    pub async fn query(&self, q: &Query) -> Result<(Vec<Event>, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(plan) = plan(&mut tx, q).await? else {
            return Ok((Vec::new(), false));
        };
        let want = q.limit as usize + 1;
        let mut rows: Vec<Event> = Vec::new();
        match plan.driver {
            None => {
                plan.scan(&mut tx, q, plan.lo, plan.hi, want, &mut rows)
                    .await?
            }
            Some(d) => {
                let f = &plan.filters[d];
                let mut range = Some(blocks(plan.lo, plan.hi));
                'pages: while let Some(r) = range.filter(|_| rows.len() < want) {
                    let (blocks, next) = blocks_page(&mut tx, f, r, q.desc).await?;
                    range = next;
                    for (b0, b1) in runs(&blocks) {
                        let lo = plan.lo.max(b0 << BLOCK_SHIFT);
                        let hi = plan.hi.min((b1 + 1) << BLOCK_SHIFT);
                        plan.scan(&mut tx, q, lo, hi, want, &mut rows).await?;
                        if rows.len() >= want {
                            break 'pages;
                        }
                    }
                }
            }
        }
        tx.commit().await?;
        let more = rows.len() > q.limit as usize;
        rows.truncate(q.limit as usize);
        Ok((rows, more))
    }

    /// The `top` most frequent values of field `by` (one of
    /// traceed_wire::COUNT_BY) among the events `q` selects, the count of
    /// the rest, and the number counted.
    ///
    /// A column (exe, comm, kind, uid) is counted in SQL: with no filter but
    /// time, from the block counts of the blocks wholly inside the window
    /// and the rows of its edges; with filters, by a `GROUP BY` over the
    /// rows the plan selects. A payload field (path, addr, port), or any
    /// field under a payload filter, is counted from decoded rows, paged,
    /// so memory is one page plus at most DISTINCT_CAP values: past the
    /// cap, values not yet seen go to `other` (exact for the listed values
    /// only while the cap is not reached).
    pub async fn count_by(
        &self,
        q: &Query,
        by: &str,
        top: usize,
    ) -> Result<(Vec<(String, u64)>, u64, u64), StoreError> {
        let col = match by {
            "exe" => Some(BlockCol::Exe),
            "comm" => Some(BlockCol::Comm),
            "kind" => Some(BlockCol::Kind),
            "uid" => Some(BlockCol::Uid),
            _ => None,
        };
        if let Some(col) = col.filter(|_| !q.has_payload()) {
            return self.count_column(q, col, top).await;
        }
        let (counts, mut other) = self.count_decoded(q, by).await?;
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        let total = other + v.iter().map(|(_, n)| n).sum::<u64>();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        other += v.iter().skip(top).map(|(_, n)| n).sum::<u64>();
        v.truncate(top);
        Ok((v, other, total))
    }

    /// count_by for a column: counts per stored value, the top ones turned
    /// into strings.
    async fn count_column(
        &self,
        q: &Query,
        col: BlockCol,
        top: usize,
    ) -> Result<(Vec<(String, u64)>, u64, u64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut counts: foldhash::HashMap<i64, u64> = Default::default();
        if let Some(plan) = plan(&mut tx, q).await? {
            let rows = if plan.filters.is_empty() && plan.fidelity.is_none() && !q.failed {
                block_counts(&mut tx, q, &plan, col, &mut counts).await?
            } else if let Some(d) = plan.driver {
                driver_ranges(&mut tx, &plan, &plan.filters[d]).await?
            } else {
                vec![(plan.lo, plan.hi)]
            };
            for (lo, hi) in rows {
                let mut b = plan.group_sql(q, col, lo, hi);
                let got: Vec<(Option<i64>, i64)> = b.build_query_as().fetch_all(&mut *tx).await?;
                for (v, n) in got {
                    if let Some(v) = v {
                        *counts.entry(v).or_default() += n as u64;
                    }
                }
            }
        }
        let total: u64 = counts.values().sum();
        let mut v: Vec<(i64, u64)> = counts.into_iter().collect();
        v.sort_unstable_by_key(|&(_, n)| std::cmp::Reverse(n));
        // Ties at the cut are broken by the string, as the decoded path
        // does, so every value tied with the last listed one is resolved.
        if let Some(&(_, cut)) = v.get(top.saturating_sub(1)) {
            v.truncate(v.partition_point(|(_, n)| *n >= cut));
        }
        let names = match col {
            BlockCol::Uid => v.iter().map(|(u, _)| (*u, u.to_string())).collect(),
            _ => strings_of(&mut tx, v.iter().map(|(id, _)| *id)).await?,
        };
        tx.commit().await?;
        let mut out: Vec<(String, u64)> = v
            .into_iter()
            .filter_map(|(id, n)| Some((names.get(&id)?.clone(), n)))
            .collect();
        out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(top);
        let listed: u64 = out.iter().map(|(_, n)| n).sum();
        Ok((out, total - listed, total))
    }

    /// count_by from decoded rows: counts per value, and the values past
    /// DISTINCT_CAP.
    async fn count_decoded(
        &self,
        q: &Query,
        by: &str,
    ) -> Result<(foldhash::HashMap<String, u64>, u64), StoreError> {
        let mut q = Query {
            limit: 10_000,
            desc: false,
            after_id: None,
            ..q.clone()
        };
        let mut counts: foldhash::HashMap<String, u64> = Default::default();
        let mut other = 0u64;
        let mut add = |v: String| {
            if let Some(n) = counts.get_mut(&v) {
                *n += 1;
            } else if counts.len() < DISTINCT_CAP {
                counts.insert(v, 1);
            } else {
                other += 1;
            }
        };
        loop {
            let (rows, more) = self.query(&q).await?;
            for e in &rows {
                let (k, a) = (&*e.kind, &e.args);
                match by {
                    "exe" => e.exe.iter().for_each(|s| add(s.to_string())),
                    "comm" => e.comm.iter().for_each(|s| add(s.to_string())),
                    "kind" => add(e.kind.to_string()),
                    "uid" => e.uid.into_iter().for_each(|u| add(u.to_string())),
                    "path" => payload::paths(k, a).for_each(|p| add(p.to_string())),
                    "addr" => payload::ip(k, a)
                        .into_iter()
                        .for_each(|ip| add(ip.to_string())),
                    "port" => payload::port(k, a)
                        .into_iter()
                        .for_each(|p| add(p.to_string())),
                    _ => {}
                }
            }
            match (more, rows.last()) {
                (true, Some(last)) => q.after_id = Some(last.id),
                _ => break,
            }
        }
        Ok((counts, other))
    }

    /// Loss that intersects [since, until): the stored `lost` rows whose
    /// span [from, to] overlaps it. A row is stamped `to`, so those with
    /// ts >= since are read (through the block index on kind; there are
    /// few), and `from` is checked here: a downtime row stored at start-up
    /// can cover a window long before its own ts.
    pub async fn coverage(
        &self,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Coverage, StoreError> {
        let mut q = Query {
            since,
            kinds: vec!["lost".into()],
            limit: 1000,
            ..Query::default()
        };
        let mut gaps: Vec<(i64, i64, Gap)> = Vec::new();
        let mut lost = Some(0u64);
        loop {
            let (rows, more) = self.query(&q).await?;
            for e in &rows {
                let at = |k: &str| {
                    e.args
                        .get(k)
                        .and_then(|v| v.as_str())
                        .and_then(|s| traceed_wire::parse_time_spec(s, 0).ok())
                };
                let (from, to) = (at("from").unwrap_or(e.ts), at("to").unwrap_or(e.ts));
                if since.is_some_and(|s| to < s) || until.is_some_and(|u| from >= u) {
                    continue;
                }
                let count = e.args.get("count").and_then(|c| c.as_u64());
                lost = lost.zip(count).map(|(a, b)| a.saturating_add(b));
                let source = e
                    .args
                    .get("source")
                    .and_then(|s| s.as_str())
                    .unwrap_or("unknown");
                push_gap(&mut gaps, from, to, source, count);
            }
            match (more, rows.last()) {
                (true, Some(last)) => q.after_id = Some(last.id),
                _ => break,
            }
        }
        gaps.sort_by_key(|g| (g.0, g.1));
        Ok(Coverage {
            complete: gaps.is_empty(),
            lost: if gaps.is_empty() { Some(0) } else { lost },
            gaps: gaps.into_iter().map(|g| g.2).collect(),
        })
    }

    /// The query plans of the statements `query` runs for `q` (tests check
    /// them): the block lookup of the driving filter, if any, then the row
    /// scan of one range.
    #[cfg(test)]
    pub(crate) async fn explain(&self, q: &Query) -> Result<Vec<String>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let Some(plan) = plan(&mut c, q).await? else {
            return Ok(vec!["empty".into()]);
        };
        let mut out = Vec::new();
        let details = |rows: Vec<SqliteRow>| -> Vec<String> {
            rows.iter().map(|r| r.get::<String, _>("detail")).collect()
        };
        if let Some(d) = plan.driver {
            let f = &plan.filters[d];
            out.push(format!("driver {:?}", f.col));
            let mut b = if bloom::holds(f.col) {
                blooms_sql("EXPLAIN QUERY PLAN ", 0, (0, 1), q.desc)
            } else {
                blocks_sql("EXPLAIN QUERY PLAN ", f, (0, 1), q.desc)
            };
            out.extend(details(b.build().fetch_all(&mut *c).await?));
        }
        let mut b = plan.range_sql("EXPLAIN QUERY PLAN ", q, plan.lo, plan.hi, 100);
        out.extend(details(b.build().fetch_all(&mut *c).await?));
        Ok(out)
    }
}

/// Add a gap; past MAX_GAPS the newest one absorbs it, so an answer stays
/// small whatever the loss history.
fn push_gap(gaps: &mut Vec<(i64, i64, Gap)>, from: i64, to: i64, source: &str, count: Option<u64>) {
    if gaps.len() < traceed_wire::MAX_GAPS {
        gaps.push((
            from,
            to,
            Gap {
                from: traceed_wire::format_ts(from),
                to: traceed_wire::format_ts(to),
                source: source.into(),
                count,
            },
        ));
        return;
    }
    let Some(last) = gaps.last_mut() else {
        return;
    };
    if from < last.0 {
        last.0 = from;
        last.2.from = traceed_wire::format_ts(from);
    }
    if to > last.1 {
        last.1 = to;
        last.2.to = traceed_wire::format_ts(to);
    }
    if !last.2.source.split(',').any(|s| s == source) {
        last.2.source = format!("{},{source}", last.2.source);
    }
    last.2.count = last.2.count.zip(count).map(|(a, b)| a.saturating_add(b));
}

/// Distinct values `count_by` keeps; enough for any exe/comm/uid/kind/port
/// population, a bound for paths and addresses (a few MB).
const DISTINCT_CAP: usize = 100_000;

/// Rows read per statement when rows are re-checked in Rust (a payload
/// filter): enough that a sparse match does not cost a statement per row.
const RECHECK_BATCH: usize = 512;

/// Block lookups (or block filters) fetched per statement.
const BLOCKS_PER_PAGE: usize = 256;

/// Scanning a block's rows costs about this many block filter tests (1024
/// rows of ~100 B against 2 kB): a column filter drives rather than a
/// path or address one when it names fewer blocks than the window has
/// divided by this.
const BLOOM_TEST_COST: i64 = 32;

/// `col IN values`, on stored (interned) integers.
#[derive(Debug)]
struct Filter {
    col: BlockCol,
    values: Vec<i64>,
}

/// A query resolved against the store: id bounds, filters on stored values.
#[derive(Debug)]
struct Plan {
    /// Ids in [lo, hi).
    lo: i64,
    hi: i64,
    /// The oldest and newest stored ids (the snapshot's).
    ids: (i64, i64),
    filters: Vec<Filter>,
    fidelity: Option<i64>,
    /// Index into `filters` of the one whose blocks drive the scan.
    driver: Option<usize>,
    /// A payload filter is given: rows are re-checked after decoding.
    recheck: bool,
    /// Pieces of `cmdline` that must occur verbatim in the args text:
    /// a cheap SQL pre-filter before the re-check decodes the row.
    needles: Vec<String>,
}

impl Plan {
    /// Append to `out` the rows of [lo, hi) that pass every filter, in the
    /// query's order, until it holds `want`. Memory stays bounded by the
    /// batch whatever the range holds.
    async fn scan(
        &self,
        c: &mut SqliteConnection,
        q: &Query,
        mut lo: i64,
        mut hi: i64,
        want: usize,
        out: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        while out.len() < want && lo < hi {
            let need = want - out.len();
            let n = if self.recheck {
                need.max(RECHECK_BATCH)
            } else {
                need
            };
            let rows = self
                .range_sql("", q, lo, hi, n)
                .build()
                .fetch_all(&mut *c)
                .await?;
            for r in &rows {
                let e = row_to_event(r)?;
                if q.desc {
                    hi = e.id;
                } else {
                    lo = e.id + 1;
                }
                if !self.recheck || q.matches_payload(&e) {
                    out.push(e);
                }
            }
            if rows.len() < n {
                break;
            }
        }
        Ok(())
    }

    /// Rows of [lo, hi) that pass every filter, in the query's order.
    fn range_sql(
        &self,
        prefix: &str,
        q: &Query,
        lo: i64,
        hi: i64,
        limit: usize,
    ) -> QueryBuilder<Sqlite> {
        let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(format!("{prefix}{SELECT} WHERE "));
        self.push_where(&mut b, q, lo, hi);
        b.push(if q.desc {
            " ORDER BY e.id DESC"
        } else {
            " ORDER BY e.id"
        });
        b.push(" LIMIT ").push_bind(limit as i64);
        b
    }

    /// Per value of `col`, how many rows of [lo, hi) pass every filter.
    fn group_sql(&self, q: &Query, col: BlockCol, lo: i64, hi: i64) -> QueryBuilder<Sqlite> {
        let name = col.column().unwrap_or("kind");
        let mut b: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT e.{name}, count(*) FROM events e WHERE "));
        self.push_where(&mut b, q, lo, hi);
        b.push(format!(" GROUP BY e.{name}"));
        b
    }

    /// The WHERE conditions of the rows of [lo, hi) that pass every
    /// filter the SQL can check.
    fn push_where(&self, b: &mut QueryBuilder<Sqlite>, q: &Query, lo: i64, hi: i64) {
        b.push("e.id >= ")
            .push_bind(lo)
            .push(" AND e.id < ")
            .push_bind(hi);
        // `+e.ts` keeps the planner on the rowid range: it is the selective,
        // order-preserving bound (ts only trims its TS_SLACK_NS edges).
        if let Some(since) = q.since {
            b.push(" AND +e.ts >= ").push_bind(since);
        }
        if let Some(until) = q.until {
            b.push(" AND +e.ts < ").push_bind(until);
        }
        for f in &self.filters {
            let Some(col) = f.col.column() else {
                continue;
            };
            b.push(format!(" AND e.{col} IN ("));
            let mut sep = b.separated(", ");
            for v in &f.values {
                sep.push_bind(*v);
            }
            b.push(")");
        }
        if let Some(v) = self.fidelity {
            b.push(" AND e.fidelity = ").push_bind(v);
        }
        if q.failed {
            b.push(" AND e.retval < 0");
        }
        for n in &self.needles {
            b.push(" AND instr(e.args, ")
                .push_bind(n.clone())
                .push(") > 0");
        }
    }
}

/// For a count over `plan`'s window with no filter but time: add the
/// counts of `col`'s values in the blocks wholly inside the window to
/// `counts`, and return the id ranges left to count from rows (the edges,
/// and blocks whose counts predate migration 9).
///
/// A block is wholly inside when its ids lie between the first id at
/// `since + TS_SLACK_NS` and the first at `until - TS_SLACK_NS`: ts
/// follows ids within the slack. The block of the oldest stored id is an
/// edge too, since retention may have deleted part of it.
async fn block_counts(
    c: &mut SqliteConnection,
    q: &Query,
    plan: &Plan,
    col: BlockCol,
    counts: &mut foldhash::HashMap<i64, u64>,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let whole = vec![(plan.lo, plan.hi)];
    let (min, max) = plan.ids;
    let a = match q.since {
        Some(s) => match first_id_at(c, s.saturating_add(TS_SLACK_NS), plan.ids).await? {
            Some(id) => id.max(min),
            None => return Ok(whole),
        },
        None => min,
    };
    let b = match q.until {
        Some(u) => first_id_at(c, u.saturating_sub(TS_SLACK_NS), plan.ids)
            .await?
            .unwrap_or(max + 1),
        None => max + 1,
    };
    let (b0, b1) = ((a >> BLOCK_SHIFT) + 1, (b >> BLOCK_SHIFT) - 1);
    if b0 > b1 {
        return Ok(whole);
    }
    let unknown: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT block FROM event_blocks \
         WHERE col = ? AND block >= ? AND block <= ? AND n IS NULL ORDER BY block",
    )
    .bind(col as i64)
    .bind(b0)
    .bind(b1)
    .fetch_all(&mut *c)
    .await?;
    let mut rows = vec![(plan.lo, b0 << BLOCK_SHIFT)];
    let mut known = Vec::new();
    let mut next = b0;
    for (u0, u1) in runs(&unknown) {
        if u0 > next {
            known.push((next, u0 - 1));
        }
        rows.push((u0 << BLOCK_SHIFT, (u1 + 1) << BLOCK_SHIFT));
        next = u1 + 1;
    }
    if next <= b1 {
        known.push((next, b1));
    }
    rows.push(((b1 + 1) << BLOCK_SHIFT, plan.hi));
    for (k0, k1) in known {
        let got: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT value, sum(n) FROM event_blocks \
             WHERE col = ? AND block >= ? AND block <= ? GROUP BY value",
        )
        .bind(col as i64)
        .bind(k0)
        .bind(k1)
        .fetch_all(&mut *c)
        .await?;
        for (v, n) in got {
            *counts.entry(v).or_default() += n as u64;
        }
    }
    Ok(rows.into_iter().filter(|(lo, hi)| lo < hi).collect())
}

/// Every id range the driving filter's blocks cover in `plan`'s window, in
/// id order (adjacent blocks merged).
async fn driver_ranges(
    c: &mut SqliteConnection,
    plan: &Plan,
    f: &Filter,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut range = Some(blocks(plan.lo, plan.hi));
    let mut out = Vec::new();
    while let Some(r) = range {
        let (page, next) = blocks_page(c, f, r, false).await?;
        range = next;
        for (b0, b1) in runs(&page) {
            let (lo, hi) = (
                plan.lo.max(b0 << BLOCK_SHIFT),
                plan.hi.min((b1 + 1) << BLOCK_SHIFT),
            );
            match out.last_mut() {
                Some((_, h)) if *h == lo => *h = hi,
                _ => out.push((lo, hi)),
            }
        }
    }
    Ok(out)
}

/// One page of the blocks in [blo, bhi] that may hold a value of `f`, in
/// the given order, and the range left after it (None: this was the last).
/// Paths and addresses test each block's filter (bloom.rs); other columns
/// read their rows.
async fn blocks_page(
    c: &mut SqliteConnection,
    f: &Filter,
    (blo, bhi): (i64, i64),
    desc: bool,
) -> Result<(Vec<i64>, Option<(i64, i64)>), StoreError> {
    // The planner gives a filtered column keys of one slice: one value (a
    // path, an address), or the trigrams of a command line that share one.
    let slice = f.values.first().map(|&v| bloom::slice_of(f.col, v));
    let one_slice = slice.filter(|&s| f.values.iter().all(|&v| bloom::slice_of(f.col, v) == s));
    let (page, scanned, last) = if let Some(slice) = one_slice.filter(|_| bloom::holds(f.col)) {
        let rows: Vec<(i64, Vec<u8>)> = blooms_sql("", slice, (blo, bhi), desc)
            .build_query_as()
            .fetch_all(&mut *c)
            .await?;
        let last = rows.last().map(|r| r.0);
        let hits = rows
            .iter()
            .filter(|(_, bits)| f.values.iter().all(|&v| bloom::may_hold(bits, f.col, v)))
            .map(|r| r.0)
            .collect();
        (hits, rows.len(), last)
    } else {
        let page: Vec<i64> = blocks_sql("", f, (blo, bhi), desc)
            .build_query_scalar::<i64>()
            .fetch_all(&mut *c)
            .await?;
        let (n, last) = (page.len(), page.last().copied());
        (page, n, last)
    };
    let next = match last {
        Some(l) if scanned >= BLOCKS_PER_PAGE => {
            let r = if desc { (blo, l - 1) } else { (l + 1, bhi) };
            (r.0 <= r.1).then_some(r)
        }
        _ => None,
    };
    Ok((page, next))
}

/// One slice of the block filters in [blo, bhi], in the given order, one
/// page.
fn blooms_sql(
    prefix: &str,
    slice: usize,
    (blo, bhi): (i64, i64),
    desc: bool,
) -> QueryBuilder<Sqlite> {
    let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "{prefix}SELECT block, bits FROM block_blooms WHERE slice = "
    ));
    b.push_bind(slice as i64)
        .push(" AND block >= ")
        .push_bind(blo)
        .push(" AND block <= ")
        .push_bind(bhi)
        .push(if desc {
            " ORDER BY block DESC"
        } else {
            " ORDER BY block"
        })
        .push(" LIMIT ")
        .push_bind(BLOCKS_PER_PAGE as i64);
    b
}

/// The strings of interned `ids`.
async fn strings_of(
    c: &mut SqliteConnection,
    ids: impl Iterator<Item = i64>,
) -> Result<foldhash::HashMap<i64, String>, StoreError> {
    let ids: Vec<i64> = ids.collect();
    let mut out = foldhash::HashMap::default();
    for chunk in ids.chunks(500) {
        let mut b: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT id, s FROM strings WHERE id IN (");
        let mut sep = b.separated(", ");
        for id in chunk {
            sep.push_bind(*id);
        }
        b.push(")");
        let got: Vec<(i64, String)> = b.build_query_as().fetch_all(&mut *c).await?;
        out.extend(got);
    }
    Ok(out)
}

/// `<prefix>SELECT <what> FROM event_blocks` for the blocks in [blo, bhi]
/// holding a value of `f`.
fn blocks_of(prefix: &str, what: &str, f: &Filter, (blo, bhi): (i64, i64)) -> QueryBuilder<Sqlite> {
    let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "{prefix}SELECT {what} FROM event_blocks WHERE col = "
    ));
    b.push_bind(f.col as i64).push(" AND value IN (");
    let mut sep = b.separated(", ");
    for v in &f.values {
        sep.push_bind(*v);
    }
    b.push(") AND block >= ")
        .push_bind(blo)
        .push(" AND block <= ")
        .push_bind(bhi);
    b
}

/// The blocks in [blo, bhi] holding a value of `f`, in id order, one page.
fn blocks_sql(prefix: &str, f: &Filter, range: (i64, i64), desc: bool) -> QueryBuilder<Sqlite> {
    // One value walks the primary key in block order; several need DISTINCT
    // and a sort of their blocks (never of events).
    let what = if f.values.len() > 1 {
        "DISTINCT block"
    } else {
        "block"
    };
    let mut b = blocks_of(prefix, what, f, range);
    b.push(if desc {
        " ORDER BY block DESC"
    } else {
        " ORDER BY block"
    })
    .push(" LIMIT ")
    .push_bind(BLOCKS_PER_PAGE as i64);
    b
}

/// The blocks ids [lo, hi) fall in, first and last.
fn blocks(lo: i64, hi: i64) -> (i64, i64) {
    (lo >> BLOCK_SHIFT, (hi - 1) >> BLOCK_SHIFT)
}

/// Runs of consecutive block numbers, as (first, last) in the order given.
fn runs(blocks: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some((_, hi)) if b == *hi + 1 => *hi = b,
            Some((lo, _)) if b + 1 == *lo => *lo = b,
            _ => out.push((b, b)),
        }
    }
    out
}

/// The oldest and newest stored ids; None when the store is empty.
async fn id_bounds(c: &mut SqliteConnection) -> Result<Option<(i64, i64)>, StoreError> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        // Two subqueries: min() and max() together in one SELECT scan.
        sqlx::query_as("SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)")
            .fetch_one(&mut *c)
            .await?;
    Ok(lo.zip(hi))
}

/// See Store::first_id_at; `ids` are the store's id_bounds.
async fn first_id_at(
    c: &mut SqliteConnection,
    ts: i64,
    (mut lo, mut hi): (i64, i64),
) -> Result<Option<i64>, StoreError> {
    let at = |id: i64| {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT id, ts FROM events WHERE id >= ? ORDER BY id LIMIT 1",
        )
        .bind(id)
    };
    let (_, last_ts) = at(hi).fetch_one(&mut *c).await?;
    if last_ts < ts {
        return Ok(None);
    }
    // Bisect the id space, not the stored ids: ids have gaps (a batch that
    // failed on a full disk keeps its ids), so the first stored id at or
    // after `mid` can be `hi` itself, and narrowing to it would never end.
    // Invariant: the first stored id >= hi is `found`, with ts >= target;
    // no answer below lo.
    let mut found = hi;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (id, t) = at(mid).fetch_one(&mut *c).await?;
        if t >= ts {
            hi = mid;
            found = id;
        } else {
            lo = id + 1;
        }
    }
    Ok(Some(found))
}

/// Interned ids of `strings`; those never stored are left out.
async fn string_ids(c: &mut SqliteConnection, strings: &[String]) -> Result<Vec<i64>, StoreError> {
    let mut b: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT id FROM strings WHERE s IN (");
    let mut sep = b.separated(", ");
    for s in strings {
        sep.push_bind(s.clone());
    }
    b.push(")");
    Ok(b.build_query_scalar::<i64>().fetch_all(&mut *c).await?)
}

/// Resolve `q` against the store: time bounds to ids, strings to their
/// interned ids, and the driving filter. None when the answer is provably
/// empty (a bound past the data, a string never stored).
async fn plan(c: &mut SqliteConnection, q: &Query) -> Result<Option<Plan>, StoreError> {
    let Some(ids) = id_bounds(c).await? else {
        return Ok(None);
    };
    let (mut lo, mut hi) = (ids.0, ids.1 + 1);
    if let Some(since) = q.since {
        match first_id_at(c, since.saturating_sub(TS_SLACK_NS), ids).await? {
            Some(id) => lo = id,
            None => return Ok(None),
        }
    }
    if let Some(until) = q.until {
        if let Some(id) = first_id_at(c, until.saturating_add(TS_SLACK_NS), ids).await? {
            hi = id;
        }
    }
    match (q.after_id, q.desc) {
        (Some(a), false) => lo = lo.max(a.saturating_add(1)),
        (Some(a), true) => hi = hi.min(a),
        (None, _) => {}
    }
    if lo >= hi {
        return Ok(None);
    }
    let mut filters = Vec::new();
    // A payload filter implies the kinds that carry it; the kind's blocks
    // drive a filter the index cannot serve (a CIDR block, a cmdline).
    let mut kinds = q.kinds.clone();
    let implied: [(bool, &[&str]); 3] = [
        (q.path.is_some(), PATH_KINDS),
        (q.addr.is_some() || q.port.is_some(), NET_KINDS),
        (q.cmdline.is_some(), &["exec"]),
    ];
    let mut restricted = !kinds.is_empty();
    for (given, allowed) in implied {
        if !given {
            continue;
        }
        if restricted {
            kinds.retain(|k| allowed.contains(&k.as_str()));
        } else {
            kinds = allowed.iter().map(|k| k.to_string()).collect();
            restricted = true;
        }
        if kinds.is_empty() {
            return Ok(None);
        }
    }
    let interned = [
        (BlockCol::Kind, kinds),
        (BlockCol::Comm, q.comm.iter().cloned().collect()),
        (BlockCol::Exe, q.exe.iter().cloned().collect()),
    ];
    for (col, strings) in interned {
        if strings.is_empty() {
            continue;
        }
        let values = string_ids(c, &strings).await?;
        if values.is_empty() {
            return Ok(None);
        }
        filters.push(Filter { col, values });
    }
    if let Some(v) = &q.container {
        // Users paste short ids (12 chars) as docker shows them.
        let values: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM strings WHERE s >= ? AND s < ? LIMIT 1000")
                .bind(v)
                .bind(format!("{v}\u{10FFFF}"))
                .fetch_all(&mut *c)
                .await?;
        if values.is_empty() {
            return Ok(None);
        }
        filters.push(Filter {
            col: BlockCol::Container,
            values,
        });
    }
    for (col, v) in [
        (BlockCol::Pid, q.pid),
        (BlockCol::Ppid, q.ppid),
        (BlockCol::Uid, q.uid),
    ] {
        if let Some(v) = v {
            filters.push(Filter {
                col,
                values: vec![v as i64],
            });
        }
    }
    if let Some(set) = &q.procs {
        if set.is_empty() {
            return Ok(None);
        }
        filters.push(Filter {
            col: BlockCol::Proc,
            values: set.clone(),
        });
    }
    match &q.path {
        Some(PathMatch::Exact(p)) => filters.push(Filter {
            col: BlockCol::Path,
            values: vec![payload::hash63(p.as_bytes())],
        }),
        // The deepest directory the prefix names: every path under the
        // prefix has it among its indexed directories.
        Some(PathMatch::Prefix(p)) => {
            if let Some(d) = payload::dirs(p).last() {
                filters.push(Filter {
                    col: BlockCol::PathDir,
                    values: vec![payload::hash63(d.as_bytes())],
                });
            }
        }
        None => {}
    }
    match q.addr {
        Some(c) if c.is_host() => filters.push(Filter {
            col: BlockCol::Addr,
            values: vec![payload::hash63(&c.addr)],
        }),
        // A block: the longest indexed network within it (every address of
        // the block is in that network); none for one wider than /8 or /32.
        Some(c) => {
            let within = payload::net_prefixes(&c.addr)
                .iter()
                .rev()
                .find(|&&b| b <= c.bits);
            if let Some(&bits) = within {
                filters.push(Filter {
                    col: BlockCol::AddrNet,
                    values: vec![payload::net_key(&c.addr, bits)],
                });
            }
        }
        None => {}
    }
    if let Some(p) = q.port {
        filters.push(Filter {
            col: BlockCol::Port,
            values: vec![i64::from(p)],
        });
    }
    if let Some(values) = q.cmdline.as_deref().and_then(bloom::cmdline_keys) {
        filters.push(Filter {
            col: BlockCol::CmdGram,
            values,
        });
    }
    // Split on the spaces argv is joined with: each piece lies within one
    // argv element, so it occurs verbatim in the args JSON unless JSON
    // escapes it (then it is left to the re-check).
    let mut needles: Vec<String> = q
        .cmdline
        .iter()
        .flat_map(|t| t.split(' '))
        .filter(|p| !p.is_empty())
        .filter(|p| serde_json::to_string(p).is_ok_and(|j| j.len() == p.len() + 2))
        .map(str::to_owned)
        .collect();
    // A path is stored as a JSON string, escaped as serde_json escapes this
    // one: the quoted path (or the open-quoted prefix) occurs verbatim, so
    // the re-check decodes only rows that hold it.
    if let Some(m) = &q.path {
        let (p, exact) = match m {
            PathMatch::Exact(p) => (p, true),
            PathMatch::Prefix(p) => (p, false),
        };
        let mut j = serde_json::to_string(p).unwrap_or_default();
        if !exact {
            j.pop();
        }
        needles.push(j);
    }
    let fidelity = match &q.fidelity {
        Some(f) => match string_ids(c, std::slice::from_ref(f)).await?.first() {
            Some(id) => Some(*id),
            None => return Ok(None),
        },
        None => None,
    };
    // The filter with the fewest blocks in range drives; counting stops at
    // a bound, past which any driver is about as good as a plain scan.
    // A path or address filter (a block filter test, never counted: that
    // would read every filter twice) drives unless a column's blocks are
    // fewer than the window's blocks / BLOOM_TEST_COST.
    let mut driver = None;
    if filters.len() == 1 {
        driver = Some(0);
    } else if filters.len() > 1 {
        let mut best = i64::MAX;
        for (i, f) in filters.iter().enumerate() {
            if bloom::holds(f.col) {
                continue;
            }
            let mut b = blocks_of("SELECT count(*) FROM (", "1", f, blocks(lo, hi));
            b.push(" LIMIT 4096)");
            let n: i64 = b.build_query_scalar::<i64>().fetch_one(&mut *c).await?;
            if n == 0 {
                return Ok(None);
            }
            if n < best {
                best = n;
                driver = Some(i);
            }
        }
        if let Some(i) = filters.iter().position(|f| bloom::holds(f.col)) {
            let (blo, bhi) = blocks(lo, hi);
            if best.saturating_mul(BLOOM_TEST_COST) > bhi - blo {
                driver = Some(i);
            }
        }
    }
    Ok(Some(Plan {
        lo,
        hi,
        ids,
        filters,
        fidelity,
        driver,
        recheck: q.has_payload(),
        needles,
    }))
}

fn row_to_event(r: &SqliteRow) -> Result<Event, sqlx::Error> {
    let u32_col = |name: &str| -> Result<Option<u32>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(name)?.map(|v| v as u32))
    };
    let args: String = r.try_get("args")?;
    Ok(Event {
        id: r.try_get("id")?,
        ts: r.try_get("ts")?,
        kind: static_name(KINDS, r.try_get("kind")?),
        pid: u32_col("pid")?,
        tid: u32_col("tid")?,
        ppid: u32_col("ppid")?,
        uid: u32_col("uid")?,
        gid: u32_col("gid")?,
        comm: r.try_get("comm")?,
        ns_pid: u32_col("ns_pid")?,
        exe: r.try_get("exe")?,
        cgroup_id: r.try_get::<Option<i64>, _>("cgroup_id")?.map(|v| v as u64),
        container_id: r.try_get("container_id")?,
        mnt_ns: u32_col("mnt_ns")?,
        pid_ns: u32_col("pid_ns")?,
        retval: r.try_get("retval")?,
        args: decode_args(
            &args,
            r.try_get::<Option<String>, _>("args_keys")?.as_deref(),
        ),
        fidelity: static_name(FIDELITIES, r.try_get("fidelity")?),
        proc: r
            .try_get::<Option<i64>, _>("proc")?
            .map(|k| traceed_wire::ProcKey(k as u64)),
        lineage: None,
    })
}

pub(super) fn decode_args(text: &str, keys: Option<&str>) -> serde_json::Value {
    use serde_json::Value;
    let Some(keys) = keys else {
        return serde_json::from_str(text).unwrap_or(Value::Null);
    };
    match (
        serde_json::from_str::<Vec<String>>(keys),
        serde_json::from_str::<Vec<Value>>(text),
    ) {
        (Ok(k), Ok(v)) if k.len() == v.len() => Value::Object(k.into_iter().zip(v).collect()),
        _ => Value::Null,
    }
}
