//! In-band consent: when a per-user server has no usable identity for the
//! caller, the answer that sends the person to the connect page, in the
//! form the client's MCP version and capabilities understand, and the
//! consent request it points at.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use latchkey_filter::jsonrpc;
use latchkey_filter::mcp::RequestError;
use serde_json::{Value, json};
use url::Url;

use crate::context::RequestContext;
use crate::decide::{Attribution, Deny, PendingElicitation};
use latchkey_core::config::ConnectConfig;
use latchkey_core::identity::now_rfc3339;
use latchkey_core::vault::KeyRing;
use latchkey_store::credentials::Credentials;
use serde::{Deserialize, Serialize};

/// A consent request handed to a client, stored under
/// `Store::consent_key(id)` until it expires. The connect link carries only
/// `id` (random, no personal data, not a credential): opening it still
/// needs signing in, and only the person in `user` can complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub id: String,
    /// Who asked: the signed-in person must be this user.
    pub user: String,
    pub gateway: String,
    /// The server that needs an identity (the connect page also offers the
    /// gateway's other per-user servers that still need one).
    pub server: String,
    pub assignment: String,
    /// The agent that made the call, if one was recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    /// Set by the connect page once the user has an identity for `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// 2025-11-25: "this request needs a URL-mode elicitation first".
pub const URL_ELICITATION_REQUIRED: i64 = -32042;
/// 2026-07-28: the server needs a capability the client did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// Where a 2026-07-28 request declares what the client can do.
pub const CLIENT_CAPABILITIES_META: &str = "io.modelcontextprotocol/clientCapabilities";
/// The first revision without sessions, where consent is an `InputRequiredResult`.
const MULTI_ROUND_TRIP_VERSION: &str = "2026-07-28";
/// The first revision with URL-mode elicitation (and -32042).
const URL_ELICITATION_VERSION: &str = "2025-11-25";
/// The requests that may answer with an `InputRequiredResult`.
const INPUT_REQUIRED_METHODS: [&str; 3] = ["tools/call", "resources/read", "prompts/get"];
/// Marks a `requestState` Latchkey issued (the filter keeps it from the upstream).
pub use latchkey_filter::round_trip::REQUEST_STATE_PREFIX;
/// How long a client's declared capabilities are remembered.
const CAPABILITIES_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The answer a client understands when it needs to connect an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerForm {
    /// 2026-07-28 and later, on `tools/call`, `resources/read` or
    /// `prompts/get`, from a client declaring URL-mode elicitation: an
    /// `InputRequiredResult` with one URL elicitation and a `requestState`.
    InputRequired,
    /// 2025-11-25, from a client that declared URL-mode elicitation at
    /// `initialize`: JSON-RPC error -32042 with one URL elicitation.
    UrlElicitationRequired,
    /// 2026-07-28 and later, where an `InputRequiredResult` would do but the
    /// client declared no URL mode: -32021 naming the capability.
    MissingCapability,
    /// Anything else: a JSON-RPC error whose message carries the link.
    LinkInMessage,
}

/// Protocol revisions are dates, so they order as strings.
fn at_least(version: Option<&str>, revision: &str) -> bool {
    version.is_some_and(|v| v.len() == revision.len() && v >= revision)
}

pub fn answer_form(version: Option<&str>, method: Option<&str>, url_declared: bool) -> AnswerForm {
    if at_least(version, MULTI_ROUND_TRIP_VERSION) {
        if !method.is_some_and(|m| INPUT_REQUIRED_METHODS.contains(&m)) {
            return AnswerForm::LinkInMessage;
        }
        return if url_declared {
            AnswerForm::InputRequired
        } else {
            AnswerForm::MissingCapability
        };
    }
    if url_declared && at_least(version, URL_ELICITATION_VERSION) && method != Some("initialize") {
        return AnswerForm::UrlElicitationRequired;
    }
    AnswerForm::LinkInMessage
}

/// Whether declared client capabilities include URL-mode elicitation
/// (`elicitation: {}` alone means form mode only).
pub fn declares_url_elicitation(capabilities: &Value) -> bool {
    capabilities
        .get("elicitation")
        .and_then(|e| e.get("url"))
        .is_some_and(Value::is_object)
}

