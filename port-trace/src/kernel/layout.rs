//! Offsets of kernel struct fields, read from the running kernel's BTF.
//!
//! The eBPF object is compiled once, but `struct sock`, `struct file` and friends change between
//! kernel builds. Rust emits no CO-RE relocations, so the loader resolves each field here and
//! hands the numbers to the programs as a global.

use std::path::Path;

use btf_rs::{Btf, Type};
use port_trace_common::{KernelOffsets, layout};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read kernel BTF at {}", path.display())]
    Read {
        path: std::path::PathBuf,
        // btf-rs reports anyhow errors, which are not std errors themselves.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no field {1}")]
    NoField(String, String),
    #[error("kernel BTF: {0}.{1} is a bit-field")]
    Bitfield(String, String),
}

/// A resolved field: byte offset from the start of the outer struct.
fn field_offset(btf: &Btf, strukt: &str, path: &[&str]) -> Result<u32, LayoutError> {
    field(btf, strukt, path).map(|(offset, _)| offset)
}

/// A resolved field: byte offset from the start of the outer struct, and its type (typedefs
/// and qualifiers stripped).
pub(super) fn field(btf: &Btf, strukt: &str, path: &[&str]) -> Result<(u32, Type), LayoutError> {
    let ty = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| LayoutError::NoStruct(strukt.into()))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| LayoutError::NoStruct(strukt.into()))?;
    let mut cur = ty;
    let mut total_bits = 0u32;
    for (i, name) in path.iter().enumerate() {
        let (bits, member_ty) = find_member(btf, &cur, name)
            .ok_or_else(|| LayoutError::NoField(strukt.into(), path[..=i].join(".")))?;
        total_bits += bits;
        cur = member_ty;
    }
    if !total_bits.is_multiple_of(8) {
        return Err(LayoutError::Bitfield(strukt.into(), path.join(".")));
    }
    Ok((total_bits / 8, cur))
}

/// Finds `name` in a struct or union, descending into anonymous members.
/// Returns the bit offset and the member's type with typedefs and qualifiers stripped.
/// Whether `enum bpf_func_id` in the kernel's BTF names every helper in `names`.
fn has_helpers(btf: &Btf, names: &[&str]) -> bool {
    let Some(Type::Enum(e)) = btf
        .resolve_types_by_name("bpf_func_id")
        .ok()
        .and_then(|t| t.into_iter().find(|t| matches!(t, Type::Enum(_))))
    else {
        return false;
    };
    let known: Vec<String> = e
        .members
        .iter()
        .filter_map(|m| btf.resolve_name(m).ok())
        .collect();
    names.iter().all(|n| known.iter().any(|k| k == n))
}

fn find_member(btf: &Btf, ty: &Type, name: &str) -> Option<(u32, Type)> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return None,
    };
    for m in members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        let mty = strip(btf, btf.resolve_chained_type(m).ok()?);
        if mname == name {
            if m.bitfield_size().is_some_and(|s| s != 0) {
                return None;
            }
            return Some((m.bit_offset(), mty));
        }
        if mname.is_empty()
            && let Some((inner, t)) = find_member(btf, &mty, name)
        {
            return Some((m.bit_offset() + inner, t));
        }
    }
    None
}

fn strip(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) => btf.resolve_chained_type(t),
            Type::Volatile(t) => btf.resolve_chained_type(t),
            Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return ty,
        };
        match next {
            Ok(n) => ty = n,
            Err(_) => return ty,
        }
    }
    ty
}

/// What could be resolved, and why not where it could not.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub offsets: KernelOffsets,
    pub problems: Vec<String>,
}

impl Layout {
    pub fn has(&self, group: u32) -> bool {
        self.offsets.valid & group == group
    }
}

