//! The per-request state machine. The host feeds it headers, body progress
//! and the `Check` outcome; it answers with the [`Action`] the host must
//! carry out. It never touches the host itself, so every path is unit
//! tested natively.
//!
//! ```text
//! headers ──► (POST) ReadingBody ──end──► Checking ──OK──► Allowed
//!    │                 │                     │
//!    ├─(GET/DELETE)────┼──────────► Checking └──deny/error──► Done
//!    │                 └─bad input / too big─────────────────► Done
//!    └─(GET/DELETE, stream open) NoBody ──end──► Checking
//!                                  └─any body byte──────────► Done
//! ```
//!
//! A GET or DELETE whose headers did not end the stream is held until it
//! ends: a body that nothing announced is refused like one that was, so
//! no byte of it reaches the upstream unchecked.
//!
//! An allowed request that came back with the caller's view (the service
//! sends it with every allowed request while a policy is in force) goes on
//! to the response side: every list result in the response is trimmed to
//! that view, event by event in any SSE stream (a POST's, a GET stream, a
//! GET resumed with `Last-Event-ID` that replays earlier events), and
//! buffered in a JSON body when the request may be answered with a list
//! ([`listing::buffers_json_answer`]).
//!
//! An upstream's authentication challenge never reaches the client (see
//! [`stale`]): a 401, or a 403 with `WWW-Authenticate`, is replaced by a
//! JSON-RPC error, and `WWW-Authenticate` is removed from any other
//! upstream response.

use crate::check::{CheckCall, Connection, check_call};
use crate::completion::{self, EventBoundary, Pending, StreamOwner};
use crate::config::{Config, ConfigError};
use crate::decision::{HeaderEdit, LocalReply, Verdict, decide_grpc};
use crate::jsonrpc;
use crate::listing::{self, ListTrim, SseTrimmer};
use crate::mcp::{self, Head, McpMessage, RequestError};
use crate::stale::{self, SharedRejected};
use crate::visibility::Visibility;
use serde_json::Value;
use std::rc::Rc;

/// The plugin configuration as the root context holds it: shared by every
/// request of the VM, possibly invalid (then every request fails closed).
pub type SharedConfig = Rc<Result<Config, ConfigError>>;

/// What the host must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Keep the request held (more body to come, or `Check` in flight).
    Wait,
    /// Dispatch this `Check`, keep holding the request, and report the
    /// outcome with [`RequestFlow::on_check_response`] or
    /// [`RequestFlow::on_dispatch_failed`].
    Check(CheckCall),
    /// Apply the edits in order and let the request go upstream.
    Continue(Vec<HeaderEdit>),
    /// Answer locally; nothing reaches upstream.
    Respond(LocalReply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    ReadingBody,
    /// A GET or DELETE (classified in `message`) waiting for the end of a
    /// request stream that must carry no body.
    NoBody,
    Checking,
    Allowed,
    Done,
}

/// What the host must do with the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseHeadersAction {
    /// Pass them on unchanged.
    Continue,
    /// Remove these headers (the body is about to change size), then pass.
    Remove(Vec<String>),
    /// Answer the client with this instead of the upstream's response.
    Respond(LocalReply),
}

/// What the host must do with a piece of the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBodyAction {
    /// Pass it on unchanged.
    Continue,
    /// Keep buffering; the whole body comes at the end of the stream.
    Buffer,
    /// Replace the body seen in this callback with these bytes, then pass.
    Replace(Vec<u8>),
}

/// How the response is being trimmed.
#[derive(Debug)]
enum ResponseTrim {
    None,
    Json(ListTrim),
    Sse(SseTrimmer),
}

/// One request's progress through the filter. `Debug` leaves out the
/// request headers (the client's token) and the injected credential.
pub struct RequestFlow {
    config: SharedConfig,
    state: State,
    headers: Vec<(String, String)>,
    connection: Connection,
    message: Option<McpMessage>,
    buffered: usize,
    /// The caller's view, for an allowed request under a policy.
    list_trim: Option<ListTrim>,
    response: ResponseTrim,
    /// The refreshable credential the service injected, if any.
    credential: Option<String>,
    /// Credentials the upstream refused (shared by every worker in Envoy).
    rejected: SharedRejected,
    /// The URL elicitation this request was answered with, for the host to
    /// remember ([`RequestFlow::take_elicitation`]).
    elicitation: Option<Pending>,
    /// An allowed GET stream's session, user and gateway.
    stream_owner: Option<StreamOwner>,
    /// Its SSE response, followed for places to announce completions.
    announcing: Option<EventBoundary>,
}

impl std::fmt::Debug for RequestFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFlow")
            .field("state", &self.state)
            .field("message", &self.message)
            .field("buffered", &self.buffered)
            .finish_non_exhaustive()
    }
}

impl RequestFlow {
    pub fn new(config: SharedConfig) -> RequestFlow {
        RequestFlow {
            config,
            state: State::Start,
            headers: Vec::new(),
            connection: Connection::default(),
            message: None,
            buffered: 0,
            list_trim: None,
            response: ResponseTrim::None,
            credential: None,
            rejected: stale::local_store(),
            elicitation: None,
            stream_owner: None,
            announcing: None,
        }
    }

    /// Shares the memory of refused credentials with this request.
    pub fn remembering(mut self, rejected: SharedRejected) -> RequestFlow {
        self.rejected = rejected;
        self
    }

    fn id(&self) -> Option<&Value> {
        self.message.as_ref().and_then(|m| m.id.as_ref())
    }

    fn respond(&mut self, reply: LocalReply) -> Action {
        self.state = State::Done;
        Action::Respond(reply)
    }

    fn reject(&mut self, error: RequestError) -> Action {
        let mut reply = LocalReply::error(
            error.http_status,
            error.id.as_ref(),
            error.jsonrpc_code,
            &error.message,
        );
        if error.http_status == 405 {
            reply
                .headers
                .push(("allow".into(), "GET, POST, DELETE".into()));
        }
        self.respond(reply)
    }

    fn too_large(&mut self, limit: usize, size: usize) -> Action {
        self.reject(RequestError::new(
            413,
            jsonrpc::INVALID_REQUEST,
            format!(
                "request body of {size} bytes exceeds the gateway's limit of {limit} bytes for one MCP message"
            ),
        ))
    }

