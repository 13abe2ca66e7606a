//! Allocator settings for a long-running daemon with a few busy threads.
//!
//! glibc gives each thread that allocates under contention an arena of its
//! own (up to 8 per core), and memory freed in an arena stays mapped there.
//! The event path hands every event across threads (ingest, writer, the
//! SQLite thread, the detector), so each arena ends up holding its own
//! high-water mark of events in flight. Eight arenas to two took the
//! bench's peak RSS from ~87 to ~64 MiB; two to one took a tar copy's
//! (many unique paths in bursts, the bench's highest peak) from 37-50 to
//! 35-38 MiB. The one lock costs ~0.05 us per event flat out (3 %) and
//! nothing measurable at 10k/s: the threads' caches (tcache) serve most
//! allocations without it.

/// Blocks from this size up are mapped on their own and unmapped when
/// freed. glibc's default starts at 128 KiB and rises to the size of each
/// mapped block freed: after the start-up reads the kernel's BTF file (~6
/// MiB, twice), later blocks of that size came from the heap and stayed
/// resident once freed (+11 MiB at the start-up's peak). Fixed, it keeps
/// the BTF's one-off blocks out of the heap; the event path's largest
/// (a batch of 4096 events, ~1.5 MiB) stay below it, as they were.
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Before the runtime starts any thread.
pub fn limit_arenas() {
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        // A fixed threshold also fixes the trim threshold (at 128 KiB
        // unless set): twice the mapping one, as glibc's own adjustment
        // keeps it, so the heap's top is not returned and regrown per batch.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD);
    }
}

/// Hand memory freed after a one-off peak (BTF parsing and relocation while
/// the programs load) back to the system.
pub fn release_free() {
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
