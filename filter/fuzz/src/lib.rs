//! The bodies of the filter's fuzz targets, one plain function each
//! (`fn(&[u8])`). libFuzzer calls them from `fuzz_targets/<name>.rs`
//! (nightly, `scripts/fuzz`); `filter/tests/fuzz_corpus.rs` includes this
//! file and calls them on stable for every file of `corpus/<name>/`, so CI
//! replays the committed corpus through exactly the code that was fuzzed.
//!
//! Each body calls the production functions and asserts what must hold for
//! every input, not only that nothing panics:
//!
//! * `classify`: what the filter reads (method, id, name, kind) is what
//!   `serde_json` reads, and it survives the trip to the service as
//!   `latchkey.mcp` metadata.
//! * `trim_json` / `trim_sse`: a list response to the held request never
//!   carries a name the caller may not see, whichever way a client's SSE
//!   parser (the WHATWG rules) reads the stream, and the SSE output is the
//!   same whatever the chunk boundaries.
//! * `inject`: notifications go only between events: the client sees the
//!   upstream's events unchanged, with ours interleaved.
//! * `round_trip`: stripping removes exactly Latchkey's `requestState` and
//!   `inputResponses`, and is idempotent.
//! * `uri`: a canonical URI (or path) is its own canonical form, has no dot
//!   segment, no lowercase escape and no control character, and a resource
//!   is visible to an allow-everything view exactly when it has one.
//!
//! Inputs are text a person can write: a first line of choices (read with
//! `arbitrary`, so any bytes mean something) and then the message or stream.

use arbitrary::{Arbitrary, Unstructured};
use latchkey_filter::completion::{self, EventBoundary};
use latchkey_filter::listing::{ListTrim, SseTrimmer};
use latchkey_filter::mcp::{self, McpMessage, MessageKind};
use latchkey_filter::round_trip::{self, REQUEST_STATE_PREFIX};
use latchkey_filter::visibility::{ItemKind, ListShape, Rules, Visibility};
use serde_json::Value;

/// A target: its name (the file in `fuzz_targets/` and the folder in
/// `corpus/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("classify", classify),
    ("trim_json", trim_json),
    ("trim_sse", trim_sse),
    ("inject", inject),
    ("round_trip", round_trip),
    ("uri", uri),
];

/// `data` split at its first newline: (choices, payload).
fn choices_and_payload(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[], data),
    }
}

/// Ids compared by JSON-RPC meaning: strings exactly, numbers by value.
fn same_id(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Value::String(x)), Some(Value::String(y))) => x == y,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        _ => false,
    }
}

// ---------------------------------------------------------------- classify

/// Input: header lines (`name: value`), a blank line, the body. Without a
/// blank line the whole input is the body of a JSON POST.
pub fn classify(data: &[u8]) {
    let (headers, body) = headers_and_body(data);
    let result = mcp::classify(&headers, body);
    let read: Option<Value> = serde_json::from_slice(body).ok();
    match result {
        Ok(m) => {
            check_against_serde(&headers, &m, read.as_ref());
            let back = McpMessage::from_metadata(&m.to_metadata())
                .expect("the metadata of a classified message reads back");
            assert_eq!(back.kind, m.kind);
            assert_eq!(back.method, m.method);
            assert_eq!(back.name, m.name);
            assert_eq!(back.protocol_version, m.protocol_version);
            assert_eq!(back.session_id, m.session_id);
            assert!(
                same_id(back.id.as_ref(), m.id.as_ref()),
                "id {:?} came back as {:?}",
                m.id,
                back.id
            );
        }
        Err(e) => {
            assert!((400..500).contains(&e.http_status), "{e}");
            let answer: Value = serde_json::from_str(&e.body()).expect("an error body is JSON");
            assert_eq!(answer["jsonrpc"], "2.0");
            assert_eq!(answer["error"]["code"], e.jsonrpc_code);
            if let Some(id) = &e.id {
                // The id answered is the one the client sent.
                let sent = read.as_ref().and_then(|v| v.get("id"));
                assert!(Some(id) == sent, "error answers {id} for {sent:?}");
                assert_eq!(&answer["id"], id);
            }
        }
    }
}

/// The headers and body of a `classify`/`context` input (see [`classify`]).
pub fn headers_and_body(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let Some(at) = data.windows(2).position(|w| w == b"\n\n") else {
        return (
            vec![
                (":method".into(), "POST".into()),
                ("content-type".into(), "application/json".into()),
            ],
            data,
        );
    };
    let headers = String::from_utf8_lossy(&data[..at])
        .lines()
        .map(|line| match line.get(1..).and_then(|l| l.split_once(':')) {
            // A leading ':' belongs to the name (`:method`).
            Some((name, value)) => (
                format!("{}{name}", &line[..1]),
                value.trim_start_matches(' ').to_owned(),
            ),
            None => (line.to_owned(), String::new()),
        })
        .collect();
    (headers, &data[at + 2..])
}

