//! The Latchkey authorization service as a library: the `latchkey` binary
//! (`main.rs`) is its command line, and benchmarks and tests reach the same
//! modules. A Check flows one way: `context` (what is asked) → `decision`
//! (authn, routing, credential) → `respond` (the Envoy answer).

pub mod authn;
pub mod check;
pub mod config;
pub mod context;
pub mod decision;
pub mod envoy_config;
pub mod http;
pub mod native;
pub mod respond;
pub mod routing;
pub mod state;
pub mod vault;
