//! The single writer: receives decoded events, encodes each batch (row ids,
//! interned strings, block-index rows, args text) and hands it to a
//! dedicated SQLite thread, then publishes the committed events, with their
//! ids, to live followers and the export file. Encoding and publishing run
//! on the async side while SQLite writes the batches before (up to DEPTH in
//! flight): one core each. A third thread checkpoints the WAL so neither
//! waits for the database file's fsync.
//!
//! When the store refuses writes (disk full) the writer keeps draining the
//! queue, counts what it could not store, and writes that as a `lost` row
//! once writes succeed again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::SqlitePool;
use tokio::sync::mpsc;
use traceed_wire::payload::Payload;
use traceed_wire::LiveEvent;

use super::live::Live;
use super::raw::{Conn, Encoded, IntCols, ProcRow, WriteError};
use super::{bloom, BlockCol, Store, StoreError, StoreHealth, BLOCK_SHIFT};
use crate::service::metrics::Counters;
use crate::store::export::Exporter;

use super::schema::NS_BASE;

/// While the store refuses writes (disk full), try again at most this often
/// and count the batches in between as lost.
const PAUSED_RETRY: Duration = Duration::from_secs(1);
#[cfg(test)]
pub(super) const PAUSED_RETRY_FOR_TESTS: Duration = PAUSED_RETRY;

/// WAL frames after a commit at which the checkpoint thread is woken
/// (SQLite's own auto-checkpoint default).
const CHECKPOINT_FRAMES: i64 = 1000;

/// WAL frames at which the SQLite thread checkpoints itself before the next
/// batch: bounds the WAL when the checkpoint thread cannot catch up (a
/// PASSIVE checkpoint racing a busy writer may never finish the last frames,
/// and only a finished one lets the WAL start over).
const WAL_MAX_FRAMES: i64 = 4096;

/// Batches handed to the SQLite thread and not yet answered.
const DEPTH: usize = 2;

/// Events the writer accepted but could not store, not yet written as a
/// `lost` row.
struct Dropped {
    count: u64,
    from: i64,
    to: i64,
    fidelity: String,
}

/// String -> id of the `strings` table, kept in memory by the writer.
struct Interner {
    ids: foldhash::HashMap<String, i64>,
    next: i64,
    /// The last string of each interned column and its id: consecutive
    /// events mostly repeat their kind, comm, exe and args keys, and
    /// comparing is cheaper than hashing.
    last: [(String, Option<i64>); Col::COUNT],
}

/// The interned columns of an event (`Interner::last`).
#[derive(Clone, Copy)]
enum Col {
    Kind,
    Comm,
    Exe,
    Container,
    Fidelity,
    Keys,
}

impl Col {
    const COUNT: usize = 6;
}

impl Interner {
    /// The id of `s`, adding it to `fresh` when it is new. Ids are never
    /// handed out twice, even when the batch that introduced one fails (its
    /// strings are carried into the next batch).
    fn id(&mut self, s: &str, fresh: &mut Vec<(i64, String)>) -> i64 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.next;
        self.next += 1;
        self.ids.insert(s.to_string(), id);
        fresh.push((id, s.to_string()));
        id
    }

    /// `col` for bytes that should be UTF-8 (None when they are not),
    /// compared with the column's last string before they are checked.
    fn col_utf8(&mut self, col: Col, b: &[u8], fresh: &mut Vec<(i64, String)>) -> Option<i64> {
        match &self.last[col as usize] {
            (last, Some(id)) if last.as_bytes() == b => Some(*id),
            _ => Some(self.col(col, std::str::from_utf8(b).ok()?, fresh)),
        }
    }

    /// `id` for a string of column `col`.
    fn col(&mut self, col: Col, s: &str, fresh: &mut Vec<(i64, String)>) -> i64 {
        match &self.last[col as usize] {
            (last, Some(id)) if last == s => return *id,
            _ => {}
        }
        let id = self.id(s, fresh);
        let (last, last_id) = &mut self.last[col as usize];
        last.clear();
        last.push_str(s);
        *last_id = Some(id);
        id
    }
}

