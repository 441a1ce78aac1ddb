//! Generates the gRPC code from `proto/` without an external `protoc`: `protox` parses the
//! files into a descriptor set in pure Rust, and `tonic-prost-build` generates from it.

use std::path::PathBuf;

const PROTOS: &[&str] = &["sscard/kms/v1/types.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sscard_descriptor.bin"))
        .compile_fds(fds)?;
    Ok(())
}
