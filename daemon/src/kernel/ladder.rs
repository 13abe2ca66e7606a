//! Kernel side, user half: walks the portability ladder, loads the chosen
//! embedded eBPF object with aya (the CO-RE object only ever with a target
//! BTF handed over explicitly), attaches its programs, and proves the
//! choice with a start-up self-check before anything is recorded.
//!
//! Owns: the embedded objects, rung choice and the reasons rungs were
//! refused, and the `Loaded` handle whose drop detaches all.

use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray};
use aya::{Btf, Ebpf, EbpfLoader};
use traceed_wire::{AttachStatus, FamilyAttach, KernelObject, Refusal, SkippedHook};

use super::btf::{target_btf, BtfError, SYS_BTF};
use super::hooks::{
    attach_all, core_hooks, fallback_hooks, has_loop_build, trampoline_functions, Hook, HookError,
    FAMILIES, LOOP_SUFFIX,
};
use super::kobject::LocateError;
use super::selfcheck::{self_check, SelfCheckError};
use super::source::{EventSource, SourceError};
use super::tracefs::{self, Format};
use super::{error_chain, kobject, scope};
use crate::service::config::{Mode, Transport};

static CORE_RING: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traceed.bpf.o"));
static CORE_PERF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traceed-perf.bpf.o"));
static FALLBACK_RING: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fallback.bpf.o"));
static FALLBACK_PERF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fallback-perf.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no rung of the portability ladder could be loaded: {0}")]
    NoRung(String),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
}

/// Why one rung was refused (its Display is the reason in status).
#[derive(Debug, thiserror::Error)]
pub enum RungError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    KernelObject(#[from] LocateError),
    #[error(transparent)]
    SelfCheck(#[from] SelfCheckError),
    #[error(transparent)]
    Hooks(#[from] HookError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Scope(#[from] scope::ScopeError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    /// `chain`: aya's error with its sources (the verifier log, the errno).
    #[error("loading the {what}: {chain}")]
    Load { what: String, chain: String },
    #[error("{} was built for transport {built}, but {configured} is configured", .path.display())]
    TransportMismatch {
        path: PathBuf,
        built: &'static str,
        configured: &'static str,
    },
    #[error("{} uses a BPF ring buffer, which this kernel lacks", .path.display())]
    NoRingBuf { path: PathBuf },
    #[error("object has no syscall_filter map")]
    NoSyscallFilter,
    #[error("syscall_filter: {0}")]
    SyscallFilter(aya::maps::MapError),
    #[error("counting the possible CPUs (one record slot each): {0}")]
    Cpus(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    CoreKernelBtf,
    CoreExternalBtf,
    KernelObject,
    Fallback,
}

impl Rung {
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::CoreKernelBtf => "core-kernel-btf",
            Rung::CoreExternalBtf => "core-external-btf",
            Rung::KernelObject => "kernel-object",
            Rung::Fallback => "fallback",
        }
    }

    pub fn fidelity(self) -> &'static str {
        match self {
            Rung::CoreKernelBtf | Rung::CoreExternalBtf => "core",
            Rung::KernelObject => "kernel",
            Rung::Fallback => "fallback",
        }
    }
}

pub struct LoadOptions {
    pub scope: scope::Resolved,
    /// Syscall numbers for the generic raw_syscalls path (empty: not attached).
    pub generic_syscalls: Vec<u32>,
    pub mode: Mode,
    pub transport: Transport,
    pub btf_path: Option<PathBuf>,
    pub btf_dir: Option<PathBuf>,
    /// Where a BTF unpacked from a .btf.tar.xz is kept.
    pub state_dir: PathBuf,
    pub self_tgid: u32,
    pub ring_buffer_bytes: u32,
    /// `[events] max_argv_bytes`: argv beyond this is cut (`truncated`).
    pub max_argv_bytes: u32,
    /// Rung 3 may compile the kernel-specific object when none is found.
    pub build_objects: bool,
    /// `[kernel] fentry`: attach fexit programs where the kernel allows
    /// BPF trampolines (false: syscall tracepoints everywhere).
    pub fentry: bool,
}

