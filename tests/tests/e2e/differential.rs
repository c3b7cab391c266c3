//! Differential tests: policy judges what the real SDK servers act on.
//!
//! A corpus of tricky messages (JSON escapes in names, names differing by
//! case or Unicode form, number spellings against `min`/`max`, id
//! spellings, deep nesting, duplicate keys wherever a key can repeat, dot
//! segments and escapes in URIs) goes through real Envoy, with the Wasm
//! filter and with native ext_authz, to three real upstreams: `record-mcp`
//! (rmcp), `tests/peers/record_server.py` (the official Python SDK) and
//! `@modelcontextprotocol/server-everything` (TypeScript SDK). The first two
//! record what their SDK parsed (and what each tool acted on, after the
//! SDK's own type checks); server-everything says it in its answers.
//!
//! For each message and each server, one of:
//! * the gateway refused it before the upstream: the status and JSON-RPC
//!   error, with the request's id when it could be read, and Envoy's
//!   request count to that upstream unchanged;
//! * policy hid it or refused its arguments: the audit event names what
//!   policy judged (the decoded name), and nothing reached the upstream;
//! * it reached the upstream, and what policy judged (the audit event's
//!   name and decision) is what the upstream parsed, and every argument a
//!   constraint allowed is one the tool acted on within that constraint.
//!
//! Each refusal or hidden spelling sits beside a control read the same way
//! (the same trick on a visible name reaches the upstream).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use latchkey_e2e::client::{INITIALIZE, post_json};
use latchkey_e2e::stack::AuthzMode;
use latchkey_e2e::{Recorder, Stack, StackOptions};
use latchkey_filter::uri::canonical;
use serde_json::{Value, json};

/// Tools visible but `delete` / `get-env`; numbers bounded; the secret
/// item and features.md hidden.
const POLICY: &str = r#"
[[policy.grants]]
name = "differential"
gateway = "e2e"
assignments = ["record-rmcp", "record-py", "everything"]
users = ["*"]
tools = { allow = ["*"], deny = ["delete", "get-env"] }
prompts = { allow = ["*"], deny = ["secret"] }
resources = { allow = ["*"], deny = ["rec://item/secret", "demo://resource/static/document/features.md"] }

[[policy.grants.constraints]]
tool = "count"
argument = "/n"
min = 0
max = 100

[[policy.grants.constraints]]
tool = "measure"
argument = "/x"
min = 0
max = 100

# 2^53: where JSON readers start to disagree on integers.
[[policy.grants.constraints]]
tool = "quota"
argument = "/n"
min = 0
max = 9007199254740992

[[policy.grants.constraints]]
tool = "get-sum"
argument = "/a"
min = 0
max = 100
"#;

/// Which SDK a server runs on: how to read what it parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sdk {
    Rmcp,
    Python,
    TypeScript,
}

/// What a message must come to.
#[derive(Debug, Clone)]
enum Expect {
    /// Refused by the gateway before any upstream: HTTP status, JSON-RPC
    /// code and the id the error carries.
    Refused(u16, i64, Value),
    /// Hidden by policy, judged as this (decoded) name or, for a resource,
    /// this canonical URI.
    Hidden(&'static str),
    /// A visible tool whose arguments break a constraint.
    Violation(&'static str),
    /// Reached the upstream; policy judged this name and the upstream
    /// parsed the same.
    Judged(&'static str),
    /// Not a method the gateway names anything in (`TOOLS/CALL`): it may
    /// reach the upstream, which must not act on it as a named call.
    NotNamed,
}

struct Case {
    what: String,
    body: String,
    expect: Expect,
}

fn case(what: impl Into<String>, body: impl Into<String>, expect: Expect) -> Case {
    Case {
        what: what.into(),
        body: body.into(),
        expect,
    }
}

/// `tools/call` with `name` and `arguments` written as raw JSON text.
fn call(name: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{name},"arguments":{arguments}}}}}"#
    )
}

fn read(uri: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{{"uri":{uri}}}}}"#)
}

