//! Kernel side, user half: walks the portability ladder, loads the chosen
//! embedded eBPF object with aya (the CO-RE object only ever with a target
//! BTF handed over explicitly), attaches its programs, and proves the
//! choice with a start-up self-check before anything is recorded.
//!
//! Owns: the embedded objects, the hook tables, rung choice and the reasons
//! rungs were refused, and the `Loaded` handle whose drop detaches all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray};
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};
use traceed_wire::{KernelObject, Refusal, SkippedHook};

use crate::config::{Mode, Transport};
use crate::kobject;
use crate::source::EventSource;
use crate::tracefs::{self, Format};

static CORE_RING: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traceed.bpf.o"));
static CORE_PERF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traceed-perf.bpf.o"));
static FALLBACK_RING: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fallback.bpf.o"));
static FALLBACK_PERF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fallback-perf.bpf.o"));

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no rung of the portability ladder could be loaded: {0}")]
    NoRung(String),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
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

enum Attach {
    Tracepoint(&'static str, String),
    RawTracepoint(&'static str),
}

struct Hook {
    prog: String,
    attach: Attach,
    /// Optional hooks may be refused by the kernel; that is a warning.
    optional: bool,
}

impl Hook {
    fn tp(prog: &str, cat: &'static str, name: &str, optional: bool) -> Self {
        Self {
            prog: prog.into(),
            attach: Attach::Tracepoint(cat, name.into()),
            optional,
        }
    }
}

/// Syscalls recorded at sys_exit (with arguments stashed at sys_enter).
/// Optional: a kernel without the syscall (openat2 before 5.6) or without
/// syscall tracepoints skips it and says so in status.
const SYSCALLS: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "chmod",
    "fchmodat",
    "fchmod",
    "mount",
    "memfd_create",
    "connect",
    "bind",
    "accept",
    "accept4",
    "setuid",
    "setreuid",
    "setresuid",
    "ptrace",
    "kill",
    "tkill",
    "tgkill",
    "bpf",
];

fn common_hooks(hooks: &mut Vec<Hook>, generic: bool) {
    if generic {
        for side in ["exit", "enter"] {
            hooks.push(Hook::tp(
                &format!("raw_sys_{side}"),
                "raw_syscalls",
                &format!("sys_{side}"),
                false,
            ));
        }
    }
    for sys in SYSCALLS {
        // exit first: an enter whose exit is missing would only fill the map.
        for side in ["exit", "enter"] {
            hooks.push(Hook::tp(
                &format!("{side}_{sys}"),
                "syscalls",
                &format!("sys_{side}_{sys}"),
                true,
            ));
        }
    }
}

fn core_hooks(generic: bool) -> Vec<Hook> {
    let mut hooks = vec![
        Hook {
            prog: "raw_sched_process_exec".into(),
            attach: Attach::RawTracepoint("sched_process_exec"),
            optional: false,
        },
        Hook {
            prog: "raw_sched_process_fork".into(),
            attach: Attach::RawTracepoint("sched_process_fork"),
            optional: false,
        },
        Hook::tp(
            "tp_sched_process_exit",
            "sched",
            "sched_process_exit",
            false,
        ),
        Hook::tp("tp_module_load", "module", "module_load", true),
    ];
    common_hooks(&mut hooks, generic);
    hooks
}

fn fallback_hooks(generic: bool) -> Vec<Hook> {
    let mut hooks = vec![
        Hook::tp(
            "fb_sched_process_exec",
            "sched",
            "sched_process_exec",
            false,
        ),
        Hook::tp(
            "fb_sched_process_fork",
            "sched",
            "sched_process_fork",
            false,
        ),
        Hook::tp(
            "fb_sched_process_exit",
            "sched",
            "sched_process_exit",
            false,
        ),
        Hook::tp("fb_enter_execve", "syscalls", "sys_enter_execve", true),
        Hook::tp("fb_enter_execveat", "syscalls", "sys_enter_execveat", true),
        Hook::tp(
            "fb_enter_exit_group",
            "syscalls",
            "sys_enter_exit_group",
            true,
        ),
        Hook::tp("fb_enter_clone", "syscalls", "sys_enter_clone", true),
        Hook::tp("fb_enter_clone3", "syscalls", "sys_enter_clone3", true),
    ];
    common_hooks(&mut hooks, generic);
    hooks
}

pub struct LoadOptions {
    pub scope: crate::scope::Resolved,
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
    /// Rung 3 may compile the kernel-specific object when none is found.
    pub build_objects: bool,
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
    let mut refuse = |rung: Rung, reason: String| {
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
                target_btf(rung, opts).and_then(|(btf, source)| {
                    load_core(&btf, opts, transport).map(|l| (l, Some(source), None, transport))
                })
            }
            Rung::KernelObject => load_kernel_object(opts).map(|(l, ko, t)| (l, None, Some(ko), t)),
            Rung::Fallback => load_fallback(opts, transport).map(|l| (l, None, None, transport)),
        };
        match attempt {
            Ok((mut l, btf_source, kernel_object, transport)) => {
                if let Err(reason) = self_check(&mut l, rung, opts) {
                    refuse(rung, reason);
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

/// The uname release of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A kernel release-looking part of a file name ("6.1.0-18-amd64" in
/// ".../6.1.0-18-amd64.btf"): used to refuse a BTF named for another kernel.
fn release_in_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.trim_end_matches(".tar.xz").trim_end_matches(".btf");
    let looks = stem.split('.').count() >= 3 && stem.chars().next()?.is_ascii_digit();
    looks.then(|| stem.to_string())
}

fn target_btf(rung: Rung, opts: &LoadOptions) -> Result<(Btf, String), String> {
    match rung {
        Rung::CoreKernelBtf => {
            if !Path::new(SYS_BTF).exists() {
                return Err(format!(
                    "{SYS_BTF} does not exist: this kernel exposes no BTF (built without \
                     CONFIG_DEBUG_INFO_BTF, or /sys/kernel/btf is hidden); set btf_path (or --btf) \
                     to a BTF file for this kernel, or run with --mode fallback"
                ));
            }
            Btf::from_sys_fs()
                .map(|b| (b, SYS_BTF.to_string()))
                .map_err(|e| format!("cannot parse {SYS_BTF}: {e}"))
        }
        Rung::CoreExternalBtf => {
            let found;
            let path =
                match (&opts.btf_path, &opts.btf_dir) {
                    (Some(p), _) => p,
                    (None, Some(dir)) => {
                        found = find_in_btf_dir(dir, &opts.state_dir)?;
                        &found
                    }
                    (None, None) => return Err(
                        "no external BTF configured (btf_path or btf_dir in the config, or --btf)"
                            .into(),
                    ),
                };
            let running = kernel_release();
            if let Some(named) = release_in_name(path) {
                if named != running {
                    return Err(format!(
                        "BTF file {} is named for kernel {named}, but this kernel is {running}",
                        path.display()
                    ));
                }
            }
            Btf::parse_file(path, Endianness::default())
                .map(|b| (b, path.display().to_string()))
                .map_err(|e| {
                    format!(
                        "cannot use BTF file {}: {}",
                        path.display(),
                        error_chain(&e)
                    )
                })
        }
        Rung::KernelObject | Rung::Fallback => unreachable!("only the CO-RE object needs BTF"),
    }
}

fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim_matches('"').to_string())
    })
}

