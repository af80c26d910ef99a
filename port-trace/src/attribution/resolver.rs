//! cgroup id → cgroup v2 path, cached and bounded.
//!
//! The id the kernel stamps on an event (`bpf_get_current_cgroup_id`) is the cgroup's kernfs
//! node id, which on 64-bit kernels is also the inode number of its directory under the cgroup2
//! mount (include/linux/kernfs.h, `kernfs_id_ino`; cgroup v2 exports it as a file handle,
//! kernel/cgroup/cgroup.c sets `KERNFS_ROOT_SUPPORT_EXPORTOP`). So one id is resolved with one
//! `open_by_handle_at` and a `readlink` of the descriptor: no directory walk, and cgroups made
//! after tracing started are found the first time they are seen. Where that is not permitted
//! (it needs `CAP_DAC_READ_SEARCH`) the resolver walks the hierarchy instead, over at most
//! [`WALK_MAX_DIRS`] directories. Ids grow with each cgroup made (kernfs allocates them
//! cyclically with a generation above: fs/kernfs/dir.c), so an id above every id of the last
//! walk is a cgroup made since: it gets a walk at once (at most one per [`NEW_ID_WALK_INTERVAL`]);
//! any other unknown id waits for the next walk due ([`WALK_INTERVAL`]), so a burst of unknown
//! ids costs one walk, not one per event. Ids are never reused, so an answer never goes stale:
//! entries leave the cache only to keep it within [`CACHE_ENTRIES`].

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::workload::{Workload, classify};

/// Most ids kept (two generations of half as many each).
pub const CACHE_ENTRIES: usize = 16_384;
/// Least time between two walks of the hierarchy (the fallback).
pub const WALK_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two walks for ids made since the last one.
pub const NEW_ID_WALK_INTERVAL: Duration = Duration::from_millis(10);
/// Most directories one walk visits.
pub const WALK_MAX_DIRS: usize = 100_000;

/// What an id resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The path relative to the cgroup2 mount (`/system.slice/nginx.service`) and who runs there.
    Path(Arc<str>, Arc<Workload>),
    /// The cgroup no longer exists: removed before it could be resolved.
    Removed,
    /// Not resolved now (not permitted, a walk not due yet, no cgroup2 mount).
    Unresolved,
}

impl Resolved {
    /// The cgroup path, if known.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Path(p, _) => Some(p),
            _ => None,
        }
    }

    pub fn workload(&self) -> Workload {
        match self {
            Self::Path(_, w) => (**w).clone(),
            Self::Removed => Workload::Removed,
            Self::Unresolved => Workload::Unresolved,
        }
    }
}

/// How lookups went, for the exporter's health metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Ids resolved by `open_by_handle_at`.
    pub by_handle: u64,
    /// Walks of the hierarchy.
    pub walks: u64,
    pub removed: u64,
    pub unresolved: u64,
}

/// A cgroup v2 file handle: kernfs writes the 64-bit id as the handle (`FILEID_KERNFS`).
#[repr(C)]
struct KernfsHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    id: [u8; 8],
}

/// Resolves by `open_by_handle_at` on the mount.
struct ByHandle {
    mount_fd: OwnedFd,
    /// The handle type the kernel gave the mount's root (so no constant is guessed).
    handle_type: libc::c_int,
}

