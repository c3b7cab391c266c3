//! Deployment config rendered from a Latchkey config: an Envoy bootstrap
//! (`envoy`) and the Istio resources for a mesh (`istio`), each built as
//! serde values and written as YAML.

pub mod envoy;
pub mod istio;
