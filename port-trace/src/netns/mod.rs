//! Network namespaces: finding them ([`locate`]), their ephemeral port range ([`range`]), their
//! socket tables ([`sockets`]), and what the kernel knew about each one at a moment
//! ([`snapshot`]).

pub mod locate;
pub mod range;
pub mod snapshot;
pub mod sockets;

use std::path::PathBuf;

pub use locate::{NetnsRef, locate, netns_path, own_netns, parse_netns, run_in_netns};
pub use range::{UsableRange, read_range};
pub use snapshot::NetnsState;
pub use sockets::{SocketRecord, dump_sockets};

/// Errors reading a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("--netns {arg}: not an inode number and not a namespace file")]
    NotANamespace {
        arg: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {text:?}")]
    Parse { what: &'static str, text: String },
    #[error("setns({path}, CLONE_NEWNET)")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot start the namespace thread")]
    Thread(#[source] std::io::Error),
    #[error("the namespace thread panicked")]
    ThreadPanicked,
    #[error("sock_diag netlink")]
    Netlink(#[source] std::io::Error),
    #[error("sock_diag reply: {0}")]
    Decode(String),
}