fn prompt(name: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{{"name":{name},"arguments":{arguments}}}}}"#
    )
}

/// `levels` nested arrays around `1`.
fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

fn nesting_of(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.first().map_or(0, nesting_of),
        _ => 0,
    }
}

const PARSE: (u16, i64) = (400, -32700);

/// The names a server's corpus uses: its echo tool and argument, its
/// bounded number tool and argument, its hidden tool, prompt and resources.
struct Names {
    echo: &'static str,
    text: &'static str,
    number: &'static str,
    arg: &'static str,
    hidden: &'static str,
    prompt: &'static str,
    prompt_arguments: &'static str,
    visible_uri: &'static str,
    hidden_uri: &'static str,
}

const RECORDERS: Names = Names {
    echo: "echo",
    text: "text",
    number: "count",
    arg: "n",
    hidden: "delete",
    prompt: "greet",
    prompt_arguments: r#"{"name":"x"}"#,
    visible_uri: "rec://item/1",
    hidden_uri: "rec://item/secret",
};

const EVERYTHING: Names = Names {
    echo: "echo",
    text: "message",
    number: "get-sum",
    arg: "a",
    hidden: "get-env",
    prompt: "simple-prompt",
    prompt_arguments: "{}",
    visible_uri: "demo://resource/static/document/architecture.md",
    hidden_uri: "demo://resource/static/document/features.md",
};

/// JSON text of a string (quotes included).
fn q(s: &str) -> String {
    Value::from(s).to_string()
}

