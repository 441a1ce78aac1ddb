//! Generates the gRPC code of the HSM protocol (`../proto/sscard/hsm/v1/hsm.proto`) without an
//! external `protoc`: `protox` parses the file into a descriptor set in pure Rust, and
//! `tonic-prost-build` generates the messages, the client and the server from it.

const PROTO_ROOT: &str = "../proto";
const PROTOS: &[&str] = &["sscard/hsm/v1/hsm.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/sscard/hsm");
    let fds = protox::compile(PROTOS, [PROTO_ROOT])?;
    tonic_prost_build::configure()
        // Messages that carry a custodian's secret get a hand-written, redacting Debug
        // (`remote::proto`): a derived one would print the secret.
        .skip_debug([
            ".sscard.hsm.v1.IssuedShare",
            ".sscard.hsm.v1.UnsealRequest",
            ".sscard.hsm.v1.Component",
            ".sscard.hsm.v1.IndexHashesRequest",
            ".sscard.hsm.v1.RegistryField",
            ".sscard.hsm.v1.RestoreShareRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
