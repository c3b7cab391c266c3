//! Telling a client that the person finished a URL elicitation
//! (`notifications/elicitation/complete`, MCP 2025-11-25) on the only
//! stream a gateway can reach it by: the session's GET stream, whose bytes
//! pass through this filter.
//!
//! Three parts, each host-independent:
//! * [`PendingList`]: the -32042 answers this Envoy handed out (session,
//!   user, gateway, id, expiry) and which of them the service reported
//!   completed. The glue keeps it in proxy-wasm shared data, so every
//!   worker's VM sees it: the GET stream rarely runs on the worker that
//!   answered the call.
//! * the `Completed` question to the service (asked by the root context on
//!   its tick while anything is pending, never on a request's path);
//! * [`EventBoundary`] and [`notification_events`]: where in the upstream's
//!   event stream a notification may go (between events, never inside
//!   one), and its bytes.
//!
//! The notification rides on the upstream's next bytes on the stream
//! (events or keep-alives): a filter cannot write to an idle stream.
//! Nothing here grants access; when the service cannot be asked, the
//! notification is late or never sent and the client's manual retry works
//! as before.

use latchkey_proto::elicitation::{CompletedRequest, CompletedResponse, PendingElicitation};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;

/// `CheckResponse.dynamic_metadata` key of a denied answer that is a URL
/// elicitation: a struct with [`ID`], [`USER`], [`GATEWAY`], [`EXPIRES`].
pub const ELICITATION_KEY: &str = "url_elicitation";
pub const ID: &str = "id";
pub const USER: &str = "user";
pub const GATEWAY: &str = "gateway";
/// Unix seconds, as a number.
pub const EXPIRES: &str = "expires";

/// The proxy-wasm shared data key holding the [`PendingList`].
pub const SHARED_KEY: &str = "latchkey.pending_url_elicitations";
/// Most entries kept (oldest dropped first): a bound on shared memory and
/// on what one `Completed` question carries.
pub const MAX_PENDING: usize = 256;

pub const SERVICE: &str = "latchkey.elicitation.v1.Elicitations";
pub const METHOD: &str = "Completed";

/// One URL elicitation a client was given, and where to announce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub user: String,
    pub gateway: String,
    pub expires: i64,
    #[serde(default)]
    pub completed: bool,
    /// `Mcp-Session-Id` of the request that got the answer. Serialized
    /// last, right after `completed`: [`PendingList::completed_in_session`]
    /// searches for the two together.
    pub session: String,
}

/// Who a GET stream belongs to: only its own session's notifications go on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOwner {
    pub session: String,
    pub user: String,
    pub gateway: String,
}

impl Pending {
    fn belongs_to(&self, owner: &StreamOwner) -> bool {
        self.session == owner.session && self.user == owner.user && self.gateway == owner.gateway
    }
}

/// The pending elicitations of this Envoy, as kept in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingList(pub Vec<Pending>);

impl PendingList {
    /// Reads the shared bytes; anything unreadable counts as empty (it only
    /// ever loses a notification, never lets anything through).
    pub fn decode(bytes: Option<&[u8]>) -> PendingList {
        PendingList(
            bytes
                .filter(|b| !b.is_empty())
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default(),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_else(|_| b"[]".to_vec())
    }

    /// Whether encoded `bytes` hold a completed entry of `session`: a byte
    /// search, so that a stream's chunk costs no parse unless something
    /// waits for its session. False only when [`PendingList::decode`] would
    /// find no completed entry of that session.
    pub fn completed_in_session(bytes: &[u8], session: &str) -> bool {
        let Ok(quoted) = serde_json::to_string(session) else {
            return true;
        };
        let needle = format!("\"completed\":true,\"session\":{quoted}}}");
        memchr::memmem::find(bytes, needle.as_bytes()).is_some()
    }

    /// Drops expired entries; true when something changed.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.0.len();
        self.0.retain(|p| p.expires > now);
        self.0.len() != before
    }

    pub fn add(&mut self, pending: Pending, now: i64) {
        self.prune(now);
        self.0.retain(|p| p.id != pending.id);
        if self.0.len() >= MAX_PENDING {
            let excess = self.0.len() + 1 - MAX_PENDING;
            self.0.drain(..excess);
        }
        self.0.push(pending);
    }

    /// What to ask the service about: not yet completed, not expired.
    pub fn to_ask(&self, now: i64) -> Vec<&Pending> {
        self.0
            .iter()
            .filter(|p| !p.completed && p.expires > now)
            .collect()
    }

