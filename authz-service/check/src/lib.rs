//! Latchkey's request path: one ext_authz `Check`, from the filter's
//! request to Envoy's answer. It flows one way: `context` (what is asked,
//! from the filter's metadata or, behind native ext_authz, the body read by
//! `forwarded_body`) → `decide` (`authn`, routing, policy, the credential)
//! → `respond` (the Envoy answer). `service` is the gRPC service that runs
//! it, holding only what a decision needs.
//!
//! `refresh` keeps per-user OAuth tokens fresh (once across replicas) over
//! the `oauth` client, and the tokens of `[servers.exchange]` servers over
//! the `exchange` client (RFC 8693, ID-JAG); `consent` answers in band when a person must connect
//! an identity, and `elicitation` tells the filter which of those answers
//! are done. `reload` swaps the compiled policy in place when the config
//! file changes (or an agent is onboarded by approval), and `onboarding`
//! records the unprovisioned agents a gateway refused, off the request path;
//! `alerts` sends refusals worth a person's attention to a webhook, also off it.
//!
//! This crate does not depend on `latchkey-control` or on axum: the request
//! path cannot reach the admin API, the connect page or the HTTP side.

pub mod alerts;
pub mod approval;
pub mod authn;
pub mod consent;
pub mod context;
pub mod decide;
pub mod elicitation;
pub mod exchange;
pub mod forwarded_body;
pub mod oauth;
pub mod onboarding;
pub mod refresh;
pub mod reload;
pub mod respond;
pub mod service;
pub mod upstream_tools;