/// `<dir>/<os-id>/<version-id>/<arch>/<release>.btf`, or the same
/// `.btf.tar.xz` (BTFHub's archive form), unpacked into the state dir.
fn find_in_btf_dir(dir: &Path, state_dir: &Path) -> Result<PathBuf, String> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let id = os_release_field(&os, "ID").unwrap_or_else(|| "linux".into());
    let version = os_release_field(&os, "VERSION_ID").unwrap_or_default();
    let release = kernel_release();
    let base = dir.join(&id).join(&version).join(std::env::consts::ARCH);
    let plain = base.join(format!("{release}.btf"));
    if plain.exists() {
        return Ok(plain);
    }
    let archive = base.join(format!("{release}.btf.tar.xz"));
    if !archive.exists() {
        return Err(format!(
            "btf_dir {} has no BTF for this kernel: looked for {} and {}",
            dir.display(),
            plain.display(),
            archive.display()
        ));
    }
    let out = state_dir.join("btf");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let st = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .status()
        .map_err(|e| format!("unpacking {}: cannot run tar: {e}", archive.display()))?;
    let unpacked = out.join(format!("{release}.btf"));
    if !st.success() || !unpacked.exists() {
        return Err(format!(
            "unpacking {} did not yield {release}.btf (tar and xz-utils are needed)",
            archive.display()
        ));
    }
    Ok(unpacked)
}

