//! The hook table: which program of each object attaches to which
//! tracepoint, which hooks are optional (the kernel may lack their
//! tracepoint), and attaching them.

use aya::programs::{Program, RawTracePoint, TracePoint};
use aya::Ebpf;
use traceed_wire::SkippedHook;

use super::{error_chain, tracefs};

/// Where a program attaches. Both name the tracepoint's tracefs directory
/// (`events/<category>/<name>`), which says whether this kernel has it.
pub enum Attach {
    Tracepoint(&'static str, String),
    /// (category, name): the raw tracepoint `name`; the category is only
    /// used to look it up in tracefs.
    RawTracepoint(&'static str, &'static str),
}

impl Attach {
    pub fn tracefs_event(&self) -> (&str, &str) {
        match self {
            Attach::Tracepoint(cat, name) => (cat, name),
            Attach::RawTracepoint(cat, name) => (cat, name),
        }
    }

    /// The ELF section the program must be in for this attach type.
    pub fn section(&self) -> String {
        match self {
            Attach::Tracepoint(cat, name) => format!("tracepoint/{cat}/{name}"),
            Attach::RawTracepoint(_, name) => format!("raw_tracepoint/{name}"),
        }
    }
}

pub struct Hook {
    pub prog: String,
    pub attach: Attach,
    /// Optional hooks are those whose tracepoint some kernels lack; see
    /// `attach_all` for what happens to them.
    pub optional: bool,
    /// Attach only when this hook was attached (a syscall's sys_enter half
    /// is useless, and fills the inflight map, without its sys_exit half).
    pub after: Option<String>,
}

impl Hook {
    fn tp(prog: &str, cat: &'static str, name: &str, optional: bool) -> Self {
        Self {
            prog: prog.into(),
            attach: Attach::Tracepoint(cat, name.into()),
            optional,
            after: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "the loaded object has no program {} named in the hook table: it was not built from this \
         traceed's sources (a kernel-specific object from another traceed version: rebuild it with \
         `traceed build-object`)",
        .0.join(", ")
    )]
    MissingPrograms(Vec<String>),
    #[error("attaching required hook {prog}: {reason}")]
    Required { prog: String, reason: String },
}

/// Syscalls recorded at sys_exit (with arguments stashed at sys_enter).
/// Optional: a kernel without the syscall (openat2 before 5.6) or without
/// syscall tracepoints skips it and says so in status.
const SYSCALLS: &[&str] = &[
    // Failed execs only (a successful one is sched_process_exec's record).
    "execve",
    "execveat",
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
        let exit = format!("exit_{sys}");
        hooks.push(Hook::tp(
            &exit,
            "syscalls",
            &format!("sys_exit_{sys}"),
            true,
        ));
        hooks.push(Hook {
            after: Some(exit),
            ..Hook::tp(
                &format!("enter_{sys}"),
                "syscalls",
                &format!("sys_enter_{sys}"),
                true,
            )
        });
    }
}

pub fn core_hooks(generic: bool) -> Vec<Hook> {
    let mut hooks = vec![
        Hook {
            prog: "raw_sched_process_exec".into(),
            attach: Attach::RawTracepoint("sched", "sched_process_exec"),
            optional: false,
            after: None,
        },
        Hook {
            prog: "raw_sched_process_fork".into(),
            attach: Attach::RawTracepoint("sched", "sched_process_fork"),
            optional: false,
            after: None,
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

/// Attach every hook of the table, in order.
///
/// - A program the table names but the object lacks refuses the rung (the
///   object and the table disagree: a build mismatch, never a kernel
///   matter), before anything is attached.
/// - A required hook that fails refuses the rung.
/// - An optional hook whose tracepoint this kernel lacks (no
///   `events/<category>/<name>` in tracefs) is skipped and listed, without
///   trying: that is what optional means (openat2 before 5.6, module_load
///   without modules, no syscall tracepoints).
/// - An optional hook whose tracepoint exists but that fails to load or
///   attach is skipped too, with a warning and the kernel's reason in
///   status, rather than refusing the rung. The choice: every rung carries
///   the same syscall programs, so refusing would walk down to the fallback,
///   fail there the same way, and leave the host with no events at all
///   because one syscall hook was refused on some kernel; a loud, listed
///   gap is better. (The kernel matrix, 5.10 / 6.1 / 6.12, skips none.)
/// - A hook with `after` is skipped when that hook was not attached.
pub fn attach_all(
    ebpf: &mut Ebpf,
    hooks: &[Hook],
) -> Result<(Vec<String>, Vec<SkippedHook>), HookError> {
    let missing: Vec<String> = hooks
        .iter()
        .filter(|h| ebpf.program(&h.prog).is_none())
        .map(|h| h.prog.clone())
        .collect();
    if !missing.is_empty() {
        return Err(HookError::MissingPrograms(missing));
    }
    let mut attached: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    let mut skip = |hook: &Hook, reason: String| {
        tracing::warn!(hook = %hook.prog, %reason, "optional hook skipped");
        skipped.push(SkippedHook {
            hook: hook.prog.clone(),
            reason,
        });
    };
    for hook in hooks {
        let (cat, name) = hook.attach.tracefs_event();
        if hook.optional && tracefs::has_event(cat, name) == Some(false) {
            skip(hook, format!("this kernel has no tracepoint {cat}/{name}"));
            continue;
        }
        if let Some(dep) = &hook.after {
            if !attached.contains(dep) {
                skip(hook, format!("not attached because {dep} is not"));
                continue;
            }
        }
        let Some(prog) = ebpf.program_mut(&hook.prog) else {
            return Err(HookError::MissingPrograms(vec![hook.prog.clone()]));
        };
        match attach_one(prog, &hook.attach) {
            Ok(()) => attached.push(hook.prog.clone()),
            Err(source) if hook.optional => skip(
                hook,
                format!(
                    "tracepoint {cat}/{name} exists but the kernel refused the program: {}",
                    error_chain(&source)
                ),
            ),
            Err(source) => {
                return Err(HookError::Required {
                    prog: hook.prog.clone(),
                    reason: error_chain(&source),
                });
            }
        }
    }
    Ok((attached, skipped))
}

fn attach_one(prog: &mut Program, attach: &Attach) -> Result<(), aya::programs::ProgramError> {
    match attach {
        Attach::Tracepoint(cat, name) => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load()?;
            p.attach(cat, name)?;
        }
        Attach::RawTracepoint(_, name) => {
            let p: &mut RawTracePoint = prog.try_into()?;
            p.load()?;
            p.attach(name)?;
        }
    }
    Ok(())
}
