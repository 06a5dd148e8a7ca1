//! Generates the clients and servers of the CSI spec's `csi.proto` and of the kubelet's plugin
//! registration (`pluginregistration/v1/api.proto`); needs `protoc` and google/protobuf's
//! well-known types: Debian's `libprotobuf-dev`, which `cargo xtask setup` installs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        // A plugin implements the RPCs of its capabilities; the others answer UNIMPLEMENTED, as
        // the spec asks of them.
        .generate_default_stubs(true)
        .compile_protos(
            &["proto/csi.proto", "proto/pluginregistration/v1/api.proto"],
            &["proto"],
        )?;
    Ok(())
}
