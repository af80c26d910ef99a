//! The capture side: loading the eBPF object and attaching a hook set ([`load`]), decoding
//! what it reports ([`decode`]), and the capture session that `trace`, `record` and `serve`
//! share ([`session`]).

pub mod decode;
pub mod load;
pub mod session;

pub use decode::{Clock, decode};
pub use load::{LoadError, LoadOptions, Tracer};
pub use session::{Session, SessionOptions, StopSignals};