struct Attempt {
    ebpf: Ebpf,
    source: EventSource,
    pending: Vec<Vec<u8>>,
    lost_map: Option<PerCpuArray<MapData, u64>>,
    programs: Vec<String>,
    skipped: Vec<SkippedHook>,
}

/// Wake the reader when 1/16 of the ring is pending (the reader also
/// drains every `ingest::DRAIN_INTERVAL`).
fn wakeup_bytes(ring_bytes: u32, transport: Transport) -> u32 {
    if transport == Transport::Ringbuf {
        (ring_bytes / 16).max(4096)
    } else {
        0
    }
}

/// scope_flags, scope_any, wakeup_bytes: the .rodata every object shares.
fn globals(opts: &LoadOptions, transport: Transport) -> [u32; 3] {
    [
        opts.scope.flags(),
        u32::from(opts.scope.any()),
        wakeup_bytes(opts.ring_buffer_bytes, transport),
    ]
}

fn loader_for<'a>(opts: &'a LoadOptions, g: &'a [u32; 3]) -> EbpfLoader<'a> {
    let mut l = EbpfLoader::new();
    l.btf(None)
        .override_global("self_tgid", &opts.self_tgid, true)
        .override_global("scope_flags", &g[0], true)
        .override_global("scope_any", &g[1], true)
        .override_global("wakeup_bytes", &g[2], true);
    l
}

fn finish(
    mut ebpf: Ebpf,
    opts: &LoadOptions,
    hooks: &[Hook],
    transport: Transport,
) -> Result<Attempt, String> {
    opts.scope.push(&mut ebpf).map_err(|e| e.to_string())?;
    push_syscall_filter(&mut ebpf, &opts.generic_syscalls)?;
    let (programs, skipped) = attach_all(&mut ebpf, hooks)?;
    let source = EventSource::open(&mut ebpf, transport, opts.ring_buffer_bytes)?;
    let lost_map = ebpf
        .take_map("lost")
        .and_then(|m| PerCpuArray::try_from(m).ok());
    Ok(Attempt {
        ebpf,
        source,
        pending: Vec::new(),
        lost_map,
        programs,
        skipped,
    })
}

fn load_core(btf: &Btf, opts: &LoadOptions, transport: Transport) -> Result<Attempt, String> {
    let g = globals(opts, transport);
    let obj = if transport == Transport::Perf {
        CORE_PERF
    } else {
        CORE_RING
    };
    let mut l = loader_for(opts, &g);
    l.btf(Some(btf));
    if transport == Transport::Ringbuf {
        l.map_max_entries("events", opts.ring_buffer_bytes);
    }
    let ebpf = l
        .load(obj)
        .map_err(|e| format!("loading the CO-RE object: {}", error_chain(&e)))?;
    finish(
        ebpf,
        opts,
        &core_hooks(!opts.generic_syscalls.is_empty()),
        transport,
    )
}

