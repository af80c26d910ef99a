//! What the running kernel offers: feature probes ([`probe`]) and struct offsets from its BTF
//! ([`layout`], with [`syscall_regs`] for the saved user registers of a syscall).

pub mod layout;
pub mod privilege;
pub mod probe;
pub mod syscall_regs;
