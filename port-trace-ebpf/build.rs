use which::which;

fn main() {
    // Rebuild when bpf-linker changes, since it links the eBPF object.
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found; run `cargo xtask setup`"),
    }
    // No `bpf_target_arch` cfg of our own: the code here reads the syscall registers at
    // offsets the loader finds in the kernel's BTF, so it is the same for every architecture
    // (aya-ebpf sets its own for the kprobe argument reads).
}