fn load_fallback(opts: &LoadOptions, transport: Transport) -> Result<Attempt, String> {
    let g = globals(opts, transport);
    let fmt = |c: &str, e: &str| Format::read(c, e).map_err(|e| e.to_string());
    let exec = fmt("sched", "sched_process_exec")?;
    let fork = fmt("sched", "sched_process_fork")?;
    let exit = fmt("sched", "sched_process_exit")?;
    let enter = fmt("syscalls", "sys_enter_openat")?;
    let sys_exit = fmt("syscalls", "sys_exit_openat")?;
    let off = |f: &Format, name: &str| f.offset(name).map_err(|e| e.to_string());
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
    let mut l = loader_for(opts, &g);
    l.override_global("fb_sys_args_off", &args_off, true)
        .override_global("fb_sys_ret_off", &ret_off, true)
        .override_global("fb_exec_filename_off", &filename_off, true)
        .override_global("fb_fork_child_pid_off", &child_off, true)
        .override_global("fb_exit_group_dead_off", &group_dead_off, true);
    if transport == Transport::Ringbuf {
        l.map_max_entries("events", opts.ring_buffer_bytes);
    }
    let ebpf = l
        .load(obj)
        .map_err(|e| format!("loading the fallback object: {}", error_chain(&e)))?;
    finish(
        ebpf,
        opts,
        &fallback_hooks(!opts.generic_syscalls.is_empty()),
        transport,
    )
}

/// Rung 3: `<release>.bpf.o` from the system or state directory, else
/// compiled now from this kernel's headers and cached in the state
/// directory. Its recorded release must be the running kernel's.
fn find_kernel_object(opts: &LoadOptions) -> Result<(PathBuf, Vec<u8>, KernelObject), String> {
    let release = kernel_release();
    let name = format!("{release}.bpf.o");
    let cache = opts.state_dir.join("objects");
    let dirs = [PathBuf::from(kobject::SYSTEM_OBJECTS), cache.clone()];
    let mut found = dirs.iter().map(|d| d.join(&name)).find(|p| p.exists());
    let mut built_ms = None;
    if found.is_none() {
        let looked = format!(
            "no {name} in {} or {}",
            dirs[0].display(),
            dirs[1].display()
        );
        if !opts.build_objects {
            return Err(format!("{looked}, and [kernel] build_objects = false"));
        }
        let headers = kobject::default_headers();
        if !headers.exists() {
            return Err(format!(
                "{looked}, and no headers to build one ({} is missing: `apt-get install \
                 linux-headers-{release}`, or build it elsewhere with `traceed build-object \
                 --headers DIR` and copy it to {})",
                headers.display(),
                dirs[0].display()
            ));
        }
        let out = cache.join(&name);
        tracing::info!(headers = %headers.display(), output = %out.display(), "building the kernel-specific object");
        let b = kobject::build(&headers, Some(&out))
            .map_err(|e| format!("{looked}, and building one failed: {e}"))?;
        tracing::info!(output = %b.output.display(), took_ms = b.took.as_millis() as u64, "kernel-specific object built");
        built_ms = Some(b.took.as_millis() as u64);
        found = Some(b.output);
    }
    let path = found.unwrap_or_default();
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let recorded = kobject::recorded_release(&bytes).ok_or_else(|| {
        format!(
            "{} records no kernel release (a {} section): not built by `traceed build-object`",
            path.display(),
            kobject::RELEASE_SECTION
        )
    })?;
    // The release is also in the file name, but names are easy to get wrong
    // when objects are copied around a fleet: the recorded one decides.
    if recorded != release && std::env::var_os("TRACEED_TEST_ANY_RELEASE").is_none() {
        return Err(format!(
            "{} was built for kernel {recorded}, but this kernel is {release}; its offsets \
             would be wrong: build one with `traceed build-object` against linux-headers-{release}",
            path.display()
        ));
    }
    let ko = KernelObject {
        path: path.display().to_string(),
        release: recorded,
        built_now: built_ms.is_some(),
        build_ms: built_ms,
    };
    Ok((path, bytes, ko))
}

