//! An upstream's authentication challenge never reaches the client.
//!
//! The client authenticates to Latchkey, not to the upstream: an upstream
//! 401 (or a 403 with `WWW-Authenticate`, RFC 6750 `insufficient_scope`)
//! is about the credential Latchkey injected, or about none at all. Passed
//! on, it would send the client into a sign-in loop with its own (valid)
//! token, and a malicious upstream's `WWW-Authenticate: Bearer
//! resource_metadata="https://evil/..."` would steer the client's OAuth
//! discovery (RFC 9728) to an authorization server of the upstream's
//! choosing, where the client may send its credentials. So, whatever was
//! injected (a person's OAuth token, a shared secret, nothing):
//! * such a response is replaced by a JSON-RPC error carrying the
//!   request's id ([`challenge_reply`]): HTTP 200 for a request (an
//!   in-band MCP error the client shows; a 4xx would read as the client's
//!   own token being refused), 502 for what has no JSON-RPC answer (a GET
//!   stream, a notification, a DELETE): the gateway's upstream failed;
//! * `WWW-Authenticate` is removed from every other upstream response.
//!
//! Latchkey's own 401s (missing or bad client token) are local replies and
//! keep their `WWW-Authenticate` with `resource_metadata`.
//!
//! A refused per-user OAuth credential (revoked or rotated away at the
//! provider) is also remembered: the client gets an error saying to retry,
//! and the next `Check` from this Envoy names the refused credential so the
//! service refreshes it first.
//!
//! Inside Envoy the memory is proxy-wasm shared data, seen by every
//! worker's VM: one refusal is enough for the whole Envoy (see
//! [`RejectedStore`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use serde_json::Value;

use crate::decision::LocalReply;
use crate::jsonrpc;

/// `CheckResponse.dynamic_metadata` key: the injected credential that can be
/// refreshed, as `<identity id>@<version>`.
pub const CREDENTIAL_KEY: &str = "refreshable_credential";
/// Request header, on the `Check` only, listing refused credentials
/// (`<identity id>@<version>`, comma-separated). A client's own value is
/// dropped; it never reaches the upstream.
pub const REJECTED_HEADER: &str = "x-latchkey-rejected-credentials";
/// The proxy-wasm shared data key the filter keeps them under.
pub const SHARED_KEY: &str = "latchkey.rejected_credentials";
/// How many refusals are remembered (oldest forgotten first).
const CAPACITY: usize = 32;

/// Credentials seen refused and not yet replaced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RejectedCredentials {
    entries: VecDeque<String>,
}

/// Where the refused credentials are kept. The filter in Envoy keeps them
/// in shared data; a plain `RefCell` keeps them in one VM (unit tests).
pub trait RejectedStore: fmt::Debug {
    /// Applies `change`; it returns whether it changed anything.
    fn update(&self, change: &mut dyn FnMut(&mut RejectedCredentials) -> bool);
    /// The [`REJECTED_HEADER`] value for the next `Check`, if any.
    fn header_value(&self) -> Option<String>;
}

impl RejectedStore for RefCell<RejectedCredentials> {
    fn update(&self, change: &mut dyn FnMut(&mut RejectedCredentials) -> bool) {
        change(&mut self.borrow_mut());
    }

    fn header_value(&self) -> Option<String> {
        self.borrow().header_value()
    }
}

pub type SharedRejected = Rc<dyn RejectedStore>;

/// A store of this VM's own (what a request uses until the host gives it
/// the shared one).
pub fn local_store() -> SharedRejected {
    Rc::new(RefCell::new(RejectedCredentials::default()))
}

fn identity_of(credential: &str) -> &str {
    credential.rsplit_once('@').map_or(credential, |(id, _)| id)
}

