//! The HTML of the connect page and its outcome pages. Every value that
//! comes from a person, a config file or a provider goes through [`escape`];
//! nothing here loads anything from elsewhere (no scripts, styles, images),
//! and every page is sent with headers that keep it out of frames, caches
//! and referrers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and double- or single-quoted
/// attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One HTML page and the status it is sent with.
pub struct Page {
    pub status: StatusCode,
    pub title: String,
    /// Already-escaped HTML of the body.
    body: String,
}

impl Page {
    /// A page whose body is `body_html` (the caller escaped what needed it).
    pub fn html(status: StatusCode, title: &str, body_html: String) -> Page {
        Page {
            status,
            title: title.to_string(),
            body: body_html,
        }
    }

    /// A page that says what happened and what to do: a heading, plain
    /// paragraphs (escaped here), and an optional link back.
    pub fn message(status: StatusCode, title: &str, paragraphs: &[&str]) -> Page {
        let mut body = format!("<h1 id=\"title\">{}</h1>\n", escape(title));
        for p in paragraphs {
            body.push_str(&format!("<p>{}</p>\n", escape(p)));
        }
        Page::html(status, title, body)
    }

    /// Adds a link (escaped) under the message.
    pub fn with_link(mut self, href: &str, text: &str) -> Page {
        self.body.push_str(&format!(
            "<p><a id=\"back\" href=\"{}\">{}</a></p>\n",
            escape(href),
            escape(text)
        ));
        self
    }

    pub fn render(&self) -> String {
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{} · Latchkey</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{}</main>\n</body>\n</html>\n",
            escape(&self.title),
            self.body
        )
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}\
main{max-width:44rem}\
table{border-collapse:collapse;margin:1rem 0}td,th{padding:.4rem .8rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
form{display:inline-block;margin:.2rem .4rem .2rem 0}\
.ok{color:#176b2c}.todo{color:#8a4b00}.note{background:#f3f3f3;padding:.6rem .8rem}";

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.render()).into_response();
        let headers = response.headers_mut();
        let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
            h.insert(name, HeaderValue::from_static(value));
        };
        set(headers, header::CONTENT_TYPE, "text/html; charset=utf-8");
        set(headers, header::CACHE_CONTROL, "no-store");
        // No script, no frame, nothing fetched from anywhere.
        set(
            headers,
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
        );
        set(headers, header::X_FRAME_OPTIONS, "DENY");
        set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        // The callback's URL carries a code and a state: never pass it on.
        set(headers, header::REFERRER_POLICY, "no-referrer");
        response
    }
}

/// An identity the person may pick for a server.
pub struct Candidate {
    pub id: String,
    /// "yours" or "shared by the organisation".
    pub whose: &'static str,
}

/// Where one per-user server of the gateway stands for the person.
pub enum Row {
    /// A usable identity is on the connection.
    Connected { server: String, identity: String },
    /// It still needs one: why, whether the provider flow is available,
    /// and the identities that could be used instead.
    Needed {
        server: String,
        why: String,
        can_authorise: bool,
        candidates: Vec<Candidate>,
    },
}

/// Everything the signed-in page shows.
pub struct View<'a> {
    pub gateway: &'a str,
    pub user: &'a str,
    pub csrf: &'a str,
    /// The consent request id the page was opened with.
    pub request: Option<&'a str>,
    /// What the request asked for (server), when there is one.
    pub requested_server: Option<&'a str>,
    pub rows: Vec<Row>,
    /// A line about what just happened (escaped here).
    pub notice: Option<String>,
    pub connection_disabled: bool,
    /// Form actions: `<base>/authorise` etc.
    pub action_base: &'a str,
}

fn hidden_fields(view: &View<'_>, server: &str) -> String {
    let mut out = format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"server\" value=\"{}\">",
        escape(view.csrf),
        escape(server)
    );
    if let Some(r) = view.request {
        out.push_str(&format!(
            "<input type=\"hidden\" name=\"request\" value=\"{}\">",
            escape(r)
        ));
    }
    out
}

/// The connect page of a signed-in person.
pub fn connect_page(view: &View<'_>) -> Page {
    let done = view.rows.iter().all(|r| matches!(r, Row::Connected { .. }));
    let title = if done && !view.connection_disabled {
        "You're connected".to_string()
    } else {
        format!("Connect your accounts for {}", view.gateway)
    };
    let mut body = format!("<h1 id=\"title\">{}</h1>\n", escape(&title));
    body.push_str(&format!(
        "<p>Signed in as <strong id=\"user\">{}</strong> · gateway <strong>{}</strong> \
         <form method=\"post\" action=\"{}/signout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" id=\"sign-out\">Sign out</button></form></p>\n",
        escape(view.user),
        escape(view.gateway),
        escape(view.action_base),
        escape(view.csrf)
    ));
    if let Some(notice) = &view.notice {
        body.push_str(&format!(
            "<p class=\"note\" id=\"notice\">{}</p>\n",
            escape(notice)
        ));
    }
    if view.connection_disabled {
        body.push_str(
            "<p class=\"note\" id=\"disabled\">An operator has disabled your connection to this gateway. \
             Requests through it are refused until they enable it again \
             (<code>latchkey connection enable</code>); what you connect here is kept for then.</p>\n",
        );
    } else if done {
        body.push_str("<p id=\"done\">Go back to your client and retry what you were doing.</p>\n");
    } else if let Some(server) = view.requested_server.filter(|s| {
        view.rows
            .iter()
            .any(|r| matches!(r, Row::Needed { server, .. } if server == s))
    }) {
        body.push_str(&format!(
            "<p>Your client needs an identity for <strong>{}</strong>. \
             Authorise it below, or pick one you already have.</p>\n",
            escape(server)
        ));
    }
    if view.rows.is_empty() {
        body.push_str("<p>This gateway has no server where you bring your own identity.</p>\n");
    } else {
        body.push_str("<table>\n<tr><th>Server</th><th>Status</th><th></th></tr>\n");
        for row in &view.rows {
            body.push_str(&render_row(view, row));
        }
        body.push_str("</table>\n");
    }
    Page::html(StatusCode::OK, &title, body)
}

