//! Generates the client and server of `proto/apiary/agent/v1/agent.proto` (needs `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["proto/apiary/agent/v1/agent.proto"], &["proto"])?;
    Ok(())
}
