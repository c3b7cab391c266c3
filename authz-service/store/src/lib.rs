//! Latchkey's Redis layer: what the service keeps in Redis or beside it.
//!
//! Credentials flow `identity` (the model, in `latchkey-core`) → `vault`
//! (sealing) → `store` (Redis, over `redis_backend`'s topologies) →
//! `cache` (this replica's memory, invalidated from the store's change
//! stream) → `credentials` (what the request path and the admin API call).
//! `propagation` waits until every replica applied a change. `audit_writer`
//! queues audit events into the stream (and `otlp` exports them);
//! `audit_read` reads the stream back for `latchkey audit`; `last_used`
//! keeps when each identity, person and agent was last let through.
//! `approvals` and `agent_requests` keep what waits for a person's
//! decision; `scim` keeps the Users and Groups an identity provider
//! provisions over SCIM, and the people's status and groups they decide.

pub mod agent_requests;
pub mod approvals;
pub mod audit_read;
pub mod audit_writer;
pub mod cache;
pub mod credentials;
pub mod last_used;
pub mod otlp;
pub mod propagation;
pub mod redis_backend;
pub mod scim;
pub mod store;
