//! Compiles the `.proto` subset with `protox` (pure Rust, so no system `protoc`
//! is needed) and generates prost messages; tonic service code only with the
//! `grpc` feature, which keeps the crate buildable for `wasm32-wasip1`.

use std::io;

const PROTOS: &[&str] = &["envoy/service/auth/v3/external_auth.proto"];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"]).map_err(io::Error::other)?;
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        tonic_prost_build::configure()
            .build_transport(false)
            .include_file("_includes.rs")
            .compile_fds(fds)
    } else {
        prost_build::Config::new()
            .include_file("_includes.rs")
            .compile_fds(fds)
    }
}
