//! Trimming list results (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`) to what the caller may see, in a plain JSON
//! body or in a `text/event-stream`, event by event as the bytes arrive.
//!
//! A list is recognised by what it is, not by which request it answers:
//! every message whose `result` carries `tools`, `prompts`, `resources` or
//! `resourceTemplates` is trimmed with the caller's view, whatever its `id`
//! (`4.0` for a request sent as `4`, an id of no request of this stream, a
//! response replayed on a GET stream resumed with `Last-Event-ID`).
//! Matching ids would let a spelling, a replay or a lenient upstream pass a
//! list untouched; the view is the caller's on this route whichever request
//! the list answers, so no match is needed. Notifications, server requests
//! and other results pass unchanged. `nextCursor` stays, so pagination goes
//! on over the trimmed pages. Fail closed: a list response that cannot be
//! read is replaced by a JSON-RPC error, never passed on untrimmed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::jsonrpc;
use crate::visibility::{ListShape, Visibility};

/// What is being trimmed, for one response (or stream).
#[derive(Debug, Clone)]
pub struct ListTrim {
    pub visibility: Visibility,
    /// The request's JSON-RPC id, if it had one: an unreadable list is
    /// replaced by an error carrying it.
    pub id: Option<Value>,
    /// Mark the result `cacheScope: "private"` (MCP 2026-07-28 and later):
    /// a list cut for one caller must not be shared with another.
    pub private_cache_scope: bool,
}

/// Whether an event's data may be a message with a `result`: a byte search,
/// so events that cannot be one (most of a stream) are never parsed. A key
/// spelled with `\u` escapes is found by the second needle.
fn may_carry_result(data: &[u8]) -> bool {
    memchr::memmem::find(data, b"result").is_some() || memchr::memmem::find(data, b"\\u").is_some()
}

/// Whether a JSON (not SSE) response to a request for `method` is buffered
/// and trimmed: a list method, and any method the filter does not know to
/// answer with something else (so a spelling an upstream reads as a list
/// method is covered too). The common calls whose results may be large
/// (`tools/call`, `resources/read`) stream through unbuffered: an upstream
/// answers them with their own result shape. Any SSE response is trimmed
/// event by event whatever the method.
pub fn buffers_json_answer(method: Option<&str>) -> bool {
    const NOT_LISTS: [&str; 9] = [
        "initialize",
        "ping",
        "tools/call",
        "prompts/get",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
    ];
    method.is_some_and(|m| !NOT_LISTS.contains(&m) && !m.starts_with("notifications/"))
}

/// The members of a JSON object, each value left as raw JSON text (only
/// what is rewritten is parsed further; everything else is copied).
type RawObject<'a> = BTreeMap<String, &'a RawValue>;

/// The name-like members of one list entry; other members are skipped
/// without being built.
#[derive(Deserialize)]
struct EntryNames<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "uriTemplate")]
    uri_template: Option<Cow<'a, str>>,
}

/// `"key":` with the key escaped as JSON.
fn push_key(out: &mut String, key: &str) {
    out.push_str(&Value::from(key).to_string());
    out.push(':');
}

