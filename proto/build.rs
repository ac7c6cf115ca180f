//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`) and prost-build, and
//! writes their encoded `FileDescriptorSet` (imports included, comments left out) for
//! `event_proto::FILE_DESCRIPTOR_SET`.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "users/v1/users.proto",
    "shop/v1/orders.proto",
    "bench/v1/bench.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    // the descriptors a program needs at run time (proto3 JSON): the source info (comments,
    // spans) is for the code generator only
    let mut runtime = descriptors.clone();
    for file in &mut runtime.file {
        file.source_code_info = None;
    }
    std::fs::write(out.join("file_descriptor_set.bin"), runtime.encode_to_vec())?;
    prost_build::Config::new()
        .enable_type_names()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
