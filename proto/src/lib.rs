//! Protocol types for Latchkey.
//!
//! `envoy.service.auth.v3` is the subset of Envoy's ext_authz v3 API that
//! Latchkey uses, with upstream package, message names and field numbers, so
//! bytes produced here are read by Envoy (and vice versa). Messages build for
//! `wasm32-wasip1`; the `grpc` feature adds the tonic `Authorization` client
//! and server.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

pub use envoy::config::core::v3 as core;
pub use envoy::service::auth::v3 as auth;
/// Latchkey's operator API (`latchkey.admin.v1.Admin`).
#[cfg(feature = "grpc")]
pub use latchkey::admin::v1 as admin;
/// What the filter asks about URL elicitations it answered
/// (`latchkey.elicitation.v1.Elicitations`).
pub use latchkey::elicitation::v1 as elicitation;

/// Name of the dynamic/filter metadata namespace that carries the MCP context.
pub const MCP_METADATA_NAMESPACE: &str = "latchkey.mcp";

/// Keys of the `latchkey.mcp` metadata struct the filter sends in
/// `CheckRequest.attributes.metadata_context.filter_metadata`. The filter
/// writes them and the authorization service reads them; this is the one
/// place both sides take the names from.
pub mod mcp_keys {
    /// `"request"`, `"notification"`, `"response"`, `"stream"` (GET opening
    /// an SSE stream) or `"session_end"` (DELETE).
    pub const KIND: &str = "kind";
    /// JSON-RPC `method` (requests and notifications).
    pub const METHOD: &str = "method";
    /// JSON-RPC `id`, as the JSON string or number the client sent.
    pub const ID: &str = "id";
    /// Tool name (`tools/call`), prompt name (`prompts/get`) or resource URI
    /// (`resources/read`, `resources/subscribe`, `resources/unsubscribe`).
    pub const NAME: &str = "name";
    /// `MCP-Protocol-Version` header (or `params.protocolVersion` on
    /// `initialize`).
    pub const PROTOCOL_VERSION: &str = "protocol_version";
    /// `Mcp-Session-Id` header.
    pub const SESSION_ID: &str = "session_id";
}