impl RejectedCredentials {
    /// Reads what [`RejectedCredentials::encode`] wrote (one credential
    /// per line); anything else is dropped.
    pub fn decode(bytes: &[u8]) -> RejectedCredentials {
        let text = String::from_utf8_lossy(bytes);
        let mut out = RejectedCredentials::default();
        for line in text.lines().filter(|l| l.contains('@')) {
            out.remember(line.trim());
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        self.entries
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    }

    /// Returns whether it was new.
    pub fn remember(&mut self, credential: &str) -> bool {
        if self.entries.iter().any(|c| c == credential) {
            return false;
        }
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(credential.to_owned());
        true
    }

    /// An allowed request injected `credential`: a refused entry of the same
    /// identity at another version is settled (the token was replaced).
    /// Returns whether one was.
    pub fn settled(&mut self, credential: &str) -> bool {
        let identity = identity_of(credential);
        let before = self.entries.len();
        self.entries
            .retain(|c| identity_of(c) != identity || c == credential);
        self.entries.len() != before
    }

    /// The `REJECTED_HEADER` value for the next `Check`, if any.
    pub fn header_value(&self) -> Option<String> {
        (!self.entries.is_empty()).then(|| {
            self.entries
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// The response header an upstream's challenge rides in; never passed on.
pub const CHALLENGE_HEADER: &str = "www-authenticate";

/// Whether an upstream response with this `:status` is an authentication
/// challenge the client must not see: any 401, and a 403 carrying
/// `WWW-Authenticate`.
pub fn is_challenge(status: Option<&str>, has_challenge_header: bool) -> bool {
    match status.map(str::trim) {
        Some("401") => true,
        Some("403") => has_challenge_header,
        _ => false,
    }
}

/// What the client gets instead of the upstream's challenge: a JSON-RPC
/// error with the request's id (HTTP 200), or HTTP 502 when the request
/// has no id to answer. `refreshable`: the refused credential is a
/// person's OAuth token Latchkey refreshes on the next request.
pub fn challenge_reply(id: Option<&Value>, status: &str, refreshable: bool) -> LocalReply {
    let http = if id.is_some() { 200 } else { 502 };
    let message = if refreshable {
        "the upstream server refused the stored credential (its provider may have revoked or replaced the token); Latchkey refreshes it on the next request: retry".to_owned()
    } else {
        format!(
            "the upstream MCP server refused the gateway's credential for it (HTTP {}); your own token is fine and retrying will not help: tell the operator, who can check the server's identity with `latchkey identity show`",
            status.trim()
        )
    };
    LocalReply::error(http, id, jsonrpc::INTERNAL_ERROR, &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_reports_and_settles_per_identity() {
        let mut r = RejectedCredentials::default();
        assert_eq!(r.header_value(), None);
        r.remember("crm-alice@3");
        r.remember("crm-alice@3");
        r.remember("gh-bob@7");
        assert_eq!(r.header_value().as_deref(), Some("crm-alice@3,gh-bob@7"));
        // The same version injected again: still refused, still reported.
        r.settled("crm-alice@3");
        assert_eq!(r.header_value().as_deref(), Some("crm-alice@3,gh-bob@7"));
        // A newer version went upstream: alice's is settled, bob's stays.
        r.settled("crm-alice@4");
        assert_eq!(r.header_value().as_deref(), Some("gh-bob@7"));
        // Identity ids never contain '@': the version is after it.
        assert_eq!(identity_of("a.b-c@12"), "a.b-c");
    }

    #[test]
    fn the_shared_form_round_trips_and_drops_junk() {
        let mut r = RejectedCredentials::default();
        assert!(r.remember("crm-alice@3"));
        assert!(!r.remember("crm-alice@3"));
        assert!(r.remember("gh-bob@7"));
        let back = RejectedCredentials::decode(&r.encode());
        assert_eq!(back, r);
        assert_eq!(
            RejectedCredentials::decode(b"crm-alice@3\nnot a credential\n\ngh-bob@7\n")
                .header_value(),
            Some("crm-alice@3,gh-bob@7".into())
        );
        assert_eq!(
            RejectedCredentials::decode(b""),
            RejectedCredentials::default()
        );
        assert!(!r.settled("crm-alice@3"), "same version: nothing settled");
        assert!(r.settled("crm-alice@4"));
    }

    #[test]
    fn the_local_store_applies_changes() {
        let store = local_store();
        assert_eq!(store.header_value(), None);
        store.update(&mut |r| r.remember("crm-alice@3"));
        assert_eq!(store.header_value().as_deref(), Some("crm-alice@3"));
        store.update(&mut |r| r.settled("crm-alice@4"));
        assert_eq!(store.header_value(), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut r = RejectedCredentials::default();
        for i in 0..(CAPACITY + 5) {
            r.remember(&format!("id{i}@1"));
        }
        let value = r.header_value().unwrap();
        assert_eq!(value.split(',').count(), CAPACITY);
        assert!(!value.split(',').any(|c| c == "id0@1"), "oldest forgotten");
    }

    #[test]
    fn the_reply_is_a_json_rpc_error_with_the_id() {
        let reply = challenge_reply(Some(&Value::from(9)), "401", true);
        assert_eq!(reply.status, 200);
        let v: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["error"]["code"], jsonrpc::INTERNAL_ERROR);
        assert!(v["error"]["message"].as_str().unwrap().contains("retry"));
        assert!(
            !reply
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(CHALLENGE_HEADER))
        );
        // Not refreshable: no promise that a retry helps; no id: 502.
        let reply = challenge_reply(None, "403", false);
        assert_eq!(reply.status, 502);
        let v: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["id"], Value::Null);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("HTTP 403") && message.contains("operator"),
            "{message}"
        );
    }

    #[test]
    fn a_401_and_a_403_with_a_challenge_are_challenges() {
        assert!(is_challenge(Some("401"), false));
        assert!(is_challenge(Some("401"), true));
        assert!(is_challenge(Some("403"), true));
        assert!(
            !is_challenge(Some("403"), false),
            "the upstream's own refusal"
        );
        assert!(
            !is_challenge(Some("200"), true),
            "the header is stripped instead"
        );
        assert!(!is_challenge(None, true));
    }
}