/// A loaded and attached object. Dropping `ebpf` detaches every program.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub source: EventSource,
    /// Records read during the self-check, to be processed first.
    pub pending: Vec<Vec<u8>>,
    pub lost_map: Option<PerCpuArray<MapData, u64>>,
    pub rung: Rung,
    pub transport: Transport,
    pub btf_source: Option<String>,
    pub kernel_object: Option<KernelObject>,
    pub refused: Vec<Refusal>,
    pub programs: Vec<String>,
    pub skipped_hooks: Vec<SkippedHook>,
    pub attach: AttachStatus,
}

fn ring_buf_supported() -> bool {
    aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(false)
}

/// Walk the ladder from the top (or only the forced rung) and return the
/// first rung that loads, attaches and passes its self-check.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    tracefs::ensure_mounted()?;
    let transport = match opts.transport {
        Transport::Auto if ring_buf_supported() => Transport::Ringbuf,
        Transport::Auto => Transport::Perf,
        t => t,
    };
    let mut refused = Vec::new();
    let want = |r: Rung| match opts.mode {
        Mode::Auto => true,
        Mode::Core => matches!(r, Rung::CoreKernelBtf | Rung::CoreExternalBtf),
        Mode::Kernel => r == Rung::KernelObject,
        Mode::Fallback => r == Rung::Fallback,
    };
    let mut refuse = |rung: Rung, err: RungError| {
        let reason = err.to_string();
        tracing::warn!(rung = rung.as_str(), %reason, "rung refused");
        refused.push(Refusal {
            rung: rung.as_str().into(),
            reason,
        });
    };

    for rung in [
        Rung::CoreKernelBtf,
        Rung::CoreExternalBtf,
        Rung::KernelObject,
        Rung::Fallback,
    ] {
        if !want(rung) {
            continue;
        }
        let attempt = match rung {
            // Rungs 1 and 2: the CO-RE object needs a target BTF. Never load
            // it without one: aya would keep vmlinux.h's offsets.
            Rung::CoreKernelBtf | Rung::CoreExternalBtf => {
                let g = globals(opts, transport);
                if let Some(funcs) = kernel_funcs(rung, opts) {
                    loader_for(opts, &g, bpf_loop_supported(), true)
                        .and_then(|l| load_core(l, Target::Kernel(funcs), rung, opts, transport))
                        .and_then(|a| {
                            crate::service::memory::release_free();
                            with_source(a, opts, transport)
                        })
                        .map(|a| (a, Some(SYS_BTF.to_string()), None, transport))
                } else {
                    // aya's EbpfLoader::new parses the kernel's BTF itself
                    // (loader_for drops that copy at once): made before ours, so
                    // the two parsed copies never coexist (the start-up peak
                    // was both, 50 MiB).
                    let loader = loader_for(opts, &g, bpf_loop_supported(), false);
                    target_btf(rung, opts)
                        .map_err(RungError::from)
                        .and_then(|(btf, source)| {
                            // Freed and trimmed whether or not the object loaded:
                            // the parsed BTF is the daemon's one-off memory peak.
                            let a = load_core(loader?, Target::Parsed(&btf), rung, opts, transport);
                            drop(btf);
                            crate::service::memory::release_free();
                            Ok((
                                with_source(a?, opts, transport)?,
                                Some(source),
                                None,
                                transport,
                            ))
                        })
                }
            }
            Rung::KernelObject => load_kernel_object(opts).map(|(l, ko, t)| (l, None, Some(ko), t)),
            Rung::Fallback => load_fallback(opts, transport).map(|l| (l, None, None, transport)),
        };
        match attempt {
            Ok((mut l, btf_source, kernel_object, transport)) => {
                if let Err(err) = self_check(&mut l, rung, opts) {
                    refuse(rung, err.into());
                    continue;
                }
                return Ok(Loaded {
                    ebpf: l.ebpf,
                    source: l.source,
                    pending: l.pending,
                    lost_map: l.lost_map,
                    rung,
                    transport,
                    btf_source,
                    kernel_object,
                    refused,
                    attach: attach_status(&l.programs, l.fentry_refused),
                    programs: l.programs,
                    skipped_hooks: l.skipped,
                });
            }
            Err(reason) => refuse(rung, reason),
        }
    }
    let summary = refused
        .iter()
        .map(|r| format!("{}: {}", r.rung, r.reason))
        .collect::<Vec<_>>()
        .join("; ");
    Err(LoadError::NoRung(summary))
}