/// The capabilities a message declares: `params.capabilities` of an
/// `initialize`, or `params._meta["io.modelcontextprotocol/clientCapabilities"]`
/// of any 2026-07-28 request.
pub fn declared_capabilities(message: &Value) -> Option<&Value> {
    let params = message.get("params")?;
    if message.get("method").and_then(Value::as_str) == Some("initialize") {
        return params.get("capabilities");
    }
    params.get("_meta")?.get(CLIENT_CAPABILITIES_META)
}

/// The link a person opens to connect: it names the gateway and the
/// consent request, nothing about the person.
pub fn connect_link(public_url: &Url, gateway: &str, request: &str) -> Url {
    let mut url = public_url.clone();
    let path = format!("{}/connect/{gateway}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.query_pairs_mut()
        .clear()
        .append_pair("request", request);
    url
}

/// What a `requestState` is bound to: who asked, where, and for which call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateClaims {
    /// The consent request.
    pub cid: String,
    pub sub: String,
    pub gw: String,
    pub asg: String,
    /// Method and name of the original request.
    pub m: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Unix seconds.
    pub exp: i64,
}

/// Why a `requestState` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("it is not in the form Latchkey issues")]
    Malformed,
    #[error("it was signed with a key this gateway no longer holds")]
    UnknownKey,
    #[error("its signature does not match (it was changed)")]
    BadSignature,
    #[error("it has expired")]
    Expired,
    #[error("it was issued to another user")]
    OtherUser,
    #[error("it was issued for a different request ({0})")]
    OtherRequest(&'static str),
}

/// Signs `claims` with master key `kid`'s derived signing key:
/// `lk1.<kid>.<claims>.<mac>`, each part base64url.
pub fn seal_state(keys: &KeyRing, kid: &str, claims: &StateClaims) -> Option<String> {
    let key = keys.signing_key(kid)?;
    let kid = B64.encode(kid);
    let payload = B64.encode(serde_json::to_vec(claims).ok()?);
    let signed = format!("{REQUEST_STATE_PREFIX}{kid}.{payload}");
    let mac = aws_lc_rs::hmac::sign(key, signed.as_bytes());
    Some(format!("{signed}.{}", B64.encode(mac.as_ref())))
}

/// Checks a `requestState` this service issued: signature, expiry, and that
/// it belongs to `expected`'s user, gateway, assignment and call.
pub fn open_state(
    keys: &KeyRing,
    state: &str,
    now: i64,
    expected: &StateClaims,
) -> Result<StateClaims, StateError> {
    let rest = state
        .strip_prefix(REQUEST_STATE_PREFIX)
        .ok_or(StateError::Malformed)?;
    let (signed_part, mac) = rest.rsplit_once('.').ok_or(StateError::Malformed)?;
    let (kid, payload) = signed_part.split_once('.').ok_or(StateError::Malformed)?;
    let kid = String::from_utf8(B64.decode(kid).map_err(|_| StateError::Malformed)?)
        .map_err(|_| StateError::Malformed)?;
    let mac = B64.decode(mac).map_err(|_| StateError::Malformed)?;
    let key = keys.signing_key(&kid).ok_or(StateError::UnknownKey)?;
    let signed = &state[..REQUEST_STATE_PREFIX.len() + signed_part.len()];
    aws_lc_rs::hmac::verify(key, signed.as_bytes(), &mac).map_err(|_| StateError::BadSignature)?;
    let claims: StateClaims = B64
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(StateError::Malformed)?;
    if claims.exp < now {
        return Err(StateError::Expired);
    }
    if claims.sub != expected.sub {
        return Err(StateError::OtherUser);
    }
    let mismatch = [
        (claims.gw != expected.gw, "gateway"),
        (claims.asg != expected.asg, "server assignment"),
        (claims.m != expected.m, "method"),
        (claims.n != expected.n, "tool, prompt or resource"),
    ];
    if let Some((_, what)) = mismatch.iter().find(|(differs, _)| *differs) {
        return Err(StateError::OtherRequest(what));
    }
    Ok(claims)
}

/// Whether a message body may carry a Latchkey `requestState` (a byte
/// search, so the common request is never parsed for it).
pub use latchkey_filter::round_trip::may_carry_request_state;