/// What the filter read must be what `serde_json` reads: the service, the
/// upstream SDKs and the policy all go by that reading.
fn check_against_serde(headers: &[(String, String)], m: &McpMessage, read: Option<&Value>) {
    let http_method = mcp::header(headers, ":method").unwrap_or("POST");
    match m.kind {
        MessageKind::Stream | MessageKind::SessionEnd => {
            assert_eq!(
                http_method,
                if m.kind == MessageKind::Stream {
                    "GET"
                } else {
                    "DELETE"
                }
            );
            assert!(m.method.is_none() && m.id.is_none() && m.name.is_none());
            return;
        }
        _ => assert_eq!(http_method, "POST"),
    }
    let obj = read
        .and_then(Value::as_object)
        .expect("classify accepted a body serde_json does not read as an object");
    assert_eq!(obj.get("jsonrpc").and_then(Value::as_str), Some("2.0"));
    assert_eq!(
        m.method.as_deref(),
        obj.get("method").and_then(Value::as_str)
    );
    let id = obj.get("id").filter(|v| !v.is_null());
    assert!(
        m.id.as_ref() == id,
        "id {:?} differs from serde_json's {id:?}",
        m.id
    );
    match m.kind {
        MessageKind::Request => assert!(m.method.is_some() && m.id.is_some()),
        MessageKind::Notification => assert!(m.method.is_some() && m.id.is_none()),
        MessageKind::Response => {
            assert!(m.method.is_none());
            assert!(obj.contains_key("result") != obj.contains_key("error"));
        }
        _ => {}
    }
    match m.method.as_deref().and_then(mcp::name_param) {
        Some(key) => {
            let sent = obj
                .get("params")
                .and_then(|p| p.get(key))
                .and_then(Value::as_str);
            assert_eq!(m.name.as_deref(), sent, "name differs from serde_json's");
            assert!(sent.is_some_and(|s| !s.is_empty()));
        }
        None => assert!(m.name.is_none()),
    }
}

// ------------------------------------------------------------ list trimming

/// Names and patterns the choices draw from: tools, prompts, URIs, globs,
/// case variants and unicode, so allow/deny/glob/case rules all meet.
const VOCABULARY: &[&str] = &[
    "*",
    "echo",
    "get-*",
    "get-env",
    "Get-Env",
    "add",
    "?dd",
    "*secret*",
    "greet",
    "file:///*",
    "file:///etc/passwd",
    "demo://resource/static/*",
    "demo://resource/static/document/1",
    "tmpl://{id}",
    "échö",
    "get-sum",
];

/// The caller's view and the request, as the choices line picks them.
#[derive(Debug, Arbitrary)]
struct TrimChoices {
    method: u8,
    allow: u16,
    deny: u16,
    /// An agent acting for the caller, with its own allow patterns.
    agent_allow: Option<u16>,
    /// A combined endpoint: the union with a second view.
    union_allow: Option<u16>,
    private: bool,
    /// Some: the request's id is this, else the response's own.
    other_id: Option<i8>,
    limit: u16,
    chunks: Vec<u8>,
}

fn patterns(mask: u16) -> Vec<String> {
    VOCABULARY
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, p)| (*p).to_owned())
        .collect()
}

const LIST_METHODS: [&str; 4] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
];

impl TrimChoices {
    fn read(bytes: &[u8]) -> TrimChoices {
        TrimChoices::arbitrary_take_rest(Unstructured::new(bytes)).unwrap_or(TrimChoices {
            method: 0,
            allow: 0b11,
            deny: 0b1000,
            agent_allow: None,
            union_allow: None,
            private: false,
            other_id: None,
            limit: u16::MAX,
            chunks: Vec::new(),
        })
    }

    fn shape(&self) -> ListShape {
        let method = LIST_METHODS[usize::from(self.method) % LIST_METHODS.len()];
        ListShape::of_method(method).expect("a list method")
    }