/// One rung's object, loaded and attached, before its self-check.
pub struct Attempt {
    pub ebpf: Ebpf,
    pub source: EventSource,
    pub pending: Vec<Vec<u8>>,
    pub lost_map: Option<PerCpuArray<MapData, u64>>,
    pub programs: Vec<String>,
    pub skipped: Vec<SkippedHook>,
    /// Why no fexit program runs (null: they do).
    pub fentry_refused: Option<String>,
}

/// How each family ended up attached, from the programs that were: an
/// fexit program is named `fexit_<syscall>`, a tracepoint pair's exit half
/// `exit_<syscall>`.
fn attach_status(programs: &[String], fentry_refused: Option<String>) -> AttachStatus {
    // Either build of a program (hooks::prog_name) attaches the same way.
    let has = |p: String| {
        programs
            .iter()
            .any(|q| q.strip_suffix(LOOP_SUFFIX).unwrap_or(q) == p)
    };
    let mut families = Vec::new();
    for (family, syscalls) in FAMILIES {
        let fexit = syscalls.iter().any(|s| has(format!("fexit_{s}")));
        let tp = syscalls.iter().any(|s| has(format!("exit_{s}")));
        let method = match (fexit, tp) {
            (true, false) => "fexit",
            (true, true) => "fexit+tracepoint",
            (false, true) => "tracepoint",
            (false, false) => "none",
        };
        families.push(FamilyAttach {
            family: (*family).into(),
            method: method.into(),
        });
    }
    // `[events] syscalls`: every syscall through raw_syscalls, which puts
    // every task on the slow path whatever the families use.
    if has("raw_sys_exit".into()) {
        families.push(FamilyAttach {
            family: "generic syscalls".into(),
            method: "raw tracepoint".into(),
        });
    }
    AttachStatus {
        families,
        fentry_refused,
    }
}

/// TRACEED_BENCH_FLOOR=1 (benchmarks only): syscall programs return at
/// once, so a run measures the attach method's own cost. Not a config key:
/// a daemon that records no syscall is no setting a user should find.
fn bench_floor() -> u32 {
    u32::from(std::env::var_os("TRACEED_BENCH_FLOOR").is_some_and(|v| v == "1"))
}

/// Wake the reader when 1/16 of the ring is pending (the reader also
/// drains on a timer, `ingest::DRAIN_INTERVAL`).
fn wakeup_bytes(ring_bytes: u32, transport: Transport) -> u32 {
    if transport == Transport::Ringbuf {
        (ring_bytes / 16).max(4096)
    } else {
        0
    }
}

/// A perf sample is at most 64 KiB with its headers (`perf_event_header.size`
/// is a u16), so with the perf transport argv is cut here, leaving room for
/// the record's header and its other strings.
pub const PERF_ARGV_MAX: u32 = 48 << 10;

/// argv's cut as the object applies it: what is configured, within what
/// one record of this transport can carry.
pub fn effective_argv_max(configured: u32, transport: Transport) -> u32 {
    if transport == Transport::Perf {
        configured.min(PERF_ARGV_MAX)
    } else {
        configured
    }
}

/// scope_flags, scope_any, wakeup_bytes, max_argv_bytes: the .rodata every
/// object shares.
fn globals(opts: &LoadOptions, transport: Transport) -> [u32; 4] {
    [
        opts.scope.flags(),
        u32::from(opts.scope.any()),
        wakeup_bytes(opts.ring_buffer_bytes, transport),
        effective_argv_max(opts.max_argv_bytes, transport),
    ]
}

/// Records are built in one `scratch` slot per CPU (a plain array: a
/// record with a whole argv is larger than a per-CPU value may be), indexed
/// by CPU id, so the map needs one entry per possible CPU.
fn scratch_slots() -> Result<u32, RungError> {
    aya::util::nr_cpus()
        .map(|n| n as u32)
        .map_err(|(path, e)| RungError::Cpus(format!("{path}: {e}")))
}

