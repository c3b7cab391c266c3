//! Harness for Latchkey's end-to-end tests: starts the real parts — Redis,
//! the identity provider, upstream MCP servers, `latchkey serve` and Envoy
//! loading the built `.wasm` — on free loopback ports, each with its own log
//! file under `target/e2e/<scenario>/`, and stops them when dropped.
//!
//! Modules, one idea each: [`process`] (child processes, ports, readiness),
//! [`paths`] (workspace binaries and peers), [`peers`] (Redis, IdP, upstream
//! MCP servers), [`envoy`] (Envoy 1.40 on a bootstrap), [`client`] (rmcp
//! client and raw HTTP/SSE), [`secrets`] (log scan), [`stack`] (a whole
//! deployment for one scenario), [`pki`] (mTLS certificates), [`otlp_sink`]
//! (an OTLP logs receiver), [`wait`] (polling instead of sleeping),
//! [`browser`] (headless Chromium through a plan of steps), [`sdk_client`]
//! (the official TypeScript MCP SDK as a client process), [`scrape`] (a
//! replica's `/metrics`), [`attacker`] (an attacker's own moves: a direct
//! Check, a forged `kid`, what Redis kept), [`connect_client`] (the connect
//! page driven without a browser), [`local`] (the stack `scripts/start` runs,
//! laid out by a config file on the ports it names), [`webhook_sink`] (a
//! receiver for the alert webhook).

pub mod attacker;
pub mod browser;
pub mod client;
pub mod connect_client;
pub mod envoy;
pub mod local;
pub mod otlp_sink;
pub mod paths;
pub mod peers;
pub mod pki;
pub mod process;
pub mod scrape;
pub mod sdk_client;
pub mod secrets;
pub mod stack;
pub mod wait;
pub mod webhook_sink;

pub use browser::{Browser, StepResult};
pub use client::{HttpReply, McpClient, SseEvent, SseReply, open_sse, parse_sse, post_json, send};
pub use envoy::Envoy;
pub use paths::scenario_dir;
pub use peers::{
    AuthEcho, Everything, Idp, IdpOptions, IdpStats, OauthMcp, Recorder, Redis, TokenRequest,
    code_in, jwt_claims, jwt_header, pkce_pair, sha256_hex, sign_in_directly,
    start_provider_and_upstream, tamper_signature,
};
pub use process::{Process, free_port, http_get};
pub use secrets::secrets_scan;
pub use stack::{RedisTopology, Stack, StackOptions};
pub use wait::eventually;