    /// Marks `ids` completed; true when something changed.
    pub fn mark_completed(&mut self, ids: &[String]) -> bool {
        let mut changed = false;
        for p in &mut self.0 {
            if !p.completed && ids.contains(&p.id) {
                p.completed = true;
                changed = true;
            }
        }
        changed
    }

    /// Whether a completed elicitation waits for this stream.
    pub fn has_completed_for(&self, owner: &StreamOwner) -> bool {
        self.0.iter().any(|p| p.completed && p.belongs_to(owner))
    }

    /// Removes and returns the ids of the completed elicitations for this stream.
    pub fn take_completed_for(&mut self, owner: &StreamOwner) -> Vec<String> {
        let (taken, kept): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|p| p.completed && p.belongs_to(owner));
        self.0 = kept;
        taken.into_iter().map(|p| p.id).collect()
    }
}

/// The serialized `CompletedRequest` for `pending`.
pub fn completed_request(pending: &[&Pending]) -> Vec<u8> {
    CompletedRequest {
        elicitations: pending
            .iter()
            .map(|p| PendingElicitation {
                id: p.id.clone(),
                user: p.user.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// The ids a `CompletedResponse` reports; `None` when unreadable.
pub fn completed_ids(bytes: &[u8]) -> Option<Vec<String>> {
    CompletedResponse::decode(bytes).ok().map(|r| r.completed)
}

/// The deadline of one `Completed` question: the Check's.
pub fn timeout(config: &Config) -> std::time::Duration {
    std::time::Duration::from_millis(config.authz_timeout_ms)
}

/// One SSE event per id, each a `notifications/elicitation/complete`.
pub fn notification_events(ids: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        let message = json!({
            "jsonrpc": "2.0",
            "method": "notifications/elicitation/complete",
            "params": {"elicitationId": id},
        });
        out.extend_from_slice(b"event: message\ndata: ");
        out.extend_from_slice(message.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    out
}

/// Follows an SSE byte stream across chunks to know where an event of our
/// own may be put: where every byte so far belongs to a finished event.
#[derive(Debug, Clone, Default)]
pub struct EventBoundary {
    /// Bytes of the current line so far.
    line_len: usize,
    /// Some line of the current event was seen (a blank line ends it).
    in_event: bool,
    /// The last byte was `\r` (a following `\n` belongs to it).
    after_cr: bool,
    /// Some byte of the stream was seen.
    started: bool,
}

impl EventBoundary {
    fn at_boundary(&self) -> bool {
        !self.in_event && self.line_len == 0
    }

    fn end_line(&mut self) {
        if self.line_len == 0 {
            // A blank line dispatches the event (or is just blank).
            self.in_event = false;
        }
        self.line_len = 0;
    }

    /// Feeds the next chunk; returns the last offset in it (`0..=len`) at
    /// which a new event may start, if there is one.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        // Before the stream's first byte only when that byte cannot start a
        // byte order mark: clients drop a BOM only at the very start, so one
        // pushed behind our event would change how the upstream's first
        // event reads.
        let start_ok = self.started || chunk.first().is_some_and(|b| *b != 0xEF);
        let mut last = (self.at_boundary() && start_ok).then_some(0);
        self.started |= !chunk.is_empty();
        for (i, &b) in chunk.iter().enumerate() {
            match b {
                b'\r' => {
                    self.end_line();
                    self.after_cr = true;
                }
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' => self.end_line(),
                _ => {
                    self.after_cr = false;
                    self.line_len += 1;
                    self.in_event = true;
                }
            }
            // Not between the two bytes of a CRLF.
            if self.at_boundary() && !self.after_cr {
                last = Some(i + 1);
            }
        }
        last
    }
}

/// `chunk` with `events` put at `offset` (a boundary from [`EventBoundary::feed`]).
pub fn insert_events(chunk: &[u8], offset: usize, events: &[u8]) -> Vec<u8> {
    let offset = offset.min(chunk.len());
    let (before, after) = chunk.split_at(offset);
    let mut out = Vec::with_capacity(chunk.len() + events.len());
    out.extend_from_slice(before);
    out.extend_from_slice(events);
    out.extend_from_slice(after);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, session: &str, user: &str, expires: i64) -> Pending {
        Pending {
            id: id.into(),
            user: user.into(),
            gateway: "gw".into(),
            session: session.into(),
            expires,
            completed: false,
        }
    }

    fn owner(session: &str, user: &str) -> StreamOwner {
        StreamOwner {
            session: session.into(),
            user: user.into(),
            gateway: "gw".into(),
        }
    }

    #[test]
    fn list_round_trips_prunes_dedupes_and_is_bounded() {
        let mut list = PendingList::default();
        list.add(pending("a", "s1", "alice", 100), 10);
        list.add(pending("a", "s1", "alice", 200), 10);
        list.add(pending("old", "s2", "bob", 20), 10);
        assert_eq!(list.0.len(), 2, "same id replaced");
        let decoded = PendingList::decode(Some(&list.encode()));
        assert_eq!(decoded, list);
        // Expired entries go at the next write.
        list.add(pending("b", "s1", "alice", 300), 50);
        assert_eq!(
            list.0.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        for i in 0..(MAX_PENDING + 10) {
            list.add(pending(&format!("x{i}"), "s", "u", 1000), 60);
        }
        assert_eq!(list.0.len(), MAX_PENDING);
        assert_eq!(list.0.last().unwrap().id, format!("x{}", MAX_PENDING + 9));
        assert!(!list.0.iter().any(|p| p.id == "a"), "oldest dropped first");
        // Unreadable shared data is an empty list, not an error.
        assert_eq!(
            PendingList::decode(Some(b"{not json")),
            PendingList::default()
        );
        assert_eq!(PendingList::decode(None), PendingList::default());
    }

    #[test]
    fn the_byte_search_finds_every_completed_session_the_list_holds() {
        let mut list = PendingList::default();
        let odd = ["s1", "with \"quotes\" and \\", "ünïcode", "s10"];
        for (i, session) in odd.iter().enumerate() {
            list.add(pending(&format!("e{i}"), session, "alice", 100), 0);
        }
        list.add(pending("waiting", "s2", "alice", 100), 0);
        let ids: Vec<String> = (0..odd.len()).map(|i| format!("e{i}")).collect();
        list.mark_completed(&ids);
        let bytes = list.encode();
        for session in odd {
            assert!(
                PendingList::completed_in_session(&bytes, session),
                "{session}"
            );
        }
        // Not yet completed, a prefix of a listed session, nothing at all.
        assert!(!PendingList::completed_in_session(&bytes, "s2"));
        assert!(!PendingList::completed_in_session(&bytes, "s"));
        assert!(!PendingList::completed_in_session(b"[]", "s1"));
        // Whatever the search says, decoding agrees.
        for session in ["s1", "s2", "s", "s10"] {
            let decoded = PendingList::decode(Some(&bytes));
            let found = decoded
                .0
                .iter()
                .any(|p| p.completed && p.session == session);
            assert_eq!(
                found,
                PendingList::completed_in_session(&bytes, session),
                "{session}"
            );
        }
    }

    #[test]
    fn only_the_owners_completed_elicitations_are_taken_once() {
        let mut list = PendingList::default();
        list.add(pending("a", "s1", "alice", 100), 0);
        list.add(pending("b", "s1", "alice", 100), 0);
        list.add(pending("c", "s1", "mallory", 100), 0);
        list.add(pending("d", "s2", "alice", 100), 0);
        assert_eq!(list.to_ask(0).len(), 4);
        assert_eq!(
            list.to_ask(100).len(),
            0,
            "expired ones are not asked about"
        );
        assert!(!list.has_completed_for(&owner("s1", "alice")));
        assert!(list.mark_completed(&["a".into(), "c".into(), "d".into(), "zz".into()]));
        assert!(
            !list.mark_completed(&["a".into()]),
            "no change the second time"
        );
        assert_eq!(
            list.to_ask(0)
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        // alice's stream on s1 gets only "a": "c" is another user's on the
        // same session id, "d" another session's.
        assert!(list.has_completed_for(&owner("s1", "alice")));
        assert_eq!(list.take_completed_for(&owner("s1", "alice")), ["a"]);
        assert!(!list.has_completed_for(&owner("s1", "alice")));
        assert_eq!(
            list.take_completed_for(&owner("s1", "alice")),
            Vec::<String>::new()
        );
        let mut other_gateway = owner("s2", "alice");
        other_gateway.gateway = "elsewhere".into();
        assert!(!list.has_completed_for(&other_gateway));
        assert_eq!(list.take_completed_for(&owner("s2", "alice")), ["d"]);
        assert_eq!(list.0.len(), 2);
    }

    #[test]
    fn the_question_and_answer_are_protobuf() {
        let a = pending("a", "s1", "alice", 100);
        let bytes = completed_request(&[&a]);
        let decoded = CompletedRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.elicitations.len(), 1);
        assert_eq!(decoded.elicitations[0].id, "a");
        assert_eq!(decoded.elicitations[0].user, "alice");
        let answer = CompletedResponse {
            completed: vec!["a".into()],
        }
        .encode_to_vec();
        assert_eq!(completed_ids(&answer), Some(vec!["a".to_string()]));
        assert_eq!(completed_ids(b"\xff\xff"), None);
    }

    #[test]
    fn notifications_are_sse_events_with_the_spec_shape() {
        let bytes = notification_events(&["e1".into(), "e2".into()]);
        let text = String::from_utf8(bytes).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2);
        for (event, id) in events.iter().zip(["e1", "e2"]) {
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["jsonrpc"], "2.0");
            assert_eq!(v["method"], "notifications/elicitation/complete");
            assert_eq!(v["params"]["elicitationId"], id);
            assert!(v.get("id").is_none(), "a notification has no id");
            assert!(event.starts_with("event: message\n"));
        }
    }

    /// Splits `stream` into chunks at `cuts`, feeds them, and returns the
    /// stream with a marker event inserted at every chunk's boundary.
    fn insert_everywhere(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut boundary = EventBoundary::default();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
            let chunk = &stream[start..end];
            match boundary.feed(chunk) {
                Some(at) => out.extend(insert_events(chunk, at, b"data: X\n\n")),
                None => out.extend_from_slice(chunk),
            }
            start = end;
        }
        out
    }

    /// The `data` of each event, as an SSE parser dispatches them.
    fn dispatched(stream: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(stream)
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        let mut out = Vec::new();
        let mut data: Option<String> = None;
        for line in text.split('\n') {
            if line.is_empty() {
                if let Some(d) = data.take() {
                    out.push(d);
                }
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(match data {
                    Some(prev) => format!("{prev}\n{d}"),
                    None => d.to_string(),
                });
            }
        }
        out
    }

    #[test]
    fn events_go_between_upstream_events_under_any_chunking() {
        let stream = b"id: 1\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: line1\r\ndata: line2\r\n\r\nevent: message\ndata: {\"b\":2}\n\n";
        let upstream = dispatched(stream);
        assert_eq!(upstream.len(), 3);
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let out = insert_everywhere(stream, &[a, b]);
                let events = dispatched(&out);
                let theirs: Vec<&String> = events.iter().filter(|e| *e != "X").collect();
                assert_eq!(theirs, upstream.iter().collect::<Vec<_>>(), "cuts {a},{b}");
                assert!(
                    events.iter().filter(|e| *e == "X").count() >= 1,
                    "cuts {a},{b}: every chunk that ends an event takes ours"
                );
            }
        }
    }

    /// Found by the `inject` fuzz target: a notification put before a
    /// stream's byte order mark moved the BOM into the stream, where a
    /// client no longer drops it and misreads the upstream's first event.
    #[test]
    fn no_notification_goes_before_a_byte_order_mark_starting_the_stream() {
        let mut boundary = EventBoundary::default();
        assert_eq!(boundary.feed(b""), None, "nothing seen yet");
        assert_eq!(boundary.feed(b"\xef\xbb\xbfdata: x\n"), None);
        assert_eq!(boundary.feed(b"\n"), Some(1));
        let mut boundary = EventBoundary::default();
        assert_eq!(boundary.feed(b"\xef"), None);
        assert_eq!(boundary.feed(b"\xbb\xbf: ping\n\n"), Some(10));
    }

    #[test]
    fn a_chunk_inside_one_event_has_no_boundary() {
        let mut boundary = EventBoundary::default();
        assert_eq!(boundary.feed(b"data: {\"par"), Some(0), "stream start");
        assert_eq!(boundary.feed(b"tial\":true}"), None);
        assert_eq!(boundary.feed(b"\n"), None, "one line ending is not the end");
        assert_eq!(boundary.feed(b"\n: ping"), Some(1));
        assert_eq!(boundary.feed(b"\r"), None);
        assert_eq!(
            boundary.feed(b"\n\r\n"),
            Some(3),
            "after the CRLF, not inside it"
        );
    }
}
