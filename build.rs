//! Generates the gRPC code from `proto/` without an external `protoc`: `protox` parses the
//! files into a descriptor set in pure Rust, and `tonic-prost-build` generates from it. The
//! descriptor set is also written out for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "sscard/kms/v1/types.proto",
    "sscard/kms/v1/ceremony.proto",
    "sscard/kms/v1/kms.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sscard_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // A request that does not decode is INVALID_ARGUMENT, not INTERNAL (src/server/codec.rs).
        .codec_path("crate::server::codec::KmsCodec")
        // Messages that carry a custodian's secret or a holder's personal data get a
        // hand-written, redacting Debug (`sscard_kms::proto`): a derived one would print them.
        .skip_debug([
            ".sscard.kms.v1.Component",
            ".sscard.kms.v1.UnsealHsmRequest",
            ".sscard.kms.v1.TakeLmkShareResponse",
            ".sscard.kms.v1.CardIdentity",
            ".sscard.kms.v1.CardPersonalData",
            ".sscard.kms.v1.ApplicantFileChunk",
            ".sscard.kms.v1.TakeTransportComponentResponse",
            ".sscard.kms.v1.TakeBackupShareResponse",
            ".sscard.kms.v1.SubmitBackupShareRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
