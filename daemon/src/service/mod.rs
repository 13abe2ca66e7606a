//! What fits traceed into the system: configuration and command line,
//! the lifecycle (`server`), sd-notify readiness and watchdog, journald
//! logging, Prometheus metrics, the socket peer checks and the privacy of
//! the files that hold the history (`private`).

pub mod cli;
pub mod config;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod private;
pub mod server;
