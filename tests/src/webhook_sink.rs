//! A webhook receiver for the alert scenario: what an organisation's SIEM
//! or chat bridge runs behind `[alerts] webhook_url`. It keeps every
//! delivery it was sent (headers and body, refused ones too) and answers
//! the first few with the statuses it was told to, to show retries.
//!
//! A stand-in, not a product: no webhook receiver is packaged for these
//! machines, and what is checked is what Latchkey sends, which any
//! receiver sees the same.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: String,
    pub status: u16,
}

#[derive(Default)]
struct Inbox {
    deliveries: Vec<Delivery>,
    /// Answers for the next requests, then 200.
    answers: VecDeque<u16>,
}

pub struct WebhookSink {
    pub port: u16,
    inbox: Arc<Mutex<Inbox>>,
}

impl WebhookSink {
    /// Listens on a free loopback port, on the calling runtime, at `/hook`.
    pub async fn start() -> Result<WebhookSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let app = Router::new()
            .route("/hook", post(accept))
            .with_state(inbox.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(WebhookSink { port, inbox })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The next requests are answered with `statuses`, in order.
    pub fn answer_next(&self, statuses: &[u16]) {
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.answers.extend(statuses);
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inbox
            .lock()
            .map(|i| i.deliveries.clone())
            .unwrap_or_default()
    }
}

async fn accept(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let Ok(mut inbox) = inbox.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    let status = inbox.answers.pop_front().unwrap_or(200);
    inbox.deliveries.push(Delivery {
        headers,
        body,
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}