/// The `requestState` a 2026-07-28 retry carries, if Latchkey issued it.
pub fn latchkey_request_state(message: &Value) -> Option<&str> {
    message
        .get("params")?
        .get("requestState")?
        .as_str()
        .filter(|s| s.starts_with(REQUEST_STATE_PREFIX))
}

/// Turns a consent-needed refusal into the in-band answer the client
/// understands, after recording the consent request the link points at.
/// Without `[connect]` the refusal stays as it is (it says who can help).
/// When the request cannot be recorded, nothing passes: 503.
pub async fn ask(
    credentials: &Credentials,
    connect: Option<&ConnectConfig>,
    ctx: &RequestContext,
    deny: Deny,
) -> Deny {
    let Some(connect) = connect else {
        return deny;
    };
    // A notification, a response or a stream cannot show anyone a link:
    // no consent request is recorded for it.
    if deny.refusal.id.is_none() {
        return deny;
    }
    let Some(at) = deny.attribution.clone() else {
        return deny;
    };
    let Some(user) = at.user.as_deref() else {
        return deny;
    };
    let remembered =
        remembers_url_elicitation(credentials, &at.gateway, user, at.agent.as_deref()).await;
    let form = answer_form_for(ctx, remembered);
    let ttl = Duration::from_secs(connect.consent_ttl_secs.max(1));
    let expires = time::OffsetDateTime::now_utc() + ttl;
    let record = ConsentRecord {
        id: latchkey_core::hex::random(16),
        user: user.to_string(),
        gateway: at.gateway.clone(),
        server: at.server.clone(),
        assignment: at.assignment.clone(),
        agent: at.agent.clone(),
        created_at: now_rfc3339(),
        expires_at: expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        completed_at: None,
    };
    let store = &credentials.store;
    if let Err(e) = store
        .put_expiring(&store.consent_key(&record.id), &record, ttl)
        .await
    {
        return Deny {
            refusal: RequestError {
                http_status: 503,
                jsonrpc_code: jsonrpc::INTERNAL_ERROR,
                message: format!(
                    "user '{user}' needs to connect an identity for server '{}', but the consent request could not be recorded ({e}); retry shortly",
                    at.server
                ),
                ..Default::default()
            },
            reason: "unavailable",
            body: None,
            ..deny
        };
    }
    let link = connect_link(&connect.public_url, &at.gateway, &record.id);
    let text = format!(
        "Connect your {} account to continue: open {link} in your browser, sign in, and allow access; then retry.",
        at.server
    );
    let ask = InBand {
        request: &record.id,
        user,
        gateway: &at.gateway,
        assignment: &at.assignment,
        key: format!("connect-{}", at.server),
        link: &link,
        text,
        expires,
        form,
    };
    in_band(credentials, ctx, deny, ask).await
}

/// A request the person must act on in a browser, as a client is told
/// of it: consent (`ask`) or an approval (`crate::approval`).
pub struct InBand<'a> {
    /// The request's id (the elicitation's, the `requestState`'s `cid`).
    pub request: &'a str,
    pub user: &'a str,
    pub gateway: &'a str,
    pub assignment: &'a str,
    /// The key of the `inputRequests` entry (2026-07-28).
    pub key: String,
    pub link: &'a Url,
    /// What the person is told; carries the link.
    pub text: String,
    pub expires: time::OffsetDateTime,
    pub form: AnswerForm,
}

/// How a client is told of a request awaiting a person, in the form its
/// protocol version and capabilities understand (see [`answer_form`]).
pub fn answer_form_for(ctx: &RequestContext, remembered_url_elicitation: bool) -> AnswerForm {
    let message: Value = serde_json::from_slice(&ctx.body).unwrap_or(Value::Null);
    let mcp = ctx.mcp.as_ref();
    let version = mcp.and_then(|m| m.protocol_version.as_deref());
    let method = mcp.and_then(|m| m.method.as_deref());
    let url_declared = if at_least(version, MULTI_ROUND_TRIP_VERSION) {
        declared_capabilities(&message).is_some_and(declares_url_elicitation)
    } else {
        remembered_url_elicitation
    };
    answer_form(version, method, url_declared)
}

