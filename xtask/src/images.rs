//! `cargo xtask images`: the test images, as OCI archives under `target/images/`.

use anyhow::Context as _;

use crate::shell;

/// Builds `target/images/busybox.tar` from the host's static busybox.
pub fn build() -> anyhow::Result<()> {
    let out = shell::workspace_root().join("target/images/busybox.tar");
    let built = apiary_images::build::busybox_archive(&out)
        .with_context(|| format!("building {}", out.display()))?;
    println!(
        "built {} ({} {})",
        out.display(),
        built.reference,
        built.digest
    );
    Ok(())
}
