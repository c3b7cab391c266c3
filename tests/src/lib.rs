//! Harness for Latchkey's end-to-end tests: starts the real parts — Redis,
//! the identity provider, upstream MCP servers, `latchkey serve` and Envoy
//! loading the built `.wasm` — on free loopback ports, each with its own log
//! file under `target/e2e/<scenario>/`, and stops them when dropped.

pub mod client;
pub mod paths;
pub mod peers;
pub mod process;
pub mod secrets;
pub mod stack;

pub use client::{HttpReply, McpClient, post_json};
pub use peers::{AuthEcho, Everything, Idp, Redis, TokenRequest};
pub use process::{Process, free_port};
pub use stack::{Stack, StackOptions};