fn load_kernel_object(opts: &LoadOptions) -> Result<(Attempt, KernelObject, Transport), String> {
    let (path, bytes, ko) = find_kernel_object(opts)?;
    let transport = match kobject::recorded_transport(&bytes).as_deref() {
        Some("perf") => Transport::Perf,
        _ => Transport::Ringbuf,
    };
    if opts.transport != Transport::Auto && opts.transport != transport {
        return Err(format!(
            "{} was built for transport {}, but {} is configured",
            path.display(),
            transport.as_str(),
            opts.transport.as_str()
        ));
    }
    if transport == Transport::Ringbuf && !ring_buf_supported() {
        return Err(format!(
            "{} uses a BPF ring buffer, which this kernel lacks",
            path.display()
        ));
    }
    let g = globals(opts, transport);
    let mut l = loader_for(opts, &g);
    if transport == Transport::Ringbuf {
        l.map_max_entries("events", opts.ring_buffer_bytes);
    }
    let ebpf = l.load(&bytes).map_err(|e| {
        format!(
            "loading the kernel object {}: {}",
            path.display(),
            error_chain(&e)
        )
    })?;
    let a = finish(
        ebpf,
        opts,
        &core_hooks(!opts.generic_syscalls.is_empty()),
        transport,
    )?;
    Ok((a, ko, transport))
}

