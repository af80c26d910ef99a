//! Typed reads of kernel and user memory: a `struct sock`, the current task, a user sockaddr,
//! and the syscall the current task is in.
//!
//! Rust emits no CO-RE relocations, so every kernel field is read at an offset the loader
//! resolved from the running kernel's BTF (`KernelOffsets`). `Task` checks its `layout::*`
//! groups itself; users of `Sock` check `layout::SOCK` (and `SOCK_PEER`) first. Every read goes
//! through a `bpf_probe_read_*` helper, which returns an error instead of faulting on a bad
//! address. See docs/capture.md.

use aya_ebpf::helpers::{
    bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_get_current_task,
};
use port_trace_common::{Family, KernelOffsets, layout};

use crate::emit::{ipv4, v4_mapped};

/// Errnos the programs report (include/uapi/asm-generic/errno*.h).
pub const EAGAIN: i32 = 11;
pub const EADDRINUSE: i32 = 98;
pub const EADDRNOTAVAIL: i32 = 99;

/// TCP states (include/net/tcp_states.h); `skc_state` is a u8, the tracepoint fields are ints.
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read_kernel<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies into a fresh `T` and fails on a bad address; every
    // `T` read here is plain data, valid for any bit pattern.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Reads a `T` at `addr` in the current task's user memory.
#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: as `read_kernel`, for user memory (bpf_probe_read_user).
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

/// A `struct sock *`, read through the `layout::SOCK` (and `SOCK_PEER`) offsets.
#[derive(Clone, Copy)]
pub struct Sock<'a> {
    ptr: u64,
    o: &'a KernelOffsets,
}

impl<'a> Sock<'a> {
    #[inline(always)]
    pub fn new(ptr: u64, o: &'a KernelOffsets) -> Self {
        Sock { ptr, o }
    }

    /// `skc_num`: the local port in host order, 0 while the socket has none.
    #[inline(always)]
    pub fn num(self) -> Option<u16> {
        read_kernel(self.ptr, self.o.sk_num)
    }

    /// `skc_family` (`AF_*`).
    #[inline(always)]
    pub fn family(self) -> Option<u16> {
        read_kernel(self.ptr, self.o.sk_family)
    }

    /// `sk_protocol` (IP protocol number).
    #[inline(always)]
    pub fn protocol(self) -> Option<u16> {
        read_kernel(self.ptr, self.o.sk_protocol)
    }

    /// `skc_state` (a TCP state); 0 when unreadable.
    #[inline(always)]
    pub fn state(self) -> u8 {
        read_kernel(self.ptr, self.o.sk_state).unwrap_or(0)
    }

    /// `skc_dport` in host order; 0 when unreadable.
    #[inline(always)]
    pub fn dport(self) -> u16 {
        u16::from_be(read_kernel(self.ptr, self.o.sk_dport).unwrap_or(0))
    }

    /// The local address as an event stores it (zeros when unreadable). `v4_fields` reads the
    /// IPv4 field of an IPv6 socket (a v4-mapped connect through `inet_hash_connect`) and
    /// reports it v4-mapped.
    #[inline(always)]
    pub fn local_addr(self, family: u8, v4_fields: bool) -> [u8; 16] {
        self.addr(
            family,
            v4_fields,
            self.o.sk_rcv_saddr,
            self.o.sk_v6_rcv_saddr,
        )
    }

    /// The peer address, as `local_addr`.
    #[inline(always)]
    pub fn peer_addr(self, family: u8, v4_fields: bool) -> [u8; 16] {
        self.addr(family, v4_fields, self.o.sk_daddr, self.o.sk_v6_daddr)
    }

    #[inline(always)]
    fn addr(self, family: u8, v4_fields: bool, off4: u32, off6: u32) -> [u8; 16] {
        if family == Family::Inet as u8 || v4_fields {
            let a: [u8; 4] = read_kernel(self.ptr, off4).unwrap_or([0; 4]);
            if family == Family::Inet as u8 {
                ipv4(a)
            } else {
                v4_mapped(a)
            }
        } else {
            read_kernel(self.ptr, off6).unwrap_or([0; 16])
        }
    }
}

/// The current task (`struct task_struct *`, from `bpf_get_current_task`).
#[derive(Clone, Copy)]
pub struct Task<'a> {
    ptr: u64,
    o: &'a KernelOffsets,
}

impl<'a> Task<'a> {
    #[inline(always)]
    pub fn current(o: &'a KernelOffsets) -> Self {
        // SAFETY: the helper takes no arguments and only returns the current task's address.
        let ptr = unsafe { bpf_get_current_task() };
        Task { ptr, o }
    }

    /// Inode of the task's network namespace (`nsproxy->net_ns->ns.inum`); 0 when unknown.
    #[inline(always)]
    pub fn netns(self) -> u32 {
        if !self.o.has(layout::NETNS) {
            return 0;
        }
        let Some(nsproxy) = read_kernel::<u64>(self.ptr, self.o.task_nsproxy) else {
            return 0;
        };
        if nsproxy == 0 {
            return 0;
        }
        let Some(net) = read_kernel::<u64>(nsproxy, self.o.nsproxy_net_ns) else {
            return 0;
        };
        read_kernel(net, self.o.net_ns_inum).unwrap_or(0)
    }
}

/// A destination read from a user `struct sockaddr`.
#[derive(Clone, Copy)]
pub struct UserDest {
    /// 1 when the sockaddr was an IPv4 or IPv6 address.
    pub has_daddr: u8,
    pub daddr: [u8; 16],
    /// Host order.
    pub dport: u16,
}

