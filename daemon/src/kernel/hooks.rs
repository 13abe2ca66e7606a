//! The hook table: which program of each object attaches to which
//! tracepoint, which hooks are optional (the kernel may lack their
//! tracepoint), and attaching them.

use aya::programs::{RawTracePoint, TracePoint};
use aya::Ebpf;
use traceed_wire::SkippedHook;

use super::error_chain;

pub enum Attach {
    Tracepoint(&'static str, String),
    RawTracepoint(&'static str),
}

pub struct Hook {
    pub prog: String,
    pub attach: Attach,
    /// Optional hooks may be refused by the kernel; that is a warning.
    pub optional: bool,
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

pub fn core_hooks(generic: bool) -> Vec<Hook> {
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

pub fn fallback_hooks(generic: bool) -> Vec<Hook> {
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

pub fn attach_all(
    ebpf: &mut Ebpf,
    hooks: &[Hook],
) -> Result<(Vec<String>, Vec<SkippedHook>), String> {
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
