//! What fits traceed into the system: configuration and command line,
//! the lifecycle (`server`), sd-notify readiness and watchdog, journald
//! logging, Prometheus metrics and the socket peer checks.

pub mod cli;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod server;