/// Append `args` as stored: with `keys` (cleared first) the list of its
/// keys as a JSON array (stored interned) and the array of its values
/// into `out`; false, and the JSON itself into `out`, when `args` has no
/// keys (`{}`, or JSON that is not an object).
fn encode_args(args: &Payload, keys: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    keys.clear();
    let start = out.len();
    args.each(&mut |k, v| {
        let (kc, vc) = if keys.is_empty() {
            (b'[', b'[')
        } else {
            (b',', b',')
        };
        keys.push(kc);
        if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            // A payload's own keys: nothing to escape.
            keys.push(b'"');
            keys.extend_from_slice(k.as_bytes());
            keys.push(b'"');
        } else {
            // Writing a string into memory cannot fail.
            let _ = serde_json::to_writer(&mut *keys, k);
        }
        out.push(vc);
        v.write_json(out);
    });
    if keys.is_empty() {
        out.truncate(start);
        // Serializing JSON into memory cannot fail; the output is UTF-8.
        let _ = serde_json::to_writer(&mut *out, args);
        return false;
    }
    keys.push(b']');
    out.push(b']');
    true
}

/// A batch the SQLite thread is writing.
struct InFlight {
    events: Vec<LiveEvent>,
    first_id: i64,
}

/// What the SQLite thread hands back: the batch's buffers and the outcome.
type Done = (Encoded, Result<(), WriteError>);

/// A batch back from the SQLite thread, to publish or count as lost.
type Settled = (InFlight, Result<(), WriteError>);

/// The async side's end of the SQLite thread.
struct Pipe {
    jobs: std::sync::mpsc::SyncSender<Encoded>,
    done: mpsc::UnboundedReceiver<Done>,
    /// Oldest first; the thread answers in this order.
    inflight: VecDeque<InFlight>,
}

/// The SQLite thread: writes each batch in one transaction and schedules
/// checkpoints on its own helper thread. The batches after a failed one
/// were encoded assuming its new strings exist, so those are carried into
/// the next batch written (OR IGNORE makes that idempotent).
fn sql_thread(
    mut conn: Conn,
    mut ckpt: Conn,
    jobs: std::sync::mpsc::Receiver<Encoded>,
    done: mpsc::UnboundedSender<Done>,
) {
    let (poke, poked) = std::sync::mpsc::sync_channel::<()>(1);
    // One checkpoint at a time: a second one would get SQLITE_BUSY at once.
    let one_at_a_time = Arc::new(Mutex::new(()));
    let lock = one_at_a_time.clone();
    let checkpointer = std::thread::Builder::new()
        .name("traceed-ckpt".into())
        .spawn(move || {
            while poked.recv().is_ok() {
                let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = ckpt.checkpoint() {
                    // Full disk, or retention's TRUNCATE running: the
                    // writer's own checkpoint at WAL_MAX_FRAMES is the
                    // backstop.
                    tracing::debug!(error = %e, "WAL checkpoint did not run");
                }
            }
        });
    let mut carry = Encoded::default();
    while let Ok(mut batch) = jobs.recv() {
        if conn.wal_frames() >= WAL_MAX_FRAMES {
            // Waits for the checkpoint thread, then copies the rest with no
            // writer racing it, so the next commit starts the WAL over.
            let _g = one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
            let _ = conn.checkpoint();
        }
        batch.fresh.append(&mut carry.fresh);
        let res = conn.write(&batch);
        if res.is_err() {
            // Block rows are not carried: each batch adds its own counts,
            // and a failed batch's events are not stored.
            carry.fresh.extend_from_slice(&batch.fresh);
        }
        if res.is_ok() && conn.wal_frames() >= CHECKPOINT_FRAMES {
            // Full: a checkpoint is already asked for.
            let _ = poke.try_send(());
        }
        if done.send((batch, res)).is_err() {
            break;
        }
    }
    drop(poke);
    if let Ok(t) = checkpointer {
        let _ = t.join();
    }
}