    fn visibility(&self, kind: ItemKind) -> Visibility {
        let view = |allow: u16, deny: u16| {
            let rules = Rules::new(&patterns(allow), &patterns(deny));
            match kind {
                ItemKind::Tool => Visibility::new(rules, Rules::default(), Rules::default()),
                ItemKind::Prompt => Visibility::new(Rules::default(), rules, Rules::default()),
                ItemKind::Resource => Visibility::new(Rules::default(), Rules::default(), rules),
            }
        };
        let mut v = view(self.allow, self.deny);
        if let Some(agent) = self.agent_allow {
            v = v.and_agent(view(agent, 0));
        }
        if let Some(other) = self.union_allow {
            v = Visibility::union(vec![v, view(other, self.deny)]);
        }
        v
    }

    /// The trim for a response whose own id (as serde_json reads it) is
    /// `response_id`. The id only goes into the error that replaces an
    /// unreadable list: a list result is trimmed whatever id it carries.
    fn trim(&self, response_id: Option<&Value>) -> ListTrim {
        let shape = self.shape();
        let id = match (self.other_id, response_id) {
            (None, Some(id)) => id.clone(),
            (Some(n), _) => Value::from(n),
            (None, None) => Value::from(7),
        };
        ListTrim {
            visibility: self.visibility(shape.kind),
            id: Some(id),
            private_cache_scope: self.private,
        }
    }
}

/// The `id` of a JSON-RPC message as `serde_json` reads it.
fn id_of(text: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(text)
        .ok()?
        .get("id")
        .cloned()
}

/// The invariant of every trimmed message: whatever id it carries, each
/// entry of each list in its result that a client reads has a name the
/// caller may see.
fn assert_no_hidden_entry(trim: &ListTrim, message: &Value, at: &str) {
    let Some(result) = message.get("result").and_then(Value::as_object) else {
        return;
    };
    for (field, list) in result {
        let (Some(shape), Some(entries)) = (ListShape::of_field(field), list.as_array()) else {
            continue;
        };
        for entry in entries {
            let Some(obj) = entry.as_object() else {
                continue;
            };
            let name = obj.get(shape.name_field).and_then(Value::as_str);
            assert!(
                name.is_some_and(|n| trim.visibility.permits(shape.kind, n)),
                "{at}: a {} the caller may not see went out: {entry}",
                shape.kind.noun()
            );
        }
    }
}

/// Choices line, then one `application/json` response body.
pub fn trim_json(data: &[u8]) {
    let (choices, body) = choices_and_payload(data);
    let choices = TrimChoices::read(choices);
    let trim = choices.trim(id_of(body).as_ref());
    let out = trim.json_body(body);
    let read: Option<Value> = serde_json::from_slice(body).ok();
    match &out {
        None => {
            // Passed on untouched: it must not be a list response to us.
            let message = read.expect("an unreadable body passed untrimmed");
            assert_no_hidden_entry(&trim, &message, "untouched body");
        }
        Some(out) => {
            let message: Value = serde_json::from_slice(out).expect("trimmed output is JSON");
            assert_no_hidden_entry(&trim, &message, "trimmed body");
            if message.get("error").is_none() {
                let result = &message["result"];
                assert!(result.is_object(), "trimmed output without a result");
                if trim.private_cache_scope {
                    assert_eq!(result["cacheScope"], "private");
                }
                // Everything but the list is the upstream's, as sent.
                let sent = read.expect("a trimmed body was readable");
                for (key, value) in result.as_object().into_iter().flatten() {
                    if ListShape::of_field(key).is_none() && key != "cacheScope" {
                        assert_eq!(Some(value), sent["result"].get(key), "{key} changed");
                    }
                }
            }
        }
    }
}

/// The events a client reads from an SSE stream (WHATWG rules: CRLF, LF or
/// CR end a line, one leading BOM is dropped, `data` lines join with LF).
/// `tail`: also dispatch an unterminated last event (the trimmer does, so
/// the oracle must look at it too).
pub fn client_events(stream: &[u8], tail: bool) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut events = Vec::new();
    let (mut kind, mut data, mut has_data) = (String::new(), String::new(), false);
    let mut dispatch = |kind: &mut String, data: &mut String, has_data: &mut bool| {
        if std::mem::take(has_data) {
            let mut d = std::mem::take(data);
            d.pop();
            let k = std::mem::take(kind);
            events.push((if k.is_empty() { "message".into() } else { k }, d));
        }
        kind.clear();
        data.clear();
    };
    let mut rest = text;
    loop {
        let Some(end) = rest.find(['\r', '\n']) else {
            if tail && !rest.is_empty() {
                field(rest, &mut kind, &mut data, &mut has_data);
                dispatch(&mut kind, &mut data, &mut has_data);
            } else if tail {
                dispatch(&mut kind, &mut data, &mut has_data);
            }
            break;
        };
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            dispatch(&mut kind, &mut data, &mut has_data);
        } else {
            field(line, &mut kind, &mut data, &mut has_data);
        }
    }
    events
}

