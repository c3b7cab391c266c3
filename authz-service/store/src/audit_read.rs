//! Reading the audit stream back for a person: `latchkey audit query`
//! (what is already there, page by page with XRANGE) and `latchkey audit
//! tail` (what arrives, with XREAD BLOCK). This module owns the filters,
//! `--since`, and the one-line rendering of an event; the event schema is
//! `audit`'s and the stream's name and reads are `store`'s. It reads Redis
//! directly with the config's `[redis]`, not through the admin API.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::redis_backend::Topology;
use crate::store::{AuditEntry, Store, StoreError};
use latchkey_core::config::Config;

/// Entries asked of Redis at once: a big stream is never loaded whole.
pub const PAGE: usize = 500;
/// How long one `XREAD` waits for news before asking again.
pub const BLOCK: Duration = Duration::from_secs(2);
/// Pause before reading again after Redis failed during `tail`.
const RETRY: Duration = Duration::from_secs(1);

/// Which events to print; every filter given must match.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Decisions for this user (the token's `sub`), and lifecycle events
    /// they made or that concern them (their user record, their
    /// connections, identities they own).
    #[arg(long)]
    pub user: Option<String>,
    /// Decisions for this agent (the token's client), and its disable and
    /// enable events.
    #[arg(long)]
    pub agent: Option<String>,
    /// Decisions about this tool, prompt or resource (the event's `name`).
    #[arg(long)]
    pub tool: Option<String>,
    /// Only decisions with this outcome.
    #[arg(long, value_enum)]
    pub decision: Option<Verdict>,
    /// Only decisions for this reason (`hidden_by_policy`,
    /// `unknown_agent`, `approval_needed`, ...: what an alert names).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl Filter {
    fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `event` (one parsed stream entry) passes every filter given.
    pub fn matches(&self, event: &Value) -> bool {
        match event["event"].as_str() {
            Some("decision") => {
                same(&self.user, &event["user"])
                    && same(&self.agent, &event["agent"])
                    && same(&self.tool, &event["name"])
                    && self
                        .decision
                        .is_none_or(|d| event["decision"] == d.as_str())
                    && same(&self.reason, &event["reason"])
            }
            // A change has no tool and no outcome of its own.
            Some("lifecycle") => {
                self.tool.is_none()
                    && self.decision.is_none()
                    && self.reason.is_none()
                    && self
                        .user
                        .as_deref()
                        .is_none_or(|u| lifecycle_involves_user(event, u))
                    && self
                        .agent
                        .as_deref()
                        .is_none_or(|a| event["target_kind"] == "agent" && event["target"] == a)
            }
            _ => self.is_empty(),
        }
    }
}

fn same(wanted: &Option<String>, value: &Value) -> bool {
    wanted.as_deref().is_none_or(|w| value.as_str() == Some(w))
}

/// By the user, or about them: their user record or SCIM User, one of
/// their connections (target `<gateway>/<user>`), an identity they own(ed).
fn lifecycle_involves_user(event: &Value, user: &str) -> bool {
    let target = event["target"].as_str().unwrap_or_default();
    event["actor"] == user
        || match event["target_kind"].as_str() {
            Some("user" | "scim_user") => target == user,
            Some("connection") => target
                .strip_suffix(user)
                .is_some_and(|gateway| gateway.ends_with('/')),
            Some("identity") => event["before"]["owner"] == user || event["after"]["owner"] == user,
            _ => false,
        }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditReadError {
    #[error(
        "--since '{0}' is neither an RFC 3339 time (e.g. 2025-06-01T09:30:00Z) nor a duration back from now (a whole number and s, m, h, d or w: 90s, 15m, 2h, 7d, 2w)"
    )]
    BadSince(String),
    #[error("cannot reach Redis at {place} (the config's [redis]): {reason}")]
    Unreachable { place: String, reason: String },
    #[error("reading the audit stream '{stream}' from Redis at {place}: {reason}")]
    Read {
        stream: String,
        place: String,
        reason: String,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl AuditReadError {
    /// The reader of the output went away (`| head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, AuditReadError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// What Redis said, without the store's framing (which speaks of credentials).
fn reason(e: &StoreError) -> String {
    match e {
        StoreError::Unavailable(reason) => reason.clone(),
        other => other.to_string(),
    }
}

/// The first stream id (`<ms>-0`) at or after `--since`, in milliseconds
/// since the epoch; `now_ms` is the present.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, AuditReadError> {
    let bad = || AuditReadError::BadSince(text.to_string());
    let t = text.trim();
    let unit_ms = match t.chars().last() {
        Some('s') => Some(1_000u64),
        Some('m') => Some(60_000),
        Some('h') => Some(3_600_000),
        Some('d') => Some(86_400_000),
        Some('w') => Some(604_800_000),
        _ => None,
    };
    if let Some(unit_ms) = unit_ms {
        let digits = &t[..t.len() - 1];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let back = digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
                .ok_or_else(bad)?;
            return Ok(now_ms.saturating_sub(back));
        }
    }
    let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    Ok(u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// The smallest stream id after `id`, to page on from.
pub fn next_id(id: &str) -> String {
    let parts = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)));
    match parts {
        Some((ms, seq)) if seq < u64::MAX => format!("{ms}-{}", seq + 1),
        Some((ms, _)) => format!("{}-0", ms.saturating_add(1)),
        // Not `<ms>-<seq>`: an exclusive range (Redis 6.2 and later).
        None => format!("({id}"),
    }
}

