//! From a raw kernel record to an enriched event: `decoder` turns the
//! record into an event, `proctable` and `cgroup` add what the kernel
//! record does not carry, `clock` converts boot time to wall time,
//! `coalesce` folds repeated opens when asked to, and `ingest` runs them in
//! order and hands batches to the store.

pub mod cgroup;
pub mod clock;
pub mod coalesce;
pub mod contract;
pub mod decoder;
pub mod ingest;
pub mod proctable;