/// Arguments read one by one (failed execs, the fallback rung's argv):
/// ARGV_SLOTS under bpf_loop (`argv_loop`, the programs' bpf_loop build)
/// and with a bounded loop from 6.12 on, ARGV_SLOTS_OLD for a bounded loop
/// before. The verifiers of 6.1 and 5.10 hit their 1M-instruction limit on
/// the 1024-iteration loop (found in the qemu matrix); an argv with more
/// arguments is cut and flagged `truncated`, as a longer one always was.
fn argv_ptr_slots(argv_loop: bool) -> &'static u32 {
    static SLOTS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if argv_loop {
        return &ARGV_SLOTS;
    }
    SLOTS.get_or_init(|| slots_for(&super::kernel_release()))
}

const ARGV_SLOTS: u32 = 1024;
const ARGV_SLOTS_OLD: u32 = 32;

/// Whether the kernel has bpf_loop (5.17+), for the argv readers' build
/// (`argv_ptr_slots`, hooks::prog_name). Asked once.
fn bpf_loop_supported() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        aya::sys::is_helper_supported(
            aya::programs::ProgramType::TracePoint,
            aya::sys::BpfHelper::BPF_FUNC_loop,
        )
        .unwrap_or(false)
    })
}

fn slots_for(release: &str) -> u32 {
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    match (v.next(), v.next()) {
        (Some(major), Some(minor)) if (major, minor) >= (6, 12) => ARGV_SLOTS,
        _ => ARGV_SLOTS_OLD,
    }
}

static BENCH_FLOOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// `argv_loop`: the argv readers' bpf_loop build will be attached.
/// `keep_btf`: relocate against the kernel's BTF as aya's EbpfLoader::new
/// parsed it, instead of the one given later (or none).
fn loader_for<'a>(
    opts: &'a LoadOptions,
    g: &'a [u32; 4],
    argv_loop: bool,
    keep_btf: bool,
) -> Result<EbpfLoader<'a>, RungError> {
    let floor = BENCH_FLOOR.get_or_init(|| {
        let f = bench_floor();
        if f == 1 {
            tracing::warn!("TRACEED_BENCH_FLOOR=1: syscall programs return at once (benchmark floor), no syscall event is recorded");
        }
        f
    });
    let mut l = EbpfLoader::new();
    if !keep_btf {
        l.btf(None);
    }
    l
        // Not must_exist: a kernel object built by an older traceed lacks it.
        .override_global("bench_floor", floor, false)
        .override_global("self_tgid", &opts.self_tgid, true)
        .override_global("scope_flags", &g[0], true)
        .override_global("scope_any", &g[1], true)
        .override_global("wakeup_bytes", &g[2], true)
        .override_global("max_argv_bytes", &g[3], true)
        // Not must_exist: a kernel object built by an older traceed lacks it.
        .override_global("argv_ptr_slots", argv_ptr_slots(argv_loop), false)
        .map_max_entries("scratch", scratch_slots()?);
    Ok(l)
}

/// A rung's object, loaded and attached, its records not yet read.
struct Attached {
    ebpf: Ebpf,
    programs: Vec<String>,
    skipped: Vec<SkippedHook>,
    fentry_refused: Option<String>,
}

/// `fentry`: the kernel's own BTF when the table has fexit hooks, else
/// why it has none.
fn finish(
    mut ebpf: Ebpf,
    opts: &LoadOptions,
    hooks: &[Hook],
    fentry: Result<&Btf, String>,
) -> Result<Attached, RungError> {
    opts.scope.push(&mut ebpf)?;
    push_syscall_filter(&mut ebpf, &opts.generic_syscalls)?;
    let attached = attach_all(&mut ebpf, hooks, fentry.as_ref().ok().copied())?;
    let fentry_refused = match fentry {
        Ok(_) => attached.fentry_refused,
        Err(why) => Some(why),
    };
    Ok(Attached {
        ebpf,
        programs: attached.programs,
        skipped: attached.skipped,
        fentry_refused,
    })
}