/// Whether the client of `user` (through `agent`) on `gateway` declared
/// URL-mode elicitation at its last `initialize`.
pub async fn remembers_url_elicitation(
    credentials: &Credentials,
    gateway: &str,
    user: &str,
    agent: Option<&str>,
) -> bool {
    let store = &credentials.store;
    let key = store.client_capabilities_key(gateway, user, client_key(agent));
    match store.get::<Value>(&key).await {
        Ok(Some(caps)) => declares_url_elicitation(&caps),
        // Unknown or unreadable: the link in the message reaches every client.
        _ => false,
    }
}

/// Turns `deny` into the in-band answer of `ask`.
pub async fn in_band(
    credentials: &Credentials,
    ctx: &RequestContext,
    deny: Deny,
    ask: InBand<'_>,
) -> Deny {
    let mcp = ctx.mcp.as_ref();
    let method = mcp.and_then(|m| m.method.as_deref());
    let InBand {
        request,
        user,
        gateway,
        assignment,
        key,
        link,
        text,
        expires,
        form,
    } = ask;
    let id = deny.refusal.id.clone();
    let (status, body) = match form {
        AnswerForm::InputRequired => {
            let claims = StateClaims {
                cid: request.to_string(),
                sub: user.to_string(),
                gw: gateway.to_string(),
                asg: assignment.to_string(),
                m: method.unwrap_or_default().to_string(),
                n: mcp.and_then(|m| m.name.clone()),
                exp: expires.unix_timestamp(),
            };
            let state = match credentials.sealing_key().await {
                Ok(kid) => seal_state(&credentials.keys, &kid, &claims),
                Err(_) => None,
            };
            let Some(state) = state else {
                return Deny {
                    refusal: RequestError {
                        http_status: 503,
                        jsonrpc_code: jsonrpc::INTERNAL_ERROR,
                        message: "the answer could not be signed: the vault's active key is not available on this replica".into(),
                        ..Default::default()
                    },
                    reason: "unavailable",
                    body: None,
                    ..deny
                };
            };
            (200, input_required_body(id.as_ref(), &key, link, &text, &state))
        }
        AnswerForm::UrlElicitationRequired => (
            200,
            url_elicitation_error_body(id.as_ref(), request, link, &text),
        ),
        AnswerForm::MissingCapability => (
            400,
            json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": MISSING_REQUIRED_CLIENT_CAPABILITY,
                    "message": format!("{text} (This client does not declare URL-mode elicitation, so it cannot open the page for you.)"),
                    "data": {"requiredCapabilities": {"elicitation": {"url": {}}}},
                },
            })
            .to_string(),
        ),
        AnswerForm::LinkInMessage => (
            if id.is_some() { 200 } else { 403 },
            jsonrpc::error_body(id.as_ref(), jsonrpc::FORBIDDEN, &text),
        ),
    };
    // The filter tells the session's GET stream once the person is done.
    let elicitation = (form == AnswerForm::UrlElicitationRequired).then(|| PendingElicitation {
        id: request.to_string(),
        user: user.to_string(),
        gateway: gateway.to_string(),
        expires: expires.unix_timestamp(),
    });
    Deny {
        refusal: RequestError {
            http_status: status,
            message: text,
            ..Default::default()
        },
        body: Some(body),
        elicitation,
        ..deny
    }
}

fn input_required_body(
    id: Option<&Value>,
    key: &str,
    link: &Url,
    text: &str,
    state: &str,
) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "resultType": "input_required",
            "inputRequests": {
                key: {
                    "method": "elicitation/create",
                    "params": {"mode": "url", "url": link.as_str(), "message": text},
                },
            },
            "requestState": state,
        },
    })
    .to_string()
}

fn url_elicitation_error_body(
    id: Option<&Value>,
    elicitation_id: &str,
    link: &Url,
    text: &str,
) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": URL_ELICITATION_REQUIRED,
            "message": text,
            "data": {"elicitations": [{
                "mode": "url",
                "elicitationId": elicitation_id,
                "url": link.as_str(),
                "message": text,
            }]},
        },
    })
    .to_string()
}