/// One stream entry, parsed once for filtering and printing.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// The `event` field as stored.
    pub raw: Option<String>,
    /// The event, when the field is a JSON object.
    pub event: Option<Value>,
}

impl From<AuditEntry> for Entry {
    fn from(e: AuditEntry) -> Self {
        let event = e
            .event
            .as_deref()
            .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
            .filter(Value::is_object);
        Entry {
            id: e.id,
            raw: e.event,
            event,
        }
    }
}

impl Entry {
    /// An entry that is not an event (no `event` field, not a JSON
    /// object) is shown only when nothing is filtered.
    pub fn matches(&self, filter: &Filter) -> bool {
        match &self.event {
            Some(e) => filter.matches(e),
            None => filter.is_empty(),
        }
    }

    /// The line printed for this entry: the stored JSON as it is with
    /// `--json`, else one readable line.
    pub fn line(&self, json: bool) -> String {
        match (&self.event, json) {
            (Some(_), true) => self.raw.clone().unwrap_or_default(),
            (Some(e), false) => readable(e),
            (None, true) => serde_json::json!({
                "event": "unreadable",
                "stream_id": self.id,
                "raw": self.raw,
            })
            .to_string(),
            (None, false) => format!(
                "{} unreadable entry: {}",
                self.id,
                self.raw.as_deref().map_or("(no event field)".into(), field)
            ),
        }
    }
}

/// One line a person reads: time and outcome first, then who, where, what
/// and why. Values with spaces or control characters are quoted and
/// escaped, so a user name cannot forge a line or move the terminal.
pub fn readable(event: &Value) -> String {
    let text = |key: &str| event[key].as_str().map_or_else(|| "-".to_string(), field);
    let time = text("time");
    match event["event"].as_str() {
        Some("decision") => {
            let place = match (event["gateway"].as_str(), event["assignment"].as_str()) {
                (Some(g), Some(a)) => field(&format!("{g}/{a}")),
                (Some(g), None) => field(g),
                _ => "-".into(),
            };
            let what = match event["name"].as_str() {
                Some(name) => format!("{} {}", text("method"), field(name)),
                None => text("method"),
            };
            let status = event["status"]
                .as_u64()
                .map_or_else(|| "-".into(), |s| s.to_string());
            format!(
                "{time} {} user={} agent={} at={place} {what} reason={} status={status}",
                text("decision"),
                text("user"),
                text("agent"),
                text("reason"),
            )
        }
        Some("lifecycle") => format!(
            "{time} {} actor={} {}={}",
            text("action"),
            text("actor"),
            text("target_kind"),
            text("target"),
        ),
        other => format!(
            "{time} {} {}",
            other.map_or_else(|| "-".into(), field),
            field(&event.to_string())
        ),
    }
}

