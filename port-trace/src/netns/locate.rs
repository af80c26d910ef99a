//! Finding a network namespace and getting into it: by inode, path or `ip netns` name for the
//! user's `--netns`, and for a namespace events came from, a path that still leads to it.

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use super::NetnsError;
use crate::event::Event;

/// A network namespace to look into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetnsRef {
    /// The namespace of the calling thread.
    #[default]
    Current,
    /// A namespace file: `/run/netns/NAME` (from `ip netns add`) or `/proc/PID/ns/net`.
    Path(PathBuf),
}

impl NetnsRef {
    /// A namespace created by `ip netns add NAME` (`/run/netns/NAME`).
    pub fn named(name: &str) -> Self {
        NetnsRef::Path(Path::new("/run/netns").join(name))
    }

    /// The network namespace of process `pid` (`/proc/PID/ns/net`).
    pub fn of_pid(pid: u32) -> Self {
        NetnsRef::Path(PathBuf::from(format!("/proc/{pid}/ns/net")))
    }
}

/// Runs `f` inside the network namespace `netns`.
///
/// For [`NetnsRef::Path`], `f` runs on a short-lived scoped thread that first joins the
/// namespace with `setns(fd, CLONE_NEWNET)`. `setns` moves only that thread, so the caller and
/// the rest of the process stay where they are. Files under `/proc/sys/net` opened and sockets
/// created by `f` belong to the target namespace, and keep belonging to it after `f` returns.
pub fn run_in_netns<T, F>(netns: &NetnsRef, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Result<T, NetnsError> + Send,
    T: Send,
{
    let path = match netns {
        NetnsRef::Current => return f(),
        NetnsRef::Path(path) => path,
    };
    let ns_file = File::open(path).map_err(|source| NetnsError::Io {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, || {
                setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
                    path: path.clone(),
                    source,
                })?;
                f()
            })
            .map_err(NetnsError::Thread)?;
        handle.join().map_err(|_| NetnsError::ThreadPanicked)?
    })
}

/// The inode of a namespace file.
fn inode(p: &Path) -> Option<u32> {
    fs::metadata(p).ok().map(|m| m.ino() as u32)
}

/// The user's `--netns`: an inode number, a path such as /proc/PID/ns/net or
/// /run/netns/NAME, or a bare `ip netns` name. Returns the inode.
pub fn parse_netns(arg: &str) -> Result<u32, NetnsError> {
    if let Ok(n) = arg.parse::<u32>() {
        return Ok(n);
    }
    let mut last = None;
    for c in [PathBuf::from(arg), Path::new("/run/netns").join(arg)] {
        match fs::metadata(&c) {
            Ok(m) => return Ok(m.ino() as u32),
            Err(e) => last = Some(e),
        }
    }
    Err(NetnsError::NotANamespace {
        arg: arg.into(),
        source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
    })
}

/// A path to the user's `--netns` namespace, for reading its range and sockets (None for an
/// inode number, which names no path).
pub fn netns_path(arg: &str) -> Option<PathBuf> {
    if arg.parse::<u32>().is_ok() {
        return None;
    }
    [PathBuf::from(arg), Path::new("/run/netns").join(arg)]
        .into_iter()
        .find(|p| p.exists())
}

/// Where namespace `netns` can be entered: an explicit path, our own namespace, a named one in
/// /run/netns, then a thread or process that reported from it and still lives.
pub fn locate(netns: u32, events: &[Event], hint: Option<&Path>) -> Option<NetnsRef> {
    if let Some(h) = hint
        && inode(h) == Some(netns)
    {
        return Some(NetnsRef::Path(h.to_path_buf()));
    }
    if inode(Path::new("/proc/self/ns/net")) == Some(netns) {
        return Some(NetnsRef::Current);
    }
    // Namespaces made with `ip netns add` outlive their processes.
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            if inode(&entry.path()) == Some(netns) {
                return Some(NetnsRef::Path(entry.path()));
            }
        }
    }
    // Bounded: a namespace whose processes are gone is not searched through every event.
    for e in events.iter().rev().filter(|e| e.netns == netns).take(65) {
        for p in [
            PathBuf::from(format!("/proc/{}/task/{}/ns/net", e.pid, e.tid)),
            PathBuf::from(format!("/proc/{}/ns/net", e.pid)),
        ] {
            if inode(&p) == Some(netns) {
                return Some(NetnsRef::Path(p));
            }
        }
    }
    None
}

/// The inode of our own network namespace.
pub fn own_netns() -> Option<u32> {
    inode(Path::new("/proc/self/ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_accepts_inode_and_path() {
        assert_eq!(parse_netns("4026531840").unwrap(), 4026531840);
        let own = own_netns().unwrap();
        assert_eq!(parse_netns("/proc/self/ns/net").unwrap(), own);
        assert!(parse_netns("/nonexistent/ns").is_err());
        assert_eq!(locate(own, &[], None), Some(NetnsRef::Current));
    }
}
