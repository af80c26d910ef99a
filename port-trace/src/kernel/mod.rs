//! What the running kernel offers: feature probes ([`probe`]) and struct offsets from its BTF
//! ([`layout`]).

pub mod layout;
pub mod privilege;
pub mod probe;
