//! port-trace: trace the Linux kernel's source-port choices with eBPF.

pub mod analysis;
pub mod cli;
pub mod config;
pub mod event;
pub mod exporter;
pub mod filter;
pub mod hooks;
pub mod kernel_layout;
pub mod loader;
pub mod output;
pub mod plot;
pub mod pressure;
pub mod probe;
pub mod recording;
pub mod report;