/// Map the ring buffer (or the perf buffers) of an attached object. Its
/// pages count in RSS from the mmap on (kernel::ring), so the CO-RE rungs
/// map it only once the parsed kernel BTF, the start-up peak, is freed.
fn with_source(
    a: Attached,
    opts: &LoadOptions,
    transport: Transport,
) -> Result<Attempt, RungError> {
    let mut ebpf = a.ebpf;
    let source = EventSource::open(&mut ebpf, transport, opts.ring_buffer_bytes)?;
    let lost_map = ebpf
        .take_map("lost")
        .and_then(|m| PerCpuArray::try_from(m).ok());
    Ok(Attempt {
        ebpf,
        source,
        pending: Vec::new(),
        lost_map,
        programs: a.programs,
        skipped: a.skipped,
        fentry_refused: a.fentry_refused,
    })
}

/// The kernel's own BTF walked for the trampoline hooks' function ids, on
/// the rung that relocates against it: aya's EbpfLoader::new parses that
/// BTF anyway, so its copy relocates and no second one is parsed (it was
/// the start-up's memory peak: BENCHMARKS.md, "One parse of the kernel's
/// BTF"). None elsewhere, or when the walk refuses the file: the full
/// parse then reports aya's own error, if any. The walk accepts only the
/// kinds aya parses, so where it passes aya's parse did not fail silently
/// (which would leave vmlinux.h's offsets; the self-check's ppid and
/// mount namespace would refuse that rung anyway).
fn kernel_funcs(rung: Rung, opts: &LoadOptions) -> Option<Vec<(String, u32)>> {
    if rung != Rung::CoreKernelBtf || !std::path::Path::new(SYS_BTF).exists() {
        return None;
    }
    super::btf::kernel_funcs(&trampoline_functions(&core_table(opts, true)))
        .inspect_err(|e| tracing::warn!(error = %e, "parsing the kernel's BTF in full instead"))
        .ok()
}

/// What relocates the CO-RE object and names the fexit functions.
enum Target<'a> {
    /// A parsed BTF: both.
    Parsed(&'a Btf),
    /// The loader's own parse of the kernel's BTF relocates; the functions'
    /// ids were found in the raw file (`kernel_funcs`).
    Kernel(Vec<(String, u32)>),
}

fn load_core<'a>(
    mut l: EbpfLoader<'a>,
    target: Target<'a>,
    rung: Rung,
    opts: &LoadOptions,
    transport: Transport,
) -> Result<Attached, RungError> {
    let obj = if transport == Transport::Perf {
        CORE_PERF
    } else {
        CORE_RING
    };
    if let Target::Parsed(btf) = &target {
        l.btf(Some(*btf));
    }
    // Typed kernel pointers (kread.h, TASK_BTF) need the verifier to know
    // the kernel's types: only its own BTF gives them, an external file
    // only relocates.
    let kernel_btf: &'static u32 = if rung == Rung::CoreKernelBtf { &1 } else { &0 };
    l.override_global("kernel_btf", kernel_btf, true);
    if transport == Transport::Ringbuf {
        l.map_max_entries("events", opts.ring_buffer_bytes);
    }
    let ebpf = l.load(obj).map_err(|e| RungError::Load {
        what: "CO-RE object".into(),
        chain: error_chain(&e),
    })?;
    // With Target::Kernel, the loader holds the parsed kernel BTF.
    drop(l);
    let index;
    // fexit names its function by an id in the running kernel's BTF: only
    // the kernel's own BTF may give it (an external file's ids could name
    // another function).
    let fentry = if !opts.fentry {
        Err("off in the config ([kernel] fentry = false)".to_string())
    } else if rung != Rung::CoreKernelBtf {
        Err(format!(
            "rung {}: the kernel's own BTF ({}) is not visible, and fexit names its function there",
            rung.as_str(),
            super::btf::SYS_BTF
        ))
    } else {
        Ok(match &target {
            Target::Parsed(btf) => *btf,
            Target::Kernel(funcs) => {
                crate::service::memory::release_free();
                index = super::btf::func_index(funcs);
                &index
            }
        })
    };
    finish(ebpf, opts, &core_table(opts, fentry.is_ok()), fentry)
}

