//! Latchkey's pure core: types and logic with no runtime and no I/O, which
//! every other layer of the service builds on.
//!
//! * `config`: the config file's model and its validation;
//! * `principal`: who calls (the caller and the agent behind it), plain
//!   data that the request path's authn, `agents` and `policy` share;
//! * `identity` (the model of a stored credential) and `vault` (keys and
//!   sealing with AES-256-GCM);
//! * `routing` (which upstream a path is), `capability` (what an admin
//!   token may do), `policy` (who may call what, and what each caller sees);
//! * `review`: the access review (who may call what where, through which
//!   identity, and what looks stale), judged from loaded records;
//! * `onboarding`: agents nobody provisioned, their requests, and those
//!   approved (merged into the policy beside `[[agents]]`);
//! * `audit`: the audit event schema and its bounds; `metrics`: the
//!   registry every decision is counted in; `hex`: random ids and SHA-256
//!   digests as hex;
//! * `scim`: SCIM 2.0 resources, list filters and PATCH, for provisioning
//!   people and groups from an identity provider.
//!
//! Above it: `latchkey-store` (Redis) ← `latchkey-check` (the request path)
//! ← `latchkey-control` (admin API, connect page, HTTP side) ← the
//! `latchkey` binary.

pub mod agents;
pub mod approval;
pub mod audit;
pub mod capability;
pub mod config;
pub mod hex;
pub mod identity;
pub mod metrics;
pub mod onboarding;
pub mod policy;
pub mod principal;
pub mod review;
pub mod routing;
pub mod scim;
pub mod vault;

/// Now, in Unix seconds: the clock conditions, step-up ages and expiries
/// are judged by.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