/// The destination in the user sockaddr at `uaddr` (`sockaddr_in` or `sockaddr_in6`).
#[inline(always)]
pub fn user_dest(uaddr: u64) -> UserDest {
    let mut d = UserDest {
        has_daddr: 0,
        daddr: [0; 16],
        dport: 0,
    };
    if uaddr == 0 {
        return d;
    }
    let sa_family: u16 = read_user(uaddr).unwrap_or(0);
    if sa_family != Family::Inet as u8 as u16 && sa_family != Family::Inet6 as u8 as u16 {
        return d;
    }
    // sin_port / sin6_port follow the family; sin_addr at 4, sin6_addr at 8.
    let port: u16 = read_user(uaddr + 2).unwrap_or(0);
    if sa_family == Family::Inet as u8 as u16 {
        d.daddr = ipv4(read_user(uaddr + 4).unwrap_or([0; 4]));
    } else {
        d.daddr = read_user(uaddr + 8).unwrap_or([0; 16]);
    }
    d.has_daddr = 1;
    d.dport = u16::from_be(port);
    d
}

/// `msg_name`, the first field of a user `struct user_msghdr` (and so of an `mmsghdr`): the
/// destination sockaddr of sendmsg()/sendmmsg(); 0 when `msg` is 0 or unreadable.
#[inline(always)]
pub fn msg_name(msg: u64) -> u64 {
    if msg == 0 {
        return 0;
    }
    read_user(msg).unwrap_or(0)
}

/// The syscall the current task is in, as far as `udp_lib_get_port` needs to know it.
#[derive(Clone, Copy)]
pub enum Syscall {
    /// bind().
    Bind,
    /// Any other syscall, or none (a kernel thread). `dest` is the user sockaddr of connect(),
    /// sendto(), sendmsg() or sendmmsg() (its first message), 0 for anything else.
    Other { dest: u64 },
    /// The syscall registers cannot be read: the kernel's `pt_regs` layout is not one the
    /// loader knows, or there is no way to find them on this kernel.
    Unknown,
}

/// Reads the current task's syscall number and arguments from its saved user registers, at
/// the offsets and with the syscall numbers the loader found in the kernel's BTF (x86_64:
/// `orig_ax`, `si`, `r8` and arch/x86/entry/syscalls/syscall_64.tbl; arm64: `syscallno`,
/// `regs[1]`, `regs[4]` and the generic include/uapi/asm-generic/unistd.h).
#[inline(always)]
pub fn current_syscall() -> Syscall {
    let o = crate::OFFSETS.load();
    if !o.has(layout::SYSCALL_REGS) {
        return Syscall::Unknown;
    }
    // `OFFSETS` is read-only to the programs, so the verifier knows which branch runs and never
    // sees the helpers on a kernel that lacks them.
    let regs = if o.has(layout::REGS_HELPER) {
        regs_by_helper()
    } else if o.has(layout::TASK_STACK) {
        regs_on_stack(o.task_stack, o.regs_size)
    } else {
        return Syscall::Unknown;
    };
    if regs == 0 {
        return Syscall::Other { dest: 0 };
    }
    let reg = |off: u32| read_kernel::<u64>(regs, off).unwrap_or(0);
    // The number stays there for the whole syscall (x86_64's ax and arm64's x0 are overwritten
    // by the result); arm64's is an s32, x86_64's an unsigned long.
    let nr: i64 = if o.regs_nr_size == 8 {
        read_kernel::<u64>(regs, o.regs_nr).map_or(-1, |n| n as i64)
    } else {
        read_kernel::<i32>(regs, o.regs_nr).map_or(-1, i64::from)
    };
    let is = |n: u32| nr == i64::from(n);
    let dest = if is(o.nr_bind) {
        return Syscall::Bind;
    } else if is(o.nr_connect) {
        // connect(fd, addr, addrlen).
        reg(o.regs_arg2)
    } else if is(o.nr_sendto) {
        // sendto(fd, buf, len, flags, addr, addrlen).
        reg(o.regs_arg5)
    } else if is(o.nr_sendmsg) || is(o.nr_sendmmsg) {
        // sendmsg(fd, msg, flags) / sendmmsg(fd, mmsg, vlen, flags).
        msg_name(reg(o.regs_arg2))
    } else {
        0
    };
    Syscall::Other { dest }
}

/// The current task's saved user registers (5.15+).
#[inline(always)]
fn regs_by_helper() -> u64 {
    use aya_ebpf::{
        bindings::task_struct,
        helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    };
    // SAFETY: the helper takes no arguments; it returns the current task or null.
    let task: *mut task_struct = unsafe { bpf_get_current_task_btf() };
    if task.is_null() {
        return 0;
    }
    // SAFETY: `task` is the non-null current task the kernel just gave us.
    unsafe { bpf_task_pt_regs(task) as u64 }
}

/// The same registers found the way `task_pt_regs()` does on x86_64 and arm64 before 5.15:
/// the last `struct pt_regs` below the top of the task's kernel stack. THREAD_SIZE is 16 KiB
/// on both (more only with KASAN, which distribution kernels leave off) and nothing pads the
/// top of the stack (x86_64's `TOP_OF_KERNEL_STACK_PADDING` is 0 until FRED, 6.9+, which has
/// the helper).
#[inline(always)]
fn regs_on_stack(task_stack: u32, regs_size: u32) -> u64 {
    const THREAD_SIZE: u64 = 16 * 1024;
    // SAFETY: the helper takes no arguments; it returns the current task's address.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    match read_kernel::<u64>(task, task_stack) {
        Some(stack) if stack != 0 => stack + THREAD_SIZE - u64::from(regs_size),
        _ => 0,
    }
}
