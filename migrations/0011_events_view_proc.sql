-- events_view gains `proc` (issue 19): the process instance key as the API
-- and the ClickHouse rows spell it, 16 hex digits (printf's %x reads the
-- stored signed 64 bits as unsigned), so a key found in one answers in the
-- others. Otherwise the view of 0003, column for column.
DROP VIEW events_view;
CREATE VIEW events_view AS
SELECT e.id,
       e.ts,
       k.s AS kind,
       e.pid, e.tid, e.ppid,
       CASE WHEN e.proc IS NULL THEN NULL ELSE printf('%016x', e.proc) END AS proc,
       e.uid, e.gid,
       c.s AS comm,
       e.ns_pid,
       x.s AS exe,
       e.cgroup_id,
       ct.s AS container_id,
       e.mnt_ns + 4026531840 AS mnt_ns,
       e.pid_ns + 4026531840 AS pid_ns,
       e.retval,
       CASE
           WHEN e.args_keys IS NULL THEN e.args
           ELSE (SELECT json_group_object(kk.value, json(e.args -> ('$[' || kk.key || ']')))
                 FROM json_each(ak.s) AS kk)
       END AS args,
       f.s AS fidelity
FROM events e
LEFT JOIN strings k ON k.id = e.kind
LEFT JOIN strings c ON c.id = e.comm
LEFT JOIN strings x ON x.id = e.exe
LEFT JOIN strings ct ON ct.id = e.container_id
LEFT JOIN strings f ON f.id = e.fidelity
LEFT JOIN strings ak ON ak.id = e.args_keys;
