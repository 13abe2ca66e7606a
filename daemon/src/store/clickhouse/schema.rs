//! `traceed export clickhouse-schema`: the table a shipped row goes
//! into, for ClickHouse 18.16 (Debian 12) and later.

/// `traceed export clickhouse-schema`: the DDL for the tables the sink
/// inserts into. Types that ClickHouse 18.16 (Debian 12) accepts.
pub struct SchemaOptions {
    pub database: String,
    pub table: String,
    /// A `remote_servers` cluster: `<table>_local` on every shard plus a
    /// `Distributed` `<table>` over them. None: one server, `<table>` itself.
    pub cluster: Option<String>,
    /// Keep this many days (0: forever).
    pub ttl_days: u32,
    /// The oldest server the DDL must run on, (major, minor): TTL clauses
    /// need 19.6.
    pub server_version: (u32, u32),
}

/// Every column of a shipped row, in order, with its ClickHouse type.
pub const COLUMNS: &[(&str, &str)] = &[
    ("host", "String"),
    ("store_id", "String"),
    ("id", "Int64"),
    ("ts", "DateTime"),
    ("ts_ns", "UInt64"),
    ("kind", "String"),
    ("pid", "Nullable(UInt32)"),
    ("tid", "Nullable(UInt32)"),
    ("ppid", "Nullable(UInt32)"),
    ("proc", "Nullable(String)"),
    ("uid", "Nullable(UInt32)"),
    ("gid", "Nullable(UInt32)"),
    ("comm", "Nullable(String)"),
    ("ns_pid", "Nullable(UInt32)"),
    ("exe", "Nullable(String)"),
    ("cgroup_id", "Nullable(UInt64)"),
    ("container_id", "Nullable(String)"),
    ("mnt_ns", "Nullable(UInt32)"),
    ("pid_ns", "Nullable(UInt32)"),
    ("retval", "Nullable(Int64)"),
    ("args", "String"),
    ("fidelity", "String"),
];

/// `ALTER TABLE` statements that add `missing` (names from `COLUMNS`) to
/// `db.table`, each after the column it follows in `COLUMNS`.
pub fn missing_columns_ddl(db: &str, table: &str, missing: &[String]) -> String {
    let mut out = Vec::new();
    for m in missing {
        let Some(i) = COLUMNS.iter().position(|(n, _)| n == m) else {
            continue;
        };
        let after = match i {
            0 => String::new(),
            _ => format!(" AFTER {}", COLUMNS[i - 1].0),
        };
        out.push(format!(
            "ALTER TABLE {db}.{table} ADD COLUMN {m} {}{after};",
            COLUMNS[i].1
        ));
    }
    out.join(" ")
}

