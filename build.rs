//! Compiles `proto/sesphr/v1/*.proto` into tonic client and/or server stubs and
//! writes the file descriptor set that server reflection serves.
//!
//! protox is a pure-Rust protobuf compiler, so no `protoc` has to be installed.
//! Source info (the comments) is kept in the descriptor set: that is what
//! `grpcurl describe` prints.

use std::path::PathBuf;

use protox::prost::Message;

const PROTOS: &[&str] = &[
    "proto/sesphr/v1/common.proto",
    "proto/sesphr/v1/cloud_storage.proto",
    "proto/sesphr/v1/srs.proto",
    "proto/sesphr/v1/access_policy.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::Compiler::new(["proto"])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    std::fs::write(out_dir.join("sesphr_descriptor.bin"), fds.encode_to_vec())?;

    // The `client` and `server` features choose which stubs exist, so the
    // client SDK does not compile server stubs and vice versa.
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    tonic_prost_build::configure()
        .build_client(feature("CLIENT"))
        .build_server(feature("SERVER"))
        // Ciphertext chunks are passed along without copying.
        .bytes(".sesphr.v1.PutRecordRequest.chunk")
        .bytes(".sesphr.v1.GetRecordResponse.chunk")
        .compile_fds(fds)?;
    Ok(())
}
