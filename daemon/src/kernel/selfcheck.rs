//! The start-up self-check: a rung is trusted only after the programs
//! recorded a known child's exec with the right parent and mount namespace.

use std::time::{Duration, Instant};

use aya::Ebpf;

use super::kernel_release;
use super::ladder::{Attempt, LoadOptions, Rung};
use crate::pipeline::{contract, decoder};

#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    #[error("self-check: {0}")]
    Exe(std::io::Error),
    #[error("{0}")]
    ExePath(std::ffi::NulError),
    #[error("self-check: pipe: {0}")]
    Pipe(std::io::Error),
    #[error("self-check: fork: {0}")]
    Fork(std::io::Error),
    #[error(
        "self-check: the exec of a test child (pid {child}) was not seen within 3 s; \
         the {rung} programs do not report events on this kernel"
    )]
    NotSeen { child: i32, rung: &'static str },
    #[error(
        "self-check failed: read ppid {ppid} and mnt_ns {mnt_ns} for a child of pid {parent} in mnt_ns {my_mnt}; \
         {what} the running kernel ({release})"
    )]
    Misread {
        ppid: u32,
        mnt_ns: u32,
        parent: u32,
        my_mnt: u32,
        /// What is wrong: the kernel object's offsets, or the BTF.
        what: &'static str,
        release: String,
    },
}

/// Prove the rung reads this kernel correctly before trusting it: exec a
/// child whose parent and mount namespace we know, and compare what the
/// programs recorded. A BTF that does not describe the running kernel shows
/// up here as a wrong ppid or namespace, not as silent garbage in history.
pub fn self_check(a: &mut Attempt, rung: Rung, opts: &LoadOptions) -> Result<(), SelfCheckError> {
    let exe = std::env::current_exe().map_err(SelfCheckError::Exe)?;
    let c_exe = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(SelfCheckError::ExePath)?;
    let c_arg = c"--version";
    let mut pipe = [0i32; 2];
    // SAFETY: plain pipe2 into a two-int array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SelfCheckError::Pipe(std::io::Error::last_os_error()));
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
        return Err(SelfCheckError::Fork(std::io::Error::last_os_error()));
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
        return Err(SelfCheckError::NotSeen {
            child,
            rung: rung.as_str(),
        });
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
        return Err(SelfCheckError::Misread {
            ppid: h.ppid,
            mnt_ns: h.mnt_ns,
            parent: opts.self_tgid,
            my_mnt,
            what,
            release: kernel_release(),
        });
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

fn wait_for_exec(a: &mut Attempt, pid: u32, timeout: Duration) -> Option<decoder::RawHeader> {
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
            if let Ok(r) = decoder::parse(rec) {
                if r.h.kind == contract::EK_EXEC && r.h.pid == pid {
                    found = Some(r.h);
                }
            }
            pending.push(rec.to_vec());
        });
    }
    found
}