impl ListTrim {
    fn visible(&self, shape: ListShape, entry: &RawValue) -> bool {
        let Ok(names) = serde_json::from_str::<EntryNames<'_>>(entry.get()) else {
            return false;
        };
        let name = match shape.name_field {
            "name" => names.name,
            "uri" => names.uri,
            _ => names.uri_template,
        };
        name.is_some_and(|n| self.visibility.permits(shape.kind, &n))
    }

    /// Trims one JSON-RPC message (as text). `Ok(None)`: its result (if
    /// any) is no list, leave it; `Err`: not a JSON object at all.
    fn trim_text(&self, text: &str) -> Result<Option<String>, serde_json::Error> {
        let message: RawObject<'_> = serde_json::from_str(text)?;
        let Some(result) = message
            .get("result")
            .and_then(|r| serde_json::from_str::<RawObject<'_>>(r.get()).ok())
        else {
            return Ok(None);
        };
        if !result.keys().any(|k| ListShape::of_field(k).is_some()) {
            return Ok(None);
        }
        let mut out = String::with_capacity(text.len());
        out.push('{');
        for (n, (key, value)) in message.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            push_key(&mut out, key);
            if key == "result" {
                self.write_result(&mut out, &result);
            } else {
                out.push_str(value.get());
            }
        }
        out.push('}');
        Ok(Some(out))
    }

    fn write_result(&self, out: &mut String, result: &RawObject<'_>) {
        out.push('{');
        let mut first = true;
        let mut member = |out: &mut String, key: &str| {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            push_key(out, key);
        };
        for (key, value) in result {
            if key == "cacheScope" && self.private_cache_scope {
                continue;
            }
            member(out, key);
            if let Some(shape) = ListShape::of_field(key) {
                // Not an array: nothing sensible to pass on.
                let entries: Vec<&RawValue> = serde_json::from_str(value.get()).unwrap_or_default();
                out.push('[');
                let kept = entries.into_iter().filter(|e| self.visible(shape, e));
                for (n, entry) in kept.enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(entry.get());
                }
                out.push(']');
            } else {
                out.push_str(value.get());
            }
        }
        if self.private_cache_scope {
            member(out, "cacheScope");
            out.push_str("\"private\"");
        }
        out.push('}');
    }

    fn unreadable(&self) -> String {
        jsonrpc::error_body(
            self.id.as_ref(),
            jsonrpc::INTERNAL_ERROR,
            "the gateway could not read the MCP server's list response, so it cannot show what you may see; retry, and tell the operator if it persists",
        )
    }

    /// Trims a whole `application/json` body. `None` when it is no list
    /// (pass it on as it is); an unreadable body is replaced by an error.
    pub fn json_body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let trimmed = std::str::from_utf8(body)
            .ok()
            .and_then(|text| self.trim_text(text).ok());
        match trimmed {
            Some(Some(out)) => Some(out.into_bytes()),
            Some(None) => None,
            None => Some(self.unreadable().into_bytes()),
        }
    }
}

/// Trims a `text/event-stream` as it arrives: complete events go out at
/// once (rewritten if one is the list response), an incomplete tail waits
/// for the next chunk.
#[derive(Debug)]
pub struct SseTrimmer {
    trim: ListTrim,
    pending: Vec<u8>,
    /// Where to resume looking for line ends in `pending`.
    scan_from: usize,
    /// Where the current line starts in `pending`.
    line_start: usize,
    /// Largest event held while waiting for its end.
    limit: usize,
    failed: bool,
    /// No event went out yet: a byte order mark may lead the stream.
    at_start: bool,
}

impl SseTrimmer {
    pub fn new(trim: ListTrim, limit: usize) -> SseTrimmer {
        SseTrimmer {
            trim,
            pending: Vec::new(),
            scan_from: 0,
            line_start: 0,
            limit,
            failed: false,
            at_start: true,
        }
    }