/// The CO-RE object's hooks for `opts`, with or without fentry.
fn core_table(opts: &LoadOptions, fentry: bool) -> Vec<Hook> {
    core_hooks(
        !opts.generic_syscalls.is_empty(),
        fentry,
        bpf_loop_supported(),
    )
}

fn load_fallback(opts: &LoadOptions, transport: Transport) -> Result<Attempt, RungError> {
    let g = globals(opts, transport);
    let fmt = Format::read;
    let exec = fmt("sched", "sched_process_exec")?;
    let fork = fmt("sched", "sched_process_fork")?;
    let exit = fmt("sched", "sched_process_exit")?;
    let enter = fmt("syscalls", "sys_enter_openat")?;
    let sys_exit = fmt("syscalls", "sys_exit_openat")?;
    let off = |f: &Format, name: &str| f.offset(name);
    // The first argument slot is the field right after __syscall_nr.
    let args_off = off(&enter, "dfd")?;
    let ret_off = off(&sys_exit, "ret")?;
    let filename_off = off(&exec, "filename")?;
    let child_off = off(&fork, "child_pid")?;
    let group_dead_off = if exit.has("group_dead") {
        off(&exit, "group_dead")?
    } else {
        0
    };

    let obj = if transport == Transport::Perf {
        FALLBACK_PERF
    } else {
        FALLBACK_RING
    };
    let mut l = loader_for(opts, &g, false, false)?;
    l.override_global("fb_sys_args_off", &args_off, true)
        .override_global("fb_sys_ret_off", &ret_off, true)
        .override_global("fb_exec_filename_off", &filename_off, true)
        .override_global("fb_fork_child_pid_off", &child_off, true)
        .override_global("fb_exit_group_dead_off", &group_dead_off, true);
    if transport == Transport::Ringbuf {
        l.map_max_entries("events", opts.ring_buffer_bytes);
    }
    let ebpf = l.load(obj).map_err(|e| RungError::Load {
        what: "fallback object".into(),
        chain: error_chain(&e),
    })?;
    let a = finish(
        ebpf,
        opts,
        &fallback_hooks(!opts.generic_syscalls.is_empty()),
        Err("rung fallback: fexit programs are only in the CO-RE object".into()),
    )?;
    with_source(a, opts, transport)
}

fn load_kernel_object(opts: &LoadOptions) -> Result<(Attempt, KernelObject, Transport), RungError> {
    let ko = kobject::locate(&opts.state_dir, opts.build_objects)?;
    let transport = ko.transport;
    if opts.transport != Transport::Auto && opts.transport != transport {
        return Err(RungError::TransportMismatch {
            path: ko.path,
            built: transport.as_str(),
            configured: opts.transport.as_str(),
        });
    }
    if transport == Transport::Ringbuf && !ring_buf_supported() {
        return Err(RungError::NoRingBuf { path: ko.path });
    }
    let argv_loop =
        bpf_loop_supported() && kobject::programs(&ko.bytes).is_some_and(|p| has_loop_build(&p));
    let g = globals(opts, transport);
    let mut l = loader_for(opts, &g, argv_loop, false)?;
    if transport == Transport::Ringbuf {
        l.map_max_entries("events", opts.ring_buffer_bytes);
    }
    let ebpf = l.load(&ko.bytes).map_err(|e| RungError::Load {
        what: format!("kernel object {}", ko.path.display()),
        chain: error_chain(&e),
    })?;
    let a = finish(
        ebpf,
        opts,
        &core_hooks(!opts.generic_syscalls.is_empty(), false, argv_loop),
        Err("rung kernel-object: fexit programs are only in the CO-RE object".into()),
    )?;
    Ok((with_source(a, opts, transport)?, ko.info, transport))
}

