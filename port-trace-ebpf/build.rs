use which::which;

fn main() {
    // Rebuild when bpf-linker changes, since it links the eBPF object.
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found; run `cargo xtask setup`"),
    }
    // kernel.rs reads syscall registers only where it knows the architecture's pt_regs layout.
    // aya-build passes `--cfg bpf_target_arch="<host arch>"`; a plain cargo run on this crate
    // (clippy) gets the host's, as aya-ebpf does for itself.
    println!("cargo:rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
    if std::env::var_os("CARGO_CFG_BPF_TARGET_ARCH").is_none() {
        let host = std::env::var("HOST").unwrap_or_default();
        let arch = host.split('-').next().unwrap_or_default();
        let arch = if arch.starts_with("riscv64") {
            "riscv64"
        } else {
            arch
        };
        println!("cargo:rustc-cfg=bpf_target_arch=\"{arch}\"");
    }
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"aarch64\", \"arm\", \"loongarch64\", \
         \"mips\", \"mips64\", \"powerpc64\", \"riscv64\", \"s390x\", \"x86_64\"))"
    );
}
