//! Builds `ebpf/` (nightly, `bpfel-unknown-none`) so that a plain `cargo build` of the node agent
//! embeds fresh BPF objects.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../ebpf");
    // aya-build watches the program crate; the map layouts it compiles in live next door.
    println!("cargo:rerun-if-changed={manifest_dir}/../ebpf-common");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "apiary-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
