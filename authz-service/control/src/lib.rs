//! Latchkey's control plane: the operator's admin API (`admin`, gated by
//! `latchkey_core::capability`), the connect page where people connect
//! their own identities (`connect`, its HTML in `connect::html`), and the
//! HTTP listener (`http_listener`: health, readiness, RFC 9728 metadata,
//! `/metrics`) and, with `[scim]`, the SCIM 2.0 endpoint identity
//! providers provision people and groups through (`scim`). `shared` is
//! what those handlers share.

pub mod admin;
pub mod approvals;
pub mod connect;
pub mod http_listener;
pub mod scim;
pub mod shared;
