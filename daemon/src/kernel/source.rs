//! Where records come from: the BPF ring buffer, or one perf buffer per CPU
//! on kernels without ring buffers (or when `--transport perf` is chosen).
//! Both are drained the same way, so the pipeline does not care which.

use std::os::fd::{AsRawFd, RawFd};

use aya::maps::perf::{PerfEvent, PerfEventArrayBuffer};
use aya::maps::{Map, MapData, PerfEventArray};
use aya::Ebpf;

use super::ring::{Ring, RingError};

use crate::service::config::Transport;

/// Pages per CPU of a perf buffer, at least: four 64 KiB samples.
const PERF_PAGES_MIN: usize = 4 * (64 << 10) / 4096;

/// Pages of each CPU's perf buffer: the ring buffer's memory split over
/// the CPUs (a power of two of pages), but never less than four of the
/// largest sample (64 KiB: an exec with argv cut at PERF_ARGV_MAX), or a
/// host with many CPUs would drop every long command line.
fn perf_pages(ring_bytes: u32, cpus: usize) -> usize {
    ((ring_bytes as usize / 4096) / cpus.max(1))
        .next_power_of_two()
        .max(PERF_PAGES_MIN)
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the object has no `events` map")]
    NoEventsMap,
    #[error("events map: {0}")]
    Map(aya::maps::MapError),
    #[error("events map: not a ring buffer")]
    NotRing,
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("{0}: {1}")]
    OnlineCpus(&'static str, std::io::Error),
    #[error("perf buffer of cpu {cpu}: {err}")]
    PerfBuffer {
        cpu: u32,
        err: aya::maps::perf::PerfBufferError,
    },
}

pub enum EventSource {
    Ring(Ring),
    Perf(Vec<PerfEventArrayBuffer<MapData>>),
}

impl EventSource {
    pub fn open(
        ebpf: &mut Ebpf,
        transport: Transport,
        ring_bytes: u32,
    ) -> Result<Self, SourceError> {
        let map = ebpf.take_map("events").ok_or(SourceError::NoEventsMap)?;
        match transport {
            Transport::Perf => {
                let mut arr = PerfEventArray::try_from(map).map_err(SourceError::Map)?;
                let cpus =
                    aya::util::online_cpus().map_err(|(m, e)| SourceError::OnlineCpus(m, e))?;
                let pages = perf_pages(ring_bytes, cpus.len());
                let mut bufs = Vec::new();
                for cpu in cpus {
                    bufs.push(
                        arr.open(cpu, Some(pages))
                            .map_err(|err| SourceError::PerfBuffer { cpu, err })?,
                    );
                }
                Ok(Self::Perf(bufs))
            }
            _ => match map {
                Map::RingBuf(data) => Ok(Self::Ring(Ring::new(data)?)),
                _ => Err(SourceError::NotRing),
            },
        }
    }

    pub fn fds(&self) -> Vec<RawFd> {
        match self {
            Self::Ring(r) => vec![r.as_raw_fd()],
            Self::Perf(b) => b.iter().map(|b| b.as_raw_fd()).collect(),
        }
    }

    /// Hand every available record to `f`.
    pub fn drain(&mut self, f: &mut dyn FnMut(&[u8])) {
        match self {
            Self::Ring(r) => r.drain(f),
            Self::Perf(bufs) => {
                let mut joined = Vec::new();
                for b in bufs.iter_mut() {
                    b.for_each(|ev| match ev {
                        PerfEvent::Sample { head, tail: [] } => f(head),
                        PerfEvent::Sample { head, tail } => {
                            joined.clear();
                            joined.extend_from_slice(head);
                            joined.extend_from_slice(tail);
                            f(&joined);
                        }
                        // Drops are counted by the programs themselves (the
                        // `lost` map) when output fails; counting these too
                        // would count every drop twice.
                        PerfEvent::Lost { count } => {
                            tracing::debug!(count, "perf buffer overflow reported by the kernel")
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn perf_buffers_hold_four_long_execs_on_any_host() {
        assert_eq!(super::perf_pages(4 << 20, 2), 512);
        // 64 CPUs: 16 pages each would hold one 64 KiB sample.
        assert_eq!(super::perf_pages(4 << 20, 64), 64);
        assert_eq!(super::perf_pages(4 << 20, 1024), 64);
        assert_eq!(super::perf_pages(16 << 20, 64), 64);
        assert_eq!(super::perf_pages(16 << 20, 8), 512);
    }
}
