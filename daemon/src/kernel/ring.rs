//! The BPF ring buffer's consumer side, with its data pages mapped once.
//!
//! The kernel offers the data area twice in a row, so that a record
//! wrapping past the end reads as one slice; aya's reader maps both. Every
//! page of that mapping is resident from the mmap on, so a 4 MiB ring put
//! 8 MiB into the daemon's RSS (one third of it at rest). Here the data is
//! mapped once, and the rare record that wraps is copied into a scratch
//! buffer in two parts. The memory used is the same (the kernel's pages);
//! RSS counts it once.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0, the consumer position (mapped
//! read-write, ours to advance); page 1, the producer position; then the
//! data pages. A record is an 8-byte header (length with a busy and a
//! discard bit, then a page offset the consumer does not need) and its
//! bytes, padded to 8. Our programs choose every wake-up themselves
//! (common.h, `event_send`), so nothing here tells the kernel when to wake
//! us.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::MapData;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_SIZE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("reading the ring buffer's size: {0}")]
    Info(aya::maps::MapError),
    #[error("ring buffer of {0} bytes: not a power of two of pages")]
    Size(u64),
    #[error("mapping the ring buffer's {what}: {err}")]
    Mmap {
        what: &'static str,
        err: std::io::Error,
    },
}

struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: RawFd,
        len: usize,
        prot: i32,
        offset: usize,
        what: &'static str,
    ) -> Result<Self, RingError> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // the offset and length against the ring's pages.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(RingError::Mmap {
                what,
                err: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast()).ok_or(RingError::Mmap {
            what,
            err: std::io::Error::other("mmap returned NULL"),
        })?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct Ring {
    /// Keeps the map (and its fd) alive as long as the mappings.
    map: MapData,
    consumer: Mapping,
    /// The producer page, then the data pages (once).
    producer: Mapping,
    page: usize,
    size: usize,
    /// Our position; the kernel sees it once a record is consumed.
    pos: u64,
    /// A record that wraps, in one piece.
    joined: Vec<u8>,
}

// SAFETY: the mappings are only read and written through `&mut self`, and
// the pages are shared with the kernel, not with other threads of ours.
unsafe impl Send for Ring {}

/// One step of the consumer, at position `pos` of `data` (the data pages,
/// `data.len()` a power of two), given the header's length word.
#[derive(Debug, PartialEq)]
enum Step {
    /// The producer has not committed this record yet.
    Busy,
    /// A record to skip (discarded by its program) of `total` bytes.
    Skip { total: u64 },
    /// A record: its bytes from `start`, `len` long (wrapping past the end
    /// when start + len > data.len()), `total` bytes with header and pad.
    Record {
        start: usize,
        len: usize,
        total: u64,
    },
}

fn step(header: u32, pos: u64, size: usize) -> Step {
    if header & BUSY_BIT != 0 {
        return Step::Busy;
    }
    let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
    let total = ((len + HDR_SIZE + 7) & !7) as u64;
    if header & DISCARD_BIT != 0 {
        return Step::Skip { total };
    }
    let start = (pos as usize + HDR_SIZE) & (size - 1);
    Step::Record { start, len, total }
}

impl Ring {
    pub fn new(map: MapData) -> Result<Self, RingError> {
        let size = u64::from(map.info().map_err(RingError::Info)?.max_entries());
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        if !size.is_power_of_two() || (size as usize) < page {
            return Err(RingError::Size(size));
        }
        let size = size as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(
            fd,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
            "consumer page",
        )?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page, "data pages")?;
        let mut ring = Self {
            map,
            consumer,
            producer,
            page,
            size,
            pos: 0,
            joined: Vec::new(),
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: page 0 of the ring, mapped read-write, 8-aligned; the
        // kernel only reads it.
        unsafe { &*self.consumer.ptr.as_ptr().cast::<AtomicU64>() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: page 1 of the ring, mapped read-only, 8-aligned; the
        // kernel stores it with release semantics.
        unsafe { &*self.producer.ptr.as_ptr().cast::<AtomicU64>() }
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data pages follow the producer page in the mapping.
        unsafe { self.producer.ptr.as_ptr().add(self.page) }
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }

    /// Hand every committed record to `f`, oldest first, and give its
    /// space back to the kernel after each.
    pub fn drain(&mut self, f: &mut dyn FnMut(&[u8])) {
        let mask = (self.size - 1) as u64;
        loop {
            let prod = self.producer_pos().load(Ordering::Acquire);
            if self.pos == prod {
                return;
            }
            // SAFETY: headers are 8-aligned inside the data pages; the
            // producer publishes a record by clearing the busy bit with a
            // full barrier, so an acquire load orders the reads after it.
            let header = unsafe {
                (*self
                    .data()
                    .add((self.pos & mask) as usize)
                    .cast::<AtomicU32>())
                .load(Ordering::Acquire)
            };
            match step(header, self.pos, self.size) {
                Step::Busy => return,
                Step::Skip { total } => self.pos += total,
                Step::Record { start, len, total } => {
                    let first = len.min(self.size - start);
                    // SAFETY: the record's bytes, committed and left alone
                    // by the producer until we advance the consumer
                    // position; `first` stays inside the data pages, and
                    // the wrapped rest starts at their beginning.
                    unsafe {
                        let head = std::slice::from_raw_parts(self.data().add(start), first);
                        if first == len {
                            f(head);
                        } else {
                            let rest = std::slice::from_raw_parts(self.data(), len - first);
                            self.joined.clear();
                            self.joined.extend_from_slice(head);
                            self.joined.extend_from_slice(rest);
                            f(&self.joined);
                        }
                    }
                    self.pos += total;
                }
            }
            self.consumer_pos().store(self.pos, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_kernel_record_layout() {
        let size = 4096;
        assert_eq!(step(BUSY_BIT | 12, 0, size), Step::Busy);
        // 12 bytes + 8 of header, padded to 24.
        assert_eq!(step(DISCARD_BIT | 12, 0, size), Step::Skip { total: 24 });
        assert_eq!(
            step(16, 64, size),
            Step::Record {
                start: 72,
                len: 16,
                total: 24
            }
        );
        // A header in the last 8 bytes: the record starts at the top.
        assert_eq!(
            step(100, 4088, size),
            Step::Record {
                start: 0,
                len: 100,
                total: 112
            }
        );
        // Positions only grow; the offset is taken modulo the size.
        assert_eq!(
            step(100, 3 * 4096 + 4000, size),
            Step::Record {
                start: 4008,
                len: 100,
                total: 112
            }
        );
    }
}
