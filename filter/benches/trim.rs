//! What the filter spends trimming a list response to the caller's view: a
//! `tools/list` result of 100 tools (about 20 KB), as one JSON body and as
//! one SSE event split in 1 KB chunks, against a view of 10 allow patterns
//! and 2 deny patterns. Building the view from the `CheckResponse` metadata
//! is included, as the filter does it once per list request.

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey_filter::listing::{ListTrim, SseTrimmer};
use latchkey_filter::visibility::{Rules, Visibility};
use serde_json::json;
use std::hint::black_box;

fn list_body() -> String {
    let tools: Vec<_> = (0..100)
        .map(|i| {
            json!({"name": format!("ns{}_tool_{i}", i % 10), "description": "x".repeat(120),
                   "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}}})
        })
        .collect();
    json!({"jsonrpc":"2.0","id":9,"result":{"tools":tools,"nextCursor":"p2"}}).to_string()
}

fn view() -> prost_types::Struct {
    let allow: Vec<String> = (0..10).map(|i| format!("ns{i}_tool_1*")).collect();
    let deny = vec!["ns3_*".to_owned(), "*_tool_19".to_owned()];
    Visibility::new(
        Rules::new(&allow, &deny),
        Rules::default(),
        Rules::default(),
    )
    .to_struct()
}

fn trim(metadata: &prost_types::Struct) -> ListTrim {
    ListTrim {
        visibility: Visibility::from_struct(metadata),
        id: Some(json!(9)),
        private_cache_scope: false,
    }
}

fn bench(c: &mut Criterion) {
    let body = list_body();
    let metadata = view();
    let out = trim(&metadata).json_body(body.as_bytes()).expect("trimmed");
    assert!(out.len() < body.len() / 3, "most tools are removed");
    c.bench_function("trim_tools_list_100_json", |b| {
        b.iter(|| trim(black_box(&metadata)).json_body(black_box(body.as_bytes())))
    });
    let stream = format!("event: message\ndata: {body}\n\n");
    c.bench_function("trim_tools_list_100_sse_1k_chunks", |b| {
        b.iter(|| {
            let mut t = SseTrimmer::new(trim(black_box(&metadata)), 1 << 20);
            let mut sent = 0;
            for chunk in stream.as_bytes().chunks(1024) {
                sent += t.push(chunk, false).len();
            }
            sent + t.push(&[], true).len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
