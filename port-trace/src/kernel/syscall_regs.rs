//! Where the saved user registers of a syscall (`struct pt_regs`) keep its number and
//! arguments, and which numbers mean bind/connect/sendto/sendmsg/sendmmsg — told by the running
//! kernel's BTF, not by the architecture this binary was built for.
//!
//! The fexit and kprobe sets need them in `udp_lib_get_port`, which does not know whether a
//! bind(0) or an autobind (connect, send) asked for the port. The layouts (kernel sources):
//! - x86_64, arch/x86/include/asm/ptrace.h: `orig_ax` (unsigned long) holds the number for the
//!   whole syscall, the arguments are in `di, si, dx, r10, r8, r9`; numbers from
//!   arch/x86/entry/syscalls/syscall_64.tbl.
//! - arm64, arch/arm64/include/asm/ptrace.h: `syscallno` (s32), arguments in `regs[0..6]`
//!   (`regs[0]` is overwritten by the result, the others are not); numbers from the generic
//!   table, include/uapi/asm-generic/unistd.h.

use btf_rs::{Btf, Type};

use super::layout::{LayoutError, field};

/// A `struct pt_regs` layout this module knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegsAbi {
    X86_64,
    Arm64,
}

/// The syscall numbers `udp_lib_get_port`'s caller is told apart by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    pub bind: u32,
    pub connect: u32,
    pub sendto: u32,
    pub sendmsg: u32,
    pub sendmmsg: u32,
}

impl RegsAbi {
    /// The field that holds the syscall number, which also tells the layouts apart.
    fn number_field(self) -> &'static str {
        match self {
            Self::X86_64 => "orig_ax",
            Self::Arm64 => "syscallno",
        }
    }

    pub fn numbers(self) -> Numbers {
        match self {
            Self::X86_64 => Numbers {
                bind: 49,
                connect: 42,
                sendto: 44,
                sendmsg: 46,
                sendmmsg: 307,
            },
            Self::Arm64 => Numbers {
                bind: 200,
                connect: 203,
                sendto: 206,
                sendmsg: 211,
                sendmmsg: 269,
            },
        }
    }
}

/// What the programs need: offsets into `struct pt_regs` and the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallRegs {
    pub abi: RegsAbi,
    /// Offset and width (4 or 8 bytes) of the syscall number.
    pub nr: u32,
    pub nr_size: u32,
    /// Offsets of the second and the fifth argument.
    pub arg2: u32,
    pub arg5: u32,
    /// `sizeof(struct pt_regs)`.
    pub size: u32,
}

/// Reads the layout from `btf`; an error names what is missing (another architecture).
pub fn resolve(btf: &Btf) -> Result<SyscallRegs, LayoutError> {
    let size = pt_regs_size(btf)?;
    let abi = [RegsAbi::X86_64, RegsAbi::Arm64]
        .into_iter()
        .find(|abi| field(btf, "pt_regs", &[abi.number_field()]).is_ok())
        .ok_or_else(|| {
            LayoutError::NoField(
                "pt_regs".into(),
                "orig_ax or syscallno (a layout port-trace knows)".into(),
            )
        })?;
    let (nr, nr_ty) = field(btf, "pt_regs", &[abi.number_field()])?;
    let nr_size = match nr_ty {
        Type::Int(i) => i.size() as u32,
        _ => 0,
    };
    if nr_size != 4 && nr_size != 8 {
        return Err(LayoutError::NoField(
            "pt_regs".into(),
            format!("{} as a 4- or 8-byte integer", abi.number_field()),
        ));
    }
    let (arg2, arg5) = match abi {
        RegsAbi::X86_64 => (
            field(btf, "pt_regs", &["si"])?.0,
            field(btf, "pt_regs", &["r8"])?.0,
        ),
        RegsAbi::Arm64 => {
            // `u64 regs[31]`, inside an anonymous union with `user_regs`.
            let (regs, ty) = field(btf, "pt_regs", &["regs"])?;
            if !matches!(ty, Type::Array(ref a) if a.len() >= 6) {
                return Err(LayoutError::NoField("pt_regs".into(), "regs[6]".into()));
            }
            (regs + 8, regs + 4 * 8)
        }
    };
    Ok(SyscallRegs {
        abi,
        nr,
        nr_size,
        arg2,
        arg5,
        size,
    })
}

fn pt_regs_size(btf: &Btf) -> Result<u32, LayoutError> {
    btf.resolve_types_by_name("pt_regs")
        .map_err(|_| LayoutError::NoStruct("pt_regs".into()))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s.size() as u32),
            _ => None,
        })
        .ok_or_else(|| LayoutError::NoStruct("pt_regs".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables agree with the C library's, which come from the kernel's own headers, for
    /// the architecture these tests run on.
    #[test]
    fn numbers_match_the_c_library() {
        let abi = match std::env::consts::ARCH {
            "x86_64" => RegsAbi::X86_64,
            "aarch64" => RegsAbi::Arm64,
            _ => return,
        };
        let n = abi.numbers();
        let libc = [
            libc::SYS_bind,
            libc::SYS_connect,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_sendmmsg,
        ];
        let ours = [n.bind, n.connect, n.sendto, n.sendmsg, n.sendmmsg].map(i64::from);
        assert_eq!(ours, libc);
    }

    /// This kernel's BTF gives the x86_64 layout of arch/x86/include/asm/ptrace.h: 21 longs,
    /// `si` the 14th, `r8` the 10th, `orig_ax` the 16th.
    #[test]
    fn resolves_this_kernel() {
        let path = std::path::Path::new(super::super::layout::VMLINUX_BTF);
        if std::env::consts::ARCH != "x86_64" || !path.exists() {
            eprintln!("skipped: not an x86_64 kernel with BTF");
            return;
        }
        let btf = super::super::layout::load(path).unwrap();
        let r = resolve(&btf).unwrap();
        assert_eq!(r.abi, RegsAbi::X86_64);
        assert_eq!(
            (r.nr, r.nr_size, r.arg2, r.arg5),
            (15 * 8, 8, 13 * 8, 9 * 8)
        );
        assert_eq!(r.size, 21 * 8);
    }
}
