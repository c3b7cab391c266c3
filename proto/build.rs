//! Compiles the `.proto` subset with `protox` (pure Rust, so no system `protoc`
//! is needed) and generates prost messages; tonic service code only with the
//! `grpc` feature, which keeps the crate buildable for `wasm32-wasip1`.

use std::io;

const PROTOS: &[&str] = &[
    "envoy/service/auth/v3/external_auth.proto",
    "latchkey/elicitation/v1/elicitation.proto",
];
/// Host-only: the operator API is never compiled into the Wasm filter.
const GRPC_PROTOS: &[&str] = &["latchkey/admin/v1/admin.proto"];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let mut protos = PROTOS.to_vec();
    if grpc {
        protos.extend_from_slice(GRPC_PROTOS);
    }
    let fds = protox::compile(protos, ["proto"]).map_err(io::Error::other)?;
    if grpc {
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
