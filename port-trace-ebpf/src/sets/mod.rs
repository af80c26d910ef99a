//! The hook sets; the loader loads and attaches one of them.
//!
//! - `cgroup`: cgroup sock/sock_addr and sock_ops programs plus tracepoints, for kernels where
//!   kprobes and BPF trampolines are unavailable.
//! - `fexit` and `kprobe`: the kernel functions that choose the port, entry and return, sharing
//!   `port_function`.

pub mod cgroup;
pub mod fexit;
pub mod kprobe;
mod port_function;
