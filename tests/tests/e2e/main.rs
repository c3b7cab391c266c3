//! Latchkey's end-to-end scenarios, one module per area, linked into one
//! test binary: the harness (`latchkey_e2e`), the service's library and
//! the test peers are linked once instead of once per file. Each scenario
//! starts its own real processes on free loopback ports (see the harness),
//! so scenarios of different modules run side by side like those of one.
//!
//! Run one area with `cargo test -p latchkey-e2e --test e2e -- attacker::`,
//! one scenario by (part of) its name.

mod access_review;
mod agents;
mod alerts;
mod approval_page;
mod approvals;
mod attacker;
mod audit;
mod audit_cli;
mod bench_smoke;
mod bounds;
mod check_mtls;
mod combined;
mod connect;
mod consent;
mod differential;
mod elicitation_complete;
mod envoy_start;
mod exchange;
mod gateway;
mod harness;
mod identities;
mod istio;
mod leaks;
mod local_stack;
mod metrics;
mod onboarding;
mod peers_oauth;
mod policy;
mod refresh;
mod refresh_lock;
mod resource_uris;
mod scim;
mod step_up;
mod upstream_tls;
