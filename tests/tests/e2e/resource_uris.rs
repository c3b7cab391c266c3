//! Resource URIs are judged as the upstream acts on them, through a real
//! Envoy (the Wasm filter, and native ext_authz) against the real
//! `@modelcontextprotocol/server-everything`, whose TypeScript SDK parses a
//! URI with WHATWG `new URL` (which removes dot segments and reads `%2e%2e`
//! as `..`) before it looks the resource up.
//!
//! The policy shows only the static documents, minus `features.md`. Every
//! spelling that the upstream would resolve to something else (dot
//! segments, JSON `\u002e` escapes, encoded letters) is judged as what it
//! resolves to; a spelling with no single meaning is refused with -32602.
//! Each absence (nothing reached the upstream) is paired with a visible
//! document read the same way.

use anyhow::{Context, Result, bail};
use latchkey_e2e::client::{INITIALIZE, post_json};
use latchkey_e2e::stack::AuthzMode;
use latchkey_e2e::{Stack, StackOptions};
use serde_json::{Value, json};

/// One more assignment of server-everything, and a combined endpoint whose
/// first candidate shows the documents.
const COMBINED: &str = r#"
[[gateways.assignments]]
name = "everything-docs"
server = "everything"
scheme = "shared"
identity = "everything-sa"

[[gateways.combined]]
name = "everything-all"
assignments = ["everything-docs", "everything"]
"#;

const POLICY: &str = r#"
# What server-everything answers for a resource it does not have.
[policy.hidden.resource]
code = -32602
message = "MCP error -32602: Resource {name} not found"

[[policy.grants]]
name = "documents"
gateway = "e2e"
assignments = ["everything", "everything-docs"]
users = ["*"]
resources = { allow = ["demo://resource/static/document/*"], deny = ["demo://resource/static/document/features.md"] }

# Erin sees every resource (but features.md: deny wins), for the
# differential corpus.
[[policy.grants]]
name = "erin-everything"
gateway = "e2e"
assignments = ["everything"]
users = ["erin"]
resources = { allow = ["*"] }
"#;

const VISIBLE: &str = "demo://resource/static/document/architecture.md";
const DOT_SEGMENTS: &str = "demo://resource/static/document/../../dynamic/text/1";

/// `cluster.server_everything.upstream_rq_total`; a missing stat is an
/// error, not zero, so an absence cannot pass by accident.
fn upstream_requests(stack: &Stack) -> Result<u64> {
    stack.envoy.upstream_requests("everything")
}

/// A server-everything session through `endpoint`.
struct Session<'a> {
    stack: &'a Stack,
    url: String,
    token: String,
    headers: Vec<(String, String)>,
}

