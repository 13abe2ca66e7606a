//! The `alerts` table (migration 0008): writing a match, and reading
//! alerts back with their event and the process's minute before.

use sqlx::{QueryBuilder, Row, Sqlite};
use traceed_detect::{Level, Rule};
use traceed_wire::{Alert, Event};

use crate::store::Query;
use crate::store::{Store, StoreError};

/// Context window before an alert, and its size cap.
const CONTEXT_NS: i64 = 60_000_000_000;
const CONTEXT_MAX: u32 = 100;

fn level_num(l: Level) -> i64 {
    l as i64
}

const LEVELS: [Level; 5] = [
    Level::Informational,
    Level::Low,
    Level::Medium,
    Level::High,
    Level::Critical,
];

pub async fn insert<A: Sync>(store: &Store, rule: &Rule, ev: &Event<A>) -> Result<i64, StoreError> {
    let tags = serde_json::to_string(&rule.tags).unwrap_or_else(|_| "[]".into());
    let r = sqlx::query(
        "INSERT INTO alerts (rule_id, title, level, tags, event_id, ts, pid) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&rule.id)
    .bind(&rule.title)
    .bind(level_num(rule.level))
    .bind(tags)
    .bind(ev.id)
    .bind(ev.ts)
    .bind(ev.pid.map(i64::from))
    .execute(store.pool())
    .await?;
    Ok(r.last_insert_rowid())
}

/// `GET /v1/alerts` filters, validated.
#[derive(Debug, Default, Clone)]
pub struct AlertQuery {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub min_level: Option<Level>,
    pub rule: Option<String>,
    /// Rows with id after this one (follow).
    pub after_id: Option<i64>,
    pub limit: u32,
}

/// Alerts oldest first, each with its event and context.
pub async fn query(store: &Store, q: &AlertQuery) -> Result<Vec<Alert>, StoreError> {
    let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT id, rule_id, title, level, tags, event_id, ts, pid FROM alerts WHERE 1=1",
    );
    if let Some(s) = q.since {
        b.push(" AND ts >= ").push_bind(s);
    }
    if let Some(u) = q.until {
        b.push(" AND ts < ").push_bind(u);
    }
    if let Some(l) = q.min_level {
        b.push(" AND level >= ").push_bind(level_num(l));
    }
    if let Some(r) = &q.rule {
        b.push(" AND rule_id = ").push_bind(r.clone());
    }
    if let Some(a) = q.after_id {
        b.push(" AND id > ").push_bind(a);
    }
    b.push(" ORDER BY id LIMIT ").push_bind(i64::from(q.limit));
    let rows = b.build().fetch_all(store.pool()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let level: i64 = r.try_get("level")?;
        let tags: String = r.try_get("tags")?;
        let pid: Option<i64> = r.try_get("pid")?;
        let mut a = Alert {
            id: r.try_get("id")?,
            rule_id: r.try_get("rule_id")?,
            title: r.try_get("title")?,
            level: LEVELS
                .get(level as usize)
                .map(|l| l.name())
                .unwrap_or("unknown")
                .into(),
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            event_id: r.try_get("event_id")?,
            ts: r.try_get("ts")?,
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            event: None,
            context: Vec::new(),
            ancestry: Vec::new(),
        };
        with_context(store, &mut a).await?;
        out.push(a);
    }
    Ok(out)
}

/// The matched event (found by its time and pid, then its id), the
/// process's events in the minute before it (that process instance only:
/// a reused pid's earlier owner is left out) and its ancestry.
async fn with_context(store: &Store, a: &mut Alert) -> Result<(), StoreError> {
    let Some(pid) = a.pid else { return Ok(()) };
    let q = Query {
        since: Some(a.ts - CONTEXT_NS),
        until: Some(a.ts + 1),
        pid: Some(pid),
        desc: true,
        limit: CONTEXT_MAX + 1,
        ..Query::default()
    };
    let (mut events, _) = store.query(&q).await?;
    events.reverse();
    if let Some(i) = events.iter().position(|e| e.id == a.event_id) {
        a.event = Some(events.remove(i));
        events.retain(|e| e.id < a.event_id);
    }
    let key = a.event.as_ref().and_then(|e| e.proc);
    if let Some(key) = key {
        events.retain(|e: &Event| e.proc == Some(key));
        a.ancestry = store.ancestors(key.0 as i64).await?;
    }
    if events.len() > CONTEXT_MAX as usize {
        events.drain(..events.len() - CONTEXT_MAX as usize);
    }
    a.context = events;
    Ok(())
}

pub fn parse_level(s: &str) -> Option<Level> {
    Level::from_name(s)
}
