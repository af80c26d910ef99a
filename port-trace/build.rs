use aya_build::{Package, Toolchain};

/// Builds port-trace-ebpf for bpfel-unknown-none with the nightly toolchain; the object is
/// embedded in the binary with `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../port-trace-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "port-trace-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