/// A value as one token: as it is when plain, else quoted and escaped.
fn field(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\');
    if plain {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

/// The audit stream of one deployment, read with the config's `[redis]`.
pub struct AuditReader {
    store: Store,
    /// Where Redis is (no password), for messages.
    place: String,
}

impl AuditReader {
    pub async fn connect(config: &Config) -> Result<Self, AuditReadError> {
        let place = Topology::from_config(&config.redis).describe();
        // The reply bound must outlast a blocking read.
        match Store::open(config, BLOCK).await {
            Ok(store) => Ok(AuditReader { store, place }),
            Err(e) => Err(AuditReadError::Unreachable {
                place,
                reason: reason(&e),
            }),
        }
    }

    fn read_error(&self, e: &StoreError) -> AuditReadError {
        AuditReadError::Read {
            stream: self.store.audit_stream(),
            place: self.place.clone(),
            reason: reason(e),
        }
    }

    /// Prints the kept events from `since_ms` on that match, oldest first;
    /// with `limit`, only the newest that many. Returns how many it printed.
    pub async fn query(
        &self,
        filter: &Filter,
        since_ms: Option<u64>,
        limit: Option<usize>,
        json: bool,
        out: &mut impl Write,
    ) -> Result<usize, AuditReadError> {
        let mut start = since_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms}-0"));
        // With a limit, the newest matches so far; without, lines go out as found.
        let mut newest: VecDeque<String> = VecDeque::new();
        let mut printed = 0;
        loop {
            let page = self
                .store
                .audit_range(&start, PAGE)
                .await
                .map_err(|e| self.read_error(&e))?;
            let full = page.len() == PAGE;
            if let Some(last) = page.last() {
                start = next_id(&last.id);
            }
            for entry in page.into_iter().map(Entry::from) {
                if !entry.matches(filter) {
                    continue;
                }
                match limit {
                    Some(n) => {
                        newest.push_back(entry.line(json));
                        if newest.len() > n {
                            newest.pop_front();
                        }
                    }
                    None => {
                        writeln!(out, "{}", entry.line(json))?;
                        printed += 1;
                    }
                }
            }
            if !full {
                break;
            }
        }
        for line in newest {
            writeln!(out, "{line}")?;
            printed += 1;
        }
        out.flush()?;
        Ok(printed)
    }

    /// Prints matching events as they arrive (after the newest one now
    /// kept, or from the oldest with `from_start`), until `count` were
    /// printed or forever. Says on `notices` where it follows from, and
    /// when Redis fails and comes back: a tail outlives a Redis restart.
    pub async fn tail(
        &self,
        filter: &Filter,
        from_start: bool,
        count: Option<usize>,
        json: bool,
        out: &mut impl Write,
        notices: &mut impl Write,
    ) -> Result<usize, AuditReadError> {
        let mut after = if from_start {
            "0-0".to_string()
        } else {
            // `$` resolved once: passing `$` to every XREAD would skip what
            // arrives between two of them.
            self.store
                .audit_last_id()
                .await
                .map_err(|e| self.read_error(&e))?
        };
        writeln!(
            notices,
            "following the audit stream '{}' at {} after entry {after}; Ctrl-C to stop",
            self.store.audit_stream(),
            self.place
        )?;
        notices.flush()?;
        let mut printed = 0;
        let mut failing = false;
        while count.is_none_or(|n| printed < n) {
            let entries = match self.store.audit_read_after(&after, BLOCK, PAGE).await {
                Ok(entries) => entries,
                Err(e) => {
                    if !failing {
                        writeln!(notices, "{}; retrying", self.read_error(&e))?;
                        failing = true;
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            if failing {
                writeln!(notices, "Redis at {} answers again", self.place)?;
                failing = false;
            }
            for entry in entries.into_iter().map(Entry::from) {
                after = entry.id.clone();
                if !entry.matches(filter) {
                    continue;
                }
                writeln!(out, "{}", entry.line(json))?;
                out.flush()?;
                printed += 1;
                if count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
        }
        Ok(printed)
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decision() -> Value {
        json!({
            "time": "2025-06-01T09:30:00.123Z",
            "event": "decision",
            "request_id": "r-1",
            "gateway": "corp",
            "assignment": "github",
            "server": "github",
            "scheme": "shared",
            "method": "tools/call",
            "name": "search_repos",
            "user": "alice",
            "agent": "claude-code",
            "identity": "gh-sa",
            "identity_version": 2,
            "decision": "allow",
            "reason": "allowed",
            "status": 200,
            "latency_us": 812,
        })
    }

    fn lifecycle(action: &str, actor: &str, kind: &str, target: &str) -> Value {
        json!({
            "time": "2025-06-01T09:31:00Z",
            "event": "lifecycle",
            "action": action,
            "actor": actor,
            "target_kind": kind,
            "target": target,
        })
    }

    fn filter(user: Option<&str>, agent: Option<&str>, tool: Option<&str>) -> Filter {
        Filter {
            user: user.map(String::from),
            agent: agent.map(String::from),
            tool: tool.map(String::from),
            decision: None,
            reason: None,
        }
    }

    #[test]
    fn decision_filters_are_anded() {
        let e = decision();
        assert!(Filter::default().matches(&e));
        assert!(filter(Some("alice"), Some("claude-code"), Some("search_repos")).matches(&e));
        assert!(!filter(Some("bob"), None, None).matches(&e));
        assert!(!filter(Some("alice"), Some("cursor"), None).matches(&e));
        assert!(!filter(None, None, Some("delete_repo")).matches(&e));
        let allow = Filter {
            decision: Some(Verdict::Allow),
            ..filter(Some("alice"), None, None)
        };
        let deny = Filter {
            decision: Some(Verdict::Deny),
            ..Filter::default()
        };
        assert!(allow.matches(&e) && !deny.matches(&e));
        // A refusal before the caller was known names no user: no user matches it.
        let anonymous = json!({"event": "decision", "decision": "deny", "reason": "unauthenticated", "status": 401, "method": "initialize"});
        assert!(deny.matches(&anonymous));
        let by_reason = |r: &str| Filter {
            reason: Some(r.into()),
            ..Filter::default()
        };
        assert!(by_reason("unauthenticated").matches(&anonymous));
        assert!(!by_reason("hidden_by_policy").matches(&anonymous));
        assert!(!by_reason("unauthenticated").matches(&lifecycle(
            "user.deactivate",
            "ops",
            "user",
            "alice"
        )));
        assert!(!filter(Some("alice"), None, None).matches(&anonymous));
        assert!(!filter(None, None, Some("x")).matches(&anonymous));
    }

    #[test]
    fn user_matches_lifecycle_events_by_or_about_them() {
        let alice = filter(Some("alice"), None, None);
        assert!(alice.matches(&lifecycle("agent.disable", "alice", "agent", "cursor")));
        assert!(alice.matches(&lifecycle("user.deactivate", "ops", "user", "alice")));
        assert!(!alice.matches(&lifecycle("user.deactivate", "ops", "user", "alicia")));
        assert!(alice.matches(&lifecycle(
            "connection.use",
            "ops",
            "connection",
            "corp/alice"
        )));
        assert!(!alice.matches(&lifecycle(
            "connection.use",
            "ops",
            "connection",
            "corp/xalice"
        )));
        let mut owned = lifecycle("identity.disable", "ops", "identity", "gh-alice");
        owned["after"] = json!({"owner": "alice", "status": "disabled"});
        assert!(alice.matches(&owned));
        let mut deleted = lifecycle("identity.delete", "ops", "identity", "gh-alice");
        deleted["before"] = json!({"owner": "alice"});
        assert!(alice.matches(&deleted));
        assert!(!alice.matches(&lifecycle("keys.rotate", "ops", "keys", "k2")));
        // An agent's own events; changes have no tool and no outcome.
        let cursor = filter(None, Some("cursor"), None);
        assert!(cursor.matches(&lifecycle("agent.disable", "ops", "agent", "cursor")));
        assert!(!cursor.matches(&lifecycle("user.deactivate", "ops", "user", "cursor")));
        let e = lifecycle("agent.disable", "alice", "agent", "cursor");
        assert!(!filter(None, None, Some("cursor")).matches(&e));
        let denies = Filter {
            decision: Some(Verdict::Deny),
            ..Filter::default()
        };
        assert!(!denies.matches(&e));
    }

    #[test]
    fn entries_that_are_not_events_show_only_unfiltered() {
        let entry = |raw: Option<&str>| {
            Entry::from(AuditEntry {
                id: "1717234200000-3".into(),
                event: raw.map(String::from),
            })
        };
        for e in [entry(Some("not json")), entry(Some("[1]")), entry(None)] {
            assert!(e.matches(&Filter::default()));
            assert!(!e.matches(&filter(Some("alice"), None, None)));
            let v: Value = serde_json::from_str(&e.line(true)).unwrap();
            assert_eq!(
                (&v["event"], &v["stream_id"]),
                (&json!("unreadable"), &json!("1717234200000-3"))
            );
        }
        assert_eq!(
            entry(Some("not json")).line(false),
            "1717234200000-3 unreadable entry: \"not json\""
        );
        assert_eq!(
            entry(None).line(false),
            "1717234200000-3 unreadable entry: (no event field)"
        );
        let raw = decision().to_string();
        assert_eq!(
            entry(Some(&raw)).line(true),
            raw,
            "--json prints it as stored"
        );
    }

    #[test]
    fn since_is_a_duration_back_or_an_rfc3339_time() {
        let now = 1_750_000_000_000;
        assert_eq!(parse_since("90s", now).unwrap(), now - 90_000);
        assert_eq!(parse_since("15m", now).unwrap(), now - 15 * 60_000);
        assert_eq!(parse_since("2h", now).unwrap(), now - 2 * 3_600_000);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(parse_since("2w", now).unwrap(), now - 14 * 86_400_000);
        assert_eq!(parse_since(" 0m ", now).unwrap(), now);
        assert_eq!(parse_since("100000w", now).unwrap(), 0, "not before 1970");
        assert_eq!(
            parse_since("2025-06-01T09:30:00Z", now).unwrap(),
            1_748_770_200_000
        );
        assert_eq!(
            parse_since("2025-06-01T11:30:00.250+02:00", now).unwrap(),
            1_748_770_200_250
        );
        for bad in [
            "",
            "m",
            "15",
            "-5m",
            "1.5h",
            "15 m",
            "1h30m",
            "15M",
            "yesterday",
            "2025-06-01",
            "99999999999999999999d",
        ] {
            let e = parse_since(bad, now).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, AuditReadError::BadSince(_))
                    && msg.contains("RFC 3339")
                    && msg.contains("15m")
                    && msg.contains("7d"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn paging_resumes_after_the_last_id() {
        assert_eq!(next_id("1717234200000-0"), "1717234200000-1");
        assert_eq!(next_id("1717234200000-41"), "1717234200000-42");
        assert_eq!(
            next_id(&format!("5-{}", u64::MAX)),
            "6-0",
            "the next millisecond"
        );
        assert_eq!(next_id("odd"), "(odd");
    }

    #[test]
    fn a_decision_is_one_readable_line() {
        assert_eq!(
            readable(&decision()),
            "2025-06-01T09:30:00.123Z allow user=alice agent=claude-code at=corp/github tools/call search_repos reason=allowed status=200"
        );
        // Refused before the route and caller were known.
        let anonymous = json!({"time": "t", "event": "decision", "method": "initialize", "decision": "deny", "reason": "unauthenticated", "status": 401});
        assert_eq!(
            readable(&anonymous),
            "t deny user=- agent=- at=- initialize reason=unauthenticated status=401"
        );
    }

    #[test]
    fn a_change_is_one_readable_line() {
        assert_eq!(
            readable(&lifecycle(
                "identity.create",
                "operator (offline put-shared)",
                "identity",
                "fast-sa"
            )),
            "2025-06-01T09:31:00Z identity.create actor=\"operator (offline put-shared)\" identity=fast-sa"
        );
        let other = json!({"time": "t", "event": "future", "x": 1});
        assert_eq!(
            readable(&other),
            r#"t future "{\"event\":\"future\",\"time\":\"t\",\"x\":1}""#
        );
    }

    #[test]
    fn odd_values_cannot_forge_a_line_or_drive_the_terminal() {
        let mut e = decision();
        e["user"] = json!("mallory\nt allow user=root");
        e["agent"] = json!("\u{1b}[2Jagent");
        e["name"] = json!("two words");
        let line = readable(&e);
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        assert!(
            line.contains(r#"user="mallory\nt allow user=root""#)
                && line.contains(r#"agent="\u{1b}[2Jagent""#)
                && line.contains(r#"tools/call "two words""#),
            "{line}"
        );
        e["user"] = json!("");
        assert!(readable(&e).contains(r#"user="""#));
    }

    #[test]
    fn only_a_closed_output_is_quietly_ended() {
        let gone = AuditReadError::Output(std::io::ErrorKind::BrokenPipe.into());
        assert!(gone.is_broken_pipe());
        assert!(!AuditReadError::BadSince("x".into()).is_broken_pipe());
    }
}