pub struct Writer {
    rx: mpsc::Receiver<LiveEvent>,
    live: Live,
    counters: Arc<Counters>,
    batch_size: usize,
    health: Arc<StoreHealth>,
    export: Option<Exporter>,
    pool: SqlitePool,
    /// The writing and checkpointing connections, until run() moves them
    /// to their threads.
    conns: Option<(Conn, Conn)>,
    next_id: i64,
    strings: Interner,
    /// The batch being encoded: occurrences per (col, value, block).
    block_counts: BlockCounts,
    /// The payload filter (bloom.rs) of the block being filled.
    bloom_block: i64,
    bloom_bits: Vec<u8>,
    /// The command-line trigrams already in `bloom_bits`.
    grams: bloom::Grams,
    spare: Vec<Encoded>,
    keys: Vec<u8>,
    dropped: Option<Dropped>,
    last_attempt: Option<Instant>,
    /// Process keys with a `procs` row written since start and no exit yet:
    /// their other events need no upsert.
    procs_seen: foldhash::HashSet<i64>,
    /// The part of the last batch received past BATCH_HEAVY_BYTES: the
    /// next batch, before anything more is taken from the queue.
    carry: Vec<LiveEvent>,
    /// Least time between two batches' submits unless the queue holds a
    /// whole batch (`linger`).
    commit_gap: Duration,
    last_submit: Option<Instant>,
}

/// The columns every event has a block-index count for, in the order
/// `BlockCounts::add_run` is given them.
const RUN_COLS: [BlockCol; 8] = [
    BlockCol::Kind,
    BlockCol::Pid,
    BlockCol::Ppid,
    BlockCol::Uid,
    BlockCol::Comm,
    BlockCol::Exe,
    BlockCol::Container,
    BlockCol::Proc,
];

/// The block-index counts of the batch being encoded: occurrences per
/// (col, value, block). The columns every event has are counted in runs
/// first: a process's events come in runs that repeat its kind, pid, uid,
/// comm and the rest, and bumping a run is cheaper than a hash-map update
/// per column per event.
#[derive(Default)]
struct BlockCounts {
    map: foldhash::HashMap<(BlockCol, i64, i64), i64>,
    /// Per RUN_COLS entry: the current run's value, block and length.
    runs: [Option<(i64, i64, i64)>; RUN_COLS.len()],
}

impl BlockCounts {
    fn add(&mut self, col: BlockCol, v: i64, block: i64) {
        self.bump(col, v, block, 1);
    }

    fn bump(&mut self, col: BlockCol, v: i64, block: i64, n: i64) {
        *self.map.entry((col, v, block)).or_default() += n;
    }

    /// One occurrence of `v` (if any) in column RUN_COLS[i].
    fn add_run(&mut self, i: usize, v: Option<i64>, block: i64) {
        match (&mut self.runs[i], v) {
            (Some((rv, rb, n)), Some(v)) if *rv == v && *rb == block => *n += 1,
            _ => {
                self.end_run(i);
                self.runs[i] = v.map(|v| (v, block, 1));
            }
        }
    }

    /// Move column RUN_COLS[i]'s current run, if any, into the map.
    fn end_run(&mut self, i: usize) {
        if let Some((v, block, n)) = self.runs[i].take() {
            self.bump(RUN_COLS[i], v, block, n);
        }
    }

    /// Every count, as event_blocks rows in key order (the upserts then
    /// walk the primary key's B-tree forward); empty afterwards.
    fn drain_into(&mut self, rows: &mut Vec<[i64; 4]>) {
        for i in 0..RUN_COLS.len() {
            self.end_run(i);
        }
        rows.extend(
            self.map
                .drain()
                .map(|((col, v, block), n)| [col as i64, v, block, n]),
        );
        rows.sort_unstable();
    }
}

/// procs_seen is cleared past this (processes whose exit was lost would
/// otherwise stay forever); the cost is one upsert per live process again.
const PROCS_SEEN_MAX: usize = 1 << 20;