/// The corpus for one server. Leaked strings keep `Expect` simple.
fn corpus(sdk: Sdk) -> Vec<Case> {
    let n = if sdk == Sdk::TypeScript {
        &EVERYTHING
    } else {
        &RECORDERS
    };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let echo_args = |extra: &str| format!(r#"{{"{}":"hi"{extra}}}"#, n.text);
    let number = |v: &str| {
        let other = if sdk == Sdk::TypeScript {
            r#","b":1"#
        } else {
            ""
        };
        call(&q(n.number), &format!(r#"{{"{}":{v}{other}}}"#, n.arg))
    };
    let escaped = |s: &str| {
        // Every letter but the first as a JSON \u escape.
        let mut out = String::from("\"");
        for (i, c) in s.chars().enumerate() {
            if i == 0 || !c.is_ascii_alphabetic() {
                out.push(c);
            } else {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
        }
        out.push('"');
        out
    };
    let mut cases = vec![
        // Names: JSON escapes decode to the name every parser reads.
        case(
            "the echo tool",
            call(&q(n.echo), &echo_args("")),
            Expect::Judged(n.echo),
        ),
        case(
            "echo spelt with \\u escapes",
            call(&escaped(n.echo), &echo_args("")),
            Expect::Judged(n.echo),
        ),
        case(
            "the hidden tool",
            call(&q(n.hidden), &echo_args("")),
            Expect::Hidden(n.hidden),
        ),
        case(
            "the hidden tool spelt with \\u escapes",
            call(&escaped(n.hidden), &echo_args("")),
            Expect::Hidden(n.hidden),
        ),
        case(
            "the hidden tool behind an escaped method",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools\/call","params":{{"name":{},"arguments":{{}}}}}}"#,
                escaped(n.hidden)
            ),
            Expect::Hidden(n.hidden),
        ),
        // Other spellings are other names to the SDKs; policy denies them
        // too (a deny ignores case, and a tool name outside
        // [A-Za-z0-9_./-] is visible nowhere), as sent.
        case(
            "the hidden tool in capitals",
            call(&q(&n.hidden.to_uppercase()), "{}"),
            Expect::Hidden(leak(n.hidden.to_uppercase())),
        ),
        case(
            "the hidden tool in fullwidth letters",
            call(&q(&fullwidth(n.hidden)), "{}"),
            Expect::Hidden(leak(fullwidth(n.hidden))),
        ),
        case(
            "the hidden tool with a combining accent",
            call(&q(&format!("{}\u{301}", n.hidden)), "{}"),
            Expect::Hidden(leak(format!("{}\u{301}", n.hidden))),
        ),
        case(
            "the hidden tool with a trailing space",
            call(&q(&format!("{} ", n.hidden)), "{}"),
            Expect::Hidden(leak(format!("{} ", n.hidden))),
        ),
        case(
            "the hidden tool with a NUL",
            call(&q(&format!("{}\0", n.hidden)), "{}"),
            Expect::Hidden(leak(format!("{}\0", n.hidden))),
        ),
        case(
            "the echo tool in capitals",
            call(&q(&n.echo.to_uppercase()), "{}"),
            Expect::Judged(leak(n.echo.to_uppercase())),
        ),
        case(
            "a method in capitals names nothing the upstream runs",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"TOOLS/CALL","params":{{"name":{},"arguments":{{}}}}}}"#,
                q(n.hidden)
            ),
            Expect::NotNamed,
        ),
        // Prompts.
        case(
            "the prompt spelt with \\u escapes",
            prompt(&escaped(n.prompt), n.prompt_arguments),
            Expect::Judged(n.prompt),
        ),
        case(
            "a hidden prompt spelt with \\u escapes",
            prompt(&escaped("secret"), n.prompt_arguments),
            Expect::Hidden("secret"),
        ),
        // Numbers against min 0 / max 100.
        case("100", number("100"), Expect::Judged(n.number)),
        case("1e2", number("1e2"), Expect::Judged(n.number)),
        case("100.0", number("100.0"), Expect::Judged(n.number)),
        case("1E+2", number("1E+2"), Expect::Judged(n.number)),
        case("-0", number("-0"), Expect::Judged(n.number)),
        case(
            "100.0000000000000001 (reads as 100)",
            number("100.0000000000000001"),
            Expect::Judged(n.number),
        ),
        case(
            "100.00000000000003",
            number("100.00000000000003"),
            Expect::Violation(n.number),
        ),
        case("101", number("101"), Expect::Violation(n.number)),
        case("-1", number("-1"), Expect::Violation(n.number)),
        case("1e3", number("1e3"), Expect::Violation(n.number)),
        case(
            "a huge integer",
            number("1000000000000000000000000"),
            Expect::Violation(n.number),
        ),
        case(
            "a number as a string",
            number(r#""50""#),
            Expect::Violation(n.number),
        ),
        case(
            "1e400",
            number("1e400"),
            Expect::Refused(PARSE.0, PARSE.1, Value::Null),
        ),
        case(
            "Infinity",
            number("Infinity"),
            Expect::Refused(PARSE.0, PARSE.1, Value::Null),
        ),
        case(
            "NaN",
            number("NaN"),
            Expect::Refused(PARSE.0, PARSE.1, Value::Null),
        ),
        // Ids.
        case(
            "a string id",
            call(&q(n.echo), &echo_args("")).replace(r#""id":7"#, r#""id":"7""#),
            Expect::Judged(n.echo),
        ),
        case(
            "a fractional id",
            call(&q(n.echo), &echo_args("")).replace(r#""id":7"#, r#""id":7.5"#),
            Expect::Refused(400, -32600, Value::Null),
        ),
        case(
            "an id beyond 2^53",
            call(&q(n.echo), &echo_args("")).replace(r#""id":7"#, r#""id":9007199254740993"#),
            Expect::Refused(400, -32600, Value::Null),
        ),
        case(
            "a boolean id",
            call(&q(n.echo), &echo_args("")).replace(r#""id":7"#, r#""id":true"#),
            Expect::Refused(400, -32600, Value::Null),
        ),
        // The gateway reads `7.0` as id 7, as the TypeScript SDK does; the
        // Python SDK reads no id (a notification: 202, and no tool runs).
        // Either way the name judged is the name the SDK parsed.
        case(
            "id 7.0",
            call(&q(n.echo), &echo_args("")).replace(r#""id":7"#, r#""id":7.0"#),
            Expect::Judged(n.echo),
        ),
        case(
            "id 7e0",
            call(&q(n.echo), &echo_args("")).replace(r#""id":7"#, r#""id":7e0"#),
            Expect::Judged(n.echo),
        ),
        // Nesting: serde_json's recursion limit (128) bounds the whole
        // message (the message, params and arguments objects are 3 levels).
        case(
            "arguments nested 100 deep",
            call(
                &q(n.echo),
                &echo_args(&format!(r#","deep":{}"#, nested(100))),
            ),
            Expect::Judged(n.echo),
        ),
        case(
            "arguments nested 125 deep",
            call(
                &q(n.echo),
                &echo_args(&format!(r#","deep":{}"#, nested(124))),
            ),
            Expect::Judged(n.echo),
        ),
        case(
            "arguments nested 127 deep",
            call(
                &q(n.echo),
                &echo_args(&format!(r#","deep":{}"#, nested(127))),
            ),
            Expect::Refused(PARSE.0, PARSE.1, Value::Null),
        ),
        case(
            "arguments nested 129 deep",
            call(
                &q(n.echo),
                &echo_args(&format!(r#","deep":{}"#, nested(129))),
            ),
            Expect::Refused(PARSE.0, PARSE.1, Value::Null),
        ),
        case(
            "arguments nested 1000 deep",
            call(
                &q(n.echo),
                &echo_args(&format!(r#","deep":{}"#, nested(1000))),
            ),
            Expect::Refused(PARSE.0, PARSE.1, Value::Null),
        ),
        // Resources.
        case(
            "a visible resource",
            read(&q(n.visible_uri)),
            Expect::Judged(n.visible_uri),
        ),
        case(
            "the hidden resource",
            read(&q(n.hidden_uri)),
            Expect::Hidden(n.hidden_uri),
        ),
        case(
            "the hidden resource with escaped slashes",
            read(&q(n.hidden_uri).replace('/', "\\/")),
            Expect::Hidden(n.hidden_uri),
        ),
        case(
            "the hidden resource in capitals",
            read(&q(&n
                .hidden_uri
                .replacen("rec:", "REC:", 1)
                .replacen("demo:", "DEMO:", 1))),
            Expect::Hidden(n.hidden_uri),
        ),
        case(
            "the hidden resource behind a dot segment",
            read(&q(&n
                .hidden_uri
                .replacen("/secret", "/x/../secret", 1)
                .replacen("/features", "/x/../features", 1))),
            Expect::Hidden(n.hidden_uri),
        ),
        case(
            "the hidden resource with an encoded letter",
            read(&q(&n
                .hidden_uri
                .replacen("/secret", "/%73ecret", 1)
                .replacen("/features", "/%66eatures", 1))),
            Expect::Hidden(n.hidden_uri),
        ),
        case(
            "an encoded dot segment",
            read(&q(&n
                .hidden_uri
                .replacen("/secret", "/%2e%2e/secret", 1)
                .replacen("/features", "/%2e%2e/features", 1))),
            Expect::Refused(400, -32602, json!(7)),
        ),
    ];
    // Duplicate keys, wherever a key can repeat.
    let (e, a) = (q(n.echo), echo_args(""));
    for (place, body) in [
        (
            "jsonrpc",
            format!(
                r#"{{"jsonrpc":"2.0","jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{e},"arguments":{a}}}}}"#
            ),
        ),
        (
            "id",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"id":8,"method":"tools/call","params":{{"name":{e},"arguments":{a}}}}}"#
            ),
        ),
        (
            "method",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"ping","method":"tools/call","params":{{"name":{e},"arguments":{a}}}}}"#
            ),
        ),
        (
            "params",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{e}}},"params":{{"name":{}}}}}"#,
                q(n.hidden)
            ),
        ),
        (
            "params.name",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{e},"name":{},"arguments":{a}}}}}"#,
                q(n.hidden)
            ),
        ),
        (
            "params.name, one escaped",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{e},"n\u0061me":{},"arguments":{a}}}}}"#,
                q(n.hidden)
            ),
        ),
        (
            "params.arguments",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{e},"arguments":{a},"arguments":{a}}}}}"#
            ),
        ),
        (
            "an argument",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{1},"arguments":{{"{0}":1,"{0}":500}}}}}}"#,
                n.arg,
                q(n.number)
            ),
        ),
        (
            "a nested argument",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{e},"arguments":{{"o":{{"k":1,"k":2}}}}}}}}"#
            ),
        ),
        (
            "params._meta",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{e},"arguments":{a},"_meta":{{"k":1}},"_meta":{{"k":2}}}}}}"#
            ),
        ),
        (
            "params.uri",
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{{"uri":{},"uri":{}}}}}"#,
                q(n.visible_uri),
                q(n.hidden_uri)
            ),
        ),
    ] {
        cases.push(case(
            format!("a duplicate key: {place}"),
            body,
            Expect::Refused(PARSE.0, PARSE.1, Value::Null),
        ));
    }
    if sdk != Sdk::TypeScript {
        // Integers beyond 2^53: Python and rmcp read them exactly, a
        // double does not.
        for (what, v, expect) in [
            ("2^53", "9007199254740992", Expect::Judged("quota")),
            ("2^53 + 1", "9007199254740993", Expect::Violation("quota")),
            // Read as the double 2^53 by every parser, Python's included.
            (
                "2^53 + 1 written 9007199254740993.0",
                "9007199254740993.0",
                Expect::Judged("quota"),
            ),
            (
                "a 65-bit integer",
                "36893488147419103232",
                Expect::Violation("quota"),
            ),
        ] {
            cases.push(case(
                format!("quota {what}"),
                call(r#""quota""#, &format!(r#"{{"n":{v}}}"#)),
                expect,
            ));
        }
        for (what, v, expect) in [
            ("1e2", "1e2", Expect::Judged("measure")),
            ("101.0", "101.0", Expect::Violation("measure")),
        ] {
            cases.push(case(
                format!("measure {what}"),
                call(r#""measure""#, &format!(r#"{{"x":{v}}}"#)),
                expect,
            ));
        }
    }
    cases
}

fn fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                char::from_u32(c as u32 - 'a' as u32 + 0xFF41).unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

/// One upstream, reached through its assignment.
struct Peer<'a> {
    sdk: Sdk,
    assignment: &'static str,
    recorder: Option<&'a Recorder>,
}

