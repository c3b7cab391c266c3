//! Latchkey's own multi round-trip (MCP 2026-07-28): when the gateway asked
//! for consent with an `InputRequiredResult`, the client's retry carries
//! Latchkey's `requestState` and the answers to Latchkey's `inputRequests`.
//! Both are for the gateway (the service checks them); the upstream never
//! issued them and must not see them.

use serde_json::Value;

/// Marks a `requestState` Latchkey issued; an upstream's own state passes.
pub const REQUEST_STATE_PREFIX: &str = "lk1.";

/// Whether a message body may carry a Latchkey `requestState`: a byte
/// search (SIMD where the target has it), so the common request is never
/// parsed for it.
pub fn may_carry_request_state(body: &[u8]) -> bool {
    memchr::memmem::find(body, REQUEST_STATE_PREFIX.as_bytes()).is_some()
}

/// The message to forward upstream without Latchkey's `requestState` and
/// `inputResponses`, or `None` when the message carries no state of
/// Latchkey's (forward it byte for byte).
pub fn upstream_body(body: &[u8]) -> Option<Vec<u8>> {
    // Cheap test first: almost no message carries a state at all.
    if !may_carry_request_state(body) {
        return None;
    }
    let mut message: Value = serde_json::from_slice(body).ok()?;
    let params = message.get_mut("params")?.as_object_mut()?;
    let ours = params
        .get("requestState")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with(REQUEST_STATE_PREFIX));
    if !ours {
        return None;
    }
    params.remove("requestState");
    params.remove("inputResponses");
    serde_json::to_vec(&message).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn latchkeys_state_and_answers_are_removed() {
        let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{
            "name":"whoami","arguments":{"a":1},"_meta":{"k":"v"},
            "requestState":"lk1.a.b.c","inputResponses":{"connect-x":{"action":"accept"}}}});
        let out = upstream_body(body.to_string().as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{
                "name":"whoami","arguments":{"a":1},"_meta":{"k":"v"}}})
        );
    }

    #[test]
    fn other_messages_pass_untouched() {
        for body in [
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}),
            // The upstream's own round trip is its business.
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x",
                "requestState":"eyJ","inputResponses":{"k":{"action":"accept"}}}}),
            // The marker inside an argument is not a state.
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x",
                "arguments":{"requestState":"lk1.x"}}}),
        ] {
            assert_eq!(upstream_body(body.to_string().as_bytes()), None, "{body}");
        }
        assert_eq!(upstream_body(b"not json lk1."), None);
    }
}