impl<'a> Session<'a> {
    async fn open(stack: &'a Stack, endpoint: &str, token: &str) -> Result<Session<'a>> {
        let url = stack.url(endpoint);
        let reply = post_json(&url, Some(token), INITIALIZE, &[]).await?;
        if reply.status != 200 {
            bail!("initialize: {} {}", reply.status, reply.body);
        }
        let id = reply
            .header("mcp-session-id")
            .context("no session id")?
            .to_owned();
        let session = Session {
            stack,
            url,
            token: token.to_owned(),
            headers: vec![
                ("mcp-session-id".into(), id),
                ("mcp-protocol-version".into(), "2025-11-25".into()),
            ],
        };
        let (status, _) = session
            .raw(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await?;
        assert_eq!(status, 202);
        Ok(session)
    }

    /// Sends `body` as written (so JSON escapes reach the gateway as is);
    /// the status and the answer carrying `id` 7, if any.
    async fn raw(&self, body: &str) -> Result<(u16, Option<Value>)> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let reply = post_json(&self.url, Some(&self.token), body, &headers).await?;
        let answer = reply.messages().into_iter().find(|m| m["id"] == 7);
        Ok((reply.status, answer))
    }

    /// `method` on `uri`: the status, the answer, and whether the request
    /// reached the upstream.
    async fn on(&self, method: &str, uri: &str) -> Result<(u16, Value, bool)> {
        let body = json!({"jsonrpc":"2.0","id":7,"method":method,"params":{"uri":uri}});
        self.send(&body.to_string()).await
    }

    async fn send(&self, body: &str) -> Result<(u16, Value, bool)> {
        let before = upstream_requests(self.stack)?;
        let (status, answer) = self.raw(body).await?;
        let answer = answer.with_context(|| format!("no answer to {body}"))?;
        let reached = upstream_requests(self.stack)? > before;
        Ok((status, answer, reached))
    }
}

/// The document read through the gateway: its text, from the upstream.
#[track_caller]
fn assert_read(answer: &Value, uri: &str) {
    assert_eq!(answer["result"]["contents"][0]["uri"], uri, "{answer}");
    assert!(
        answer["result"]["contents"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{answer}"
    );
}

/// The answer to a hidden resource: server-everything's own "not found"
/// for the URI it would have resolved.
#[track_caller]
fn assert_hidden(status: u16, answer: &Value, reached: bool, resolved: &str) {
    assert_eq!(status, 200, "{answer}");
    assert!(!reached, "a hidden resource request reached the upstream");
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert_eq!(
        answer["error"]["message"],
        format!("MCP error -32602: Resource {resolved} not found"),
        "{answer}"
    );
}

/// An ambiguous URI: a bad parameter naming what is ambiguous.
#[track_caller]
fn assert_ambiguous(status: u16, answer: &Value, reached: bool, names: &str) {
    assert_eq!(status, 400, "{answer}");
    assert!(!reached, "an ambiguous URI reached the upstream");
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(names), "{answer}");
}

async fn stack(name: &str, mode: AuthzMode) -> Result<Stack> {
    Stack::start(
        name,
        StackOptions {
            mode,
            everything: true,
            extra_config: Some(COMBINED.to_owned()),
            policy: Some(POLICY.to_owned()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_is_judged_by_the_uri_the_upstream_resolves_not_the_one_sent() -> Result<()> {
    let stack = stack("resource_uris", AuthzMode::Wasm).await?;
    let alice = stack.token("alice").await?;
    let s = Session::open(&stack, "everything", &alice).await?;

    // The positive control: a visible document, read as sent and through a
    // detour the upstream resolves to it.
    let (status, answer, reached) = s.on("resources/read", VISIBLE).await?;
    assert_eq!(status, 200);
    assert!(reached);
    assert_read(&answer, VISIBLE);
    let detour = "demo://resource/static/document/../document/./architecture.md";
    let (_, answer, reached) = s.on("resources/read", detour).await?;
    assert!(reached);
    assert_read(&answer, VISIBLE);

    // A dot-segment walk out of the documents to a template resource: what
    // the upstream would read is hidden, answered as the upstream answers a
    // resource it does not have.
    let (status, answer, reached) = s.on("resources/read", DOT_SEGMENTS).await?;
    assert_hidden(status, &answer, reached, "demo://resource/dynamic/text/1");
    // An absent document reads the same (the upstream's own answer).
    let absent = "demo://resource/static/document/../document/no-such.md";
    let (status, answer, reached) = s.on("resources/read", absent).await?;
    assert!(reached);
    assert_eq!(status, 200);
    assert_eq!(
        answer["error"]["message"],
        "MCP error -32602: Resource demo://resource/static/document/no-such.md not found",
        "{answer}"
    );
    // The same walk spelt with JSON escapes, case and a default-less port.
    let escaped = r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"DEMO://resource/static/document/\u002e\u002e/\u002e\u002e/dynamic/text/1"}}"#;
    let (status, answer, reached) = s.send(escaped).await?;
    assert_hidden(status, &answer, reached, "demo://resource/dynamic/text/1");

    // A deny holds against every spelling of the denied document.
    for uri in [
        "demo://resource/static/document/features.md",
        "demo://resource/static/document/x/../features.md",
        "demo://resource/static/document/./FEATURES.md",
    ] {
        let (status, answer, reached) = s.on("resources/read", uri).await?;
        let resolved = uri.replace("x/../", "").replace("./", "");
        assert_hidden(status, &answer, reached, &resolved);
    }
    // `%66` is an encoded `f`: judged as features.md, so denied too.
    let (status, answer, reached) = s
        .on(
            "resources/read",
            "demo://resource/static/document/%66eatures.md",
        )
        .await?;
    assert_hidden(
        status,
        &answer,
        reached,
        "demo://resource/static/document/features.md",
    );

    // What has no single meaning is refused, whatever a grant shows: WHATWG
    // reads `%2e%2e` as `..`, a filesystem server `%2F` as `/`.
    for (uri, names) in [
        (
            "demo://resource/static/document/%2e%2e/%2e%2e/dynamic/text/1",
            "%2e",
        ),
        (
            "demo://resource/static/document/..%2F..%2Fdynamic%2Ftext%2F1",
            "%2F",
        ),
        ("demo://resource/static/document//architecture.md", "'//'"),
        (
            "demo://resource/static/document/.\t./x",
            "control character",
        ),
        (r"demo://resource/static/document/..\..\x", "backslash"),
    ] {
        let (status, answer, reached) = s.on("resources/read", uri).await?;
        assert_ambiguous(status, &answer, reached, names);
    }

    // Subscriptions are judged the same way.
    let (status, answer, reached) = s.on("resources/subscribe", VISIBLE).await?;
    assert_eq!((status, reached), (200, true), "{answer}");
    assert_eq!(answer["result"], json!({}), "{answer}");
    let (status, answer, reached) = s.on("resources/subscribe", DOT_SEGMENTS).await?;
    assert_hidden(status, &answer, reached, "demo://resource/dynamic/text/1");
    let (status, answer, reached) = s
        .on(
            "resources/unsubscribe",
            "demo://resource/static/document/a/../features.md",
        )
        .await?;
    assert_hidden(
        status,
        &answer,
        reached,
        "demo://resource/static/document/features.md",
    );
    let (status, answer, reached) = s.on("resources/unsubscribe", VISIBLE).await?;
    assert_eq!((status, reached), (200, true), "{answer}");

    // The list agrees with reads: the documents, without the denied one.
    let (_, list) = s
        .raw(r#"{"jsonrpc":"2.0","id":7,"method":"resources/list"}"#)
        .await?;
    let list = list.context("no resources/list answer")?;
    let uris: Vec<&str> = list["result"]["resources"]
        .as_array()
        .context("no resources")?
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .collect();
    assert!(uris.contains(&VISIBLE), "{uris:?}");
    assert!(
        uris.iter()
            .all(|u| u.starts_with("demo://resource/static/document/")
                && !u.ends_with("features.md")),
        "{uris:?}"
    );

    // A combined endpoint picks its assignment by the resolved URI: the
    // documents' assignment shows the detour as sent, but not what it
    // resolves to, and no other candidate shows that either.
    let c = Session::open(&stack, "everything-all", &alice).await?;
    let (status, answer, reached) = c.on("resources/read", VISIBLE).await?;
    assert_eq!((status, reached), (200, true));
    assert_read(&answer, VISIBLE);
    let (status, answer, reached) = c.on("resources/read", DOT_SEGMENTS).await?;
    assert_hidden(status, &answer, reached, "demo://resource/dynamic/text/1");
    let (status, answer, reached) = c
        .on(
            "resources/read",
            "demo://resource/static/document/%2e%2e/%2e%2e/dynamic/text/1",
        )
        .await?;
    assert_ambiguous(status, &answer, reached, "%2e");

    differential(&stack).await?;
    let scanned = stack.assert_no_secret_in_logs()?;
    assert!(scanned > 0);
    Ok(())
}

/// Tricky spellings, sent by a caller who may read anything: each is
/// either refused as ambiguous, or the URI server-everything resolved (the
/// one it echoes in its result or its "not found") has the same canonical
/// form as the URI sent. That is, policy judged what the upstream acted on.
async fn differential(stack: &Stack) -> Result<()> {
    use latchkey_filter::uri::canonical;
    let erin = stack.token("erin").await?;
    let s = Session::open(stack, "everything", &erin).await?;
    let corpus = [
        "demo://resource/static/document/../../dynamic/text/1",
        "demo://resource/static/document/./architecture.md",
        "demo://resource/static/document/a/b/../../architecture.md",
        "DEMO://resource/dynamic/text/2",
        "demo://resource/dynamic/text/3/..",
        "demo://resource/dynamic/text/%34",
        "demo://resource/dynamic/text/5?x=../..#../y",
        "demo://resource/dynamic/text/caf\u{e9}",
        "demo://resource/dynamic/text/a b",
        "demo://resource/dynamic/text/{x}",
        "demo://resource/dynamic/text/a|b",
        "demo://resource/dynamic/text/%7e",
        "demo:/resource/x/../dynamic/text/1",
        "demo://resource/static/document/%2e%2e/%2E./dynamic/text/1",
        "demo://resource/static/document/.%2e/x",
        "demo://resource/dynamic/text/1%2F..%2F2",
        "demo://resource/dynamic//text/1",
        "demo://resource/dynamic/text/\t1",
        "demo://resource/dynamic/text/%252e",
        "demo://resource/dynamic/text/%c3",
        "demo://user@resource/dynamic/text/1",
        "demo:dynamic/../text/1",
    ];
    let mut judged = 0;
    for uri in corpus {
        let (status, answer, reached) = s.on("resources/read", uri).await?;
        let Ok(sent) = canonical(uri) else {
            assert_eq!(status, 400, "{uri}: {answer}");
            assert!(!reached, "{uri}");
            continue;
        };
        assert!(reached, "{uri}: {answer}");
        let resolved = match answer["result"]["contents"][0]["uri"].as_str() {
            Some(u) => u.to_owned(),
            None => {
                let message = answer["error"]["message"].as_str().unwrap_or_default();
                message
                    .split_whitespace()
                    .find(|w| w.starts_with("demo:"))
                    .with_context(|| format!("{uri}: no URI in {answer}"))?
                    .to_owned()
            }
        };
        assert_eq!(
            canonical(&resolved).as_deref(),
            Ok(sent.as_str()),
            "{uri}: the upstream resolved {resolved}"
        );
        judged += 1;
    }
    assert!(judged >= 10, "only {judged} URIs reached the upstream");
    Ok(())
}

/// Behind Envoy's native ext_authz the service classifies the forwarded
/// body itself; the same spellings get the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_ext_authz_judges_resource_uris_as_the_upstream_resolves_them() -> Result<()> {
    let stack = stack("resource_uris_native", AuthzMode::Native).await?;
    let alice = stack.token("alice").await?;
    let s = Session::open(&stack, "everything", &alice).await?;
    let (status, answer, reached) = s.on("resources/read", VISIBLE).await?;
    assert_eq!((status, reached), (200, true));
    assert_read(&answer, VISIBLE);
    let (status, answer, reached) = s.on("resources/read", DOT_SEGMENTS).await?;
    assert_hidden(status, &answer, reached, "demo://resource/dynamic/text/1");
    let (status, answer, reached) = s
        .on(
            "resources/subscribe",
            "demo://resource/static/document/x/../features.md",
        )
        .await?;
    assert_hidden(
        status,
        &answer,
        reached,
        "demo://resource/static/document/features.md",
    );
    let (status, answer, reached) = s
        .on(
            "resources/read",
            "demo://resource/static/document/%2e%2e/%2e%2e/dynamic/text/1",
        )
        .await?;
    assert_ambiguous(status, &answer, reached, "%2e");
    Ok(())
}