/// An MCP session through the gateway, the raw bytes of each message sent
/// as written.
struct Session {
    url: String,
    token: String,
    headers: Vec<(String, String)>,
}

impl Session {
    async fn open(stack: &Stack, assignment: &str, token: &str) -> Result<Session> {
        let url = stack.url(assignment);
        let reply = post_json(&url, Some(token), INITIALIZE, &[]).await?;
        if reply.status != 200 {
            bail!("initialize {assignment}: {} {}", reply.status, reply.body);
        }
        let id = reply
            .header("mcp-session-id")
            .context("no session id")?
            .to_owned();
        let s = Session {
            url,
            token: token.to_owned(),
            headers: vec![
                ("mcp-session-id".into(), id),
                ("mcp-protocol-version".into(), "2025-11-25".into()),
            ],
        };
        let (status, _) = s
            .post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await?;
        anyhow::ensure!(status == 202, "notifications/initialized: {status}");
        Ok(s)
    }

    /// The status and the one JSON-RPC message answering, if any.
    async fn post(&self, body: &str) -> Result<(u16, Option<Value>)> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let reply = tokio::time::timeout(
            Duration::from_secs(15),
            post_json(&self.url, Some(&self.token), body, &headers),
        )
        .await
        .context("no answer in 15 s")??;
        Ok((reply.status, reply.messages().into_iter().next()))
    }
}

