use which::which;

fn main() {
    // Rebuild when bpf-linker changes, since it links the eBPF object.
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found; run `cargo xtask setup`"),
    }
    // aya-build passes `--cfg bpf_target_arch="<host arch>"`; kernel.rs reads syscall
    // registers only where it knows the architecture's pt_regs layout.
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"aarch64\", \"arm\", \"loongarch64\", \
         \"mips\", \"mips64\", \"powerpc64\", \"riscv64\", \"s390x\", \"x86_64\"))"
    );
}