pub fn load(path: &Path) -> Result<Btf, LayoutError> {
    Btf::from_file(path).map_err(|e| LayoutError::Read {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Resolves every offset the programs use; groups that fail are left invalid and explained.
pub fn resolve(btf: &Btf) -> Layout {
    let mut o = KernelOffsets::default();
    let mut problems = Vec::new();
    macro_rules! grp {
        ($bit:expr, [$(($dst:ident, $st:expr, $path:expr)),* $(,)?]) => {{
            let mut ok = true;
            $(
                match field_offset(btf, $st, $path) {
                    Ok(v) => o.$dst = v,
                    Err(e) => { ok = false; problems.push(e.to_string()); }
                }
            )*
            if ok { o.valid |= $bit; }
        }};
    }

    grp!(
        layout::SOCK,
        [
            (sk_num, "sock", &["__sk_common", "skc_num"]),
            (sk_family, "sock", &["__sk_common", "skc_family"]),
            (sk_protocol, "sock", &["sk_protocol"]),
            (sk_rcv_saddr, "sock", &["__sk_common", "skc_rcv_saddr"]),
            (
                sk_v6_rcv_saddr,
                "sock",
                &["__sk_common", "skc_v6_rcv_saddr"]
            ),
        ]
    );
    grp!(
        layout::SOCK_PEER,
        [
            (sk_daddr, "sock", &["__sk_common", "skc_daddr"]),
            (sk_dport, "sock", &["__sk_common", "skc_dport"]),
            (sk_v6_daddr, "sock", &["__sk_common", "skc_v6_daddr"]),
            (sk_state, "sock", &["__sk_common", "skc_state"]),
        ]
    );
    grp!(
        layout::TASK_STACK,
        [(task_stack, "task_struct", &["stack"])]
    );
    // The kernel's own list of helpers decides, not its version: a program that calls a helper
    // the kernel lacks is refused whole ("invalid func unknown#158" on 5.10).
    if has_helpers(
        btf,
        &["BPF_FUNC_get_current_task_btf", "BPF_FUNC_task_pt_regs"],
    ) {
        o.valid |= layout::REGS_HELPER;
    }
    match super::syscall_regs::resolve(btf) {
        Ok(r) => {
            let n = r.abi.numbers();
            o.regs_nr = r.nr;
            o.regs_nr_size = r.nr_size;
            o.regs_arg2 = r.arg2;
            o.regs_arg5 = r.arg5;
            o.regs_size = r.size;
            o.nr_bind = n.bind;
            o.nr_connect = n.connect;
            o.nr_sendto = n.sendto;
            o.nr_sendmsg = n.sendmsg;
            o.nr_sendmmsg = n.sendmmsg;
            o.valid |= layout::SYSCALL_REGS;
        }
        Err(e) => problems.push(e.to_string()),
    }
    grp!(
        layout::NETNS,
        [
            (task_nsproxy, "task_struct", &["nsproxy"]),
            (nsproxy_net_ns, "nsproxy", &["net_ns"]),
            (net_ns_inum, "net", &["ns", "inum"]),
        ]
    );
    Layout {
        offsets: o,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Runs wherever the kernel exposes BTF; checks the offsets against the layout of
    // `struct sock_common` (include/net/sock.h). The capture tests check them end to end.
    #[test]
    fn resolves_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let btf = load(path).unwrap();
        let l = resolve(&btf);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert!(l.has(
            layout::SOCK
                | layout::NETNS
                | layout::SOCK_PEER
                | layout::TASK_STACK
                | layout::SYSCALL_REGS
        ));
        // This kernel (6.18) has both helpers (5.15+).
        assert!(l.has(layout::REGS_HELPER));
        // skc_family is the first 2-byte field after the addresses and hash in sock_common.
        assert!(l.offsets.sk_family > 0 && l.offsets.sk_family < 64);
        assert_ne!(l.offsets.sk_num, l.offsets.sk_family);
        let o = &l.offsets;
        // sock_common starts with skc_addrpair: { skc_daddr, skc_rcv_saddr }, then the hash,
        // then skc_portpair: { skc_dport, skc_num }; skc_family and skc_state follow.
        assert_eq!(o.sk_daddr, 0);
        assert_eq!(o.sk_rcv_saddr, o.sk_daddr + 4);
        assert_eq!(o.sk_num, o.sk_dport + 2);
        assert!(o.sk_state > o.sk_family && o.sk_state < 64);
        // The IPv6 addresses are 16 bytes each, peer first, inside sock_common.
        assert_eq!(o.sk_v6_rcv_saddr, o.sk_v6_daddr + 16);
    }
}
