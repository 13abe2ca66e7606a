//! traceed as a library: the daemon's parts, grouped as an event travels.
//!
//! - `kernel`: the portability ladder, the hook table, loading and
//!   attaching the eBPF objects, and reading their buffers;
//! - `pipeline`: decoding records, enriching them (process table, cgroup,
//!   clock) and handing them on (`ingest`);
//! - `store`: the SQLite schema, queries, the batching writer, retention
//!   and the JSON-lines export;
//! - `api`: the REST API on the Unix socket;
//! - `service`: what fits the daemon into the system (configuration, CLI,
//!   lifecycle, sd-notify, logging, metrics, peer checks).
//!
//! `main.rs` only wires these together; `bench/store_bench.rs` drives the
//! store through this library. docs/ARCHITECTURE.md explains the whole.

pub mod api;
pub mod detect;
pub mod kernel;
pub mod pipeline;
pub mod service;
pub mod store;
