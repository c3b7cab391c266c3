//! Latchkey's Proxy-Wasm filter for MCP traffic in Envoy.
//!
//! Everything except [`wasm`] is plain, host-independent Rust and is unit
//! tested natively. Data flows one way:
//!
//! * [`config`]: the plugin configuration (JSON) and its defaults.
//! * [`mcp`]: parse → classify one MCP JSON-RPC message from headers and body.
//! * [`check`]: context → build the `envoy.service.auth.v3` `CheckRequest`.
//! * [`decision`]: decide → read the `CheckResponse` into header edits or a
//!   local reply.
//! * [`flow`]: the per-request state machine that strings these together and
//!   tells the host what to do ([`flow::Action`]).
//! * [`visibility`]: what a caller may see (allow/deny patterns), shared
//!   with the service so lists and calls agree.
//! * [`uri`]: the canonical form of resource URIs and path arguments that
//!   policy judges (what the upstream acts on), and what has none.
//! * [`listing`]: apply → trim list responses (JSON or SSE, event by event).
//! * [`round_trip`]: what of Latchkey's own consent round trip (2026-07-28
//!   `requestState`) the upstream must not see.
//! * [`stale`]: an upstream 401 for an injected OAuth credential becomes a
//!   retryable error, and the next `Check` asks for a refresh.
//! * [`completion`]: `notifications/elicitation/complete` on a session's
//!   GET stream once the person finished a URL elicitation Latchkey asked for.
//! * [`jsonrpc`]: JSON-RPC error bodies and codes used by every local reply.
//! * `wasm` (wasm32 only): apply → the thin proxy-wasm glue.
//!
//! The authorization service reuses [`mcp::classify`], [`mcp::McpMessage`]
//! and [`jsonrpc::error_body`] from the rlib.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]

pub mod check;
pub mod completion;
pub mod config;
pub mod decision;
pub mod flow;
mod json;
pub mod jsonrpc;
pub mod listing;
pub mod mcp;
pub mod round_trip;
pub mod stale;
pub mod uri;
pub mod visibility;

#[cfg(target_arch = "wasm32")]
mod wasm;
