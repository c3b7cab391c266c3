//! What one Check is about, read out of an Envoy `CheckRequest`: the HTTP
//! request, the peer, and the MCP message. The MCP context comes from the
//! Latchkey filter's `latchkey.mcp` metadata or, behind Envoy's native
//! ext_authz filter, from the request body it forwards.

use latchkey_filter::mcp::{self, McpMessage, RequestError};
use latchkey_filter::visibility::ItemKind;
use latchkey_proto::auth::CheckRequest;

/// Everything the decision needs, independent of how it arrived. `Debug`
/// leaves out the bearer token and the body.
#[derive(Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub authorization: Option<String>,
    /// The mTLS peer's URI SAN (SPIFFE ID), when the connection had one.
    pub peer_principal: Option<String>,
    pub mcp: Option<McpMessage>,
    /// The request body as forwarded (the JSON-RPC message of a POST).
    pub body: Vec<u8>,
    /// Injected credentials (`<identity>@<version>`) the upstream refused,
    /// as the Latchkey filter reports them.
    pub rejected_credentials: Vec<String>,
    /// The request's `Accept`, to answer in a content type it takes.
    pub accept: Option<String>,
    /// The request's `Cookie`: a browser on the gateway's host sends the
    /// connect page's cookies here too, and they must not go upstream.
    pub cookie: Option<String>,
    /// Headers the config asks to read (`[servers.exchange]
    /// subject_token_header`: an ID token), by lowercase name. Tokens:
    /// `Debug` shows only the names.
    pub kept_headers: Vec<(String, String)>,
    /// `params.arguments`, parsed the first time a decision step reads
    /// them (constraints, conditions, the approval gate), once per request.
    arguments: std::sync::OnceLock<Option<serde_json::Value>>,
}

impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("request_id", &self.request_id)
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("peer_principal", &self.peer_principal)
            .field("mcp", &self.mcp)
            .field("body_bytes", &self.body.len())
            .field("rejected_credentials", &self.rejected_credentials)
            .field("cookie_bytes", &self.cookie.as_ref().map(String::len))
            .field(
                "kept_headers",
                &self.kept_headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RequestContext {
    /// A request it cannot judge because it is malformed is refused with
    /// the filter's own refusal (400 and a JSON-RPC error), never forwarded.
    pub fn from_check(req: &CheckRequest) -> Result<Self, RequestError> {
        Self::from_check_keeping(req, &[])
    }

    /// As [`Self::from_check`], also keeping the headers named in `keep`.
    pub fn from_check_keeping(req: &CheckRequest, keep: &[&str]) -> Result<Self, RequestError> {
        let attrs = req.attributes.clone().unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let header = |name: &str| {
            http.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let host = if http.host.is_empty() {
            header(":authority")
                .or_else(|| header("host"))
                .unwrap_or_default()
        } else {
            http.host.clone()
        };
        let peer_principal = attrs.source.map(|s| s.principal).filter(|p| !p.is_empty());
        let from_filter = attrs
            .metadata_context
            .as_ref()
            .and_then(|m| {
                m.filter_metadata
                    .get(latchkey_proto::MCP_METADATA_NAMESPACE)
            })
            .and_then(McpMessage::from_metadata);
        // The refused-credential report is the Latchkey filter's to make (it
        // drops a client's copy). Behind Envoy's native ext_authz every
        // client header is forwarded, so without the filter's metadata the
        // header is the client's: believing it would let anyone force
        // refreshes of shared OAuth identities.
        let from_latchkey_filter = from_filter.is_some();
        let mcp = match from_filter {
            // The filter already refused out-of-bounds fields; checked again
            // so that nothing unbounded is judged, logged or audited here.
            Some(m) => {
                if let Err(mut e) = mcp::check_bounds(&m) {
                    // The id too, unless it is the field that is too long.
                    e.id = m.id.filter(|id| {
                        id.as_str()
                            .is_none_or(|s| s.len() <= mcp::limits::STRING_ID)
                    });
                    return Err(e);
                }
                Some(m)
            }
            None => crate::forwarded_body::mcp_from_http(&http)?,
        };
        let body = if http.raw_body.is_empty() {
            http.body.clone().into_bytes()
        } else {
            http.raw_body.clone()
        };
        let rejected_credentials = header(latchkey_filter::stale::REJECTED_HEADER)
            .filter(|_| from_latchkey_filter)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .take(32)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let kept_headers = keep
            .iter()
            .filter_map(|name| Some((name.to_ascii_lowercase(), header(name)?)))
            .collect();
        Ok(Self {
            kept_headers,
            rejected_credentials,
            body,
            request_id: http.id.clone(),
            method: http.method.clone(),
            authorization: header("authorization"),
            accept: header("accept"),
            cookie: header("cookie"),
            host,
            path: http.path.clone(),
            peer_principal,
            mcp,
            arguments: std::sync::OnceLock::new(),
        })
    }
}

impl RequestContext {
    /// A header kept by [`Self::from_check_keeping`].
    pub fn kept_header(&self, name: &str) -> Option<&str> {
        self.kept_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `params.arguments` of a `tools/call` body, if there are any. Read
    /// only when a policy step needs them, and parsed once for all of them.
    pub fn tool_arguments(&self) -> Option<&serde_json::Value> {
        self.arguments
            .get_or_init(|| {
                let mut message: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
                message
                    .get_mut("params")?
                    .get_mut("arguments")
                    .map(serde_json::Value::take)
            })
            .as_ref()
    }

    /// What a `completion/complete` refers to: a prompt by name or a
    /// resource template by URI (`params.ref`).
    pub fn completion_ref(&self) -> Option<(ItemKind, String)> {
        let message: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        let reference = message.get("params")?.get("ref")?;
        let (kind, key) = match reference.get("type")?.as_str()? {
            "ref/prompt" => (ItemKind::Prompt, "name"),
            "ref/resource" => (ItemKind::Resource, "uri"),
            _ => return None,
        };
        Some((kind, reference.get(key)?.as_str()?.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_proto::auth::AttributeContext;
    use latchkey_proto::auth::attribute_context::{HttpRequest, Request};

    fn check(http: HttpRequest, mcp: Option<&McpMessage>) -> CheckRequest {
        let metadata_context = mcp.map(|m| latchkey_proto::core::Metadata {
            filter_metadata: [(
                latchkey_proto::MCP_METADATA_NAMESPACE.to_owned(),
                m.to_metadata(),
            )]
            .into(),
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                metadata_context,
                ..Default::default()
            }),
        }
    }

    /// A POST of a `tools/call` whose headers include a refused-credential
    /// report; with `filter_metadata`, as the Latchkey filter sends it.
    fn check_with_report(filter_metadata: bool) -> CheckRequest {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        let mut http = HttpRequest {
            method: "POST".into(),
            path: "/mcp/crm".into(),
            raw_body: body.as_bytes().to_vec(),
            ..Default::default()
        };
        for (k, v) in [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            (latchkey_filter::stale::REJECTED_HEADER, "crm-sa@3"),
        ] {
            http.headers.insert(k.into(), v.into());
        }
        let message = filter_metadata.then(|| {
            crate::forwarded_body::mcp_from_http(&http)
                .unwrap()
                .unwrap()
        });
        check(http, message.as_ref())
    }

    #[test]
    fn a_refused_credential_report_is_believed_only_from_the_latchkey_filter() {
        let from_filter = RequestContext::from_check(&check_with_report(true)).unwrap();
        assert_eq!(from_filter.rejected_credentials, ["crm-sa@3"]);
        // Native ext_authz forwards the client's headers: the same header
        // without the filter's metadata is the client's, and is ignored.
        let from_client = RequestContext::from_check(&check_with_report(false)).unwrap();
        assert!(from_client.rejected_credentials.is_empty());
        assert_eq!(
            from_client.mcp.and_then(|m| m.name).as_deref(),
            Some("echo")
        );
    }

    #[test]
    fn a_check_without_a_method_is_refused_like_any_method_the_endpoint_does_not_serve() {
        let http = |method: &str| HttpRequest {
            method: method.into(),
            path: "/mcp/crm".into(),
            ..Default::default()
        };
        for method in ["", "PUT"] {
            let refused = RequestContext::from_check(&check(http(method), None)).unwrap_err();
            assert_eq!(refused.http_status, 405, "{method:?}");
        }
        // The control: a bodiless GET is read (a stream, no message).
        let ctx = RequestContext::from_check(&check(http("GET"), None)).unwrap();
        assert!(ctx.mcp.is_some_and(|m| m.method.is_none()));
    }

    #[test]
    fn debug_never_shows_the_bearer_token() {
        let mut http = HttpRequest {
            method: "GET".into(),
            ..Default::default()
        };
        http.headers
            .insert("authorization".into(), "Bearer eyJ.secret.sig".into());
        let ctx = RequestContext::from_check(&check(http, None)).unwrap();
        let shown = format!("{ctx:?}");
        assert!(ctx.authorization.is_some());
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn filter_metadata_with_an_invalid_session_id_is_a_bad_request() {
        let m = |session: &str| {
            let mut headers = vec![(":method".to_owned(), "GET".to_owned())];
            headers.push(("mcp-session-id".into(), "ok".into()));
            let mut m = mcp::classify(&headers, b"").unwrap();
            m.session_id = Some(session.to_owned());
            m
        };
        let bad = RequestContext::from_check(&check(HttpRequest::default(), Some(&m("a b"))));
        assert_eq!(bad.unwrap_err().http_status, 400);
        let long = "s".repeat(mcp::limits::SESSION_ID + 1);
        let bad = RequestContext::from_check(&check(HttpRequest::default(), Some(&m(&long))));
        assert_eq!(bad.unwrap_err().http_status, 413);
        let ok = RequestContext::from_check(&check(HttpRequest::default(), Some(&m("s-1"))));
        assert_eq!(ok.unwrap().mcp.unwrap().session_id.as_deref(), Some("s-1"));
    }
}