pub fn schema(o: &SchemaOptions) -> String {
    let db = &o.database;
    let local = match &o.cluster {
        Some(_) => format!("{}_local", o.table),
        None => o.table.clone(),
    };
    let mut s = String::new();
    s.push_str(&format!(
        "-- traceed events in ClickHouse: `traceed export clickhouse-schema`.\n\
         -- Types for ClickHouse {}.{} and later; the sink inserts into {db}.{}.\n",
        o.server_version.0, o.server_version.1, o.table
    ));
    if let Some(c) = &o.cluster {
        s.push_str(&format!(
            "-- Run all of it on every server of cluster `{c}` (remote_servers): each shard\n\
             -- keeps its rows in {db}.{local}; {db}.{t} spreads inserts by host and reads\n\
             -- from all shards. A host's rows all live on one shard, so FINAL on a shard\n\
             -- sees every copy of a row.\n",
            t = o.table
        ));
    }
    s.push_str(&format!("CREATE DATABASE IF NOT EXISTS {db};\n\n"));
    s.push_str(&format!(
        "-- One row per event, keyed (host, store_id, id): a batch sent twice collapses\n\
         -- (ReplacingMergeTree; use FINAL, or argMax, to see each event once before\n\
         -- the merge). ts is the second (partitions, TTL), ts_ns the exact time.\n\
         CREATE TABLE IF NOT EXISTS {db}.{local}\n(\n"
    ));
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|(n, t)| format!("    {n} {t}"))
        .collect();
    s.push_str(&cols.join(",\n"));
    s.push_str("\n)\nENGINE = ReplacingMergeTree\nPARTITION BY toYYYYMMDD(ts)\nORDER BY (host, store_id, id)");
    let ttl_clause = o.server_version >= (19, 6);
    if o.ttl_days > 0 && ttl_clause {
        s.push_str(&format!("\nTTL ts + INTERVAL {} DAY", o.ttl_days));
    }
    s.push_str(";\n");
    if o.ttl_days > 0 && !ttl_clause {
        s.push_str(&format!(
            "-- Retention, {n} days: ClickHouse before 19.6 has no TTL clause (with 19.6+,\n\
             -- `--clickhouse-version 19.6` adds `TTL ts + INTERVAL {n} DAY`). Drop whole days\n\
             -- instead, on every server, e.g. daily from cron:\n\
             --   clickhouse-client -q \"SELECT DISTINCT partition FROM system.parts WHERE database = '{db}'\n\
             --     AND table = '{local}' AND active AND toUInt32(partition) < toYYYYMMDD(today() - {n})\" |\n\
             --   while read p; do clickhouse-client -q \"ALTER TABLE {db}.{local} DROP PARTITION $p\"; done\n",
            n = o.ttl_days
        ));
    }
    if let Some(c) = &o.cluster {
        s.push_str(&format!(
            "\n-- Inserts and queries go here: rows are placed by cityHash64(host).\n\
             CREATE TABLE IF NOT EXISTS {db}.{t} AS {db}.{local}\n\
             ENGINE = Distributed({c}, {db}, {local}, cityHash64(host));\n",
            t = o.table
        ));
    }
    // The columns of the SQLite events_view (migrations/0011), ts in
    // nanoseconds as there, plus where each row came from; one row per event.
    let view_cols = [
        "host",
        "store_id",
        "id",
        "ts_ns AS ts",
        "kind",
        "pid",
        "tid",
        "ppid",
        "proc",
        "uid",
        "gid",
        "comm",
        "ns_pid",
        "exe",
        "cgroup_id",
        "container_id",
        "mnt_ns",
        "pid_ns",
        "retval",
        "args",
        "fidelity",
    ];
    s.push_str(&format!(
        "\n-- The columns of traceed's SQLite events_view (ts in nanoseconds), plus host\n\
         -- and store_id; FINAL: each event once, even before a merge.\n\
         CREATE VIEW IF NOT EXISTS {db}.{t}_view AS\nSELECT {}\nFROM {db}.{t} FINAL;\n",
        view_cols.join(", "),
        t = o.table
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_for_a_cluster_and_for_one_server() {
        let mut o = SchemaOptions {
            database: "traceed".into(),
            table: "events".into(),
            cluster: Some("fleet".into()),
            ttl_days: 30,
            server_version: (18, 16),
        };
        let s = schema(&o);
        assert!(
            s.contains("CREATE TABLE IF NOT EXISTS traceed.events_local"),
            "{s}"
        );
        assert!(s.contains("ENGINE = Distributed(fleet, traceed, events_local, cityHash64(host))"));
        assert!(s.contains("ORDER BY (host, store_id, id)"));
        assert!(s.contains("PARTITION BY toYYYYMMDD(ts)"));
        assert!(!s.contains("\nTTL "), "18.16 has no TTL clause:\n{s}");
        assert!(s.contains("DROP PARTITION"));
        assert!(s.contains("FROM traceed.events FINAL"));
        for bad in ["DateTime64", "LowCardinality", "JSONExtract"] {
            assert!(!s.contains(bad), "{bad} does not work on 18.16");
        }
        o.server_version = (23, 8);
        o.cluster = None;
        let s = schema(&o);
        assert!(s.contains("TTL ts + INTERVAL 30 DAY"), "{s}");
        assert!(s.contains("CREATE TABLE IF NOT EXISTS traceed.events\n"));
        assert!(!s.contains("Distributed"));
    }
}