fn field(line: &str, kind: &mut String, data: &mut String, has_data: &mut bool) {
    if line.starts_with(':') {
        return;
    }
    let (name, value) = match line.split_once(':') {
        Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
        None => (line, ""),
    };
    match name {
        "data" => {
            data.push_str(value);
            data.push('\n');
            *has_data = true;
        }
        "event" => value.clone_into(kind),
        _ => {}
    }
}

/// Feeds `stream` in the chunks `sizes` picks (the last with `end`).
fn feed_trimmer(trimmer: &mut SseTrimmer, stream: &[u8], sizes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = stream;
    for size in sizes {
        let at = usize::from(*size).min(rest.len());
        let (chunk, more) = rest.split_at(at);
        out.extend(trimmer.push(chunk, false));
        rest = more;
    }
    out.extend(trimmer.push(rest, true));
    out
}

/// Choices line, then a `text/event-stream` body.
pub fn trim_sse(data: &[u8]) {
    let (choices, stream) = choices_and_payload(data);
    let choices = TrimChoices::read(choices);
    // The id of the first event a client would read as a message.
    let first_id = client_events(stream, true)
        .iter()
        .find_map(|(_, d)| id_of(d.as_bytes()));
    let trim = choices.trim(first_id.as_ref());

    let whole = SseTrimmer::new(trim.clone(), 1 << 20).push(stream, true);
    let chunked = feed_trimmer(
        &mut SseTrimmer::new(trim.clone(), 1 << 20),
        stream,
        &choices.chunks,
    );
    assert!(
        whole == chunked,
        "chunk boundaries changed the output:\n{}\n---\n{}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&chunked)
    );
    for out in [whole, {
        // A small event limit: the stream may end early, never leak.
        let limit = usize::from(choices.limit);
        feed_trimmer(
            &mut SseTrimmer::new(trim.clone(), limit),
            stream,
            &choices.chunks,
        )
    }] {
        for (_, data) in client_events(&out, true) {
            match serde_json::from_str::<Value>(&data) {
                Ok(message) => assert_no_hidden_entry(&trim, &message, "SSE event"),
                // JSON a client may read but the trimmer could not (too
                // deep, say) must not have gone out as it was. What no JSON
                // reader takes (a raw control character in a string) may,
                // when no reader, however lenient, could find a `result` in
                // it: neither the word nor an escape that could spell it.
                Err(_) if data.trim_start().starts_with('{') => {
                    let readable = serde_json::from_str::<
                        std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>,
                    >(&data);
                    let no_result = !data.contains("result") && !data.contains("\\u");
                    assert!(
                        readable.is_ok() || no_result,
                        "an unreadable event went out: {data}"
                    );
                }
                Err(_) => {}
            }
        }
    }
}

// --------------------------------------------------- notification injection

#[derive(Debug, Arbitrary)]
struct InjectChoices {
    /// Chunk sizes; per chunk, how many notifications to put in (if the
    /// chunk has a place for them).
    chunks: Vec<(u8, u8)>,
}

/// Choices line, then a `text/event-stream` body; notifications are put in
/// wherever [`EventBoundary`] allows, as the filter does on a GET stream.
pub fn inject(data: &[u8]) {
    let (choices, stream) = choices_and_payload(data);
    let choices =
        InjectChoices::arbitrary_take_rest(Unstructured::new(choices)).unwrap_or(InjectChoices {
            chunks: vec![(0, 1)],
        });
    let mut boundary = EventBoundary::default();
    let mut out = Vec::new();
    let mut ours = Vec::new();
    let mut rest = stream;
    let mut n = 0;
    let last = (u8::MAX, 1);
    for (size, count) in choices.chunks.iter().chain([&last]) {
        let at = usize::from(*size).min(rest.len());
        let (chunk, more) = rest.split_at(at);
        rest = more;
        match boundary.feed(chunk) {
            Some(offset) if *count > 0 => {
                assert!(offset <= chunk.len());
                let ids: Vec<String> = (0..count % 4)
                    .map(|_| {
                        n += 1;
                        format!("lk-\"{n}\"-é")
                    })
                    .collect();
                for e in client_events(&completion::notification_events(&ids), false) {
                    ours.push(e);
                }
                out.extend(completion::insert_events(
                    chunk,
                    offset,
                    &completion::notification_events(&ids),
                ));
            }
            _ => out.extend_from_slice(chunk),
        }
    }
    out.extend_from_slice(rest);
    let theirs = client_events(stream, false);
    let seen = client_events(&out, false);
    assert!(
        interleaves(&seen, &theirs, &ours),
        "the client reads other events than the upstream's plus ours:\n{}",
        String::from_utf8_lossy(&out)
    );
}