/// The `procs` upsert an event calls for, if any: the first event of an
/// instance, and every fork, exec and exit.
fn proc_row(
    e: &LiveEvent,
    key: i64,
    id: i64,
    exe: Option<i64>,
    comm: Option<i64>,
    seen: &mut foldhash::HashSet<i64>,
) -> Option<ProcRow> {
    let lifecycle = matches!(&*e.kind, "fork" | "exec" | "exit");
    if !seen.insert(key) && !lifecycle {
        return None;
    }
    if seen.len() > PROCS_SEEN_MAX {
        seen.clear();
    }
    let u = |v: Option<u32>| v.map(i64::from);
    let lineage = e.lineage.clone().unwrap_or_default();
    let arg = |k: &str| e.args.get(k).and_then(|a| a.as_i64());
    let (mut exit_ts, mut exit_code, mut signal, mut cmdline) = (None, None, None, None);
    match &*e.kind {
        "exit" => {
            exit_ts = Some(e.ts);
            exit_code = arg("exit_code");
            signal = arg("signal");
            seen.remove(&key);
        }
        // A failed exec changed nothing.
        "exec" if e.retval.is_none_or(|r| r >= 0) => {
            cmdline = super::payload::cmdline(&e.kind, &e.args);
        }
        _ => {}
    }
    let exec_ok = e.kind != "exec" || cmdline.is_some();
    Some(ProcRow {
        ints: [
            Some(key),
            u(e.pid),
            u(e.ppid),
            lineage.parent.map(|p| p as i64),
            u(e.uid),
            lineage.start,
            exit_ts,
            exit_code,
            signal,
            // exe and comm change at exec; another event's are the same.
            exe.filter(|_| exec_ok),
            comm.filter(|_| exec_ok),
            Some(id),
        ],
        cmdline,
    })
}

impl Writer {
    pub async fn new(
        store: &Store,
        rx: mpsc::Receiver<LiveEvent>,
        live: Live,
        counters: Arc<Counters>,
        batch_size: usize,
    ) -> Result<Self, StoreError> {
        let pool = store.pool.clone();
        // ids continue after the AUTOINCREMENT high-water mark, so an id is
        // never reused even after retention deleted the newest rows.
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
                .fetch_optional(&pool)
                .await?;
        let max_id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events")
            .fetch_one(&pool)
            .await?;
        let ids: foldhash::HashMap<String, i64> = sqlx::query_as("SELECT s, id FROM strings")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .collect();
        let next_string = ids.values().max().copied().unwrap_or(0) + 1;
        let open = |count_frames| {
            Conn::open(&store.path, count_frames).map_err(|e| StoreError::Writer {
                path: store.path.clone(),
                msg: e.to_string(),
            })
        };
        let conns = (open(true)?, open(false)?);
        let next_id = seq.unwrap_or(0).max(max_id.unwrap_or(0)) + 1;
        // The filter of the block the next id falls in, as stored: the
        // writer adds to it and rewrites it whole.
        let bloom_block = next_id >> BLOCK_SHIFT;
        let mut bloom_bits = vec![0u8; bloom::BYTES];
        let stored: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT slice, bits FROM block_blooms WHERE block = ?")
                .bind(bloom_block)
                .fetch_all(&pool)
                .await?;
        for (slice, bits) in stored {
            bloom::merge(&mut bloom_bits, slice as usize, &bits);
        }
        Ok(Self {
            rx,
            live,
            counters,
            batch_size,
            health: store.health.clone(),
            export: None,
            pool,
            conns: Some(conns),
            next_id,
            strings: Interner {
                ids,
                next: next_string,
                last: Default::default(),
            },
            block_counts: Default::default(),
            bloom_block,
            bloom_bits,
            grams: Default::default(),
            spare: Vec::new(),
            keys: Vec::new(),
            dropped: None,
            last_attempt: None,
            procs_seen: Default::default(),
            carry: Vec::new(),
            commit_gap: Duration::ZERO,
            last_submit: None,
        })
    }

    /// `[store] commit_interval`: see `linger`.
    pub fn with_commit_interval(mut self, gap: Duration) -> Self {
        self.commit_gap = gap;
        self
    }

    /// Also append every committed event to this JSON-lines file.
    pub fn with_export(mut self, export: Exporter) -> Self {
        self.export = Some(export);
        self
    }

