//! What the filter spends on one chunk of a watched GET stream (an allowed
//! `text/event-stream` GET, looked at for completed URL elicitations):
//! following SSE event boundaries over a 1 KB chunk of events, then looking
//! in the shared pending list for a completed entry of its session — empty
//! (the usual case), or full (256 entries, none for this stream: a byte
//! search, no parse) — and, when one is for it, parsing the list and taking
//! it out, and putting the notification between events. The host call that copies the shared bytes
//! into the VM is not included (the Envoy side of it is a map lookup and a
//! copy).

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey_filter::completion::{
    EventBoundary, MAX_PENDING, Pending, PendingList, StreamOwner, insert_events,
    notification_events,
};
use std::hint::black_box;

/// About 1 KB of upstream events: notifications and a keep-alive comment.
fn chunk() -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < 1024 {
        out.extend_from_slice(
            b"id: 42\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":7,\"progress\":0.5}}\n\n: keep-alive\n\n",
        );
    }
    out
}

fn full_list(now: i64) -> Vec<u8> {
    let mut list = PendingList::default();
    for i in 0..MAX_PENDING {
        list.add(
            Pending {
                id: format!("{i:032x}"),
                user: format!("user{i}@example.com"),
                gateway: "corp".into(),
                session: format!("session-{i:024}"),
                expires: now + 600,
                completed: i % 2 == 0,
            },
            now,
        );
    }
    list.encode()
}

fn bench(c: &mut Criterion) {
    let chunk = chunk();
    let owner = StreamOwner {
        session: "session-of-this-stream".into(),
        user: "alice@example.com".into(),
        gateway: "corp".into(),
    };
    let empty = b"[]".to_vec();
    let full = full_list(1_800_000_000);

    c.bench_function("stream_chunk_1k_nothing_pending", |b| {
        b.iter(|| {
            let mut boundary = EventBoundary::default();
            let at = boundary.feed(black_box(&chunk));
            let mine = PendingList::completed_in_session(black_box(&empty), &owner.session);
            (at, mine)
        })
    });
    c.bench_function("stream_chunk_1k_256_pending_for_others", |b| {
        b.iter(|| {
            let mut boundary = EventBoundary::default();
            let at = boundary.feed(black_box(&chunk));
            // As the filter does: a byte search before any parse.
            let mine = PendingList::completed_in_session(black_box(&full), &owner.session);
            (at, mine)
        })
    });
    c.bench_function("stream_chunk_1k_256_pending_one_for_this_stream", |b| {
        let mut list = PendingList::decode(Some(&full));
        list.0[0].session = owner.session.clone();
        list.0[0].user = owner.user.clone();
        let mine = list.encode();
        b.iter(|| {
            let mut boundary = EventBoundary::default();
            let at = boundary.feed(black_box(&chunk));
            let mut list = PendingList::decode(Some(black_box(&mine)));
            (at, list.take_completed_for(&owner))
        })
    });
    c.bench_function("stream_chunk_1k_one_notification_inserted", |b| {
        b.iter(|| {
            let mut boundary = EventBoundary::default();
            let at = boundary.feed(black_box(&chunk)).unwrap_or(0);
            let events = notification_events(&["0123456789abcdef0123456789abcdef".into()]);
            insert_events(black_box(&chunk), at, &events)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
