-- events_view: the stored events as the API shows them, for people and
-- scripts that open events.db with the sqlite3 CLI (backups, ad-hoc SQL,
-- bench/): interned strings resolved, namespaces as inode numbers, args as
-- a JSON object again. traceed itself reads through Store::query; the view
-- stores nothing and costs nothing on insert.
CREATE VIEW events_view AS
SELECT e.id,
       e.ts,
       k.s AS kind,
       e.pid, e.tid, e.ppid, e.uid, e.gid,
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