/// A 2026-07-28 retry carrying a `requestState` Latchkey issued: refused
/// with -32602 (HTTP 400) unless it is intact, unexpired and issued to this
/// caller for this very call. `None` when there is none or it checks out.
pub fn check_retry(
    keys: &KeyRing,
    ctx: &RequestContext,
    user: Option<&str>,
    at: Option<(&str, &str)>,
) -> Option<Deny> {
    if !may_carry_request_state(&ctx.body) {
        return None;
    }
    let message: Value = serde_json::from_slice(&ctx.body).ok()?;
    let state = latchkey_request_state(&message)?;
    let mcp = ctx.mcp.as_ref();
    let refuse = |why: String| Deny {
        refusal: RequestError {
            http_status: 400,
            jsonrpc_code: jsonrpc::INVALID_PARAMS,
            message: format!(
                "params.requestState is not valid: {why}; send the request again without requestState to start over"
            ),
            id: mcp.and_then(|m| m.id.clone()),
        },
        reason: "bad_request_state",
        ..Deny::default()
    };
    let (Some(user), Some((gateway, assignment))) = (user, at) else {
        return Some(refuse("the caller is not known".into()));
    };
    let expected = StateClaims {
        cid: String::new(),
        sub: user.to_string(),
        gw: gateway.to_string(),
        asg: assignment.to_string(),
        m: mcp.and_then(|m| m.method.clone()).unwrap_or_default(),
        n: mcp.and_then(|m| m.name.clone()),
        exp: 0,
    };
    open_state(keys, state, latchkey_core::unix_now(), &expected)
        .err()
        .map(|e| refuse(e.to_string()))
}

/// The client a capability declaration is remembered for.
fn client_key(agent: Option<&str>) -> &str {
    agent.unwrap_or("-")
}

/// Remembers what a client declared at `initialize` (MCP before 2026-07-28
/// declares capabilities once per session, and a consent answer later in
/// the session depends on them), in Redis so every replica reads the same.
///
/// The Check of `initialize` awaits this, so once the client has its answer
/// any replica finds the declaration. If the write fails (Redis down or
/// slower than its `timeout_ms`), `initialize` is still answered as decided:
/// the declaration only chooses how a later consent request is shown, never
/// what is allowed, and a client whose declaration is unknown is treated as
/// having declared no URL mode — it gets the link in an error message
/// (-32003), which every client shows. Nothing is granted on a guess.
pub async fn remember_capabilities(
    credentials: &Credentials,
    memory: &CapabilityMemory,
    body: &[u8],
    user: &str,
    at: &Attribution,
) {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let Some(declared) = declared_capabilities(&message) else {
        return;
    };
    // Only what a consent answer reads is kept: the client's declaration
    // is attacker-sized (up to the body limit), the summary is not.
    let summary = if declares_url_elicitation(declared) {
        json!({"elicitation": {"url": {}}})
    } else {
        json!({})
    };
    let caps = &summary;
    let store = &credentials.store;
    let key = store.client_capabilities_key(&at.gateway, user, client_key(at.agent.as_deref()));
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        caps.to_string().hash(&mut h);
        h.finish()
    };
    if memory.0.get(&key) == Some(digest) {
        return;
    }
    match store.put_expiring(&key, caps, CAPABILITIES_TTL).await {
        Ok(()) => memory.0.insert(key, digest),
        Err(e) => {
            tracing::warn!(error = %e, "could not remember the client's declared capabilities")
        }
    }
}

/// What this replica last wrote per client, so a client that initializes
/// again with the same capabilities costs no Redis write.
#[derive(Clone)]
pub struct CapabilityMemory(moka::sync::Cache<String, u64>);

