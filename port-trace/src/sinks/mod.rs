//! Where events go: printed ([`print`]), recorded for `analyze` ([`record`]), after the
//! user's [`filter`].

pub mod filter;
pub mod print;
pub mod record;
