//! The hook table: which program of each object attaches to which
//! tracepoint or kernel function, which hooks are optional (the kernel may
//! lack their tracepoint), and attaching them.

use aya::programs::{FEntry, FExit, Program, ProgramError, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf};
use traceed_wire::SkippedHook;

use super::{error_chain, tracefs};

/// Where a program attaches. The tracepoint kinds name the tracepoint's
/// tracefs directory (`events/<category>/<name>`), which says whether this
/// kernel has it.
pub enum Attach {
    Tracepoint(&'static str, String),
    /// (category, name): the raw tracepoint `name`; the category is only
    /// used to look it up in tracefs.
    RawTracepoint(&'static str, &'static str),
    /// A BPF trampoline on the exit of a kernel function, named in the
    /// kernel's BTF.
    FExit(String),
    /// One on its entry (only as the `entry` of an fexit hook).
    FEntry(String),
}

impl Attach {
    pub fn tracefs_event(&self) -> Option<(&str, &str)> {
        match self {
            Attach::Tracepoint(cat, name) => Some((cat, name)),
            Attach::RawTracepoint(cat, name) => Some((cat, name)),
            Attach::FExit(_) | Attach::FEntry(_) => None,
        }
    }

    /// The ELF section the program must be in for this attach type.
    pub fn section(&self) -> String {
        match self {
            Attach::Tracepoint(cat, name) => format!("tracepoint/{cat}/{name}"),
            Attach::RawTracepoint(_, name) => format!("raw_tracepoint/{name}"),
            Attach::FExit(func) => format!("fexit/{func}"),
            Attach::FEntry(func) => format!("fentry/{func}"),
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
    /// Attached instead when this hook is refused: a syscall's tracepoint
    /// pair behind its fexit program.
    pub or_else: Vec<Hook>,
    /// An fexit hook's fentry half, attached first and only together with
    /// it (the setuid family's record needs the credentials of the entry).
    pub entry: Option<Box<Hook>>,
}

impl Hook {
    fn tp(prog: &str, cat: &'static str, name: &str, optional: bool) -> Self {
        Self {
            prog: prog.into(),
            attach: Attach::Tracepoint(cat, name.into()),
            optional,
            after: None,
            or_else: Vec::new(),
            entry: None,
        }
    }

    /// This hook (with its entry half) and every hook it may fall back to.
    pub fn with_alternatives(&self) -> Vec<&Hook> {
        let mut all = vec![self];
        all.extend(self.entry.as_deref());
        for h in &self.or_else {
            all.extend(h.with_alternatives());
        }
        all
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

/// The syscalls whose record carries the caller's credentials from before
/// the syscall: an fentry program stashes them for the fexit one.
const ENTRY_CREDS: &[&str] = &["setuid", "setreuid", "setresuid"];

/// The hook families `tracectl status` reports an attach method for:
/// (family, its syscalls): every syscall traceed records, once. A failed
/// exec only: a successful one is sched_process_exec's record.
pub const FAMILIES: &[(&str, &[&str])] = &[
    ("exec (failed)", &["execve", "execveat"]),
    ("open", &["open", "openat", "openat2"]),
    (
        "file",
        &[
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
        ],
    ),
    ("net", &["connect", "bind", "accept", "accept4"]),
    (
        "privilege",
        &[
            "setuid",
            "setreuid",
            "setresuid",
            "ptrace",
            "kill",
            "tkill",
            "tgkill",
            "bpf",
        ],
    ),
];

/// The syscalls whose record reads a user argv pointer by pointer (failed
/// execs). Their programs come in two builds: `<prog>` with a bounded loop
/// and `<prog>_loop` under bpf_loop (5.17+), which the verifier checks as
/// one body (start-up: ~0.2 s less each on 6.18; and 1024 arguments
/// where the bounded loop is held to 32).
const ARGV_READERS: &[&str] = &["execve", "execveat"];

/// The suffix of the bpf_loop build of an argv reader's programs.
pub const LOOP_SUFFIX: &str = "_loop";

/// Whether an object's programs (`kobject::programs`) include the bpf_loop
/// build: a kernel object built by an older traceed does not.
pub fn has_loop_build(programs: &[(String, String)]) -> bool {
    let want = prog_name("exit", ARGV_READERS[0], true);
    programs.iter().any(|(_, name)| *name == want)
}

/// The program `<side>_<sys>`, the bpf_loop build where `argv_loop` says
/// the kernel and the object have it.
fn prog_name(side: &str, sys: &str, argv_loop: bool) -> String {
    let suffix = if argv_loop && ARGV_READERS.contains(&sys) {
        LOOP_SUFFIX
    } else {
        ""
    };
    format!("{side}_{sys}{suffix}")
}

/// The x86-64 function behind a syscall, which fexit attaches to.
fn syscall_function(sys: &str) -> String {
    format!("__x64_sys_{sys}")
}

/// Every syscall recorded at sys_exit (`tracepoint_hooks`), or by fexit
/// (CO-RE object: every one of them has `fexit_<sys>`), in `FAMILIES`
/// order. Optional: a kernel without the syscall (openat2 before 5.6) or
/// without syscall tracepoints skips it and says so in status.
pub fn syscalls() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().flat_map(|(_, sys)| sys.iter().copied())
}

/// A syscall's tracepoints. The CO-RE and kernel-specific objects read
/// the arguments at sys_exit from the user's registers, so one program
/// does (`exit_only`), except for the setuid family, whose record needs the
/// credentials of the entry. The fallback reads no kernel memory and
/// stashes them at sys_enter: a pair, exit first, as an enter whose exit
/// is missing would only fill the inflight map.
fn tracepoint_hooks(sys: &str, exit_only: bool, argv_loop: bool) -> Vec<Hook> {
    let exit = prog_name("exit", sys, argv_loop);
    let mut hooks = vec![Hook::tp(
        &exit,
        "syscalls",
        &format!("sys_exit_{sys}"),
        true,
    )];
    if !exit_only || ENTRY_CREDS.contains(&sys) {
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
    hooks
}

/// `fentry`: the object has fexit programs and the kernel's own BTF names
/// the functions; every syscall then tries fexit first. All of them must:
/// one enabled syscalls tracepoint is enough to put every task on the
/// syscall slow path (BENCHMARKS.md, "fentry vs tracepoints").
/// `argv_loop`: the argv readers' bpf_loop build (`prog_name`).
fn common_hooks(
    hooks: &mut Vec<Hook>,
    generic: bool,
    fentry: bool,
    exit_only: bool,
    argv_loop: bool,
) {
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
    for sys in syscalls() {
        if fentry {
            let entry = ENTRY_CREDS.contains(&sys).then(|| {
                Box::new(Hook {
                    prog: format!("fentry_{sys}"),
                    attach: Attach::FEntry(syscall_function(sys)),
                    optional: true,
                    after: None,
                    or_else: Vec::new(),
                    entry: None,
                })
            });
            hooks.push(Hook {
                prog: prog_name("fexit", sys, argv_loop),
                attach: Attach::FExit(syscall_function(sys)),
                optional: true,
                after: None,
                or_else: tracepoint_hooks(sys, exit_only, argv_loop),
                entry,
            });
        } else {
            hooks.extend(tracepoint_hooks(sys, exit_only, argv_loop));
        }
    }
}

/// The kernel functions the trampoline hooks of `hooks` attach to (an
/// fentry half names the same function as its fexit hook).
pub fn trampoline_functions(hooks: &[Hook]) -> Vec<&str> {
    let mut funcs: Vec<&str> = hooks
        .iter()
        .filter_map(|h| match &h.attach {
            Attach::FExit(f) | Attach::FEntry(f) => Some(f.as_str()),
            _ => None,
        })
        .collect();
    funcs.sort_unstable();
    funcs.dedup();
    funcs
}

/// The CO-RE and kernel-object table; `fentry` only for the CO-RE object
/// on a kernel whose BTF is visible (see `common_hooks`), `argv_loop`
/// where the kernel has bpf_loop (and the object its build).
pub fn core_hooks(generic: bool, fentry: bool, argv_loop: bool) -> Vec<Hook> {
    let mut hooks = vec![
        Hook {
            prog: "raw_sched_process_exec".into(),
            attach: Attach::RawTracepoint("sched", "sched_process_exec"),
            optional: false,
            after: None,
            or_else: Vec::new(),
            entry: None,
        },
        Hook {
            prog: "raw_sched_process_fork".into(),
            attach: Attach::RawTracepoint("sched", "sched_process_fork"),
            optional: false,
            after: None,
            or_else: Vec::new(),
            entry: None,
        },
        Hook::tp(
            "tp_sched_process_exit",
            "sched",
            "sched_process_exit",
            false,
        ),
        Hook::tp("tp_module_load", "module", "module_load", true),
    ];
    common_hooks(&mut hooks, generic, fentry, true, argv_loop);
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
    common_hooks(&mut hooks, generic, false, false, false);
    hooks
}

/// What `attach_all` attached, what it skipped, and whether the kernel took
/// fexit programs.
#[derive(Default)]
pub struct Attached {
    pub programs: Vec<String>,
    pub skipped: Vec<SkippedHook>,
    /// The kernel's answer when the first fexit program of the table was
    /// refused (the probe: no fexit is then tried again).
    pub fentry_refused: Option<String>,
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
/// - A hook with `or_else` (an fexit program) that fails is replaced by
///   those hooks (its tracepoint pair). The first fexit program is the
///   probe: when the kernel refuses it (no BPF trampolines, as on kernels
///   without ftrace direct calls, or a policy that forbids them: EPERM),
///   the refusal is reported once in status and every later fexit hook
///   goes straight to its tracepoints. A later fexit refusal (the probe
///   passed) is listed in `skipped` with the kernel's reason.
/// - `btf` is the kernel's own BTF, which names the functions fexit
///   attaches to; without it fexit hooks go to their tracepoints.
pub fn attach_all(
    ebpf: &mut Ebpf,
    hooks: &[Hook],
    btf: Option<&Btf>,
) -> Result<Attached, HookError> {
    let missing: Vec<String> = hooks
        .iter()
        .flat_map(Hook::with_alternatives)
        .filter(|h| ebpf.program(&h.prog).is_none())
        .map(|h| h.prog.clone())
        .collect();
    if !missing.is_empty() {
        return Err(HookError::MissingPrograms(missing));
    }
    let mut a = Attacher {
        btf,
        out: Attached::default(),
        fexit_attached: 0,
    };
    for hook in hooks {
        a.hook(ebpf, hook)?;
    }
    Ok(a.out)
}

struct Attacher<'b> {
    btf: Option<&'b Btf>,
    out: Attached,
    fexit_attached: usize,
}

impl Attacher<'_> {
    fn skip(&mut self, hook: &Hook, reason: String) {
        tracing::warn!(hook = %hook.prog, %reason, "optional hook skipped");
        self.out.skipped.push(SkippedHook {
            hook: hook.prog.clone(),
            reason,
        });
    }

    fn hook(&mut self, ebpf: &mut Ebpf, hook: &Hook) -> Result<(), HookError> {
        if let Attach::FExit(func) = &hook.attach {
            return self.fexit(ebpf, hook, func);
        }
        if let Some((cat, name)) = hook.attach.tracefs_event() {
            if hook.optional && tracefs::has_event(cat, name) == Some(false) {
                self.skip(hook, format!("this kernel has no tracepoint {cat}/{name}"));
                return Ok(());
            }
        }
        if let Some(dep) = &hook.after {
            if !self.out.programs.contains(dep) {
                self.skip(hook, format!("not attached because {dep} is not"));
                return Ok(());
            }
        }
        let Some(prog) = ebpf.program_mut(&hook.prog) else {
            return Err(HookError::MissingPrograms(vec![hook.prog.clone()]));
        };
        match attach_one(prog, &hook.attach) {
            Ok(()) => self.out.programs.push(hook.prog.clone()),
            Err(source) if hook.optional => {
                let what = match hook.attach.tracefs_event() {
                    Some((cat, name)) => format!("tracepoint {cat}/{name} exists but"),
                    None => String::new(),
                };
                self.skip(
                    hook,
                    format!(
                        "{what} the kernel refused the program: {}",
                        error_chain(&source)
                    )
                    .trim_start()
                    .to_string(),
                )
            }
            Err(source) => {
                return Err(HookError::Required {
                    prog: hook.prog.clone(),
                    reason: error_chain(&source),
                });
            }
        }
        Ok(())
    }

    /// The probe's answer (the first refusal only: later ones say the same).
    fn refuse_fentry(&mut self, func: &str, reason: String) {
        if self.out.fentry_refused.is_some() {
            return;
        }
        let reason = format!("fexit on {func}: {reason}");
        tracing::warn!(
            %reason,
            "BPF trampolines (fentry/fexit) refused: syscall tracepoints instead"
        );
        self.out.fentry_refused = Some(reason);
    }

    fn fexit(&mut self, ebpf: &mut Ebpf, hook: &Hook, func: &str) -> Result<(), HookError> {
        let tried = match self.btf {
            None => Some(Err(
                "the kernel's own BTF is not visible (it names the functions fexit attaches to)"
                    .to_string(),
            )),
            // The probe failed: the kernel answers the same for every
            // fexit program, so none is tried again.
            Some(_) if self.out.fentry_refused.is_some() && self.fexit_attached == 0 => None,
            Some(btf) => Some(attach_trampolines(ebpf, hook, func, btf)?),
        };
        match tried {
            Some(Ok(())) => {
                self.fexit_attached += 1;
                self.out
                    .programs
                    .extend(hook.entry.iter().map(|e| e.prog.clone()));
                self.out.programs.push(hook.prog.clone());
                return Ok(());
            }
            Some(Err(reason)) if self.fexit_attached == 0 => self.refuse_fentry(func, reason),
            Some(Err(reason)) => self.skip(
                hook,
                format!("fexit on {func} refused (its tracepoints instead): {reason}"),
            ),
            None => {}
        }
        for alt in &hook.or_else {
            self.hook(ebpf, alt)?;
        }
        Ok(())
    }
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
        Attach::FExit(func) | Attach::FEntry(func) => {
            unreachable!("trampoline hook on {func} goes through attach_trampolines")
        }
    }
    Ok(())
}

/// Load and attach one trampoline program (FEntry or FExit: the same
/// calls on two types); a refused one is unloaded, so it keeps no kernel
/// memory.
macro_rules! load_attach {
    ($prog:expr, $ty:ty, $func:expr, $btf:expr) => {{
        let p: &mut $ty = $prog.try_into()?;
        p.load($func, $btf)?;
        if let Err(e) = p.attach() {
            let _ = p.unload();
            return Err(e);
        }
        Ok(())
    }};
}

fn attach_fentry(prog: &mut Program, func: &str, btf: &Btf) -> Result<(), ProgramError> {
    load_attach!(prog, FEntry, func, btf)
}

fn attach_fexit(prog: &mut Program, func: &str, btf: &Btf) -> Result<(), ProgramError> {
    load_attach!(prog, FExit, func, btf)
}

/// An fexit hook: its entry half first (when it has one), then the fexit
/// program; both or neither (no half runs alone). The kernel's refusal as
/// text.
fn attach_trampolines(
    ebpf: &mut Ebpf,
    hook: &Hook,
    func: &str,
    btf: &Btf,
) -> Result<Result<(), String>, HookError> {
    fn prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program, HookError> {
        ebpf.program_mut(name)
            .ok_or_else(|| HookError::MissingPrograms(vec![name.to_string()]))
    }
    if let Some(entry) = &hook.entry {
        if let Err(e) = attach_fentry(prog(ebpf, &entry.prog)?, func, btf) {
            return Ok(Err(format!("fentry: {}", error_chain(&e))));
        }
    }
    if let Err(e) = attach_fexit(prog(ebpf, &hook.prog)?, func, btf) {
        if let Some(entry) = &hook.entry {
            let p: Result<&mut FEntry, _> = prog(ebpf, &entry.prog)?.try_into();
            if let Ok(p) = p {
                let _ = p.unload();
            }
        }
        return Ok(Err(error_chain(&e)));
    }
    Ok(Ok(()))
}