/// Prove the rung reads this kernel correctly before trusting it: exec a
/// child whose parent and mount namespace we know, and compare what the
/// programs recorded. A BTF that does not describe the running kernel shows
/// up here as a wrong ppid or namespace, not as silent garbage in history.
fn self_check(a: &mut Attempt, rung: Rung, opts: &LoadOptions) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("self-check: {e}"))?;
    let c_exe =
        std::ffi::CString::new(exe.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let c_arg = c"--version";
    let mut pipe = [0i32; 2];
    // SAFETY: plain pipe2 into a two-int array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "self-check: pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    let devnull = c"/dev/null";
    // SAFETY: the child only calls async-signal-safe functions (read, open,
    // dup2, execv, _exit) before exec.
    let child = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let mut b = 0u8;
            libc::read(pipe[0], (&mut b as *mut u8).cast(), 1);
            let null = libc::open(devnull.as_ptr(), libc::O_WRONLY);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            let argv = [c_exe.as_ptr(), c_arg.as_ptr(), std::ptr::null()];
            libc::execv(c_exe.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
        pid
    };
    if child < 0 {
        return Err(format!(
            "self-check: fork: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The child may be out of the configured scope: let its exec through.
    set_canary(&mut a.ebpf, child as u32);
    // SAFETY: closing our read end, waking the child, reaping it below.
    unsafe {
        libc::close(pipe[0]);
        libc::write(pipe[1], [1u8].as_ptr().cast(), 1);
        libc::close(pipe[1]);
    }
    let found = wait_for_exec(a, child as u32, Duration::from_secs(3));
    // The pid may be reused later: nobody else gets the exemption.
    set_canary(&mut a.ebpf, 0);
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    let Some(h) = found else {
        return Err(format!(
            "self-check: the exec of a test child (pid {child}) was not seen within 3 s; \
             the {} programs do not report events on this kernel",
            rung.as_str()
        ));
    };
    if rung == Rung::Fallback {
        return Ok(());
    }
    let my_mnt = mnt_ns_inode().unwrap_or(0);
    if h.ppid != opts.self_tgid || (my_mnt != 0 && h.mnt_ns != my_mnt) {
        let what = if rung == Rung::KernelObject {
            "the kernel object's offsets do not match"
        } else {
            "the BTF does not describe"
        };
        return Err(format!(
            "self-check failed: read ppid {} and mnt_ns {} for a child of pid {} in mnt_ns {my_mnt}; \
             {what} the running kernel ({})",
            h.ppid,
            h.mnt_ns,
            opts.self_tgid,
            kernel_release()
        ));
    }
    Ok(())
}

fn set_canary(ebpf: &mut Ebpf, tgid: u32) {
    if let Some(m) = ebpf.map_mut("canary") {
        if let Ok(mut arr) = aya::maps::Array::<_, u32>::try_from(m) {
            let _ = arr.set(0, tgid, 0);
        }
    }
}

fn mnt_ns_inode() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/mnt")
        .ok()
        .map(|m| m.ino() as u32)
}

fn wait_for_exec(
    a: &mut Attempt,
    pid: u32,
    timeout: Duration,
) -> Option<crate::decoder::RawHeader> {
    let t0 = Instant::now();
    let mut found = None;
    while found.is_none() && t0.elapsed() < timeout {
        let mut fds: Vec<libc::pollfd> = a
            .source
            .fds()
            .iter()
            .map(|fd| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        let pending = &mut a.pending;
        a.source.drain(&mut |rec: &[u8]| {
            if let Ok(r) = crate::decoder::parse(rec) {
                if r.h.kind == 1 && r.h.pid == pid {
                    found = Some(r.h);
                }
            }
            pending.push(rec.to_vec());
        });
    }
    found
}

fn push_syscall_filter(ebpf: &mut Ebpf, nrs: &[u32]) -> Result<(), String> {
    if nrs.is_empty() {
        return Ok(());
    }
    let map = ebpf
        .map_mut("syscall_filter")
        .ok_or("object has no syscall_filter map")?;
    let mut m: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(map).map_err(|e| format!("syscall_filter: {e}"))?;
    for nr in nrs {
        m.insert(*nr, 1, 0)
            .map_err(|e| format!("syscall_filter: {e}"))?;
    }
    Ok(())
}

fn attach_all(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<(Vec<String>, Vec<SkippedHook>), String> {
    let mut attached = Vec::new();
    let mut skipped = Vec::new();
    for hook in hooks {
        match attach_one(ebpf, hook) {
            Ok(()) => attached.push(hook.prog.clone()),
            Err(source) if hook.optional => {
                let reason = error_chain(&source);
                tracing::warn!(hook = %hook.prog, %reason, "optional hook skipped");
                skipped.push(SkippedHook {
                    hook: hook.prog.clone(),
                    reason,
                });
            }
            Err(source) => {
                return Err(format!(
                    "attaching required hook {}: {}",
                    hook.prog,
                    error_chain(&source)
                ));
            }
        }
    }
    Ok((attached, skipped))
}

fn attach_one(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), aya::programs::ProgramError> {
    let prog = ebpf
        .program_mut(&hook.prog)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?;
    match hook.attach {
        Attach::Tracepoint(cat, ref name) => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load()?;
            p.attach(cat, name)?;
        }
        Attach::RawTracepoint(name) => {
            let p: &mut RawTracePoint = prog.try_into()?;
            p.load()?;
            p.attach(name)?;
        }
    }
    Ok(())
}

/// aya's errors nest the useful part (the verifier log, the errno) a few
/// sources deep; show all of it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_from_btfhub_names() {
        assert_eq!(
            release_in_name(Path::new("/b/debian/12/x86_64/6.1.0-18-amd64.btf")).as_deref(),
            Some("6.1.0-18-amd64")
        );
        assert_eq!(
            release_in_name(Path::new("5.10.0-28-cloud-amd64.btf.tar.xz")).as_deref(),
            Some("5.10.0-28-cloud-amd64")
        );
        assert_eq!(release_in_name(Path::new("/tmp/vmlinux")), None);
        assert_eq!(release_in_name(Path::new("/tmp/my.btf")), None);
    }
}
