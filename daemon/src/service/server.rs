//! The daemon's lifecycle: start every part in order (store, kernel side,
//! pipeline, API), report readiness, and shut down without losing what was
//! accepted: detach, drain the ring buffer, flush the writer.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::api::{self, AppState, LoadInfo};
use crate::kernel::ladder::{self, LoadOptions};
use crate::pipeline::ingest::{self, Pipeline};
use crate::service::config::Config;
use crate::service::metrics::Counters;
use crate::service::notify::{self, Notifier, Watchdog};
use crate::store::export::Exporter;
use crate::store::live::Live;
use crate::store::retention::{self, Retention};
use crate::store::{Store, Writer};

/// Committed batches kept for live followers and the detector; one further
/// behind is skipped ahead (a `lost` line; the detector counts them). The
/// writer publishes whole batches (up to `store.batch_size`, 4096), several
/// back to back. With one message per event, 4096 slots let the detector
/// with 200 rules be skipped ahead from ~80k events/s with CPU to spare, and
/// 16384 from ~184k; 8 batches hold up to 32768 events. A slot's batch is
/// freed once every receiver has it: memory follows the backlog, not the
/// capacity.
const LIVE_CAPACITY: usize = 8;

pub async fn run(cfg: Config, notifier: Notifier) -> anyhow::Result<()> {
    let started = Instant::now();
    // Handlers first: a SIGHUP from logrotate during a slow start must not
    // hit the default action (terminate).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    notifier.status("opening the store");
    // One batch of a one-time index backfill takes about a second; each
    // buys a minute more of the unit's start timeout.
    let store = Store::open_with_progress(&cfg.state_dir, &|what| {
        notifier.extend_start(Duration::from_secs(60), what)
    })
    .await?;
    tracing::info!(db = %store.path().display(), "store open");

    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(cfg.store.queue_capacity);
    let live = Live::new(LIVE_CAPACITY);
    let writer = Writer::new(
        &store,
        rx,
        live.clone(),
        counters.clone(),
        cfg.store.batch_size,
    )
    .await?
    .with_commit_interval(cfg.store.commit_interval);
    let (writer, export_reopen) = match &cfg.export.jsonl {
        Some(path) => {
            let x = Exporter::open(path)?;
            let reopen = x.reopen_handle();
            tracing::info!(path = %path.display(), "exporting events as JSON lines");
            (writer.with_export(x), Some(reopen))
        }
        None => (writer, None),
    };
    let writer = tokio::spawn(writer.run());
    // [export.clickhouse]: reads the store only; ClickHouse down never blocks
    // ingest. Retention reports deletes of what it has not shipped.
    let (export_stop, export_stop_rx) = watch::channel(false);
    let mut sink = match &cfg.export.clickhouse {
        Some(ch) => Some(crate::store::clickhouse::Sink::new(&store, ch)?),
        None => None,
    };
    let export_losses = sink.as_mut().and_then(|s| s.take_losses());
    let (retention_stop, retention_stop_rx) = watch::channel(false);
    let retention = Retention::new(
        &store,
        retention::Policy {
            max_age: cfg.store.max_age,
            max_bytes: cfg.store.max_bytes,
            min_free_bytes: cfg.store.min_free_bytes,
            interval: std::time::Duration::from_secs(2),
        },
    )
    .await?;
    let retention = match &sink {
        Some(s) => retention.with_export(s.guard()),
        None => retention,
    };
    let retention = tokio::spawn(retention.run(retention_stop_rx));
    let clickhouse = sink.map(|sink| {
        let _ = counters.export.set(sink.state());
        tokio::spawn(sink.run(export_stop_rx))
    });

    notifier.status("loading eBPF programs");
    let scope = crate::kernel::scope::Resolved::from_config(&cfg.scope)?;
    let exe_scope = scope.exe_scope();
    let opts = LoadOptions {
        scope,
        generic_syscalls: cfg
            .events
            .syscalls
            .iter()
            .filter_map(|s| crate::pipeline::decoder::syscall_table::number(s))
            .collect(),
        mode: cfg.mode,
        btf_path: cfg.btf_path.clone(),
        btf_dir: cfg.btf_dir.clone(),
        state_dir: cfg.state_dir.clone(),
        transport: cfg.kernel.transport,
        self_tgid: std::process::id(),
        // Validated: at most config::RING_BUFFER_MAX.
        ring_buffer_bytes: u32::try_from(cfg.ring_buffer_bytes()).unwrap_or(u32::MAX),
        // Validated to at most 128 KiB.
        max_argv_bytes: cfg.events.max_argv_bytes as u32,
        build_objects: cfg.kernel.build_objects,
        fentry: cfg.kernel.fentry,
    };
    // The ladder trims the heap itself, once the BTF is freed (its peak).
    let mut loaded = tokio::task::block_in_place(|| ladder::load(&opts))?;
    let fidelity = loaded.rung.fidelity();
    if let Some(ev) = store.downtime_event(fidelity) {
        tracing::info!(from = %ev.args.get("from").unwrap_or(traceed_wire::payload::Arg::Null), "recording the time traceed was not running as a lost row");
        let _ = tx.send(ev).await;
    }
    if let Some(losses) = export_losses {
        crate::store::clickhouse::spawn_lost_rows(losses, tx.downgrade(), fidelity);
    }
    let refused: Vec<String> = loaded
        .refused
        .iter()
        .map(|r| format!("{} ({})", r.rung, r.reason))
        .collect();
    tracing::info!(
        rung = loaded.rung.as_str(),
        btf = loaded.btf_source.as_deref().unwrap_or("-"),
        kernel_object = loaded
            .kernel_object
            .as_ref()
            .map(|k| match k.build_ms {
                Some(ms) if k.built_now => format!("{} (built now in {ms} ms)", k.path),
                _ => format!("{} (prebuilt)", k.path),
            })
            .unwrap_or_else(|| "-".into()),
        programs = loaded.programs.len(),
        attach = %attach_summary(&loaded.attach),
        transport = loaded.transport.as_str(),
        refused = %refused.join("; "),
        "eBPF programs attached: rung {}, {} programs",
        loaded.rung.as_str(),
        loaded.programs.len()
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pipeline = Pipeline::new(fidelity, tx, counters.clone());
    pipeline.exe_scope = exe_scope;
    pipeline.watchdog = Watchdog::from_env(notifier, counters.clone());
    if !cfg.events.coalesce.is_zero() {
        tracing::info!(
            window = ?cfg.events.coalesce,
            "identical opens by one thread within the window are stored as one row with a count ([events] coalesce)"
        );
        pipeline.coalesce = Some(crate::pipeline::coalesce::Coalescer::new(
            cfg.events.coalesce,
        ));
    }
    tracing::info!(
        processes = pipeline.procs.len(),
        "process table seeded from /proc"
    );
    let source = std::mem::replace(
        &mut loaded.source,
        crate::kernel::source::EventSource::Perf(Vec::new()),
    );
    let pending = std::mem::take(&mut loaded.pending);
    let reader = tokio::spawn(ingest::run(
        source,
        pending,
        loaded.lost_map.take(),
        pipeline,
        stop_rx,
    ));

    let state = Arc::new(AppState::new(
        store.clone(),
        counters.clone(),
        live.clone(),
        LoadInfo {
            rung: loaded.rung.as_str().into(),
            fidelity: fidelity.into(),
            btf_source: loaded.btf_source.clone(),
            kernel_object: loaded.kernel_object.clone(),
            refused: loaded.refused.clone(),
            programs: loaded.programs.clone(),
            skipped_hooks: loaded.skipped_hooks.clone(),
            attach: Some(loaded.attach.clone()),
            transport: loaded.transport.as_str().into(),
        },
        format!(
            "max_age={} max_bytes={} min_free_bytes={}",
            humanize(cfg.store.max_age),
            cfg.store.max_bytes,
            cfg.store.min_free_bytes
        ),
        started,
    ));
    crate::service::metrics::spawn_lag_watch(&live, counters.clone());
    let detect_stats = Arc::new(crate::detect::Stats::default());
    let _ = counters.detect.set(detect_stats.clone());
    let (engine, engine_rx) =
        watch::channel(Arc::new(crate::detect::load(&cfg.detect, &detect_stats)));
    tokio::spawn(
        crate::detect::Detector::new(engine_rx, store.clone(), detect_stats.clone())
            .run(live.subscribe()),
    );
    let listener = bind_socket(&cfg.socket)?;
    let socket_ino = std::fs::metadata(&cfg.socket).map(|m| m.ino()).ok();
    let app = api::router(state.clone());
    let (api_stop_tx, mut api_stop_rx) = watch::channel(false);
    let header_timeout = cfg.api.header_timeout;
    let api_task = tokio::spawn(async move {
        api::serve::serve(listener, app, header_timeout, async move {
            let _ = api_stop_rx.changed().await;
        })
        .await
    });
    state.ready.store(true, Relaxed);
    let rung = loaded.rung.as_str();
    tracing::info!(
        rung,
        socket = %cfg.socket.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "ready: rung {rung}, listening on {}",
        cfg.socket.display()
    );
    notifier.ready();
    notifier.status(&notify::status_line(
        rung,
        0.0,
        counters
            .events_total
            .load(std::sync::atomic::Ordering::Relaxed),
        counters.lost_total(),
    ));
    let status_task = tokio::spawn(notify::status_loop(
        notifier,
        rung,
        counters.clone(),
        std::time::Duration::from_secs(5),
    ));

    let mut detect_cfg = cfg.detect.clone();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                notifier.reloading();
                tracing::info!("SIGHUP: reloading");
                match cfg.reread_detect() {
                    Ok(d) => detect_cfg = d,
                    Err(e) => tracing::error!("config not re-read, keeping [detect] as it was: {e}"),
                }
                crate::detect::reload(&detect_cfg, &detect_stats, &engine);
                match &export_reopen {
                    Some(r) => r.notify_one(),
                    None => tracing::info!("SIGHUP: no export file to reopen"),
                }
                tracing::info!("reloaded");
                notifier.ready();
            }
        }
    }
    let _ = retention_stop.send(true);
    let _ = export_stop.send(true);
    notifier.stopping();
    status_task.abort();
    notifier.status("stopping: draining the ring buffer and the write queue");

    // Detach first so nothing new arrives, then drain what is buffered.
    drop(loaded.ebpf);
    let _ = stop_tx.send(true);
    reader.await??;
    writer.await??;
    // Returns at once: a stop cancels a pass under way.
    let _ = retention.await;
    if let Some(mut c) = clickhouse {
        // A batch in flight is abandoned: its cursor was not recorded, so
        // the next start sends it again (harmless, same keys).
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut c)
            .await
            .is_err()
        {
            c.abort();
        }
    }
    let _ = api_stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), api_task).await;
    remove_socket_if_ours(&cfg.socket, socket_ino);
    tracing::info!(events = counters.events_total.load(Relaxed), "stopped");
    Ok(())
}

/// A successor may already have bound the same path while we drained:
/// only remove the socket file we created.
fn remove_socket_if_ours(path: &Path, ino: Option<u64>) {
    if ino.is_some() && std::fs::metadata(path).map(|m| m.ino()).ok() == ino {
        let _ = std::fs::remove_file(path);
    }
}

fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

/// Bind the API socket: 0660, group `traceed` when that group exists
/// (otherwise root-only, and the log says so).
fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    match crate::service::peer::group_gid() {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("chgrp traceed {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
        None => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!("group 'traceed' does not exist: the API socket is root-only (create the group to share it)");
        }
    }
    Ok(listener)
}

/// "open: fexit, file: fexit, ...", plus why fexit is not used.
fn attach_summary(a: &traceed_wire::AttachStatus) -> String {
    let mut s = a
        .families
        .iter()
        .map(|f| format!("{}: {}", f.family, f.method))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(why) = &a.fentry_refused {
        s.push_str(&format!(" (no fexit: {why})"));
    }
    s
}
