//! The Latchkey authorization service as a library: the `latchkey` binary
//! (`main.rs`) is its command line, and benchmarks and tests reach the same
//! modules. A Check flows one way: `context` (what is asked) → `decision`
//! (authn, routing, `policy`, credential) → `respond` (the Envoy answer).
//! `policy` is compiled from the config file and swapped in place when the
//! file changes (`reload`).
//!
//! Credentials: `identity` (the model) → `vault` (keys and sealing) →
//! `store` (Redis) → `cache` (this replica's memory) → `credentials` (what
//! `decision` and `admin` call). `refresh` keeps per-user OAuth tokens fresh for `decision`
//! (once across replicas). `admin` is the operator API, gated by
//! `capability`; `audit` owns the event schema, `audit_read` reads the
//! stream back for `latchkey audit`; `metrics` counts each decision from
//! the same event and serves everything at `/metrics` (`http`).
//! `consent` answers in band when a person must connect an identity;
//! `elicitation` tells the Wasm filter which of those answers are done.
//! `principal` is who calls (the caller and the agent behind it), plain
//! data that `authn`, `agents` and `policy` share.
//!
//! The modules form layers, lowest first: core (pure types and logic) ←
//! store (Redis) ← check (the request path) ← control (admin API, connect
//! page, HTTP side) ← the `latchkey` binary. A module uses its own layer
//! without a cycle and lower layers only; `tests/layers.rs` holds the map
//! and fails naming the edge that breaks it.

pub mod admin;
pub mod admin_client;
pub mod agents;
pub mod audit;
pub mod audit_read;
pub mod audit_writer;
pub mod authn;
pub mod cache;
pub mod capability;
pub mod check;
pub mod config;
pub mod connect;
pub mod connect_page;
pub mod consent;
pub mod context;
pub mod credentials;
pub mod decision;
pub mod elicitation;
pub mod envoy_config;
pub mod grpc_tls;
pub mod hex;
pub mod http;
pub mod identity;
pub mod istio;
pub mod metrics;
pub mod native;
pub mod oauth;
pub mod otlp;
pub mod policy;
pub mod policy_tool;
pub mod principal;
pub mod redis_backend;
pub mod refresh;
pub mod reload;
pub mod respond;
pub mod routing;
pub mod settle;
pub mod state;
pub mod store;
pub mod vault;
