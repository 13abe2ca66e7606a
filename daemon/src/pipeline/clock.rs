//! Kernel timestamps are CLOCK_BOOTTIME (they keep counting through suspend);
//! rows carry wall-clock time. The offset is measured once at start and
//! re-measured periodically so an NTP step is followed.

fn clock_ns(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Nanoseconds to add to a CLOCK_BOOTTIME value to get Unix time.
pub fn boot_to_wall_offset() -> i64 {
    // Bracket the realtime read to halve the error of the two reads.
    let b1 = clock_ns(libc::CLOCK_BOOTTIME);
    let r = clock_ns(libc::CLOCK_REALTIME);
    let b2 = clock_ns(libc::CLOCK_BOOTTIME);
    r - (b1 + (b2 - b1) / 2)
}