fn render_row(view: &View<'_>, row: &Row) -> String {
    match row {
        Row::Connected { server, identity } => format!(
            "<tr id=\"row-{s}\"><td>{s}</td><td class=\"ok\" id=\"status-{s}\">connected with <code>{i}</code></td><td>\
             <form method=\"post\" action=\"{base}/disconnect\">{hidden}\
             <button type=\"submit\" id=\"disconnect-{s}\">Disconnect</button></form></td></tr>\n",
            s = escape(server),
            i = escape(identity),
            base = escape(view.action_base),
            hidden = hidden_fields(view, server),
        ),
        Row::Needed {
            server,
            why,
            can_authorise,
            candidates,
        } => {
            let mut actions = String::new();
            if *can_authorise {
                actions.push_str(&format!(
                    "<form method=\"post\" action=\"{base}/authorise\">{hidden}\
                     <button type=\"submit\" id=\"authorise-{s}\">Authorise {s}</button></form>",
                    s = escape(server),
                    base = escape(view.action_base),
                    hidden = hidden_fields(view, server),
                ));
            }
            if !candidates.is_empty() {
                let options: String = candidates
                    .iter()
                    .map(|c| {
                        format!(
                            "<option value=\"{id}\">{id} ({whose})</option>",
                            id = escape(&c.id),
                            whose = escape(c.whose)
                        )
                    })
                    .collect();
                actions.push_str(&format!(
                    "<form method=\"post\" action=\"{base}/use\">{hidden}\
                     <select name=\"identity\" id=\"identity-{s}\" aria-label=\"identity for {s}\">{options}</select> \
                     <button type=\"submit\" id=\"use-{s}\">Use this identity</button></form>",
                    s = escape(server),
                    base = escape(view.action_base),
                    hidden = hidden_fields(view, server),
                ));
            }
            if actions.is_empty() {
                actions.push_str(
                    "No way to connect it here: the server has no OAuth provider configured and you have no identity for it. Ask an operator.",
                );
            }
            format!(
                "<tr id=\"row-{s}\"><td>{s}</td><td class=\"todo\" id=\"status-{s}\">{why}</td><td>{actions}</td></tr>\n",
                s = escape(server),
                why = escape(why),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape("plain-name_1.2"), "plain-name_1.2");
    }

    fn view(rows: Vec<Row>) -> String {
        let v = View {
            gateway: "corp",
            user: "<b>mallory</b>",
            csrf: "tok\"en",
            request: Some("req-1"),
            requested_server: Some("crm"),
            rows,
            notice: Some("<i>hi</i>".into()),
            connection_disabled: false,
            action_base: "/connect/corp",
        };
        connect_page(&v).render()
    }

    #[test]
    fn every_value_on_the_page_is_escaped() {
        let html = view(vec![Row::Needed {
            server: "crm\"><script>".into(),
            why: "<not connected>".into(),
            can_authorise: true,
            candidates: vec![Candidate {
                id: "x\"y".into(),
                whose: "yours",
            }],
        }]);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>mallory"));
        assert!(!html.contains("<i>hi"));
        assert!(!html.contains("tok\"en"));
        assert!(html.contains("value=\"tok&quot;en\""));
        assert!(html.contains("value=\"req-1\""));
        assert!(html.contains("Authorise crm&quot;&gt;&lt;script&gt;"));
    }

    #[test]
    fn all_connected_says_go_back_to_the_client() {
        let html = view(vec![Row::Connected {
            server: "crm".into(),
            identity: "crm-alice-1".into(),
        }]);
        assert!(html.contains("You&#39;re connected"), "{html}");
        assert!(html.contains("Go back to your client"));
        assert!(html.contains("id=\"sign-out\""));
        assert!(html.contains("action=\"/connect/corp/signout\""), "{html}");
        assert!(html.contains("id=\"disconnect-crm\""));
    }

    #[test]
    fn pages_carry_protective_headers() {
        let r = Page::message(StatusCode::GONE, "Expired", &["<x>"]).into_response();
        assert_eq!(r.status(), StatusCode::GONE);
        let h = r.headers();
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    }
}