    fn start_check(&mut self, config: &Config, body: &[u8], message: McpMessage) -> Action {
        // The refused-credential report is the filter's to make, not the client's.
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(stale::REJECTED_HEADER))
            .cloned()
            .collect();
        if let Some(value) = self.rejected.header_value() {
            headers.push((stale::REJECTED_HEADER.to_owned(), value));
        }
        let call = check_call(config, &headers, body, &self.connection, &message);
        self.message = Some(message);
        match call {
            Some(call) => {
                self.state = State::Checking;
                Action::Check(call)
            }
            None => self.on_dispatch_failed("the authz cluster name cannot be encoded"),
        }
    }

    /// Request headers arrived. `headers` are all of them (pseudo headers
    /// included); `connection` what the host knows about the peer.
    pub fn on_headers(
        &mut self,
        headers: Vec<(String, String)>,
        connection: Connection,
        end_of_stream: bool,
    ) -> Action {
        if self.state != State::Start {
            return Action::Wait;
        }
        self.headers = headers;
        self.connection = connection;
        let config = Rc::clone(&self.config);
        let Ok(config) = config.as_ref() else {
            return self.respond(LocalReply::error(
                503,
                None,
                jsonrpc::INTERNAL_ERROR,
                "the gateway's Latchkey filter is misconfigured (see the Envoy log); no request is forwarded until it is fixed",
            ));
        };
        match mcp::inspect_headers(&self.headers) {
            Err(e) => self.reject(e),
            Ok(Head::Complete(message)) if end_of_stream => self.start_check(config, &[], message),
            Ok(Head::Complete(message)) => {
                self.message = Some(message);
                self.state = State::NoBody;
                Action::Wait
            }
            Ok(Head::NeedsBody) => {
                let declared = mcp::header(&self.headers, "content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(size) = declared.filter(|s| *s > config.max_body_bytes) {
                    return self.too_large(config.max_body_bytes, size);
                }
                self.state = State::ReadingBody;
                if end_of_stream {
                    self.finish_body(config, Vec::new())
                } else {
                    Action::Wait
                }
            }
        }
    }

    /// Body data arrived; `buffered` is the total size held so far. At the
    /// end of the stream `read(buffered)` must return the whole body.
    pub fn on_body(
        &mut self,
        buffered: usize,
        end_of_stream: bool,
        read: impl FnOnce(usize) -> Option<Vec<u8>>,
    ) -> Action {
        match self.state {
            State::ReadingBody => {}
            State::NoBody => return self.on_no_body(buffered, end_of_stream),
            State::Allowed => return Action::Continue(Vec::new()),
            State::Start | State::Checking | State::Done => return Action::Wait,
        }
        self.buffered = buffered;
        let config = Rc::clone(&self.config);
        let Ok(config) = config.as_ref() else {
            return self.respond(LocalReply::unavailable(None, "misconfigured filter"));
        };
        if buffered > config.max_body_bytes {
            return self.too_large(config.max_body_bytes, buffered);
        }
        if !end_of_stream {
            return Action::Wait;
        }
        match read(buffered) {
            Some(body) if body.len() <= config.max_body_bytes => self.finish_body(config, body),
            Some(body) => self.too_large(config.max_body_bytes, body.len()),
            None if buffered == 0 => self.finish_body(config, Vec::new()),
            None => self.respond(LocalReply::error(
                500,
                None,
                jsonrpc::INTERNAL_ERROR,
                "the gateway could not read the request body",
            )),
        }
    }

    /// Body progress of a GET or DELETE: any byte is refused, the end of
    /// an empty stream starts its `Check`.
    fn on_no_body(&mut self, buffered: usize, end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let (Ok(config), Some(message)) = (config.as_ref(), self.message.take()) else {
            return self.respond(LocalReply::unavailable(None, "misconfigured filter"));
        };
        if buffered > 0 {
            let method = mcp::header(&self.headers, mcp::headers::METHOD).unwrap_or("GET");
            return self.reject(mcp::body_not_allowed(method));
        }
        if !end_of_stream {
            self.message = Some(message);
            return Action::Wait;
        }
        self.start_check(config, &[], message)
    }

    /// Request trailers arrived: the body is complete.
    pub fn on_trailers(&mut self, read: impl FnOnce(usize) -> Option<Vec<u8>>) -> Action {
        self.on_body(self.buffered, true, read)
    }

    fn finish_body(&mut self, config: &Config, body: Vec<u8>) -> Action {
        match mcp::classify_body(&self.headers, &body) {
            Ok(message) => self.start_check(config, &body, message),
            Err(e) => self.reject(e),
        }
    }

    /// The `Check` call finished: `grpc_status` as reported by the host,
    /// `body` the serialized `CheckResponse` (when OK and readable).
    pub fn on_check_response(&mut self, grpc_status: u32, body: Option<&[u8]>) -> Action {
        if self.state != State::Checking {
            return Action::Wait;
        }
        let checked = decide_grpc(grpc_status, body, &self.headers, self.id());
        let session = self.message.as_ref().and_then(|m| m.session_id.clone());
        match checked.verdict {
            Verdict::Allow(edits) => {
                self.state = State::Allowed;
                let stream = self
                    .message
                    .as_ref()
                    .is_some_and(|m| m.kind == mcp::MessageKind::Stream);
                if stream
                    && let (Some(session), Some(user), Some(gateway)) =
                        (session, checked.user, checked.gateway)
                {
                    self.stream_owner = Some(StreamOwner {
                        session,
                        user,
                        gateway,
                    });
                }
                self.list_trim = checked.visibility.map(|v| self.list_trim(v));
                if let Some(credential) = &checked.credential {
                    self.rejected.update(&mut |r| r.settled(credential));
                }
                self.credential = checked.credential;
                Action::Continue(edits)
            }
            Verdict::Deny(reply) => {
                // Only a session has a GET stream to announce on.
                if let (Some(e), Some(session)) = (checked.elicitation, session) {
                    self.elicitation = Some(Pending {
                        id: e.id,
                        user: e.user,
                        gateway: e.gateway,
                        session,
                        expires: e.expires,
                        completed: false,
                    });
                }
                self.respond(reply)
            }
        }
    }

    /// The URL elicitation this request was answered with, once: the host
    /// adds it to the shared [`completion::PendingList`].
    pub fn take_elicitation(&mut self) -> Option<Pending> {
        self.elicitation.take()
    }

    /// Whether the response is a GET stream watched for completions (its
    /// body goes to [`RequestFlow::on_stream_body`]).
    pub fn is_announcing(&self) -> bool {
        self.announcing.is_some()
    }

    /// A piece of a watched GET stream: passed on as it is, or with the
    /// completion notifications `take_completed(owner)` hands over put
    /// between two of the upstream's events.
    ///
    /// Under a policy the stream is trimmed first (a GET stream carries
    /// list results too: replayed ones, or answers the upstream sends
    /// there); the notifications then go between the trimmed events.
    pub fn on_stream_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
        read: impl FnOnce(usize) -> Option<Vec<u8>>,
        take_completed: impl FnOnce(&StreamOwner) -> Vec<String>,
    ) -> ResponseBodyAction {
        let (Some(boundary), Some(owner)) = (self.announcing.as_mut(), self.stream_owner.as_ref())
        else {
            return ResponseBodyAction::Continue;
        };
        let read = if size == 0 {
            Some(Vec::new())
        } else {
            read(size)
        };
        let (chunk, trimmed) = match (read, &mut self.response) {
            (Some(chunk), ResponseTrim::Sse(trimmer)) => {
                (trimmer.push(&chunk, end_of_stream), true)
            }
            (Some(chunk), _) => (chunk, false),
            // Unreadable and trimmed: nothing unchecked may go on.
            (None, ResponseTrim::Sse(_)) => return ResponseBodyAction::Replace(Vec::new()),
            // Unreadable: stop looking rather than insert blindly.
            (None, _) => {
                self.announcing = None;
                return ResponseBodyAction::Continue;
            }
        };
        let unchanged = if trimmed {
            ResponseBodyAction::Replace(chunk.clone())
        } else {
            ResponseBodyAction::Continue
        };
        let Some(at) = boundary.feed(&chunk) else {
            return unchanged;
        };
        let ids = take_completed(owner);
        if ids.is_empty() {
            return unchanged;
        }
        let events = completion::notification_events(&ids);
        ResponseBodyAction::Replace(completion::insert_events(&chunk, at, &events))
    }

    /// The trim for an allowed request's response, given the caller's view.
    fn list_trim(&self, visibility: Visibility) -> ListTrim {
        let message = self.message.as_ref();
        ListTrim {
            visibility,
            id: message.and_then(|m| m.id.clone()),
            private_cache_scope: message
                .and_then(|m| m.protocol_version.as_deref())
                .is_some_and(mcp::requires_header_mirroring),
        }
    }

    /// Response headers arrived (`:status` among them).
    pub fn on_response_headers(&mut self, headers: &[(String, String)]) -> ResponseHeadersAction {
        // Only an upstream's response: the filter's own local replies (its
        // 401 with Latchkey's challenge among them) pass as they are.
        if self.state != State::Allowed {
            return ResponseHeadersAction::Continue;
        }
        let status = mcp::header(headers, ":status");
        let challenged = mcp::header(headers, stale::CHALLENGE_HEADER).is_some();
        if stale::is_challenge(status, challenged) {
            let refreshable = self.credential.is_some() && status == Some("401");
            if let (Some(credential), true) = (&self.credential, refreshable) {
                self.rejected.update(&mut |r| r.remember(credential));
            }
            self.list_trim = None;
            self.stream_owner = None;
            let reply = stale::challenge_reply(self.id(), status.unwrap_or("401"), refreshable);
            return ResponseHeadersAction::Respond(reply);
        }
        let mut remove = Vec::new();
        if challenged {
            remove.push(stale::CHALLENGE_HEADER.to_owned());
        }
        let content_type = mcp::header(headers, "content-type").unwrap_or("");
        let success = status.is_some_and(|s| s.starts_with('2'));
        let sse = content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"));
        let limit = self
            .config
            .as_ref()
            .as_ref()
            .map_or(crate::config::DEFAULT_MAX_BODY_BYTES, |c| c.max_body_bytes);
        let trim = self.list_trim.take();
        let buffers_json = self
            .message
            .as_ref()
            .is_some_and(|m| listing::buffers_json_answer(m.method.as_deref()));
        if self.stream_owner.is_some() {
            if success && sse {
                self.announcing = Some(EventBoundary::default());
            } else {
                self.stream_owner = None;
            }
        }
        self.response = match trim {
            Some(trim) if sse => ResponseTrim::Sse(SseTrimmer::new(trim, limit)),
            Some(trim) if success && buffers_json => ResponseTrim::Json(trim),
            _ => ResponseTrim::None,
        };
        if self.announcing.is_some() || !matches!(self.response, ResponseTrim::None) {
            remove.push("content-length".into());
        }
        if remove.is_empty() {
            ResponseHeadersAction::Continue
        } else {
            ResponseHeadersAction::Remove(remove)
        }
    }

    /// Response body data: `size` bytes are visible to this callback (all
    /// of it so far when the host buffered, else this chunk);
    /// `read(size)` returns them.
    pub fn on_response_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
        read: impl FnOnce(usize) -> Option<Vec<u8>>,
    ) -> ResponseBodyAction {
        match &mut self.response {
            ResponseTrim::None => ResponseBodyAction::Continue,
            ResponseTrim::Json(_) if !end_of_stream => ResponseBodyAction::Buffer,
            ResponseTrim::Json(trim) => {
                let body = read(size).unwrap_or_default();
                match trim.json_body(&body) {
                    Some(trimmed) => ResponseBodyAction::Replace(trimmed),
                    None => ResponseBodyAction::Continue,
                }
            }
            ResponseTrim::Sse(trimmer) => {
                let chunk = if size == 0 {
                    Vec::new()
                } else {
                    read(size).unwrap_or_default()
                };
                ResponseBodyAction::Replace(trimmer.push(&chunk, end_of_stream))
            }
        }
    }

    /// The host refused to start the `Check` call (unknown cluster, bad
    /// argument, ...).
    pub fn on_dispatch_failed(&mut self, detail: &str) -> Action {
        let reply = LocalReply::unavailable(self.id(), detail);
        self.respond(reply)
    }

    /// The classified message, once known.
    /// How many request body bytes are held.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    pub fn message(&self) -> Option<&McpMessage> {
        self.message.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::MessageKind;
    use latchkey_proto::auth::attribute_context::HttpRequest;
    use latchkey_proto::auth::check_response::HttpResponse;
    use latchkey_proto::auth::{CheckRequest, CheckResponse, OkHttpResponse};
    use latchkey_proto::core::header_value_option::HeaderAppendAction;
    use latchkey_proto::core::{HeaderValue, HeaderValueOption};
    use prost::Message;
    use serde_json::json;

    fn config(max: usize) -> SharedConfig {
        Rc::new(Ok(Config {
            max_body_bytes: max,
            ..Config::default()
        }))
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn post(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = h(&[
            (":method", "POST"),
            (":path", "/mcp"),
            (":authority", "gw"),
            ("content-type", "application/json"),
            ("authorization", "Bearer user-token"),
        ]);
        v.extend(h(extra));
        v
    }

    /// Runs a POST with `body` delivered in one chunk.
    fn post_body(flow: &mut RequestFlow, headers: Vec<(String, String)>, body: &str) -> Action {
        assert_eq!(
            flow.on_headers(headers, Connection::default(), false),
            Action::Wait
        );
        let bytes = body.as_bytes().to_vec();
        flow.on_body(bytes.len(), true, |n| {
            assert_eq!(n, bytes.len());
            Some(bytes)
        })
    }

    fn reply(action: Action) -> (u16, Value, Vec<(String, String)>) {
        let Action::Respond(r) = action else {
            panic!("expected a local reply, got {action:?}");
        };
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "content-type" && v.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        (r.status, serde_json::from_str(&r.body).unwrap(), r.headers)
    }

    fn check_request(action: &Action) -> CheckRequest {
        let Action::Check(call) = action else {
            panic!("expected a Check, got {action:?}");
        };
        CheckRequest::decode(call.message.as_slice()).unwrap()
    }

    fn http(req: &CheckRequest) -> HttpRequest {
        req.attributes
            .clone()
            .unwrap()
            .request
            .unwrap()
            .http
            .unwrap()
    }

    fn mcp_of(req: &CheckRequest) -> McpMessage {
        let md = req.attributes.clone().unwrap().metadata_context.unwrap();
        McpMessage::from_metadata(&md.filter_metadata["latchkey.mcp"]).unwrap()
    }

    fn allowed_list(
        method: &str,
        version: Option<&str>,
        visibility: Option<Visibility>,
    ) -> RequestFlow {
        let mut flow = RequestFlow::new(config(1 << 20));
        let mut headers = post(&[]);
        if let Some(v) = version {
            headers.extend(h(&[("mcp-protocol-version", v), ("mcp-method", method)]));
        }
        let body = format!(r#"{{"jsonrpc":"2.0","id":5,"method":"{method}"}}"#);
        assert!(matches!(
            post_body(&mut flow, headers, &body),
            Action::Check(_)
        ));
        let mut resp = CheckResponse::default();
        if let Some(v) = visibility {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert(
                crate::visibility::VISIBILITY_KEY.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(v.to_struct())),
                },
            );
            resp.dynamic_metadata = Some(prost_types::Struct { fields });
        }
        assert!(matches!(
            flow.on_check_response(0, Some(&resp.encode_to_vec())),
            Action::Continue(_)
        ));
        flow
    }

    fn echo_only() -> Visibility {
        use crate::visibility::Rules;
        Visibility::new(
            Rules::new(&["echo".into()], &[]),
            Rules::default(),
            Rules::default(),
        )
    }

    const TOOLS: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"echo"},{"name":"add"}],"nextCursor":"n"}}"#;

    #[test]
    fn json_list_response_is_buffered_and_trimmed() {
        let mut flow = allowed_list("tools/list", None, Some(echo_only()));
        assert_eq!(
            flow.on_response_headers(&h(&[
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-length", "99")
            ])),
            ResponseHeadersAction::Remove(vec!["content-length".into()])
        );
        assert_eq!(
            flow.on_response_body(10, false, |_| None),
            ResponseBodyAction::Buffer
        );
        let ResponseBodyAction::Replace(out) =
            flow.on_response_body(TOOLS.len(), true, |_| Some(TOOLS.as_bytes().to_vec()))
        else {
            panic!("not replaced");
        };
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name":"echo"}]));
        assert_eq!(v["result"]["nextCursor"], "n");
        assert!(v["result"].get("cacheScope").is_none());
    }

    #[test]
    fn sse_list_response_is_trimmed_per_chunk_and_marked_private_on_2026() {
        let mut flow = allowed_list("tools/list", Some("2026-07-28"), Some(echo_only()));
        assert_eq!(
            flow.on_response_headers(&h(&[
                (":status", "200"),
                ("content-type", "text/event-stream")
            ])),
            ResponseHeadersAction::Remove(vec!["content-length".into()])
        );
        let stream = format!("event: message\ndata: {TOOLS}\n\n");
        let (a, b) = stream.split_at(20);
        let first = flow.on_response_body(a.len(), false, |_| Some(a.as_bytes().to_vec()));
        assert_eq!(first, ResponseBodyAction::Replace(Vec::new()));
        let ResponseBodyAction::Replace(out) =
            flow.on_response_body(b.len(), false, |_| Some(b.as_bytes().to_vec()))
        else {
            panic!("not replaced");
        };
        let text = String::from_utf8(out).unwrap();
        // The rewritten event's data line comes first (see listing.rs).
        assert!(text.starts_with("data: "), "{text}");
        assert!(text.ends_with("\nevent: message\n\n"), "{text}");
        assert!(!text.contains("\"add\""));
        assert!(text.contains("\"cacheScope\":\"private\""));
    }

    #[test]
    fn responses_without_a_view_or_for_other_methods_pass() {
        let mut flow = allowed_list("tools/list", None, None);
        assert_eq!(
            flow.on_response_headers(&h(&[
                (":status", "200"),
                ("content-type", "application/json")
            ])),
            ResponseHeadersAction::Continue
        );
        assert_eq!(
            flow.on_response_body(3, true, |_| panic!("read")),
            ResponseBodyAction::Continue
        );
        let mut flow = allowed_list("ping", None, Some(echo_only()));
        assert_eq!(
            flow.on_response_headers(&h(&[
                (":status", "200"),
                ("content-type", "application/json")
            ])),
            ResponseHeadersAction::Continue
        );
        // An error status with a non-JSON body is not a list: untouched.
        let mut flow = allowed_list("tools/list", None, Some(echo_only()));
        assert_eq!(
            flow.on_response_headers(&h(&[(":status", "502"), ("content-type", "text/plain")])),
            ResponseHeadersAction::Continue
        );
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":"call-1","method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

    /// An allowed `tools/call` whose Check says the injected credential is
    /// `credential` (none: not refreshable), sharing `memory`.
    fn allowed_call(
        memory: &SharedRejected,
        credential: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (RequestFlow, CheckRequest) {
        let mut flow = RequestFlow::new(config(1 << 20)).remembering(Rc::clone(memory));
        let action = post_body(&mut flow, post(extra), CALL);
        let req = check_request(&action);
        let mut resp = CheckResponse::default();
        if let Some(c) = credential {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert(
                stale::CREDENTIAL_KEY.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(c.to_owned())),
                },
            );
            resp.dynamic_metadata = Some(prost_types::Struct { fields });
        }
        assert!(matches!(
            flow.on_check_response(0, Some(&resp.encode_to_vec())),
            Action::Continue(_)
        ));
        (flow, req)
    }

    #[test]
    fn an_upstream_401_for_an_injected_token_is_a_retryable_error_and_reported_next_time() {
        let memory = stale::local_store();
        // A client cannot report refusals itself.
        let (mut flow, req) = allowed_call(
            &memory,
            Some("crm-alice@3"),
            &[(stale::REJECTED_HEADER, "x@1")],
        );
        assert!(!http(&req).headers.contains_key(stale::REJECTED_HEADER));
        let ResponseHeadersAction::Respond(r) = flow.on_response_headers(&h(&[
            (":status", "401"),
            ("www-authenticate", "Bearer error=\"invalid_token\""),
        ])) else {
            panic!("the 401 must not reach the client");
        };
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["id"], "call-1");
        assert_eq!(v["error"]["code"], jsonrpc::INTERNAL_ERROR);

        // The next Check names the refused credential.
        let (mut flow, req) = allowed_call(&memory, Some("crm-alice@4"), &[]);
        assert_eq!(http(&req).headers[stale::REJECTED_HEADER], "crm-alice@3");
        // Version 4 went upstream and was accepted: settled.
        assert_eq!(
            flow.on_response_headers(&h(&[
                (":status", "200"),
                ("content-type", "application/json")
            ])),
            ResponseHeadersAction::Continue
        );
        let (_, req) = allowed_call(&memory, None, &[]);
        assert!(!http(&req).headers.contains_key(stale::REJECTED_HEADER));

        // A 401 with no refreshable credential (a shared key, no credential)
        // is replaced too, but there is nothing to refresh.
        let (mut flow, _) = allowed_call(&memory, None, &[]);
        let ResponseHeadersAction::Respond(r) = flow.on_response_headers(&h(&[(":status", "401")]))
        else {
            panic!("the 401 must not reach the client");
        };
        assert!(r.body.contains("tell the operator"), "{}", r.body);
        assert_eq!(memory.header_value(), None);
    }

    #[test]
    fn no_upstream_auth_challenge_reaches_the_client_whatever_was_injected() {
        let challenge = (
            "www-authenticate",
            r#"Bearer resource_metadata="https://evil.example/x""#,
        );
        for credential in [Some("crm-alice@3"), None] {
            for status in ["401", "403"] {
                let memory = stale::local_store();
                let (mut flow, _) = allowed_call(&memory, credential, &[]);
                let ResponseHeadersAction::Respond(r) = flow.on_response_headers(&h(&[
                    (":status", status),
                    ("content-type", "application/json"),
                    challenge,
                ])) else {
                    panic!("{status} {credential:?}: the challenge must not reach the client");
                };
                let (code, v, headers) = reply(Action::Respond(r));
                assert_eq!(code, 200, "{status}");
                assert_eq!(v["id"], "call-1");
                assert_eq!(v["error"]["code"], jsonrpc::INTERNAL_ERROR);
                assert!(!headers.iter().any(|(k, _)| k == "www-authenticate"));
                assert!(!v.to_string().contains("evil"));
                // Only a 401 to a person's OAuth token is refreshed.
                let remembered = credential.is_some() && status == "401";
                assert_eq!(memory.header_value().is_some(), remembered, "{status}");
            }
        }
        // A 403 without a challenge is the upstream's own refusal.
        let (mut flow, _) = allowed_call(&stale::local_store(), None, &[]);
        assert_eq!(
            flow.on_response_headers(&h(&[(":status", "403")])),
            ResponseHeadersAction::Continue
        );
        // A challenge header on any other status is removed.
        let (mut flow, _) = allowed_call(&stale::local_store(), None, &[]);
        assert_eq!(
            flow.on_response_headers(&h(&[(":status", "200"), challenge])),
            ResponseHeadersAction::Remove(vec!["www-authenticate".into()])
        );
        // A GET stream has no id to answer: 502.
        let mut flow = RequestFlow::new(config(1024));
        let get = h(&[(":method", "GET"), ("authorization", "Bearer t")]);
        check_request(&flow.on_headers(get, Connection::default(), true));
        flow.on_check_response(0, Some(b""));
        let ResponseHeadersAction::Respond(r) =
            flow.on_response_headers(&h(&[(":status", "401"), challenge]))
        else {
            panic!("the challenge must not reach the client");
        };
        assert_eq!(r.status, 502);
    }

    fn view_metadata(v: &Visibility) -> (&'static str, prost_types::Value) {
        (
            crate::visibility::VISIBILITY_KEY,
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(v.to_struct())),
            },
        )
    }

    /// An allowed POST of `body` whose Check carried the echo-only view.
    fn allowed_with_view(body: &str) -> RequestFlow {
        let mut flow = RequestFlow::new(config(1 << 20));
        post_body(&mut flow, post(&[]), body);
        let resp = CheckResponse {
            dynamic_metadata: Some(metadata(vec![view_metadata(&echo_only())])),
            ..Default::default()
        };
        assert!(matches!(
            flow.on_check_response(0, Some(&resp.encode_to_vec())),
            Action::Continue(_)
        ));
        flow
    }

    fn tool_names(out: &[u8]) -> Vec<String> {
        let text = String::from_utf8(out.to_vec()).unwrap();
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or(&text);
        let v: Value = serde_json::from_str(data).unwrap();
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_filters_own_401_keeps_its_challenge() {
        let mut flow = RequestFlow::new(config(1024));
        post_body(&mut flow, post(&[]), CALL);
        let denied = CheckResponse {
            status: Some(latchkey_proto::google::rpc::Status {
                code: 16,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (status, _, _) = reply(flow.on_check_response(0, Some(&denied.encode_to_vec())));
        assert_eq!(status, 401);
        // Envoy may run the local reply through this filter's response side.
        assert_eq!(
            flow.on_response_headers(&h(&[
                (":status", "401"),
                (
                    "www-authenticate",
                    "Bearer resource_metadata=\"https://gw/x\""
                )
            ])),
            ResponseHeadersAction::Continue
        );
    }

    #[test]
    fn a_list_is_trimmed_whatever_id_or_method_it_answers() {
        let json = [(":status", "200"), ("content-type", "application/json")];
        let sse = [(":status", "200"), ("content-type", "text/event-stream")];
        // Request id 4.0, answered as 4; an unknown method; a list carried
        // in a tools/call's SSE stream.
        for (request, headers) in [
            (r#"{"jsonrpc":"2.0","id":4.0,"method":"tools/list"}"#, &json),
            (r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#, &sse),
            (r#"{"jsonrpc":"2.0","id":4,"method":"Tools/List"}"#, &json),
            (CALL, &sse),
        ] {
            let mut flow = allowed_with_view(request);
            assert_eq!(
                flow.on_response_headers(&h(headers)),
                ResponseHeadersAction::Remove(vec!["content-length".into()]),
                "{request}"
            );
            let answer = TOOLS.replace("\"id\":5", "\"id\":4");
            let body = if headers == &sse {
                format!("id: e1\ndata: {answer}\n\n")
            } else {
                answer
            };
            let ResponseBodyAction::Replace(out) =
                flow.on_response_body(body.len(), true, |_| Some(body.clone().into_bytes()))
            else {
                panic!("{request}: not trimmed");
            };
            assert_eq!(tool_names(&out), ["echo"], "{request}");
        }
        // A tools/call answered in JSON streams through unbuffered.
        let mut flow = allowed_with_view(CALL);
        assert_eq!(
            flow.on_response_headers(&h(&json)),
            ResponseHeadersAction::Continue
        );
    }

    #[test]
    fn a_resumed_get_stream_is_trimmed_and_still_announces_completions() {
        let mut flow = RequestFlow::new(config(1 << 20));
        let headers = h(&[
            (":method", "GET"),
            ("accept", "text/event-stream"),
            ("authorization", "Bearer t"),
            ("mcp-session-id", "sess-1"),
            ("last-event-id", "e0"),
        ]);
        check_request(&flow.on_headers(headers, Connection::default(), true));
        let resp = CheckResponse {
            dynamic_metadata: Some(metadata(vec![
                ("user", text("alice")),
                ("gateway", text("gw")),
                view_metadata(&echo_only()),
            ])),
            ..Default::default()
        };
        flow.on_check_response(0, Some(&resp.encode_to_vec()));
        assert_eq!(
            flow.on_response_headers(&h(&[
                (":status", "200"),
                ("content-type", "text/event-stream")
            ])),
            ResponseHeadersAction::Remove(vec!["content-length".into()])
        );
        assert!(flow.is_announcing());
        // The replayed list, cut in two chunks.
        let replay = format!("id: e1\ndata: {TOOLS}\n\n");
        let (a, b) = replay.split_at(30);
        let out = flow.on_stream_body(a.len(), false, |_| Some(a.into()), |_| Vec::new());
        assert_eq!(out, ResponseBodyAction::Replace(Vec::new()), "held");
        let ResponseBodyAction::Replace(out) =
            flow.on_stream_body(b.len(), false, |_| Some(b.into()), |_| vec!["c-1".into()])
        else {
            panic!("trimmed");
        };
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("\"add\""), "{text}");
        assert!(text.contains("\"echo\""));
        assert!(text.contains(r#""elicitationId":"c-1""#), "{text}");
    }

    #[test]
    fn tools_call_checks_then_continues_without_authorization() {
        let mut flow = RequestFlow::new(config(1024));
        let action = post_body(&mut flow, post(&[("x-request-id", "r1")]), CALL);
        let req = check_request(&action);
        let http = http(&req);
        assert_eq!(http.raw_body, CALL.as_bytes());
        assert_eq!(http.headers["authorization"], "Bearer user-token");
        assert_eq!(http.id, "r1");
        let m = mcp_of(&req);
        assert_eq!(m.kind, MessageKind::Request);
        assert_eq!(m.name.as_deref(), Some("echo"));
        assert_eq!(m.id, Some(json!("call-1")));

        let resp = CheckResponse {
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "authorization".into(),
                        value: "Bearer downstream".into(),
                        raw_value: vec![],
                    }),
                    append: None,
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    keep_empty_value: false,
                }],
                ..OkHttpResponse::default()
            })),
            ..CheckResponse::default()
        };
        let action = flow.on_check_response(0, Some(&resp.encode_to_vec()));
        assert_eq!(
            action,
            Action::Continue(vec![
                HeaderEdit::Remove("authorization".into()),
                HeaderEdit::Set("authorization".into(), "Bearer downstream".into()),
            ])
        );
        // Late callbacks after the decision pass through.
        assert_eq!(flow.on_body(0, true, |_| None), Action::Continue(vec![]));
        assert_eq!(flow.on_check_response(0, None), Action::Wait);
    }

    #[test]
    fn body_in_chunks_and_trailers() {
        let mut flow = RequestFlow::new(config(1024));
        assert_eq!(
            flow.on_headers(post(&[]), Connection::default(), false),
            Action::Wait
        );
        assert_eq!(flow.on_body(10, false, |_| unreachable!()), Action::Wait);
        assert_eq!(flow.on_body(40, false, |_| unreachable!()), Action::Wait);
        let action = flow.on_trailers(|n| {
            assert_eq!(n, 40);
            Some(CALL.as_bytes().to_vec())
        });
        assert!(matches!(action, Action::Check(_)));
        assert_eq!(
            flow.message().unwrap().method.as_deref(),
            Some("tools/call")
        );
    }

    #[test]
    fn bad_inputs_answer_locally() {
        type Case<'a> = (Vec<(String, String)>, &'a str, u16, i64, Value);
        let cases: Vec<Case> = vec![
            (post(&[]), "{not json", 400, -32700, Value::Null),
            (post(&[]), "", 400, -32700, Value::Null),
            (
                post(&[]),
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                400,
                -32600,
                Value::Null,
            ),
            (
                post(&[]),
                r#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#,
                400,
                -32600,
                json!(3),
            ),
            (
                post(&[
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "other"),
                ]),
                CALL,
                400,
                -32020,
                json!("call-1"),
            ),
        ];
        for (headers, body, status, code, id) in cases {
            let mut flow = RequestFlow::new(config(1024));
            let (s, v, _) = reply(post_body(&mut flow, headers, body));
            assert_eq!(
                (s, v["error"]["code"].as_i64().unwrap()),
                (status, code),
                "{body}"
            );
            assert_eq!(v["id"], id, "{body}");
            assert_eq!(v["jsonrpc"], "2.0");
            // Nothing else happens afterwards.
            assert_eq!(flow.on_check_response(0, Some(b"")), Action::Wait);
        }
    }

    #[test]
    fn empty_post_with_end_of_stream_on_headers() {
        let mut flow = RequestFlow::new(config(1024));
        let (s, v, _) = reply(flow.on_headers(post(&[]), Connection::default(), true));
        assert_eq!(s, 400);
        assert_eq!(v["error"]["code"], -32700);
    }

    #[test]
    fn wrong_content_type_is_415_and_method_405() {
        let mut flow = RequestFlow::new(config(1024));
        let headers = h(&[(":method", "POST"), ("content-type", "text/plain")]);
        let (s, v, _) = reply(flow.on_headers(headers, Connection::default(), false));
        assert_eq!(s, 415);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );

        let mut flow = RequestFlow::new(config(1024));
        let (s, _, headers) =
            reply(flow.on_headers(h(&[(":method", "PUT")]), Connection::default(), false));
        assert_eq!(s, 405);
        assert!(headers.contains(&("allow".into(), "GET, POST, DELETE".into())));
    }

    #[test]
    fn body_limit_by_content_length_and_by_accumulated_size() {
        let mut flow = RequestFlow::new(config(16));
        let (s, v, _) = reply(flow.on_headers(
            post(&[("content-length", "17")]),
            Connection::default(),
            false,
        ));
        assert_eq!(s, 413);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("limit of 16 bytes")
        );

        let mut flow = RequestFlow::new(config(16));
        assert_eq!(
            flow.on_headers(
                post(&[("content-length", "16")]),
                Connection::default(),
                false
            ),
            Action::Wait
        );
        assert_eq!(flow.on_body(16, false, |_| unreachable!()), Action::Wait);
        let (s, _, _) = reply(flow.on_body(17, false, |_| unreachable!()));
        assert_eq!(s, 413);

        // Exactly at the limit is fine.
        let body = r#"{"jsonrpc":"2.0","method":"x"}"#;
        let mut flow = RequestFlow::new(config(body.len()));
        assert!(matches!(
            post_body(&mut flow, post(&[]), body),
            Action::Check(_)
        ));
        // A host handing over more than it announced is still bounded.
        let mut flow = RequestFlow::new(config(8));
        flow.on_headers(post(&[]), Connection::default(), false);
        let (s, _, _) = reply(flow.on_body(4, true, |_| Some(vec![b' '; 9])));
        assert_eq!(s, 413);
    }

    #[test]
    fn unreadable_body_fails_closed() {
        let mut flow = RequestFlow::new(config(1024));
        flow.on_headers(post(&[]), Connection::default(), false);
        let (s, _, _) = reply(flow.on_body(10, true, |_| None));
        assert_eq!(s, 500);
    }

    #[test]
    fn get_and_delete_check_from_headers() {
        for (method, kind) in [
            ("GET", MessageKind::Stream),
            ("DELETE", MessageKind::SessionEnd),
        ] {
            let mut flow = RequestFlow::new(config(1024));
            let headers = h(&[
                (":method", method),
                ("authorization", "Bearer t"),
                ("mcp-session-id", "sess-9"),
            ]);
            let action = flow.on_headers(headers, Connection::default(), true);
            let req = check_request(&action);
            let m = mcp_of(&req);
            assert_eq!(m.kind, kind);
            assert_eq!(m.session_id.as_deref(), Some("sess-9"));
            assert!(http(&req).raw_body.is_empty());
            // Body data while checking stays held.
            assert_eq!(flow.on_body(3, false, |_| None), Action::Wait);
            assert!(matches!(
                flow.on_check_response(0, Some(b"")),
                Action::Continue(_)
            ));
        }
    }

    #[test]
    fn a_get_or_delete_body_is_refused_before_any_check_even_unannounced() {
        for method in ["GET", "DELETE"] {
            // Announced: refused from the headers.
            let mut flow = RequestFlow::new(config(1024));
            let headers = h(&[(":method", method), ("content-length", "2")]);
            let (s, body, _) = reply(flow.on_headers(headers, Connection::default(), false));
            assert_eq!(s, 400, "{body}");
            // Unannounced (HTTP/2 DATA, no length): held, then refused.
            let mut flow = RequestFlow::new(config(1024));
            let headers = h(&[(":method", method)]);
            assert_eq!(
                flow.on_headers(headers, Connection::default(), false),
                Action::Wait
            );
            let (s, body, _) = reply(flow.on_body(2, true, |_| Some(b"{}".to_vec())));
            assert_eq!(s, 400, "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("must not carry a body")
            );
            // The control: the stream ends with no byte, the Check goes out.
            let mut flow = RequestFlow::new(config(1024));
            let headers = h(&[(":method", method), ("mcp-session-id", "s-1")]);
            assert_eq!(
                flow.on_headers(headers, Connection::default(), false),
                Action::Wait
            );
            assert_eq!(flow.on_body(0, false, |_| None), Action::Wait);
            let req = check_request(&flow.on_body(0, true, |_| None));
            assert_eq!(mcp_of(&req).session_id.as_deref(), Some("s-1"));
        }
    }

    #[test]
    fn an_absurd_field_is_answered_before_any_check() {
        let mut flow = RequestFlow::new(config(4 << 20));
        let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "t".repeat(1_000_000)}})
        .to_string();
        let (s, body, _) = reply(post_body(&mut flow, post(&[]), &body));
        assert_eq!((s, &body["id"]), (413, &json!(3)));
    }

    #[test]
    fn notification_and_response_are_checked_too() {
        for (body, kind) in [
            (
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                MessageKind::Notification,
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"result":{}}"#,
                MessageKind::Response,
            ),
        ] {
            let mut flow = RequestFlow::new(config(1024));
            let action = post_body(&mut flow, post(&[]), body);
            assert_eq!(mcp_of(&check_request(&action)).kind, kind);
        }
    }

    #[test]
    fn timeout_grpc_failure_and_dispatch_failure_are_503_with_id() {
        for status in [4u32, 14, 13] {
            let mut flow = RequestFlow::new(config(1024));
            post_body(&mut flow, post(&[]), CALL);
            let (s, v, _) = reply(flow.on_check_response(status, None));
            assert_eq!(s, 503);
            assert_eq!(v["id"], "call-1");
            assert_eq!(v["error"]["code"], -32603);
        }
        let mut flow = RequestFlow::new(config(1024));
        post_body(
            &mut flow,
            post(&[]),
            r#"{"jsonrpc":"2.0","id":12,"method":"ping"}"#,
        );
        let (s, v, _) = reply(flow.on_dispatch_failed("could not start the call"));
        assert_eq!(s, 503);
        assert_eq!(v["id"], 12);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("authorization service unavailable")
        );
    }

    #[test]
    fn invalid_config_fails_closed() {
        let bad: SharedConfig = Rc::new(Config::parse(Some(b"{\"max_body_bytes\":0}")));
        for headers in [
            post(&[]),
            h(&[(":method", "GET")]),
            h(&[(":method", "PUT")]),
        ] {
            let mut flow = RequestFlow::new(Rc::clone(&bad));
            let (s, v, _) = reply(flow.on_headers(headers, Connection::default(), false));
            assert_eq!(s, 503);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("misconfigured")
            );
            assert_eq!(
                flow.on_body(1, true, |_| Some(b"{}".to_vec())),
                Action::Wait
            );
        }
    }

    fn metadata(fields: Vec<(&str, prost_types::Value)>) -> prost_types::Struct {
        prost_types::Struct {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    fn text(s: &str) -> prost_types::Value {
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
        }
    }

    /// A -32042 refusal carrying `url_elicitation` metadata.
    fn elicitation_refusal() -> Vec<u8> {
        let e = metadata(vec![
            (completion::ID, text("consent-1")),
            (completion::USER, text("alice")),
            (completion::GATEWAY, text("gw")),
            (
                completion::EXPIRES,
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(1_900_000_000.0)),
                },
            ),
        ]);
        CheckResponse {
            status: Some(latchkey_proto::google::rpc::Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(
                latchkey_proto::auth::DeniedHttpResponse {
                    status: Some(latchkey_proto::envoy::r#type::v3::HttpStatus { code: 200 }),
                    body: r#"{"jsonrpc":"2.0","id":"call-1","error":{"code":-32042,"message":"connect"}}"#
                        .into(),
                    ..Default::default()
                },
            )),
            dynamic_metadata: Some(metadata(vec![(
                completion::ELICITATION_KEY,
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(e)),
                },
            )])),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_url_elicitation_in_a_session_is_handed_to_the_host_once() {
        let mut flow = RequestFlow::new(config(1 << 20));
        post_body(&mut flow, post(&[("mcp-session-id", "sess-1")]), CALL);
        let (status, body, _) = reply(flow.on_check_response(0, Some(&elicitation_refusal())));
        assert_eq!(
            (status, body["error"]["code"].as_i64()),
            (200, Some(-32042))
        );
        let pending = flow.take_elicitation().expect("remembered");
        assert_eq!(
            pending,
            Pending {
                id: "consent-1".into(),
                user: "alice".into(),
                gateway: "gw".into(),
                session: "sess-1".into(),
                expires: 1_900_000_000,
                completed: false,
            }
        );
        assert_eq!(flow.take_elicitation(), None);
        // Without a session there is no stream to announce it on.
        let mut flow = RequestFlow::new(config(1 << 20));
        post_body(&mut flow, post(&[]), CALL);
        reply(flow.on_check_response(0, Some(&elicitation_refusal())));
        assert_eq!(flow.take_elicitation(), None);
    }

    /// An allowed GET stream of alice on gateway gw, session sess-1.
    fn allowed_stream(response_headers: &[(&str, &str)]) -> RequestFlow {
        let mut flow = RequestFlow::new(config(1024));
        let headers = h(&[
            (":method", "GET"),
            ("accept", "text/event-stream"),
            ("authorization", "Bearer t"),
            ("mcp-session-id", "sess-1"),
        ]);
        check_request(&flow.on_headers(headers, Connection::default(), true));
        let resp = CheckResponse {
            dynamic_metadata: Some(metadata(vec![
                ("user", text("alice")),
                ("gateway", text("gw")),
            ])),
            ..Default::default()
        };
        assert!(matches!(
            flow.on_check_response(0, Some(&resp.encode_to_vec())),
            Action::Continue(_)
        ));
        flow.on_response_headers(&h(response_headers));
        flow
    }

    #[test]
    fn completions_go_on_the_owners_get_stream_between_events() {
        let mut flow = allowed_stream(&[(":status", "200"), ("content-type", "text/event-stream")]);
        assert!(flow.is_announcing());
        let expected = StreamOwner {
            session: "sess-1".into(),
            user: "alice".into(),
            gateway: "gw".into(),
        };
        // Nothing completed: the chunk (one event and half of the next)
        // passes as it is.
        let chunk = b"data: {\"a\":1}\n\ndata: {\"b\"".to_vec();
        let action = flow.on_stream_body(
            chunk.len(),
            false,
            |_| Some(chunk.clone()),
            |owner| {
                assert_eq!(owner, &expected);
                Vec::new()
            },
        );
        assert_eq!(action, ResponseBodyAction::Continue);
        // Inside that event: no place to put one, and nothing is taken.
        let middle = b":2".to_vec();
        let action = flow.on_stream_body(
            middle.len(),
            false,
            |_| Some(middle.clone()),
            |_| panic!("nothing may be taken where it cannot be put"),
        );
        assert_eq!(action, ResponseBodyAction::Continue);
        // The end of it and a keep-alive: ours goes after both.
        let rest = b"}\n\n: ping\n\n".to_vec();
        let ResponseBodyAction::Replace(out) = flow.on_stream_body(
            rest.len(),
            false,
            |_| Some(rest.clone()),
            |_| vec!["consent-1".into()],
        ) else {
            panic!("the notification must be sent");
        };
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("}\n\n: ping\n\nevent: message\ndata: "),
            "{text}"
        );
        assert!(text.contains(r#""elicitationId":"consent-1""#));
        assert!(text.ends_with("\n\n"));
    }

    #[test]
    fn only_an_allowed_sse_get_stream_is_watched() {
        assert!(!allowed_stream(&[(":status", "405")]).is_announcing());
        assert!(
            !allowed_stream(&[(":status", "200"), ("content-type", "application/json")])
                .is_announcing()
        );
        // A POST's SSE response is not a GET stream.
        let (mut flow, _) = allowed_call(&stale::local_store(), None, &[("mcp-session-id", "s")]);
        flow.on_response_headers(&h(&[
            (":status", "200"),
            ("content-type", "text/event-stream"),
        ]));
        assert!(!flow.is_announcing());
    }
}
