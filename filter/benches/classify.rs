//! What the filter spends classifying one MCP message before it asks for a
//! decision: a `tools/call` body of 1 KB, 64 KB and 1 MB (the default limit).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use latchkey_filter::mcp::classify;
use std::hint::black_box;

fn body_of(size: usize) -> Vec<u8> {
    let head = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"create_issue","arguments":{"repo":"acme/widgets","body":""#;
    let tail = r#""}}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(head.as_bytes());
    b.extend(std::iter::repeat_n(b'x', pad));
    b.extend_from_slice(tail.as_bytes());
    b
}

fn bench(c: &mut Criterion) {
    let headers: Vec<(String, String)> = [
        (":method", "POST"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-11-25"),
        ("mcp-session-id", "6f1c6c0e-4d2b-4b53-9c1c-2a7f7f9f0a11"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut group = c.benchmark_group("classify_tools_call");
    for (label, size) in [("1KB", 1 << 10), ("64KB", 64 << 10), ("1MB", 1 << 20)] {
        let body = body_of(size);
        assert!(classify(&headers, &body).is_ok());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| classify(black_box(&headers), black_box(body)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