/// What one message came to.
struct Probe {
    status: u16,
    answer: Option<Value>,
    reached: bool,
    /// The decision event this message produced, if any.
    event: Option<Value>,
    /// What the recorder recorded of it (empty for server-everything).
    recorded: Vec<Value>,
}

fn decisions(stack: &Stack) -> Result<Vec<Value>> {
    Ok(stack
        .audit_events()?
        .into_iter()
        .filter(|e| e["event"] == "decision")
        .collect())
}

async fn probe(stack: &Stack, peer: &Peer<'_>, s: &Session, body: &str) -> Result<Probe> {
    let server = peer.assignment;
    let before = stack.envoy.upstream_requests(server)?;
    let events_before = decisions(stack)?.len();
    let recorded_before = match peer.recorder {
        Some(r) => r.calls().await?.len(),
        None => 0,
    };
    let (status, answer) = s.post(body).await?;
    let reached = stack.envoy.upstream_requests(server)? > before;
    // The audit writer is asynchronous: a decision event may trail the
    // answer by a moment. A message the filter refuses before any Check
    // has none, so a refusal waits less (but long enough that a trailing
    // event is not taken for the next message's).
    let refused = !reached && status >= 400;
    let patience = if refused { 4 } else { 150 };
    // Events of the session's own set-up may still trail in: the one for
    // this message carries its method.
    let method = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|m| m["method"].as_str().map(str::to_owned));
    let mut event = None;
    for _ in 0..patience {
        event = decisions(stack)?
            .split_off(events_before)
            .into_iter()
            .rfind(|e| method.as_deref().is_none_or(|m| e["method"] == m));
        if event.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorded = match peer.recorder {
        Some(r) => r.calls().await?.split_off(recorded_before),
        None => Vec::new(),
    };
    Ok(Probe {
        status,
        answer,
        reached,
        event,
        recorded,
    })
}