fn push_syscall_filter(ebpf: &mut Ebpf, nrs: &[u32]) -> Result<(), RungError> {
    if nrs.is_empty() {
        return Ok(());
    }
    let map = ebpf
        .map_mut("syscall_filter")
        .ok_or(RungError::NoSyscallFilter)?;
    let mut m: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(map).map_err(RungError::SyscallFilter)?;
    for nr in nrs {
        m.insert(*nr, 1, 0).map_err(RungError::SyscallFilter)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_slots_by_release() {
        assert_eq!(slots_for("6.18.44-fc-v1098"), 1024);
        assert_eq!(slots_for("6.12.118+deb13-amd64"), 1024);
        assert_eq!(slots_for("6.1.0-56-rt-amd64"), ARGV_SLOTS_OLD);
        assert_eq!(slots_for("5.10.0-46-amd64"), ARGV_SLOTS_OLD);
        assert_eq!(slots_for("7.0.1"), 1024);
        assert_eq!(slots_for("garbage"), ARGV_SLOTS_OLD);
    }

    fn method(a: &AttachStatus, family: &str) -> String {
        a.families
            .iter()
            .find(|f| f.family == family)
            .map(|f| f.method.clone())
            .unwrap_or_default()
    }

    #[test]
    fn attach_status_names_the_method_that_runs() {
        let progs = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = attach_status(
            &progs(&["fexit_open", "fexit_openat", "fexit_openat2"]),
            None,
        );
        assert_eq!(method(&a, "open"), "fexit");
        assert_eq!(method(&a, "net"), "none");
        assert_eq!(method(&a, "generic syscalls"), "");
        assert!(a.fentry_refused.is_none());
        let a = attach_status(&progs(&["exit_connect", "raw_sys_exit"]), None);
        assert_eq!(method(&a, "net"), "tracepoint");
        assert_eq!(method(&a, "generic syscalls"), "raw tracepoint");
        // openat2 fell back to its tracepoints alone.
        let a = attach_status(
            &progs(&["fexit_open", "fexit_openat", "exit_openat2"]),
            None,
        );
        assert_eq!(method(&a, "open"), "fexit+tracepoint");
        let a = attach_status(
            &progs(&["exit_open", "enter_open", "exit_openat", "enter_openat"]),
            Some("EPERM".into()),
        );
        assert_eq!(method(&a, "open"), "tracepoint");
        assert_eq!(a.fentry_refused.as_deref(), Some("EPERM"));
        assert_eq!(method(&attach_status(&[], None), "open"), "none");
    }

    /// With fentry, every syscall is one fexit hook (the setuid family's
    /// with an fentry half) whose fallback is exactly its tracepoints;
    /// without, the table is the tracepoint one and names no trampoline
    /// program (the kernel object has none). Every syscall is in one
    /// family of status.
    #[test]
    fn fexit_hooks_fall_back_to_their_tracepoints() {
        use super::super::hooks::syscalls;
        let with = core_hooks(false, true, false);
        let without = core_hooks(false, false, false);
        let mut all: Vec<&str> = syscalls().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), syscalls().count(), "a syscall in two families");
        for sys in syscalls() {
            let h = with
                .iter()
                .find(|h| h.prog == format!("fexit_{sys}"))
                .unwrap_or_else(|| panic!("no fexit_{sys}"));
            assert_eq!(h.attach.section(), format!("fexit/__x64_sys_{sys}"));
            assert!(h.optional);
            let entry = h
                .entry
                .as_ref()
                .map(|e| (e.prog.clone(), e.attach.section()));
            let creds = ["setuid", "setreuid", "setresuid"].contains(&sys);
            assert_eq!(
                entry,
                creds.then(|| (format!("fentry_{sys}"), format!("fentry/__x64_sys_{sys}")))
            );
            // The registers are read at sys_exit: an enter half only
            // where the record needs the entry's credentials.
            let alts: Vec<&str> = h.or_else.iter().map(|a| a.prog.as_str()).collect();
            let mut want = vec![format!("exit_{sys}")];
            if creds {
                want.push(format!("enter_{sys}"));
            }
            assert_eq!(alts, want);
            assert!(!with.iter().any(|h| h.prog == format!("exit_{sys}")));
            assert!(without.iter().any(|h| h.prog == format!("exit_{sys}")));
        }
        assert!(!without
            .iter()
            .flat_map(Hook::with_alternatives)
            .any(|h| h.prog.starts_with("fexit_") || h.prog.starts_with("fentry_")));
        // Everything else is the same table.
        let flat = |t: &[Hook]| {
            let mut v: Vec<String> = t
                .iter()
                .flat_map(Hook::with_alternatives)
                .filter(|h| !h.prog.starts_with("fexit_") && !h.prog.starts_with("fentry_"))
                .map(|h| h.prog.clone())
                .collect();
            v.sort();
            v
        };
        assert_eq!(flat(&with), flat(&without));
    }

    /// With bpf_loop, the failed-exec syscalls (and only they) name their
    /// bpf_loop build, fexit and tracepoint alike, and status reports them
    /// as their syscalls.
    #[test]
    fn argv_readers_take_their_bpf_loop_build() {
        for fentry in [true, false] {
            let plain = core_hooks(false, fentry, false);
            let looped = core_hooks(false, fentry, true);
            let names = |t: &[Hook]| {
                t.iter()
                    .flat_map(Hook::with_alternatives)
                    .map(|h| h.prog.clone())
                    .collect::<Vec<_>>()
            };
            let (plain, looped) = (names(&plain), names(&looped));
            assert_eq!(plain.len(), looped.len());
            for (p, l) in plain.iter().zip(&looped) {
                let reader = [
                    "exit_execve",
                    "exit_execveat",
                    "fexit_execve",
                    "fexit_execveat",
                ]
                .contains(&p.as_str());
                let want = if reader {
                    format!("{p}_loop")
                } else {
                    p.clone()
                };
                assert_eq!(*l, want);
            }
        }
        let a = attach_status(
            &["exit_execve_loop".into(), "exit_execveat_loop".into()],
            None,
        );
        assert_eq!(method(&a, "exec (failed)"), "tracepoint");
        let a = attach_status(&["fexit_execve_loop".into()], None);
        assert_eq!(method(&a, "exec (failed)"), "fexit");
        // How a kernel object is told apart from one built before it.
        assert!(has_loop_build(&kobject::programs(CORE_RING).unwrap()));
        assert!(!has_loop_build(&kobject::programs(FALLBACK_RING).unwrap()));
    }

    /// The hook tables and the embedded objects agree both ways, without
    /// loading anything: every program a table names is in its object, in
    /// the section its attach type needs, and every program of an object
    /// is in its table (the generic path's included).
    #[test]
    fn hook_tables_match_the_embedded_objects() {
        // The CO-RE objects have both builds of the argv readers.
        let core = || {
            let mut t = core_hooks(true, true, false);
            t.extend(core_hooks(true, true, true));
            t
        };
        let objects: [(&str, &[u8], Vec<Hook>); 4] = [
            ("traceed.bpf.o", CORE_RING, core()),
            ("traceed-perf.bpf.o", CORE_PERF, core()),
            ("fallback.bpf.o", FALLBACK_RING, fallback_hooks(true)),
            ("fallback-perf.bpf.o", FALLBACK_PERF, fallback_hooks(true)),
        ];
        for (name, obj, table) in objects {
            let progs = kobject::programs(obj).unwrap_or_else(|| panic!("{name}: not ELF"));
            assert!(progs.len() > 20, "{name}: {progs:?}");
            let table: Vec<&Hook> = table.iter().flat_map(Hook::with_alternatives).collect();
            for hook in &table {
                let found = progs.iter().find(|(_, p)| *p == hook.prog);
                let (section, _) =
                    found.unwrap_or_else(|| panic!("{name} has no program {}", hook.prog));
                assert_eq!(*section, hook.attach.section(), "{name}: {}", hook.prog);
                if let Some(dep) = &hook.after {
                    let pos = |p: &str| table.iter().position(|h| h.prog == p);
                    assert!(
                        pos(dep).is_some() && pos(dep) < pos(&hook.prog),
                        "{name}: {dep} must come first"
                    );
                }
            }
            for (section, prog) in &progs {
                assert!(
                    table.iter().any(|h| h.prog == *prog),
                    "{name}: program {prog} ({section}) is in no hook table"
                );
            }
        }
    }
}