    /// Feeds one chunk; returns the bytes to send on now. `end` is the end
    /// of the stream: whatever is held goes out (trimmed).
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut event_start = 0;
        let mut pos = self.scan_from;
        while let Some(offset) = self
            .pending
            .get(pos..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n' || *b == b'\r'))
        {
            let at = pos + offset;
            let terminator = match (self.pending.get(at), self.pending.get(at + 1)) {
                (Some(b'\r'), Some(b'\n')) => 2,
                // A CR at the very end may be the first half of CRLF.
                (Some(b'\r'), None) if !end => break,
                _ => 1,
            };
            if at == self.line_start {
                let event = self
                    .pending
                    .get(event_start..at + terminator)
                    .unwrap_or(&[]);
                let first = std::mem::take(&mut self.at_start);
                out.extend(self.event(event, first));
                event_start = at + terminator;
            }
            pos = at + terminator;
            self.line_start = pos;
        }
        self.pending.drain(..event_start);
        self.line_start -= event_start;
        self.scan_from = pos - event_start;
        if end && !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            let first = std::mem::take(&mut self.at_start);
            out.extend(self.event(&rest, first));
            self.scan_from = 0;
            self.line_start = 0;
        } else if self.pending.len() > self.limit {
            // An event this large cannot be checked; end the stream with an
            // error for the request instead of passing it on.
            self.failed = true;
            self.pending = Vec::new();
            out.extend(self.unreadable_event());
        }
        out
    }

    /// The error event that replaces what cannot be checked.
    fn unreadable_event(&self) -> Vec<u8> {
        let mut out = b"event: message\ndata: ".to_vec();
        out.extend(self.trim.unreadable().into_bytes());
        out.extend_from_slice(b"\n\n");
        out
    }

    /// One complete event (with its blank line): returned as it is unless
    /// its data is the list response, or data that may hold one and that
    /// this cannot read (then it becomes the error for the request, as
    /// [`ListTrim::json_body`] does).
    ///
    /// The event is read the way a client's parser reads it (WHATWG event
    /// stream rules), or a list could pass untrimmed to a client that reads
    /// it differently: invalid UTF-8 is replaced, not a reason to skip; CR
    /// alone ends a line like LF and CRLF; a byte order mark starting the
    /// stream is not part of the first field name.
    fn event(&self, raw: &[u8], first: bool) -> Vec<u8> {
        if !may_carry_result(raw) {
            return raw.to_vec();
        }
        let text = String::from_utf8_lossy(raw);
        let mut text = text.as_ref();
        if first {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        let mut data: Vec<&str> = Vec::new();
        let mut other: Vec<&str> = Vec::new();
        for line in text.split(['\n', '\r']) {
            if line.is_empty() {
                continue;
            }
            match line.strip_prefix("data") {
                Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                    let value = rest.strip_prefix(':').unwrap_or(rest);
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
                _ => other.push(line),
            }
        }
        if data.is_empty() {
            return raw.to_vec();
        }
        let message = match self.trim.trim_text(&data.join("\n")) {
            Ok(Some(message)) => message,
            Ok(None) => return raw.to_vec(),
            // Data that may hold a result but that this cannot read (no
            // JSON object, an array, a torn message, too deep or odd for
            // this parser): a client's parser might still read a list from
            // it, so it never passes on untrimmed.
            Err(_) => self.trim.unreadable(),
        };
        // The data line first: the event's other lines, moved to the start
        // of the stream, could read differently there (a byte order mark).
        let mut out = String::new();
        out.push_str("data: ");
        out.push_str(&message);
        out.push('\n');
        for line in other {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visibility::Rules;
    use serde_json::json;

    fn trim(private: bool) -> ListTrim {
        ListTrim {
            visibility: Visibility::new(
                Rules::new(&["echo".into(), "get-*".into()], &["get-env".into()]),
                Rules::default(),
                Rules::default(),
            ),
            id: Some(json!(7)),
            private_cache_scope: private,
        }
    }

    fn list(id: Value) -> Value {
        json!({"jsonrpc":"2.0","id":id,"result":{
            "tools":[{"name":"echo"},{"name":"get-env"},{"name":"get-sum"},{"name":"add"},{"nameless":1},"junk"],
            "nextCursor":"c2"}})
    }

    fn names(v: &Value) -> Vec<&str> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn json_list_is_trimmed_and_keeps_its_cursor() {
        let out = trim(false)
            .json_body(list(json!(7)).to_string().as_bytes())
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(names(&v), ["echo", "get-sum"]);
        assert_eq!(v["result"]["nextCursor"], "c2");
        assert!(v["result"].get("cacheScope").is_none());
        let out = trim(true)
            .json_body(list(json!(7)).to_string().as_bytes())
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["cacheScope"], "private");
    }

    #[test]
    fn other_messages_pass_and_unreadable_lists_fail_closed() {
        let call =
            json!({"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"tools"}]}});
        assert!(trim(false).json_body(call.to_string().as_bytes()).is_none());
        let error = json!({"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"x"}});
        assert!(
            trim(false)
                .json_body(error.to_string().as_bytes())
                .is_none()
        );
        let out = trim(false)
            .json_body(b"{\"tools\":[{\"name\":\"secret")
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], jsonrpc::INTERNAL_ERROR);
        assert!(!String::from_utf8(out).unwrap().contains("secret"));
    }

    fn sse_events(out: &[u8]) -> Vec<Value> {
        let text = String::from_utf8(out.to_vec()).unwrap();
        text.split("\n\n")
            .filter_map(|e| {
                let data: Vec<&str> = e
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                    .collect();
                (!data.is_empty()).then(|| serde_json::from_str(&data.join("\n")).unwrap())
            })
            .collect()
    }

    #[test]
    fn sse_is_trimmed_event_by_event_across_any_chunking() {
        let notification =
            json!({"jsonrpc":"2.0","method":"notifications/message","params":{"data":"hi"}});
        let stream = format!(
            ": comment\n\nevent: message\nid: 1\ndata: {notification}\n\nevent: message\r\nid: 2\r\ndata: {}\r\n\r\n",
            list(json!(7))
        );
        let bytes = stream.as_bytes();
        for size in [1, 2, 3, 7, 64, bytes.len()] {
            let mut t = SseTrimmer::new(trim(false), 1 << 20);
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            for (i, c) in chunks.iter().enumerate() {
                out.extend(t.push(c, i + 1 == chunks.len()));
            }
            let events = sse_events(&out);
            assert_eq!(events.len(), 2, "chunk size {size}");
            assert_eq!(events[0], notification);
            assert_eq!(names(&events[1]), ["echo", "get-sum"], "chunk size {size}");
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(": comment\n\n"));
            assert!(text.contains("id: 2\n"));
            assert!(!text.contains("get-env"));
        }
    }

    #[test]
    fn sse_events_go_out_before_the_stream_ends() {
        let mut t = SseTrimmer::new(trim(false), 1 << 20);
        let first = format!("data: {}\n\ndata: {{\"partial", list(json!(7)));
        let out = t.push(first.as_bytes(), false);
        assert_eq!(names(&sse_events(&out)[0]), ["echo", "get-sum"]);
        assert!(!String::from_utf8(out).unwrap().contains("partial"));
        let out = t.push(b"\":1}\n\n", false);
        assert_eq!(String::from_utf8(out).unwrap(), "data: {\"partial\":1}\n\n");
    }

    #[test]
    fn sse_unterminated_tail_is_trimmed_and_oversized_event_fails_closed() {
        let mut t = SseTrimmer::new(trim(false), 1 << 20);
        let out = t.push(format!("data: {}", list(json!(7))).as_bytes(), true);
        assert_eq!(names(&sse_events(&out)[0]), ["echo", "get-sum"]);

        let mut t = SseTrimmer::new(trim(false), 64);
        let out = t.push(format!("data: {}", list(json!(7))).as_bytes(), false);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("get-env"));
        assert_eq!(
            sse_events(text.as_bytes())[0]["error"]["code"],
            jsonrpc::INTERNAL_ERROR
        );
        assert!(t.push(b"\n\n", true).is_empty());
    }

    /// Found by the `trim_sse` fuzz target: each of these streams carried
    /// the full list to a client (its SSE parser reads them as the list
    /// response) while the trimmer passed them untouched.
    #[test]
    fn sse_list_is_trimmed_however_a_client_may_read_the_event() {
        let list = list(json!(7));
        for stream in [
            // A lone CR ends a line, as LF and CRLF do.
            format!("event: message\rid: 3\rdata: {list}\r\r"),
            // One byte order mark may start the stream.
            format!("\u{feff}data: {list}\n\n"),
        ] {
            // (A CR ending a chunk may be half a CRLF: end the stream.)
            let out = SseTrimmer::new(trim(false), 1 << 20).push(stream.as_bytes(), true);
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("get-env"), "{stream:?} gave {text:?}");
            assert_eq!(names(&sse_events(text.as_bytes())[0]), ["echo", "get-sum"]);
        }
        // Invalid UTF-8 elsewhere in the event: clients replace it and read on.
        let mut stream = b": \xff\n".to_vec();
        stream.extend(format!("data: {list}\n\n").bytes());
        let out = SseTrimmer::new(trim(false), 1 << 20).push(&stream, false);
        assert!(!String::from_utf8_lossy(&out).contains("get-env"));
        // JSON the trimmer cannot read (another parser may): an error for
        // the request instead, never the event as it was.
        let odd = "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"get-env\"}]},\"\\ud800\":0}\n\n";
        let out = SseTrimmer::new(trim(false), 1 << 20).push(odd.as_bytes(), false);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("get-env"), "{text}");
        assert_eq!(
            sse_events(text.as_bytes())[0]["error"]["code"],
            jsonrpc::INTERNAL_ERROR
        );
        // Data that is not JSON at all is no message: it passes.
        let out = SseTrimmer::new(trim(false), 1 << 20).push(b"data: ping\n\n", false);
        assert_eq!(out, b"data: ping\n\n");
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut t = SseTrimmer::new(trim(false), 1 << 20);
        let out = t.push(
            b"data: {\"jsonrpc\":\"2.0\",\"id\":7,\ndata: \"result\":{\"tools\":[{\"name\":\"add\"},{\"name\":\"echo\"}]}}\n\n",
            false,
        );
        assert_eq!(names(&sse_events(&out)[0]), ["echo"]);
    }

    #[test]
    fn a_list_is_trimmed_whatever_its_id_says() {
        // Another spelling of the id, another request's id, a string id, no
        // id at all: the caller's view applies to every list.
        for id in [
            "7.0",
            "7e0",
            "70e-1",
            "8",
            "\"7\"",
            "null",
            "18446744073709551617",
        ] {
            let text = list(json!(0))
                .to_string()
                .replacen("\"id\":0", &format!("\"id\":{id}"), 1);
            let out = trim(false).json_body(text.as_bytes()).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(names(&v), ["echo", "get-sum"], "{id}");
            assert!(!String::from_utf8(out).unwrap().contains("get-env"), "{id}");
        }
    }

    #[test]
    fn every_kind_of_list_in_one_result_is_trimmed() {
        use crate::visibility::Rules;
        let t = ListTrim {
            visibility: Visibility::new(
                Rules::new(&["echo".into()], &[]),
                Rules::new(&["simple".into()], &[]),
                Rules::new(&["demo://ok/*".into()], &[]),
            ),
            id: None,
            private_cache_scope: false,
        };
        let message = json!({"jsonrpc":"2.0","id":"x","result":{
            "tools":[{"name":"echo"},{"name":"add"}],
            "prompts":[{"name":"simple"},{"name":"secret"}],
            "resources":[{"uri":"demo://ok/1"},{"uri":"demo://no/1"}],
            "resourceTemplates":[{"uriTemplate":"demo://ok/{x}"},{"uriTemplate":"demo://no/{x}"}],
            "other":[{"name":"kept"}]}});
        let out = t.json_body(message.to_string().as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["result"],
            json!({"tools":[{"name":"echo"}],"prompts":[{"name":"simple"}],
                "resources":[{"uri":"demo://ok/1"}],
                "resourceTemplates":[{"uriTemplate":"demo://ok/{x}"}],
                "other":[{"name":"kept"}]})
        );
    }

    #[test]
    fn sse_lists_for_any_request_and_escaped_keys_are_trimmed() {
        // A replayed list (another request's id) between other events, and
        // a list whose keys are written with escapes.
        let escaped = r#"{"jsonrpc":"2.0","id":3,"\u0072esult":{"tool\u0073":[{"name":"echo"},{"name":"get-env"}]}}"#;
        let stream = format!(
            "id: a\ndata: {}\n\nid: b\ndata: {}\n\ndata: {escaped}\n\n",
            json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}),
            list(json!("earlier-request")),
        );
        let mut t = SseTrimmer::new(trim(false), 1 << 20);
        let out = t.push(stream.as_bytes(), true);
        let events = sse_events(&out);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["method"], "notifications/tools/list_changed");
        assert_eq!(names(&events[1]), ["echo", "get-sum"]);
        assert_eq!(names(&events[2]), ["echo"]);
        assert!(!String::from_utf8(out).unwrap().contains("get-env"));
    }

    #[test]
    fn sse_data_that_may_hold_a_list_but_is_no_object_fails_closed() {
        for data in [
            format!("[{}]", list(json!(7))),
            "{\"result\":{\"tools\":[{\"name\":\"get-env\"".to_owned(),
        ] {
            let mut t = SseTrimmer::new(trim(false), 1 << 20);
            let out = t.push(format!("data: {data}\n\n").as_bytes(), false);
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(!text.contains("get-env"), "{text}");
            assert_eq!(
                sse_events(&out)[0]["error"]["code"],
                jsonrpc::INTERNAL_ERROR
            );
        }
        // Invalid UTF-8 around a result: also replaced.
        let mut t = SseTrimmer::new(trim(false), 1 << 20);
        let out = t.push(b"data: {\"result\":\xff}\n\n", false);
        assert_eq!(
            sse_events(&out)[0]["error"]["code"],
            jsonrpc::INTERNAL_ERROR
        );
        // Plain events without a result pass byte for byte, unparsed.
        let mut t = SseTrimmer::new(trim(false), 1 << 20);
        let plain = b"data: not json at all\n\n";
        assert_eq!(t.push(plain, false), plain.to_vec());
    }
}
