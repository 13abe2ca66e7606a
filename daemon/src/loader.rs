//! Kernel side, user half: probes the kernel, chooses a rung of the
//! portability ladder, loads the embedded eBPF object with aya (always
//! handing it the target BTF explicitly) and attaches its programs.
//!
//! Owns: the embedded objects, the hook table, tracefs mounting, and the
//! `Loaded` handle whose drop detaches everything.

use std::path::{Path, PathBuf};

use aya::programs::{RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};
use traceed_wire::{Refusal, SkippedHook};

use crate::config::Mode;

/// The CO-RE object, relocated at load time against the target BTF.
static CORE_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traceed.bpf.o"));

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no rung could be loaded: {0}")]
    NoRung(String),
    #[error("cannot mount tracefs on /sys/kernel/tracing: {0}; mount it yourself (mount -t tracefs tracefs /sys/kernel/tracing)")]
    Tracefs(std::io::Error),
    #[error("attaching required hook {hook}: {source}")]
    Attach {
        hook: String,
        source: aya::programs::ProgramError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    CoreKernelBtf,
    CoreExternalBtf,
    Fallback,
}

impl Rung {
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::CoreKernelBtf => "core-kernel-btf",
            Rung::CoreExternalBtf => "core-external-btf",
            Rung::Fallback => "fallback",
        }
    }

    pub fn fidelity(self) -> &'static str {
        match self {
            Rung::CoreKernelBtf | Rung::CoreExternalBtf => "core",
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
        Hook {
            prog: "tp_sched_process_exit".into(),
            attach: Attach::Tracepoint("sched", "sched_process_exit".into()),
            optional: false,
        },
        Hook {
            prog: "tp_module_load".into(),
            attach: Attach::Tracepoint("module", "module_load".into()),
            optional: true,
        },
    ];
    if generic {
        for side in ["exit", "enter"] {
            hooks.push(Hook {
                prog: format!("raw_sys_{side}"),
                attach: Attach::Tracepoint("raw_syscalls", format!("sys_{side}")),
                optional: false,
            });
        }
    }
    for sys in SYSCALLS {
        // exit first: an enter without its exit would only fill the map.
        for side in ["exit", "enter"] {
            hooks.push(Hook {
                prog: format!("{side}_{sys}"),
                attach: Attach::Tracepoint("syscalls", format!("sys_{side}_{sys}")),
                optional: true,
            });
        }
    }
    hooks
}

pub struct LoadOptions {
    pub scope: crate::scope::Resolved,
    /// Syscall numbers for the generic raw_syscalls path (empty: not attached).
    pub generic_syscalls: Vec<u32>,
    pub mode: Mode,
    pub btf_path: Option<PathBuf>,
    pub self_tgid: u32,
    pub ring_buffer_bytes: u32,
}

/// A loaded and attached object. Dropping it detaches every program.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub rung: Rung,
    pub btf_source: Option<String>,
    pub refused: Vec<Refusal>,
    pub programs: Vec<String>,
    pub skipped_hooks: Vec<SkippedHook>,
}

/// Make sure tracefs is mounted where aya looks for it.
pub fn ensure_tracefs() -> Result<(), LoadError> {
    for p in [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ] {
        if Path::new(p).exists() {
            return Ok(());
        }
    }
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: constant NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::Tracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
}

/// Walk the ladder from the top (or only the forced rung) and return the
/// first rung that loads and attaches.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    ensure_tracefs()?;
    let mut refused = Vec::new();

    let want = |r: Rung| match opts.mode {
        Mode::Auto => true,
        Mode::Core => matches!(r, Rung::CoreKernelBtf | Rung::CoreExternalBtf),
        Mode::Kernel => false,
        Mode::Fallback => r == Rung::Fallback,
    };

    // Rungs 1 and 2: the CO-RE object needs a target BTF. Never load it
    // without one: aya would keep vmlinux.h's offsets and read garbage.
    for rung in [Rung::CoreKernelBtf, Rung::CoreExternalBtf] {
        if !want(rung) {
            continue;
        }
        let (btf, source) = match target_btf(rung, opts) {
            Ok(x) => x,
            Err(reason) => {
                refused.push(Refusal {
                    rung: rung.as_str().into(),
                    reason,
                });
                continue;
            }
        };
        match load_core(&btf, opts) {
            Ok((ebpf, programs, skipped_hooks)) => {
                return Ok(Loaded {
                    ebpf,
                    rung,
                    btf_source: Some(source),
                    refused,
                    programs,
                    skipped_hooks,
                });
            }
            Err(reason) => {
                tracing::warn!(rung = rung.as_str(), %reason, "rung refused");
                refused.push(Refusal {
                    rung: rung.as_str().into(),
                    reason,
                });
            }
        }
    }
    if want(Rung::Fallback) {
        refused.push(Refusal {
            rung: Rung::Fallback.as_str().into(),
            reason: "the fallback object is not built yet in this version".into(),
        });
    }
    let summary = refused
        .iter()
        .map(|r| format!("{}: {}", r.rung, r.reason))
        .collect::<Vec<_>>()
        .join("; ");
    Err(LoadError::NoRung(summary))
}

fn target_btf(rung: Rung, opts: &LoadOptions) -> Result<(Btf, String), String> {
    match rung {
        Rung::CoreKernelBtf => {
            if !Path::new(SYS_BTF).exists() {
                return Err(format!(
                    "{SYS_BTF} does not exist: this kernel was built without CONFIG_DEBUG_INFO_BTF; \
                     set btf_path (or --btf) to an external BTF file, or run with --mode fallback"
                ));
            }
            Btf::from_sys_fs()
                .map(|b| (b, SYS_BTF.to_string()))
                .map_err(|e| format!("cannot parse {SYS_BTF}: {e}"))
        }
        Rung::CoreExternalBtf => {
            let Some(path) = &opts.btf_path else {
                return Err("no external BTF configured (btf_path / --btf)".into());
            };
            Btf::parse_file(path, Endianness::default())
                .map(|b| (b, path.display().to_string()))
                .map_err(|e| format!("cannot use BTF file {}: {e}", path.display()))
        }
        Rung::Fallback => unreachable!("the fallback object needs no BTF"),
    }
}

type Attached = (Ebpf, Vec<String>, Vec<SkippedHook>);

fn load_core(btf: &Btf, opts: &LoadOptions) -> Result<Attached, String> {
    let scope_flags = opts.scope.flags();
    let scope_any = u32::from(opts.scope.any());
    let mut ebpf = EbpfLoader::new()
        .btf(Some(btf))
        .override_global("self_tgid", &opts.self_tgid, true)
        .override_global("scope_flags", &scope_flags, true)
        .override_global("scope_any", &scope_any, true)
        .map_max_entries("events", opts.ring_buffer_bytes)
        .load(CORE_OBJ)
        .map_err(|e| format!("loading the CO-RE object: {}", error_chain(&e)))?;
    opts.scope.push(&mut ebpf).map_err(|e| e.to_string())?;
    push_syscall_filter(&mut ebpf, &opts.generic_syscalls)?;
    let (programs, skipped) = attach_all(&mut ebpf, &core_hooks(!opts.generic_syscalls.is_empty()))
        .map_err(|e| e.to_string())?;
    Ok((ebpf, programs, skipped))
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

fn attach_all(
    ebpf: &mut Ebpf,
    hooks: &[Hook],
) -> Result<(Vec<String>, Vec<SkippedHook>), LoadError> {
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
                return Err(LoadError::Attach {
                    hook: hook.prog.clone(),
                    source,
                })
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
