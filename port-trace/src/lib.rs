//! port-trace: trace the Linux kernel's source-port choices with eBPF.
//!
//! Which modules touch the kernel and which are pure:
//! - kernel side: [`kernel`] (what the running kernel offers: probes, BTF layout),
//!   [`attribution`] (cgroup id → path and workload; its classifier is pure),
//!   [`hook_set`] (which programs see which path; choice and attach per set), [`tracer`]
//!   (load, capture session, decoding), [`netns`] (namespace ranges and socket tables);
//! - pure: [`event`] (the typed event), [`analysis`] (pattern classifier), [`pressure`]
//!   (pressure and forecast), [`report`] (per-stream summary), [`plot`];
//! - edges: [`sinks`] (print, record, filter), [`exporter`] (metrics and HTTP), [`config`],
//!   [`cli`].

pub mod analysis;
pub mod attribution;
pub mod cli;
pub mod config;
pub mod errors;
pub mod event;
pub mod exporter;
pub mod hook_set;
pub mod kernel;
pub mod nat;
pub mod netns;
pub mod plot;
pub mod pressure;
pub mod report;
pub mod sinks;
pub mod tracer;