/// The name (or URI) the upstream says it parsed, and the arguments its
/// tool acted on, if it ran one.
fn upstream_parsed(sdk: Sdk, p: &Probe) -> (Option<String>, Option<Value>) {
    let text = |a: &Value| {
        a["result"]["content"][0]["text"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| a["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    match sdk {
        Sdk::Rmcp => {
            let named = p.recorded.iter().find(|c| c.get("method").is_some());
            let name = named.and_then(|c| c["name"].as_str().or(c["uri"].as_str()));
            let acted = p.recorded.iter().find_map(|c| c.get("acted").cloned());
            (name.map(str::to_owned), acted)
        }
        Sdk::Python => {
            let named = p
                .recorded
                .iter()
                .find(|c| c["method"].as_str().is_some_and(|m| m.contains('/')));
            let name =
                named.and_then(|c| c["params"]["name"].as_str().or(c["params"]["uri"].as_str()));
            // What the tool acted on is in its structured result.
            let acted = p
                .answer
                .as_ref()
                .and_then(|a| a["result"]["structuredContent"]["arguments"].as_object())
                .map(|o| Value::Object(o.clone()));
            (name.map(str::to_owned), acted)
        }
        Sdk::TypeScript => {
            let Some(a) = &p.answer else {
                return (None, None);
            };
            if let Some(uri) = a["result"]["contents"][0]["uri"].as_str() {
                return (Some(uri.to_owned()), None);
            }
            if a["result"]["messages"].is_array() {
                return (Some("simple-prompt".into()), None);
            }
            let t = text(a);
            if t.starts_with("Echo: ") {
                return (Some("echo".into()), None);
            }
            if let Some(rest) = t.strip_prefix("The sum of ") {
                let a = rest.split(' ').next().unwrap_or_default();
                return (
                    Some("get-sum".into()),
                    Some(json!({ "a": serde_json::from_str::<Value>(a).unwrap_or(Value::Null) })),
                );
            }
            // "Tool <name> not found", "Resource <uri> not found".
            let name = t
                .split_once("Tool ")
                .or_else(|| t.split_once("Resource "))
                .and_then(|(_, rest)| rest.rsplit_once(" not found"))
                .map(|(name, _)| name.to_owned());
            (name, None)
        }
    }
}

/// Whether `v` (a JSON number, or `{"int": "<digits>"}` from the Python
/// recorder for integers beyond 2^53) lies in `lo..=hi`, integers exactly.
fn exactly_within(v: &Value, lo: i128, hi: i128) -> bool {
    let integer = match v {
        Value::Number(n) => n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)),
        Value::Object(o) => o
            .get("int")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
        _ => None,
    };
    match (integer, v.as_f64()) {
        (Some(i), _) => (lo..=hi).contains(&i),
        // Bounds here are below 2^63: exact as doubles.
        (None, Some(f)) => f >= lo as f64 && f <= hi as f64,
        _ => false,
    }
}

