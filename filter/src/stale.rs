//! When the upstream refuses the OAuth credential Latchkey injected (HTTP
//! 401 with a per-user token the provider has since revoked or rotated
//! away): the client never sees that 401 (its own token is fine; a 401
//! would send it into a sign-in loop), it gets a JSON-RPC error saying to
//! retry, and the next `Check` from this Envoy names the refused
//! credential so the service refreshes it first.
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

/// What the client gets instead of the upstream's 401: HTTP 200 with a
/// JSON-RPC error carrying the request's id.
pub fn refused_reply(id: Option<&Value>) -> LocalReply {
    LocalReply::error(
        200,
        id,
        jsonrpc::INTERNAL_ERROR,
        "the upstream server refused the stored credential (its provider may have revoked or replaced the token); Latchkey refreshes it on the next request: retry",
    )
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
        let reply = refused_reply(Some(&Value::from(9)));
        assert_eq!(reply.status, 200);
        let v: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["error"]["code"], jsonrpc::INTERNAL_ERROR);
        assert!(v["error"]["message"].as_str().unwrap().contains("retry"));
    }
}
