-- Sigma rule matches (issue 16). One row per (rule, event): the event is in
-- `events` under event_id, and retention deletes an alert together with its
-- event (never before: alerts are kept at least as long as their events).
-- level is the rule's, as a number for `level >= ?` (0 informational,
-- 1 low, 2 medium, 3 high, 4 critical); tags is a JSON array of strings.
CREATE TABLE alerts (
    id       INTEGER PRIMARY KEY,
    rule_id  TEXT    NOT NULL,
    title    TEXT    NOT NULL,
    level    INTEGER NOT NULL,
    tags     TEXT    NOT NULL,
    event_id INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    pid      INTEGER
);
CREATE INDEX alerts_ts ON alerts (ts);
CREATE INDEX alerts_event ON alerts (event_id);