/// The bounds the policy puts on a tool's argument, if any.
fn bounds(tool: &str) -> Option<(&'static str, i128, i128)> {
    match tool {
        "count" => Some(("n", 0, 100)),
        "measure" => Some(("x", 0, 100)),
        "quota" => Some(("n", 0, 1 << 53)),
        "get-sum" => Some(("a", 0, 100)),
        _ => None,
    }
}

/// `a == b`, or an error saying where and what each was.
macro_rules! same {
    ($a:expr, $b:expr, $($at:tt)+) => {{
        let (a, b) = (&$a, &$b);
        anyhow::ensure!(a == b, "{}: {:?} where {:?} was expected", format!($($at)+), a, b);
    }};
}

/// What policy judged (the audit event's name) is what the upstream
/// parsed, and every bounded argument the tool acted on lies within the
/// bounds policy checked.
fn agrees(sdk: Sdk, p: &Probe, judged: Option<&str>, at: &str) -> Result<()> {
    use anyhow::ensure;
    let judged = judged.with_context(|| format!("{at}: no audit name for a call that went on"))?;
    let (parsed, acted) = upstream_parsed(sdk, p);
    let parsed = parsed.with_context(|| {
        format!(
            "{at}: the upstream said nothing of what it parsed: {:?} {:?}",
            p.answer, p.recorded
        )
    })?;
    if judged.contains("://") {
        same!(
            canonical(&parsed),
            canonical(judged),
            "{at}: the upstream read {parsed}"
        );
    } else {
        same!(
            parsed.as_str(),
            judged,
            "{at}: the upstream parsed another name than policy judged"
        );
    }
    if let (Some((arg, lo, hi)), Some(acted)) = (bounds(judged), &acted) {
        ensure!(
            exactly_within(&acted[arg], lo, hi),
            "{at}: policy allowed it, but the tool acted on {arg} = {}",
            acted[arg]
        );
    }
    Ok(())
}

