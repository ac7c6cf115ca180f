//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`) and prost-build.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "users/v1/users.proto",
    "shop/v1/orders.proto",
    "bench/v1/bench.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    prost_build::Config::new()
        .enable_type_names()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