impl ByHandle {
    /// Only on a cgroup2 mount, and only when the kernel hands out 8-byte handles there.
    fn open(mount: &Path) -> Option<Self> {
        let dir = fs::File::open(mount).ok()?;
        let st = nix::sys::statfs::fstatfs(&dir).ok()?;
        if st.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return None;
        }
        let mut h = KernfsHandle {
            handle_bytes: 8,
            handle_type: 0,
            id: [0; 8],
        };
        let mut mount_id: libc::c_int = 0;
        let empty = CString::default();
        // SAFETY: `h` starts with a `struct file_handle` header whose `handle_bytes` (8) is the
        // room that follows it; the path is a valid C string; AT_EMPTY_PATH names `dir` itself.
        let rc = unsafe {
            libc::name_to_handle_at(
                dir.as_raw_fd(),
                empty.as_ptr(),
                (&raw mut h).cast(),
                &mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        if rc != 0 || h.handle_bytes != 8 {
            return None;
        }
        let me = Self {
            mount_fd: dir.into(),
            handle_type: h.handle_type,
        };
        // Opening by handle needs CAP_DAC_READ_SEARCH: find out now, on the root (id 1 is in
        // the handle just made), rather than at the first event.
        let root = u64::from_ne_bytes(h.id);
        me.path(root).is_ok().then_some(me)
    }

    /// The absolute path of cgroup `id`; Err(errno) when the kernel refuses.
    fn path(&self, id: u64) -> Result<PathBuf, nix::errno::Errno> {
        let mut h = KernfsHandle {
            handle_bytes: 8,
            handle_type: self.handle_type,
            id: id.to_ne_bytes(),
        };
        // SAFETY: `h` is a complete file handle of 8 bytes; the returned descriptor is owned
        // below and closed when dropped.
        let fd = unsafe {
            libc::open_by_handle_at(
                self.mount_fd.as_raw_fd(),
                (&raw mut h).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(nix::errno::Errno::last());
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }
}

/// A bounded map: inserts go to the young half; when it is full the old half is dropped.
#[derive(Debug, Default)]
struct Cache {
    young: HashMap<u64, Resolved>,
    old: HashMap<u64, Resolved>,
}

impl Cache {
    fn get(&mut self, id: u64) -> Option<Resolved> {
        if let Some(r) = self.young.get(&id) {
            return Some(r.clone());
        }
        let r = self.old.remove(&id)?;
        self.insert(id, r.clone());
        Some(r)
    }

    fn insert(&mut self, id: u64, r: Resolved) {
        if self.young.len() >= CACHE_ENTRIES / 2 {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(id, r);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// cgroup id → path and workload, for one cgroup2 mount.
pub struct CgroupResolver {
    mount: PathBuf,
    by_handle: Option<ByHandle>,
    cache: Cache,
    /// Ids that were unresolved, and when: asked again after [`WALK_INTERVAL`].
    last_walk: Option<Instant>,
    /// The highest id the last walk met: ids above it were made since.
    max_walked: u64,
    pub stats: ResolverStats,
}

impl CgroupResolver {
    /// A resolver for the cgroup2 hierarchy mounted at `mount`. Any directory works for the
    /// walk; `open_by_handle_at` is used when `mount` is a cgroup2 mount and it is permitted.
    pub fn new(mount: &Path) -> Self {
        Self {
            mount: mount.to_path_buf(),
            by_handle: ByHandle::open(mount),
            cache: Cache::default(),
            last_walk: None,
            max_walked: 0,
            stats: ResolverStats::default(),
        }
    }

    /// Whether ids are resolved one by one (else by walking the hierarchy).
    pub fn resolves_by_handle(&self) -> bool {
        self.by_handle.is_some()
    }

    /// How many ids the cache holds (at most [`CACHE_ENTRIES`]).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Resolves `id`; never fails, never blocks for longer than one bounded walk.
    pub fn resolve(&mut self, id: u64) -> Resolved {
        if let Some(r) = self.cache.get(id) {
            match r {
                Resolved::Unresolved if self.walk_allowed(id) => {}
                r => return r,
            }
        }
        let r = self.lookup(id);
        match r {
            Resolved::Removed => self.stats.removed += 1,
            Resolved::Unresolved => self.stats.unresolved += 1,
            Resolved::Path(..) => {}
        }
        self.cache.insert(id, r.clone());
        r
    }

    fn lookup(&mut self, id: u64) -> Resolved {
        if let Some(h) = &self.by_handle {
            match h.path(id) {
                Ok(abs) => {
                    self.stats.by_handle += 1;
                    return self.entry(&abs).unwrap_or(Resolved::Unresolved);
                }
                // The kernel knows no cgroup with this id (any more).
                Err(nix::errno::Errno::ESTALE | nix::errno::Errno::ENOENT) => {
                    return Resolved::Removed;
                }
                // Not permitted (no CAP_DAC_READ_SEARCH): walk from now on.
                Err(_) => self.by_handle = None,
            }
        }
        if !self.walk_allowed(id) {
            return Resolved::Unresolved;
        }
        let complete = self.walk();
        match self.cache.get(id) {
            Some(r) => r,
            // A complete walk that did not meet it: the cgroup is gone.
            None if complete => Resolved::Removed,
            None => Resolved::Unresolved,
        }
    }

    /// A walk may look for `id`: one is due, or `id` is newer than the last walk and the
    /// last walk was not just now.
    fn walk_allowed(&self, id: u64) -> bool {
        let since = |d| self.last_walk.is_none_or(|t| t.elapsed() >= d);
        since(WALK_INTERVAL) || (id > self.max_walked && since(NEW_ID_WALK_INTERVAL))
    }

    /// `abs` relative to the mount, classified; None if it is not under the mount.
    fn entry(&self, abs: &Path) -> Option<Resolved> {
        // readlink says "(deleted)" for a directory removed while we held it.
        if abs.as_os_str().as_bytes().ends_with(b" (deleted)") {
            return Some(Resolved::Removed);
        }
        let rel = abs.strip_prefix(&self.mount).ok()?;
        let path = format!("/{}", rel.to_string_lossy());
        let workload = classify(&path);
        Some(Resolved::Path(path.into(), Arc::new(workload)))
    }

    /// Records the inode of every directory under the mount (bounded); false when the bound
    /// cut it short.
    fn walk(&mut self) -> bool {
        self.last_walk = Some(Instant::now());
        self.stats.walks += 1;
        let mut stack = vec![self.mount.clone()];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            if seen >= WALK_MAX_DIRS {
                return false;
            }
            seen += 1;
            // A directory removed during the walk is simply not there.
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                continue;
            };
            if let Some(r) = self.entry(&dir) {
                self.max_walked = self.max_walked.max(meta.ino());
                self.cache.insert(meta.ino(), r);
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::workload::Runtime;

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    /// The fallback on an ordinary directory tree: ids are inode numbers, paths relative to it.
    #[test]
    fn walk_resolves_directories_made_later_and_reports_removed_ones() {
        let root = std::env::temp_dir().join(format!("pt-attr-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let svc = root.join("system.slice/nginx.service");
        fs::create_dir_all(&svc).unwrap();
        let mut r = CgroupResolver::new(&root);
        assert!(!r.resolves_by_handle(), "a tmp directory is not cgroupfs");
        let got = r.resolve(ino(&svc));
        assert_eq!(got.path(), Some("/system.slice/nginx.service"));
        assert_eq!(got.workload().label(None), "nginx.service");
        assert_eq!(r.resolve(ino(&root)).workload(), Workload::Root);

        // Made after the first walk: found by the next one, once it is due.
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let scope = root.join(format!("system.slice/docker-{id}.scope"));
        fs::create_dir_all(&scope).unwrap();
        r.last_walk = Some(Instant::now() - WALK_INTERVAL);
        let got = r.resolve(ino(&scope));
        assert!(
            matches!(got.workload(), Workload::Container(c) if c.runtime == Some(Runtime::Docker))
        );

        // An id no directory has: removed (a complete walk did not meet it).
        r.last_walk = Some(Instant::now() - WALK_INTERVAL);
        assert_eq!(r.resolve(u64::MAX), Resolved::Removed);
        // An old unknown id right after: no walk is due, so it is unresolved for now.
        let walks = r.stats.walks;
        assert_eq!(r.resolve(1), Resolved::Unresolved);
        assert_eq!(r.stats.walks, walks);
        // A directory made since the last walk has a higher inode: walked for at once (once
        // the short interval has passed), without waiting for the next walk due.
        let late = root.join("system.slice/late.service");
        fs::create_dir_all(&late).unwrap();
        if ino(&late) > r.max_walked {
            r.last_walk = Some(Instant::now() - NEW_ID_WALK_INTERVAL);
            assert_eq!(
                r.resolve(ino(&late)).path(),
                Some("/system.slice/late.service")
            );
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cache_stays_bounded() {
        let mut c = Cache::default();
        for id in 0..(CACHE_ENTRIES as u64 * 3) {
            c.insert(id, Resolved::Removed);
            assert!(c.len() <= CACHE_ENTRIES);
        }
        // The newest are kept.
        assert!(c.get(CACHE_ENTRIES as u64 * 3 - 1).is_some());
        assert!(c.get(0).is_none());
    }

    /// On this host's cgroup2 mount (when there is one and we may use handles): the root and
    /// our own cgroup resolve to what /proc/self/cgroup says.
    #[test]
    fn own_cgroup_by_handle() {
        let Some(mount) = crate::kernel::probe::cgroup2_mount() else {
            return;
        };
        let mut r = CgroupResolver::new(&mount);
        if !r.resolves_by_handle() {
            return;
        }
        assert_eq!(r.resolve(ino(&mount)).path(), Some("/"));
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let dir = mount.join(own.trim_start_matches('/'));
        assert_eq!(r.resolve(ino(&dir)).path(), Some(own));
        assert_eq!(r.resolve(u64::MAX), Resolved::Removed);
    }
}