impl Default for CapabilityMemory {
    fn default() -> Self {
        CapabilityMemory(
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                // Written again well before Redis forgets it.
                .time_to_live(CAPABILITIES_TTL / 2)
                .build(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> KeyRing {
        KeyRing::parse(
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nk2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
            Some("k1"),
        )
        .unwrap()
    }

    fn claims() -> StateClaims {
        StateClaims {
            cid: "c1".into(),
            sub: "alice".into(),
            gw: "main".into(),
            asg: "github".into(),
            m: "tools/call".into(),
            n: Some("create_issue".into()),
            exp: latchkey_core::unix_now() + 600,
        }
    }

    #[test]
    fn answer_follows_version_method_and_capability() {
        use AnswerForm::*;
        let v26 = Some("2026-07-28");
        let v25 = Some("2025-11-25");
        assert_eq!(answer_form(v26, Some("tools/call"), true), InputRequired);
        assert_eq!(answer_form(v26, Some("prompts/get"), true), InputRequired);
        assert_eq!(
            answer_form(v26, Some("resources/read"), true),
            InputRequired
        );
        assert_eq!(
            answer_form(v26, Some("tools/call"), false),
            MissingCapability
        );
        // Only three methods may answer input_required.
        assert_eq!(answer_form(v26, Some("tools/list"), true), LinkInMessage);
        assert_eq!(
            answer_form(Some("2027-01-01"), Some("tools/call"), true),
            InputRequired
        );
        assert_eq!(
            answer_form(v25, Some("tools/call"), true),
            UrlElicitationRequired
        );
        assert_eq!(
            answer_form(v25, Some("tools/list"), true),
            UrlElicitationRequired
        );
        assert_eq!(answer_form(v25, Some("tools/call"), false), LinkInMessage);
        // Elicitation cannot run before initialization completes.
        assert_eq!(answer_form(v25, Some("initialize"), true), LinkInMessage);
        assert_eq!(
            answer_form(Some("2025-06-18"), Some("tools/call"), true),
            LinkInMessage
        );
        assert_eq!(answer_form(None, Some("tools/call"), true), LinkInMessage);
        assert_eq!(
            answer_form(Some("garbage"), Some("tools/call"), true),
            LinkInMessage
        );
    }

    #[test]
    fn url_mode_must_be_declared_explicitly() {
        assert!(declares_url_elicitation(
            &json!({"elicitation": {"url": {}}})
        ));
        assert!(declares_url_elicitation(
            &json!({"elicitation": {"form": {}, "url": {}}})
        ));
        // An empty elicitation object means form mode only.
        assert!(!declares_url_elicitation(&json!({"elicitation": {}})));
        assert!(!declares_url_elicitation(
            &json!({"elicitation": {"url": true}})
        ));
        assert!(!declares_url_elicitation(&json!({})));
    }

    #[test]
    fn capabilities_come_from_initialize_or_request_meta() {
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize",
            "params":{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{"url":{}}}}});
        assert!(declared_capabilities(&init).is_some_and(declares_url_elicitation));
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x",
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                     CLIENT_CAPABILITIES_META:{"elicitation":{"url":{}}}}}});
        assert!(declared_capabilities(&call).is_some_and(declares_url_elicitation));
        let bare = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}});
        assert!(declared_capabilities(&bare).is_none());
    }

    #[test]
    fn link_names_the_request_and_nothing_personal() {
        let base = Url::parse("https://latchkey.example.com/base/").unwrap();
        let link = connect_link(&base, "main", "abc123");
        assert_eq!(
            link.as_str(),
            "https://latchkey.example.com/base/connect/main?request=abc123"
        );
    }

    #[test]
    fn request_state_round_trips_and_is_bound() {
        let keys = keys();
        let c = claims();
        let state = seal_state(&keys, "k1", &c).unwrap();
        assert!(state.starts_with(REQUEST_STATE_PREFIX));
        assert!(
            !state.contains("alice"),
            "the state is not readable as plain text"
        );
        assert_eq!(
            open_state(&keys, &state, latchkey_core::unix_now(), &c),
            Ok(c.clone())
        );

        let other_user = StateClaims {
            sub: "bob".into(),
            ..c.clone()
        };
        assert_eq!(
            open_state(&keys, &state, latchkey_core::unix_now(), &other_user),
            Err(StateError::OtherUser)
        );
        let other_tool = StateClaims {
            n: Some("delete_repo".into()),
            ..c.clone()
        };
        assert_eq!(
            open_state(&keys, &state, latchkey_core::unix_now(), &other_tool),
            Err(StateError::OtherRequest("tool, prompt or resource"))
        );
        let other_gateway = StateClaims {
            gw: "other".into(),
            ..c.clone()
        };
        assert_eq!(
            open_state(&keys, &state, latchkey_core::unix_now(), &other_gateway),
            Err(StateError::OtherRequest("gateway"))
        );
        assert_eq!(
            open_state(&keys, &state, c.exp + 1, &c),
            Err(StateError::Expired)
        );
    }

    #[test]
    fn tampered_state_is_refused() {
        let keys = keys();
        let c = claims();
        let state = seal_state(&keys, "k1", &c).unwrap();
        // Re-sign different claims under the same header: the MAC no longer fits.
        let forged_claims = StateClaims {
            sub: "mallory".into(),
            ..c.clone()
        };
        let forged_payload = B64.encode(serde_json::to_vec(&forged_claims).unwrap());
        let parts: Vec<&str> = state.split('.').collect();
        let forged = format!("{}.{}.{}.{}", parts[0], parts[1], forged_payload, parts[3]);
        let mallory = StateClaims {
            sub: "mallory".into(),
            ..c.clone()
        };
        assert_eq!(
            open_state(&keys, &forged, latchkey_core::unix_now(), &mallory),
            Err(StateError::BadSignature)
        );
        // One flipped character in the MAC.
        let mut flipped = state.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            open_state(&keys, &flipped, latchkey_core::unix_now(), &c),
            Err(StateError::BadSignature)
        );
        // Signed with a key this ring does not hold.
        let stranger =
            KeyRing::parse("k9:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", None).unwrap();
        let foreign = seal_state(&stranger, "k9", &c).unwrap();
        assert_eq!(
            open_state(&keys, &foreign, latchkey_core::unix_now(), &c),
            Err(StateError::UnknownKey)
        );
        // A state signed with another key the ring holds still verifies.
        let by_k2 = seal_state(&keys, "k2", &c).unwrap();
        assert!(open_state(&keys, &by_k2, latchkey_core::unix_now(), &c).is_ok());
        for junk in ["", "lk1.", "lk1.a.b", "lk1.%%.x.y", "other"] {
            assert_eq!(
                open_state(&keys, junk, latchkey_core::unix_now(), &c),
                Err(StateError::Malformed),
                "{junk}"
            );
        }
    }

    #[test]
    fn only_latchkey_states_are_taken() {
        assert!(may_carry_request_state(
            br#"{"params":{"requestState":"lk1.x"}}"#
        ));
        assert!(!may_carry_request_state(br#"{"params":{"name":"x"}}"#));
        let ours = json!({"params": {"requestState": "lk1.x.y.z"}});
        assert_eq!(latchkey_request_state(&ours), Some("lk1.x.y.z"));
        let upstreams = json!({"params": {"requestState": "eyJ..."}});
        assert_eq!(latchkey_request_state(&upstreams), None);
    }

    #[test]
    fn answers_have_the_spec_shapes() {
        let link = Url::parse("https://l.example/connect/main?request=r1").unwrap();
        let body: Value = serde_json::from_str(&input_required_body(
            Some(&json!(7)),
            "connect-github",
            &link,
            "Connect",
            "lk1.s",
        ))
        .unwrap();
        assert_eq!(body["id"], 7);
        assert_eq!(body["result"]["resultType"], "input_required");
        assert_eq!(body["result"]["requestState"], "lk1.s");
        let request = &body["result"]["inputRequests"]["connect-github"];
        assert_eq!(request["method"], "elicitation/create");
        assert_eq!(request["params"]["mode"], "url");
        assert_eq!(request["params"]["url"], link.as_str());
        assert_eq!(request["params"]["message"], "Connect");
        assert!(
            request["params"].get("elicitationId").is_none(),
            "removed in 2026-07-28"
        );

        let body: Value = serde_json::from_str(&url_elicitation_error_body(
            Some(&json!("a")),
            "r1",
            &link,
            "Connect",
        ))
        .unwrap();
        assert_eq!(body["id"], "a");
        assert_eq!(body["error"]["code"], -32042);
        let e = &body["error"]["data"]["elicitations"][0];
        assert_eq!(e["mode"], "url");
        assert_eq!(e["elicitationId"], "r1");
        assert_eq!(e["url"], link.as_str());
        assert_eq!(e["message"], "Connect");
    }
}