/// Runs `c` against `peer` and checks it came to what it must.
async fn check(stack: &Stack, peer: &Peer<'_>, s: &Session, c: &Case) -> Result<()> {
    use anyhow::ensure;
    let p = probe(stack, peer, s, &c.body).await?;
    let body: String = c.body.chars().take(200).collect();
    let at = format!("{:?} / {}: {body}", peer.sdk, c.what);
    let answer = p.answer.clone().unwrap_or(Value::Null);
    let event_name = p
        .event
        .as_ref()
        .and_then(|e| e["name"].as_str())
        .map(str::to_owned);
    let decision = p
        .event
        .as_ref()
        .map(|e| e["decision"].clone())
        .unwrap_or(Value::Null);
    // The differential invariant, whatever was expected: a named call that
    // reached the upstream was judged by the name its SDK parsed, and an
    // argument a constraint let through is what the tool acted on, within
    // the bounds.
    if p.reached && !matches!(c.expect, Expect::NotNamed) {
        agrees(peer.sdk, &p, event_name.as_deref(), &at)?;
    }
    match &c.expect {
        Expect::Refused(status, code, id) => {
            ensure!(!p.reached, "{at}: reached the upstream");
            same!(p.status, *status, "{at}: status of {answer}");
            same!(answer["error"]["code"], *code, "{at}: {answer}");
            same!(&answer["id"], id, "{at}: {answer}");
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            ensure!(
                message.len() > 20,
                "{at}: no message a person can act on: {answer}"
            );
        }
        Expect::Hidden(name) | Expect::Violation(name) => {
            ensure!(!p.reached, "{at}: reached the upstream: {answer}");
            ensure!(
                p.recorded.is_empty(),
                "{at}: the upstream recorded {:?}",
                p.recorded
            );
            same!(p.status, 200, "{at}: status of {answer}");
            same!(answer["id"], 7, "{at}: {answer}");
            same!(decision, "deny", "{at}: {:?}", p.event);
            let judged = event_name.with_context(|| format!("{at}: no audit name"))?;
            if name.contains("://") {
                same!(canonical(&judged).ok(), Some(name.to_string()), "{at}");
            } else {
                same!(judged.as_str(), *name, "{at}");
            }
            let reason = p
                .event
                .as_ref()
                .map(|e| e["reason"].clone())
                .unwrap_or_default();
            let want = if matches!(c.expect, Expect::Hidden(_)) {
                "hidden_by_policy"
            } else {
                "constraint_violation"
            };
            same!(reason, want, "{at}: {:?}", p.event);
        }
        Expect::Judged(name) => {
            ensure!(
                p.reached,
                "{at}: did not reach the upstream: {} {answer}",
                p.status
            );
            same!(decision, "allow", "{at}: {:?}", p.event);
            let judged = event_name.with_context(|| format!("{at}: no audit name"))?;
            same!(judged.as_str(), *name, "{at}: policy judged another name");
            if c.what.contains("nested") && peer.sdk != Sdk::TypeScript {
                let sent: Value = serde_json::from_str(&c.body)?;
                let recorded = p
                    .recorded
                    .iter()
                    .find_map(|r| r.get("arguments").or(r["params"].get("arguments")))
                    .with_context(|| format!("{at}: no arguments recorded"))?;
                same!(
                    nesting_of(&recorded["deep"]),
                    nesting_of(&sent["params"]["arguments"]["deep"]),
                    "{at}: nesting"
                );
            }
        }
        Expect::NotNamed => {
            let (_, acted) = upstream_parsed(peer.sdk, &p);
            ensure!(acted.is_none(), "{at}: a tool ran: {acted:?}");
            ensure!(
                p.recorded
                    .iter()
                    .all(|r| r["method"] != "tools/call" && r.get("tool").is_none()),
                "{at}: the upstream acted on it: {:?}",
                p.recorded
            );
            ensure!(
                answer["error"].is_object() || p.status >= 400,
                "{at}: {answer}"
            );
        }
    }
    Ok(())
}

async fn stack(name: &str, mode: AuthzMode) -> Result<Stack> {
    Stack::start(
        name,
        StackOptions {
            mode,
            everything: true,
            recorders: true,
            policy: Some(POLICY.to_owned()),
            ..Default::default()
        },
    )
    .await
}

/// The whole corpus against every server of `stack`.
async fn run_corpus(stack: &Stack) -> Result<usize> {
    let token = stack.token("alice").await?;
    let peers = [
        Peer {
            sdk: Sdk::Rmcp,
            assignment: "record-rmcp",
            recorder: stack.record_rmcp.as_ref(),
        },
        Peer {
            sdk: Sdk::Python,
            assignment: "record-py",
            recorder: stack.record_py.as_ref(),
        },
        Peer {
            sdk: Sdk::TypeScript,
            assignment: "everything",
            recorder: None,
        },
    ];
    let mut checked = 0;
    let mut failures = Vec::new();
    for peer in &peers {
        let s = Session::open(stack, peer.assignment, &token).await?;
        for c in corpus(peer.sdk) {
            // Every case runs; the failures are reported together.
            match check(stack, peer, &s, &c).await {
                Ok(()) => checked += 1,
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of the corpus failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_policy_judges_is_what_the_rmcp_python_and_typescript_servers_parse() -> Result<()> {
    let stack = stack("differential", AuthzMode::Wasm).await?;
    let checked = run_corpus(&stack).await?;
    assert!(checked > 150, "only {checked} cases ran");
    let scanned = stack.assert_no_secret_in_logs()?;
    assert!(scanned > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_native_ext_authz_policy_judges_what_the_sdk_servers_parse() -> Result<()> {
    let stack = stack("differential_native", AuthzMode::Native).await?;
    let checked = run_corpus(&stack).await?;
    assert!(checked > 150, "only {checked} cases ran");
    Ok(())
}
