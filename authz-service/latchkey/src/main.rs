//! `latchkey`: the authorization service (`serve`) and the operator CLI.
//! The commands are in `cli/`, one file per group; `render/` writes Envoy
//! and Istio config; `grpc_tls` decides who may call the gRPC listener.

mod cli;
mod grpc_tls;
mod render;

fn main() -> anyhow::Result<()> {
    cli::run(clap::Parser::parse())
}