/// Whether `all` is `a` and `b` interleaved, each in its order.
fn interleaves<T: PartialEq>(all: &[T], a: &[T], b: &[T]) -> bool {
    if all.len() != a.len() + b.len() {
        return false;
    }
    // reachable[j]: the first i + j items of `all` are a[..i] and b[..j].
    let mut reachable = vec![false; b.len() + 1];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            reachable[j] = if i == 0 && j == 0 {
                true
            } else {
                let from_a = i > 0 && reachable[j] && all[i + j - 1] == a[i - 1];
                let from_b = j > 0 && reachable[j - 1] && all[i + j - 1] == b[j - 1];
                from_a || from_b
            };
        }
    }
    reachable[b.len()]
}

// ------------------------------------------------------- round-trip strip

/// Any request body.
pub fn round_trip(data: &[u8]) {
    let read: Option<Value> = serde_json::from_slice(data).ok();
    let ours = read
        .as_ref()
        .and_then(|v| v.get("params")?.get("requestState")?.as_str())
        .is_some_and(|s| s.starts_with(REQUEST_STATE_PREFIX));
    let out = round_trip::upstream_body(data);
    // The service checks a state exactly when the filter strips it: both
    // look for the marker bytes first.
    let checked = round_trip::may_carry_request_state(data) && ours;
    assert_eq!(out.is_some(), checked, "stripped: {}", out.is_some());
    let Some(out) = out else { return };
    let mut expected = read.expect("a stripped body was JSON");
    if let Some(params) = expected.get_mut("params").and_then(Value::as_object_mut) {
        params.remove("requestState");
        params.remove("inputResponses");
    }
    let sent: Value = serde_json::from_slice(&out).expect("the stripped body is JSON");
    assert_eq!(
        sent, expected,
        "stripping changed more than Latchkey's members"
    );
    assert_eq!(
        round_trip::upstream_body(&out),
        None,
        "stripping is not idempotent"
    );
}

// --------------------------------------------------------------------- uri

/// Input: one resource URI (or file path), as text. Policy judges the
/// canonical form, so it must be a fixed point, and everything that makes
/// a URI ambiguous must be gone from it.
pub fn uri(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let everything = Visibility::new(
        Rules::default(),
        Rules::default(),
        Rules::new(&["*".to_owned()], &[]),
    );
    match latchkey_filter::uri::canonical(text) {
        Ok(c) => {
            assert_eq!(
                latchkey_filter::uri::canonical(&c).as_deref(),
                Ok(c.as_str()),
                "the canonical form of {text:?} is not its own"
            );
            assert_canonical_shape(&c, text);
            assert!(
                everything.permits(ItemKind::Resource, text),
                "{text:?} has a canonical form but is not visible to `*`"
            );
        }
        Err(_) => assert!(
            !everything.permits(ItemKind::Resource, text),
            "{text:?} has no canonical form but is visible"
        ),
    }
    if let Ok(p) = latchkey_filter::uri::canonical_path(text) {
        assert_eq!(
            latchkey_filter::uri::canonical_path(&p).as_deref(),
            Ok(p.as_str()),
            "the canonical path of {text:?} is not its own"
        );
        // `.` alone is how an empty relative path is written.
        assert!(
            p == "." || (!p.split('/').any(|s| s == "." || s == "..") && !p.contains("//")),
            "{text:?} → {p:?} keeps a dot segment or an empty one"
        );
    }
}

/// What no canonical URI may contain: a dot segment in its path, an escape
/// in lowercase hex, a control character or a backslash.
fn assert_canonical_shape(c: &str, from: &str) {
    let path = c.split(['?', '#']).next().unwrap_or("");
    let path = match path.split_once("://") {
        Some((_, after)) => after.find('/').map_or("", |at| &after[at..]),
        None => path.split_once(':').map_or("", |(_, p)| p),
    };
    assert!(
        !path.split('/').any(|s| s == "." || s == ".."),
        "{from:?} → {c:?} keeps a dot segment"
    );
    let bytes = c.as_bytes();
    for (at, _) in c.match_indices('%') {
        let hex = bytes.get(at + 1..at + 3).unwrap_or(&[]);
        assert!(
            hex.len() == 2
                && hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
            "{from:?} → {c:?} has an escape that is not two uppercase hex digits"
        );
    }
    assert!(
        !c.chars().any(|ch| ch.is_control() || ch == '\\'),
        "{from:?} → {c:?} keeps a control character or a backslash"
    );
}
