//! Where events go: printed ([`print`]), recorded for `analyze` ([`record`]), after the
//! user's [`filter`]; recordings read back in time order ([`reorder`]).

pub mod filter;
pub mod print;
pub mod progress;
pub mod record;
pub mod reorder;
