//! The kernel side, user half: everything that talks to the kernel before
//! a record reaches the pipeline. `ladder` walks the portability ladder and
//! owns the loaded object; `hooks` is the table of what attaches where;
//! `btf` finds a target BTF; `kobject` finds or builds the kernel-specific
//! object; `selfcheck` proves a rung before it is trusted; `source` reads
//! the ring or perf buffer; `scope` pushes filters into maps; `tracefs`
//! reads tracepoint formats.

pub mod btf;
pub mod hooks;
pub mod kobject;
pub mod ladder;
pub mod ring;
pub mod scope;
pub mod selfcheck;
pub mod source;
pub mod tracefs;

/// The uname release of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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