    /// Runs until every sender is dropped and the queue is drained, so a
    /// clean shutdown loses nothing that was accepted; then leaves the
    /// clean-shutdown marker that bounds the next downtime row.
    pub async fn run(mut self) -> Result<(), StoreError> {
        let (conn, ckpt) = self.conns.take().expect("Writer::run runs once");
        let (jobs, jobs_rx) = std::sync::mpsc::sync_channel(DEPTH);
        let (done_tx, done) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("traceed-sql".into())
            .spawn(move || sql_thread(conn, ckpt, jobs_rx, done_tx))
            .map_err(|e| StoreError::WriterThread(e.to_string()))?;
        let mut pipe = Pipe {
            jobs,
            done,
            inflight: VecDeque::new(),
        };
        let res = self.pump(&mut pipe).await;
        drop(pipe);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        res?;
        sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES ('clean_stop', ?)")
            .bind(traceed_wire::now_ns())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn pump(&mut self, pipe: &mut Pipe) -> Result<(), StoreError> {
        // The queue is read into `inbox`, kept at batch_size for the
        // writer's life; each batch then moves into a vector of its own
        // length. Published batches stay alive in the live feed and the
        // detector, and a batch of a few hundred events held in a vector
        // sized for 4,096 kept ~1.5 MiB each resident once glibc reused
        // the chunk.
        let mut inbox = Vec::with_capacity(self.batch_size);
        let reopen = self.export.as_ref().map(Exporter::reopen_handle);
        loop {
            // Not mem::take: that would hand the inbox's capacity over.
            #[allow(clippy::drain_collect)]
            let mut batch: Vec<LiveEvent> = if self.carry.is_empty() {
                let n = tokio::select! {
                    biased;
                    _ = async {
                        match &reopen {
                            Some(r) => r.notified().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Some(x) = self.export.as_mut() {
                            x.reopen();
                        }
                        continue;
                    }
                    done = pipe.done.recv(), if !pipe.inflight.is_empty() => {
                        if let Some(s) = self.take(pipe, done)? {
                            self.settle(s);
                        }
                        continue;
                    }
                    n = self.rx.recv_many(&mut inbox, self.batch_size) => n,
                };
                if n == 0 {
                    break;
                }
                self.linger(pipe, &mut inbox).await?;
                self.cut(&mut inbox, true);
                inbox.drain(..).collect()
            } else {
                // Taken, not swapped: the carry keeps no empty vector.
                let mut batch = std::mem::take(&mut self.carry);
                self.cut(&mut batch, false);
                batch
            };
            self.counters
                .queue_depth
                .store(self.rx.len() as u64, Relaxed);
            if self.health.is_paused() {
                // An attempt under way decides whether the store is still
                // refusing writes.
                self.drain(pipe).await?;
                if self.health.is_paused()
                    && self
                        .last_attempt
                        .is_some_and(|t| t.elapsed() < PAUSED_RETRY)
                {
                    self.drop_batch(&mut batch);
                    continue;
                }
            }
            self.last_attempt = Some(Instant::now());
            if !self.write_dropped(pipe).await? {
                self.drop_batch(&mut batch);
                continue;
            }
            // Encode while earlier batches are being written; with DEPTH in
            // flight wait for the oldest (batches commit and publish in id
            // order), hand this one over, then publish the oldest while
            // SQLite writes.
            let (enc, first_id) = self.encode(&batch);
            let prev = if pipe.inflight.len() >= DEPTH {
                self.take_done(pipe).await?
            } else {
                None
            };
            self.submit(pipe, enc, batch, first_id);
            if let Some(s) = prev {
                self.settle(s);
            }
        }
        self.drain(pipe).await?;
        if self.dropped.is_some() && !self.write_dropped(pipe).await? {
            let lost = self.dropped.as_ref().map_or(0, |d| d.count);
            tracing::error!(lost, "stopping with a loss that could not be recorded");
        }
        Ok(())
    }

    /// Keep receiving into `inbox`, settling the batches in flight, until
    /// `commit_gap` has passed since the last submit, `inbox` holds a whole
    /// batch (by count, or by BATCH_HEAVY_BYTES of command lines), or the
    /// queue's senders are gone. Each commit writes every page its batch
    /// touched and the checkpoint copies them again, so at low rates a
    /// batch per drain of the ring made the commits most of the daemon's
    /// CPU; the events wait here instead, at most a batch of them.
    async fn linger(
        &mut self,
        pipe: &mut Pipe,
        inbox: &mut Vec<LiveEvent>,
    ) -> Result<(), StoreError> {
        let Some(due) = self
            .last_submit
            .filter(|_| !self.commit_gap.is_zero())
            .map(|t| t + self.commit_gap)
        else {
            return Ok(());
        };
        let due = tokio::time::Instant::from_std(due);
        loop {
            let room = self.batch_size.saturating_sub(inbox.len());
            let heavy = self.counters.queue_heavy_bytes.load(Relaxed);
            if room == 0 || heavy >= super::BATCH_HEAVY_BYTES as u64 {
                return Ok(());
            }
            tokio::select! {
                biased;
                done = pipe.done.recv(), if !pipe.inflight.is_empty() => {
                    if let Some(s) = self.take(pipe, done)? {
                        self.settle(s);
                    }
                }
                n = self.rx.recv_many(inbox, room) => {
                    if n == 0 {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(due) => return Ok(()),
            }
        }
    }

    /// Keep `batch` within BATCH_HEAVY_BYTES (at least one event): the rest
    /// is carried to the next batch. Events `from_queue` leave its heavy
    /// bytes count.
    fn cut(&mut self, batch: &mut Vec<LiveEvent>, from_queue: bool) {
        let (mut total, mut at) = (0, None);
        for (i, e) in batch.iter().enumerate() {
            total += super::heavy_bytes(e);
            if at.is_none() && i > 0 && total > super::BATCH_HEAVY_BYTES {
                at = Some(i);
            }
        }
        if from_queue && total > 0 {
            // Saturating: a sender that did not count (tests) cannot wrap it.
            let _ = self
                .counters
                .queue_heavy_bytes
                .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(total as u64)));
        }
        if let Some(i) = at {
            self.carry = batch.split_off(i);
        }
    }

    /// Write the pending `lost` row, if any, on its own; false when the
    /// store still refuses writes.
    async fn write_dropped(&mut self, pipe: &mut Pipe) -> Result<bool, StoreError> {
        if self.dropped.is_none() {
            return Ok(true);
        }
        // Batches in flight may fail and add to the count.
        self.drain(pipe).await?;
        let Some(d) = &self.dropped else {
            return Ok(true);
        };
        let count = d.count;
        let row = LiveEvent::lost(Some(count), "userspace", d.from, d.to, &d.fidelity);
        let (enc, first_id) = self.encode(std::slice::from_ref(&row));
        self.submit(pipe, enc, vec![row], first_id);
        let Some((row, res)) = self.take_done(pipe).await? else {
            return Ok(false);
        };
        match res {
            Ok(()) => {
                tracing::warn!(
                    count,
                    "store writable again; recorded the events it could not store as a lost row"
                );
                self.resume();
                self.dropped = None;
                self.publish(row.events, first_id);
                Ok(true)
            }
            // Not drop_batch: the row is the record of a loss, not one.
            Err(e) => {
                self.pause(&e);
                Ok(false)
            }
        }
    }

    /// Ids, interned strings, block rows and args text of `batch`.
    fn encode(&mut self, batch: &[LiveEvent]) -> (Encoded, i64) {
        let mut enc = self.spare.pop().unwrap_or_default();
        enc.clear();
        let first_id = self.next_id;
        let u = |v: Option<u32>| v.map(i64::from);
        for (i, e) in batch.iter().enumerate() {
            let id = first_id + i as i64;
            let fresh = &mut enc.fresh;
            let strings = &mut self.strings;
            let kind = strings.col(Col::Kind, &e.kind, fresh);
            let comm = e.comm.as_deref().map(|s| strings.col(Col::Comm, s, fresh));
            let exe = e.exe.as_deref().map(|s| strings.col(Col::Exe, s, fresh));
            let container =
                (e.container_id.as_deref()).map(|s| strings.col(Col::Container, s, fresh));
            let fidelity = strings.col(Col::Fidelity, &e.fidelity, fresh);
            let keys = encode_args(&e.args, &mut self.keys, &mut enc.args)
                .then(|| self.strings.col_utf8(Col::Keys, &self.keys, fresh))
                .flatten();
            let proc = e.proc.map(|k| k.0 as i64);
            enc.arg_ends.push(enc.args.len());
            enc.ints.push(IntCols::new([
                Some(id),
                Some(e.ts),
                Some(kind),
                u(e.pid),
                u(e.tid),
                u(e.ppid),
                u(e.uid),
                u(e.gid),
                comm,
                u(e.ns_pid),
                exe,
                e.cgroup_id.map(|v| v as i64),
                container,
                u(e.mnt_ns).map(|v| v - NS_BASE),
                u(e.pid_ns).map(|v| v - NS_BASE),
                e.retval,
                Some(fidelity),
                keys,
                proc,
            ]));
            if let Some(k) = proc {
                enc.procs
                    .extend(proc_row(e, k, id, exe, comm, &mut self.procs_seen));
            }
            for a in e.lineage.iter().flat_map(|l| &l.announce) {
                let exe = a.exe.as_deref().map(|s| self.strings.id(s, &mut enc.fresh));
                enc.procs.push(ProcRow {
                    ints: [
                        Some(a.key as i64),
                        Some(i64::from(a.pid)),
                        a.ppid.map(i64::from),
                        a.parent.map(|p| p as i64),
                        a.uid.map(i64::from),
                        Some(a.start),
                        None,
                        None,
                        None,
                        exe,
                        None,
                        Some(id),
                    ],
                    cmdline: a.cmdline.clone(),
                });
            }
            let block = id >> BLOCK_SHIFT;
            if block != self.bloom_block {
                self.push_bloom(&mut enc);
                self.bloom_bits.fill(0);
                self.grams.clear();
                self.bloom_block = block;
            }
            let counts = &mut self.block_counts;
            let cols = [
                Some(kind),
                u(e.pid),
                u(e.ppid),
                u(e.uid),
                comm,
                exe,
                container,
                proc,
            ];
            for (i, v) in cols.into_iter().enumerate() {
                counts.add_run(i, v, block);
            }
            let (bits, grams) = (&mut self.bloom_bits, &mut self.grams);
            super::payload::keys(&e.kind, &e.args, |col, v| {
                if col == BlockCol::CmdGram {
                    grams.insert(bits, v);
                } else if bloom::holds(col) {
                    bloom::insert(bits, col, v);
                } else {
                    counts.add(col, v, block);
                }
            });
        }
        self.push_bloom(&mut enc);
        self.block_counts.drain_into(&mut enc.blocks);
        // Ids of a batch that fails are not reused: a gap, never a clash.
        self.next_id += batch.len() as i64;
        (enc, first_id)
    }

    /// Write the current block's filter with the batch, unless it is
    /// empty (no event of the block named a path or address).
    fn push_bloom(&self, enc: &mut Encoded) {
        if self.bloom_bits.iter().any(|&b| b != 0) {
            enc.bloom_blocks.push(self.bloom_block);
            enc.bloom_bits.extend_from_slice(&self.bloom_bits);
        }
    }

    /// Hand an encoded batch to the SQLite thread (fewer than DEPTH are in
    /// flight).
    fn submit(&mut self, pipe: &mut Pipe, enc: Encoded, events: Vec<LiveEvent>, first_id: i64) {
        // Never blocks: the channel holds DEPTH batches and fewer than
        // DEPTH are unanswered.
        if let Err(e) = pipe.jobs.send(enc) {
            // The thread is gone; take() reports it.
            self.spare.push(e.0);
        }
        pipe.inflight.push_back(InFlight { events, first_id });
        self.last_submit = Some(Instant::now());
    }

    /// Wait for every batch in flight and settle it.
    async fn drain(&mut self, pipe: &mut Pipe) -> Result<(), StoreError> {
        while let Some(s) = self.take_done(pipe).await? {
            self.settle(s);
        }
        Ok(())
    }

    /// Wait for the oldest batch in flight, if any.
    async fn take_done(&mut self, pipe: &mut Pipe) -> Result<Option<Settled>, StoreError> {
        if pipe.inflight.is_empty() {
            return Ok(None);
        }
        let done = pipe.done.recv().await;
        self.take(pipe, done)
    }

    /// The answer to the oldest batch in flight; None from the channel means
    /// the SQLite thread is gone.
    fn take(&mut self, pipe: &mut Pipe, done: Option<Done>) -> Result<Option<Settled>, StoreError> {
        let (enc, res) = done
            .ok_or_else(|| StoreError::WriterThread("the SQLite writer thread stopped".into()))?;
        let Some(f) = pipe.inflight.pop_front() else {
            return Ok(None);
        };
        self.spare.push(enc);
        Ok(Some((f, res)))
    }

    /// Publish a committed batch, or count a failed one as lost.
    fn settle(&mut self, (f, res): Settled) {
        let InFlight {
            mut events,
            first_id,
        } = f;
        match res {
            Ok(()) => {
                self.resume();
                self.publish(events, first_id);
            }
            Err(e) => {
                self.pause(&e);
                self.drop_batch(&mut events);
            }
        }
    }

    fn resume(&self) {
        if self.health.resume() {
            tracing::warn!("store writable again: ingest resumed");
        }
    }

    fn pause(&mut self, e: &WriteError) {
        let reason = if e.is_full() {
            format!("disk full ({e}); free space in the state directory")
        } else {
            format!("writing failed: {e}")
        };
        if self.health.pause(reason.clone()) {
            tracing::error!(
                reason,
                "store refuses writes: ingest paused, loss is counted and recorded when writes succeed"
            );
        }
    }

    fn drop_batch(&mut self, batch: &mut Vec<LiveEvent>) {
        let Some(first) = batch.first() else {
            return;
        };
        let (lo, hi) = batch.iter().fold((first.ts, first.ts), |(lo, hi), e| {
            (lo.min(e.ts), hi.max(e.ts))
        });
        let n = batch.len() as u64;
        self.counters.add_lost_store(n);
        let d = self.dropped.get_or_insert_with(|| Dropped {
            count: 0,
            from: lo,
            to: hi,
            fidelity: first.fidelity.to_string(),
        });
        d.count += n;
        d.from = d.from.min(lo);
        d.to = d.to.max(hi);
        batch.clear();
    }

    fn publish(&mut self, mut events: Vec<LiveEvent>, first_id: i64) {
        for (i, e) in events.iter_mut().enumerate() {
            e.id = first_id + i as i64;
        }
        if let Some(x) = self.export.as_mut() {
            x.write(&events);
        }
        self.counters.commits.fetch_add(1, Relaxed);
        self.counters
            .count_stored_all(events.iter().map(|e| &*e.kind));
        self.live.publish(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counting in runs gives the counts a hash-map update per occurrence
    /// gives, through runs, interleaved values, block changes and absent
    /// values.
    #[test]
    fn block_counts_in_runs_are_the_plain_counts() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        let mut counts = BlockCounts::default();
        let mut plain: foldhash::HashMap<(BlockCol, i64, i64), i64> = Default::default();
        let mut block = 0;
        for _ in 0..20_000 {
            if next(500) == 0 {
                block += 1;
            }
            let i = next(RUN_COLS.len() as u64) as usize;
            // Mostly repeats of a few values, sometimes absent.
            let v = match next(10) {
                0 => None,
                1..=7 => Some(7),
                r => Some(r as i64),
            };
            counts.add_run(i, v, block);
            if let Some(v) = v {
                *plain.entry((RUN_COLS[i], v, block)).or_default() += 1;
            }
            if next(50) == 0 {
                counts.add(BlockCol::Port, 443, block);
                *plain.entry((BlockCol::Port, 443, block)).or_default() += 1;
            }
        }
        let mut rows = Vec::new();
        counts.drain_into(&mut rows);
        let mut want: Vec<[i64; 4]> = plain
            .into_iter()
            .map(|((c, v, b), n)| [c as i64, v, b, n])
            .collect();
        want.sort_unstable();
        assert_eq!(rows, want);
        // Empty afterwards: the next batch starts from nothing.
        counts.drain_into(&mut rows);
        assert_eq!(rows.len(), want.len());
    }
}
