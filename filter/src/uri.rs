//! Canonical resource URIs and argument paths: policy judges what the
//! upstream will act on, not the spelling the client sent.
//!
//! An upstream MCP server parses a resource URI before it looks the
//! resource up (the TypeScript SDK with WHATWG `new URL`, Python and rmcp
//! with their URL crates), and parsing rewrites it: `a/b/../c` becomes
//! `a/c`, `DEMO://` becomes `demo://`. Matching policy patterns against the
//! URI as sent let `demo://resource/static/document/../../dynamic/text/1`
//! pass an allow of `demo://resource/static/document/*` and read a resource
//! no grant shows. So every resource name is judged in one canonical form
//! ([`canonical`]), and what has no single meaning is refused
//! ([`UriError`]) rather than guessed at.
//!
//! The canonical form (RFC 3986 §6.2.2, with WHATWG's choices where the two
//! differ and the URI is still unambiguous):
//! * scheme and host lowercased, a default port (`http` 80, `https` 443,
//!   `ws` 80, `wss` 443, `ftp` 21) and an empty port dropped;
//! * dot segments removed (§5.2.4) from a hierarchical path;
//! * percent-encodings of unreserved characters decoded, the others
//!   uppercased; non-ASCII characters and the characters a URI may not hold
//!   raw (space, `"`, `<`, `>`, `^`, `` ` ``, `|`) percent-encoded as UTF-8;
//!   `{` and `}` kept raw (and `%7B`/`%7D` decoded), so URI templates in
//!   `resources/templates/list` and completions keep their expressions.
//!
//! Refused, because parsers disagree about them (a filesystem-backed
//! server decodes `%2F` into a separator, WHATWG turns `\` into `/` for
//! `http` and drops tabs and newlines, `%2e%2e` is a dot segment to WHATWG
//! but not to RFC 3986 before decoding):
//! * `%2F`, `%5C` or `%2E` in the path; any `\`; control characters
//!   (raw or encoded, `%00` included); leading or trailing spaces;
//! * invalid escapes (`%4`, `%zz`), escapes that decode to invalid UTF-8,
//!   an escaped `%` that starts another escape (`%252e`, double encoding);
//! * empty path segments (`a//b`: one file to a filesystem, two names to a
//!   URL parser); dot segments in a path with no authority and no leading
//!   `/` (WHATWG keeps such an opaque path as is, RFC 3986 removes them);
//! * userinfo (`https://allowed.example@evil.example/`), hosts that are not
//!   plain ASCII names or addresses, numeric IPv4 spellings other than
//!   dotted decimal, a host ending in `.`;
//! * anything over [`MAX_URI_BYTES`].
//!
//! [`canonical_path`] is the same idea for a tool argument that is a file
//! path. Everything here is pure: no I/O, no allocation beyond the result.

use std::fmt;

/// The longest resource URI or path argument judged; longer ones are refused.
pub const MAX_URI_BYTES: usize = 8192;

/// Why a URI or path has no single canonical form. The message names the
/// ambiguous part so a person can send an unambiguous spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriError {
    TooLong(usize),
    Empty,
    /// No `scheme:` prefix (policy judges absolute URIs only).
    NoScheme,
    BadScheme(String),
    Control,
    Backslash,
    EdgeSpace,
    InvalidEscape(String),
    /// `%2F`, `%5C` or `%2E` in a path segment.
    EncodedSeparator(String),
    EncodedControl(String),
    DoubleEncoding(String),
    NotUtf8,
    EmptySegment,
    OpaqueDotSegment,
    /// A `..` in a path argument: what it names depends on symbolic links.
    ParentSegment,
    /// A percent-escape in a path argument: some tools decode it, some don't.
    EscapeInPath(String),
    Userinfo,
    BadHost(String),
    BadPort(String),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriError::TooLong(n) => write!(
                f,
                "it is {n} bytes long; at most {MAX_URI_BYTES} are accepted"
            ),
            UriError::Empty => write!(f, "it is empty"),
            UriError::NoScheme => write!(
                f,
                "it has no scheme (write it as an absolute URI, like demo://host/path)"
            ),
            UriError::BadScheme(s) => write!(f, "its scheme '{s}' is not a valid URI scheme"),
            UriError::Control => write!(
                f,
                "it contains a control character (tab, newline, NUL, ...), which URL parsers drop or reject"
            ),
            UriError::Backslash => write!(
                f,
                "it contains a backslash, which some parsers read as '/'; percent-encoding does not help either"
            ),
            UriError::EdgeSpace => {
                write!(f, "it starts or ends with a space, which URL parsers strip")
            }
            UriError::InvalidEscape(e) => {
                write!(
                    f,
                    "'{e}' is not a valid percent-escape (% and two hex digits)"
                )
            }
            UriError::EncodedSeparator(e) => write!(
                f,
                "its path contains '{e}', an encoded '/', '\\' or '.', which servers read differently (some decode it into a path separator or dot segment); send the path unencoded"
            ),
            UriError::EncodedControl(e) => {
                write!(f, "'{e}' encodes a control character")
            }
            UriError::DoubleEncoding(e) => write!(
                f,
                "'{e}' is a percent-escape encoded twice, which a server decoding twice reads differently"
            ),
            UriError::NotUtf8 => write!(f, "its percent-escapes do not decode to UTF-8"),
            UriError::EmptySegment => write!(
                f,
                "its path has an empty segment ('//'), one name to a URL parser and another to a filesystem"
            ),
            UriError::OpaqueDotSegment => write!(
                f,
                "its path has a '.' or '..' segment but no authority or leading '/', so parsers disagree whether it is resolved"
            ),
            UriError::ParentSegment => write!(
                f,
                "it has a '..' segment, whose target depends on symbolic links on the server"
            ),
            UriError::EscapeInPath(e) => write!(
                f,
                "it contains '{e}', which some tools decode and others take literally"
            ),
            UriError::Userinfo => write!(
                f,
                "it has userinfo ('user@' before the host), which disguises the host"
            ),
            UriError::BadHost(h) => write!(
                f,
                "its host '{h}' is not a plain ASCII host name or address (no escapes, internationalised names, odd IPv4 spellings or trailing dot)"
            ),
            UriError::BadPort(p) => write!(f, "its port '{p}' is not a number from 0 to 65535"),
        }
    }
}

impl std::error::Error for UriError {}

/// Schemes WHATWG treats as "special" (it lowercases and validates their
/// hosts) and their default ports.
fn default_port(scheme: &str) -> Option<Option<u16>> {
    match scheme {
        "http" | "ws" => Some(Some(80)),
        "https" | "wss" => Some(Some(443)),
        "ftp" => Some(Some(21)),
        "file" => Some(None),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(
        DIGITS.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
    ));
    out.push(char::from(
        DIGITS.get(usize::from(b & 15)).copied().unwrap_or(b'0'),
    ));
}

/// Which part of a URI a component is: the path refuses encoded
/// separators and dots, which are harmless data in a query or fragment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path,
    QueryOrFragment,
}

/// One component with its percent-encoding normalised.
fn normalise(component: &str, part: Part) -> Result<String, UriError> {
    let bytes = component.as_bytes();
    let mut out = String::with_capacity(component.len());
    // The component with its escapes decoded, to check it is UTF-8.
    let mut decoded = Vec::with_capacity(component.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            decoded.push(b);
            match b {
                0x80.. => push_escape(&mut out, b),
                b' ' | b'"' | b'<' | b'>' | b'^' | b'`' | b'|' => push_escape(&mut out, b),
                _ => out.push(char::from(b)),
            }
            i += 1;
            continue;
        }
        let escape = component
            .get(i..(i + 3).min(component.len()))
            .unwrap_or("%");
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(UriError::InvalidEscape(escape.to_owned()));
        };
        let v = (hi << 4) | lo;
        decoded.push(v);
        match v {
            b'/' | b'\\' | b'.' if part == Part::Path => {
                return Err(UriError::EncodedSeparator(escape.to_owned()));
            }
            b'\\' => return Err(UriError::EncodedSeparator(escape.to_owned())),
            0..0x20 | 0x7f => return Err(UriError::EncodedControl(escape.to_owned())),
            b'%' => {
                let next = (bytes.get(i + 3).copied().and_then(hex))
                    .and(bytes.get(i + 4).copied().and_then(hex));
                if next.is_some() {
                    let shown = component.get(i..i + 5).unwrap_or(escape);
                    return Err(UriError::DoubleEncoding(shown.to_owned()));
                }
                push_escape(&mut out, v);
            }
            b'{' | b'}' => out.push(char::from(v)),
            _ if is_unreserved(v) => out.push(char::from(v)),
            _ => push_escape(&mut out, v),
        }
        i += 3;
    }
    // Decoded once, the component must not hold an escape again: a server
    // that decodes twice would act on another character than policy
    // judged. Looking at the decoded bytes also catches an escape put
    // together from pieces (`%25f%65` decodes to `%fe`), which the check
    // on each escape above cannot see (found by fuzzing: the canonical
    // form of such a URI was refused when canonicalised again).
    if let Some(at) = decoded
        .windows(3)
        .position(|w| matches!(w, [b'%', hi, lo] if hex(*hi).is_some() && hex(*lo).is_some()))
    {
        let shown = String::from_utf8_lossy(decoded.get(at..at + 3).unwrap_or_default());
        return Err(UriError::DoubleEncoding(shown.into_owned()));
    }
    let text = String::from_utf8(decoded).map_err(|_| UriError::NotUtf8)?;
    // C1 controls (U+0080..U+009F) arrive encoded as UTF-8.
    if text.chars().any(char::is_control) {
        return Err(UriError::Control);
    }
    Ok(out)
}

/// Checks that would otherwise repeat in every form: length, controls,
/// backslashes.
fn common_checks(text: &str) -> Result<(), UriError> {
    if text.len() > MAX_URI_BYTES {
        return Err(UriError::TooLong(text.len()));
    }
    if text.is_empty() {
        return Err(UriError::Empty);
    }
    if text.chars().any(char::is_control) {
        return Err(UriError::Control);
    }
    if text.contains('\\') {
        return Err(UriError::Backslash);
    }
    if text.starts_with(' ') || text.ends_with(' ') {
        return Err(UriError::EdgeSpace);
    }
    Ok(())
}

/// A host as policy judges it: lowercase ASCII, no escapes.
fn canonical_host(host: &str, special: bool) -> Result<String, UriError> {
    let bad = || UriError::BadHost(host.to_owned());
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(bad)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad());
        }
        return Ok(format!("[{}]", inner.to_ascii_lowercase()));
    }
    if host.ends_with('.') {
        return Err(bad());
    }
    let allowed = |b: u8| {
        if special {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
        } else {
            is_unreserved(b) || b"!$&'()*+,;={}".contains(&b)
        }
    };
    if !host.bytes().all(allowed) {
        return Err(bad());
    }
    let host = host.to_ascii_lowercase();
    if special {
        // WHATWG reads `0x7f.1`, `2130706433` and `0177.0.0.1` as IPv4
        // addresses: a numeric last label must be plain dotted decimal.
        let last = host.rsplit('.').next().unwrap_or("");
        let numeric = !last.is_empty()
            && (last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x"));
        if numeric {
            let parts: Vec<&str> = host.split('.').collect();
            let decimal = |p: &&str| {
                !p.is_empty()
                    && p.len() <= 3
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p.len() == 1 || !p.starts_with('0'))
                    && p.parse::<u16>().is_ok_and(|n| n <= 255)
            };
            if parts.len() != 4 || !parts.iter().all(decimal) {
                return Err(bad());
            }
        }
    }
    Ok(host)
}

/// `host[:port]`, canonical, with the scheme's default port dropped.
fn canonical_authority(authority: &str, scheme: &str) -> Result<String, UriError> {
    if authority.contains('@') {
        return Err(UriError::Userinfo);
    }
    let defaults = default_port(scheme);
    let (host, port) = match authority.rfind(':') {
        Some(at) if !authority.get(at..).is_some_and(|p| p.contains(']')) => (
            authority.get(..at).unwrap_or(""),
            Some(authority.get(at + 1..).unwrap_or("")),
        ),
        _ => (authority, None),
    };
    let mut out = canonical_host(host, defaults.is_some())?;
    if let Some(port) = port.filter(|p| !p.is_empty()) {
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UriError::BadPort(port.to_owned()));
        }
        let digits = port.trim_start_matches('0');
        let n = if digits.is_empty() {
            Some(0)
        } else {
            digits.parse::<u16>().ok()
        }
        .ok_or_else(|| UriError::BadPort(port.to_owned()))?;
        if defaults.flatten() != Some(n) {
            out.push(':');
            out.push_str(&n.to_string());
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on a path that starts with `/`, given as its segments
/// after that slash. Empty segments were refused before, except a last one
/// (a trailing slash).
fn remove_dot_segments(segments: &[String]) -> String {
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        match s.as_str() {
            "." => {}
            ".." => {
                out.pop();
            }
            other => {
                out.push(other);
                continue;
            }
        }
        // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
        if i == last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// The canonical form of a resource URI (or URI template), or why it has
/// none. Idempotent: the canonical form of a canonical URI is itself.
pub fn canonical(uri: &str) -> Result<String, UriError> {
    common_checks(uri)?;
    let colon = uri.find(':').ok_or(UriError::NoScheme)?;
    let scheme = uri.get(..colon).unwrap_or("");
    let valid_scheme = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !valid_scheme {
        return Err(if scheme.is_empty() || scheme.contains('/') {
            UriError::NoScheme
        } else {
            UriError::BadScheme(scheme.to_owned())
        });
    }
    let scheme = scheme.to_ascii_lowercase();
    let rest = uri.get(colon + 1..).unwrap_or("");
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (hier, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let mut out = scheme.clone();
    out.push(':');
    let path = match hier.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            out.push_str("//");
            out.push_str(&canonical_authority(
                after.get(..end).unwrap_or(""),
                &scheme,
            )?);
            after.get(end..).unwrap_or("")
        }
        None => hier,
    };
    let mut segments = Vec::new();
    for s in path.split('/') {
        segments.push(normalise(s, Part::Path)?);
    }
    // The first segment of an absolute path is the empty one before its `/`.
    let body = segments
        .get(usize::from(path.starts_with('/'))..)
        .unwrap_or_default();
    // A trailing slash leaves one empty segment at the end; any other is `//`.
    if body
        .iter()
        .take(body.len().saturating_sub(1))
        .any(String::is_empty)
    {
        return Err(UriError::EmptySegment);
    }
    if path.starts_with('/') {
        out.push_str(&remove_dot_segments(body));
    } else if body.iter().any(|s| s == "." || s == "..") {
        return Err(UriError::OpaqueDotSegment);
    } else {
        out.push_str(&body.join("/"));
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(&normalise(q, Part::QueryOrFragment)?);
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(&normalise(f, Part::QueryOrFragment)?);
    }
    Ok(out)
}

/// The canonical form of a file path given as a tool argument, or why it
/// has none: `.` segments and repeated `/` removed (the filesystem ignores
/// them); `..` refused (with symbolic links its target is not the lexical
/// parent), as are percent-escapes (some tools decode them), backslashes
/// and control characters.
pub fn canonical_path(path: &str) -> Result<String, UriError> {
    common_checks(path)?;
    for (at, _) in path.match_indices('%') {
        let shown = path.get(at..(at + 3).min(path.len())).unwrap_or("%");
        if shown.len() == 3 && shown.bytes().skip(1).all(|b| b.is_ascii_hexdigit()) {
            return Err(UriError::EscapeInPath(shown.to_owned()));
        }
    }
    let absolute = path.starts_with('/');
    let trailing = path.len() > 1 && path.ends_with('/');
    let mut out: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => return Err(UriError::ParentSegment),
            other => out.push(other),
        }
    }
    let mut text = String::with_capacity(path.len());
    if absolute {
        text.push('/');
    }
    text.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        text.push('/');
    }
    if text.is_empty() {
        text.push('.');
    }
    // What was cut may leave a form the checks refuse (`a/ //.` ends in a
    // space once `//.` goes; found by fuzzing): the result passes them too,
    // so every canonical path is its own.
    common_checks(&text)?;
    Ok(text)
}

/// For a resource pattern in policy (`*` and `?` wildcards): why it is not
/// written in canonical form, if it is not. A pattern must be canonical,
/// as it is only ever compared with canonical URIs: `DEMO://x/*` or
/// `demo://x/a/../b` would match nothing, `demo://x/%7e*` never `~`.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    // Wildcards stand in for characters of any part (`https://*.example/`
    // has one in a host, `?` is no query delimiter here): judge the
    // pattern with a plain name in their place, then put them back.
    const STAR: &str = "zqxstarxqz";
    const ONE: &str = "zqxonexqz";
    let probe = pattern.replace('*', STAR).replace('?', ONE);
    let back = |c: &str| c.replace(STAR, "*").replace(ONE, "?");
    let judged = match canonical(&probe) {
        // No scheme of its own (`*/secret*`): its path-like parts must
        // still be canonical.
        Err(UriError::NoScheme | UriError::BadScheme(_)) => canonical(&format!("x://h/{probe}"))
            .map(|c| c.get("x://h/".len()..).unwrap_or_default().to_owned()),
        other => other,
    };
    match judged {
        Ok(c) if back(&c) == pattern => None,
        Ok(c) => Some(format!(
            "it is not in canonical form; write \"{}\"",
            back(&c)
        )),
        Err(e) => Some(format!("no URI can match it: {e}")),
    }
}

/// For a path pattern in an argument constraint: why it is not canonical.
pub fn path_pattern_problem(pattern: &str) -> Option<String> {
    match canonical_path(pattern) {
        Ok(c) if c == pattern => None,
        Ok(c) => Some(format!("it is not in canonical form; write \"{c}\"")),
        Err(e) => Some(format!("no path can match it: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn same(input: &str, want: &str) {
        assert_eq!(canonical(input).as_deref(), Ok(want), "{input}");
        assert_eq!(canonical(want).as_deref(), Ok(want), "idempotent: {want}");
    }

    #[track_caller]
    fn refused(input: &str) -> UriError {
        match canonical(input) {
            Ok(c) => panic!("{input:?} was accepted as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn dot_segments_are_resolved_as_the_upstream_resolves_them() {
        same(
            "demo://resource/static/document/../../dynamic/text/1",
            "demo://resource/dynamic/text/1",
        );
        same(
            "demo://resource/static/./document/a.md",
            "demo://resource/static/document/a.md",
        );
        same("demo://resource/../../../x", "demo://resource/x");
        same("demo://resource/a/b/..", "demo://resource/a/");
        same("demo://resource/a/.", "demo://resource/a/");
        same("demo://resource/..", "demo://resource/");
        same("demo:/a/../b", "demo:/b");
        same("file:///srv/data/../../etc/passwd", "file:///etc/passwd");
        // Not dot segments: names that merely contain dots.
        same("demo://resource/a/.../b", "demo://resource/a/.../b");
        same("demo://resource/a/..b/.c", "demo://resource/a/..b/.c");
        // Query and fragment are not paths.
        same("demo://r/a?x=../../b#../c", "demo://r/a?x=../../b#../c");
    }

    #[test]
    fn encoded_dots_slashes_and_backslashes_in_paths_are_refused() {
        for uri in [
            "demo://resource/static/document/%2e%2e/%2e%2e/dynamic/text/1",
            "demo://resource/static/document/.%2E/x",
            "demo://resource/static/document/%2E",
            "demo://resource/static/document%2F..%2F..%2Fdynamic",
            "demo://resource/static/document/%2f",
            "demo://resource/static/document/%5C..",
            "demo://resource/a%2Eb",
        ] {
            assert!(
                matches!(refused(uri), UriError::EncodedSeparator(_)),
                "{uri}"
            );
        }
        assert_eq!(refused("demo://r/..\\secret"), UriError::Backslash);
        assert_eq!(refused("http://r/a\\b"), UriError::Backslash);
        // In a query an encoded slash is data.
        same("demo://r/a?path=x%2fy", "demo://r/a?path=x%2Fy");
        assert!(matches!(
            refused("demo://r/a?x=%5c"),
            UriError::EncodedSeparator(_)
        ));
    }

    #[test]
    fn scheme_and_host_case_and_default_ports_are_normalised() {
        same("DEMO://Resource/Static/Doc", "demo://resource/Static/Doc");
        same("HTTPS://Example.COM:443/a", "https://example.com/a");
        same("http://example.com:80/a", "http://example.com/a");
        same("http://example.com:0080/a", "http://example.com/a");
        same("http://example.com:/a", "http://example.com/a");
        same("http://example.com:8080/a", "http://example.com:8080/a");
        same("demo://r:443/a", "demo://r:443/a");
        same(
            "http://[::FFFF:7f00:1]:8080/",
            "http://[::ffff:7f00:1]:8080/",
        );
        same("http://127.0.0.1/", "http://127.0.0.1/");
        for host in [
            "0x7f.0.0.1",
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "a%41.com",
        ] {
            assert!(
                matches!(refused(&format!("http://{host}/")), UriError::BadHost(_)),
                "{host}"
            );
        }
        assert!(matches!(
            refused("https://example.com./a"),
            UriError::BadHost(_)
        ));
        assert!(matches!(
            refused("https://ex\u{e4}mple.com/"),
            UriError::BadHost(_)
        ));
        assert!(matches!(refused("http://h:99999/"), UriError::BadPort(_)));
        assert!(matches!(refused("demo://h:x/"), UriError::BadPort(_)));
        assert_eq!(
            refused("https://allowed.example@evil.example/"),
            UriError::Userinfo
        );
    }

    #[test]
    fn percent_encoding_is_normalised() {
        same("demo://r/%7e%41%2d_", "demo://r/~A-_");
        same("demo://r/a%3ab%3F", "demo://r/a%3Ab%3F");
        same("demo://r/caf%c3%a9", "demo://r/caf%C3%A9");
        same("demo://r/caf\u{e9}", "demo://r/caf%C3%A9");
        same("demo://r/a b|c", "demo://r/a%20b%7Cc");
        same("demo://r/%7Bid%7D", "demo://r/{id}");
        same(
            "demo://resource/dynamic/text/{id}",
            "demo://resource/dynamic/text/{id}",
        );
        same("file:///{+path}", "file:///{+path}");
        same("demo://r/%25", "demo://r/%25");
        for (uri, want) in [
            ("demo://r/%", UriError::InvalidEscape("%".into())),
            ("demo://r/%4", UriError::InvalidEscape("%4".into())),
            ("demo://r/%zz", UriError::InvalidEscape("%zz".into())),
            (
                "demo://r/%252e%252e",
                UriError::DoubleEncoding("%252e".into()),
            ),
            ("demo://r/a%25f%65", UriError::DoubleEncoding("%fe".into())),
            ("demo://r/%00", UriError::EncodedControl("%00".into())),
            ("demo://r/%0a", UriError::EncodedControl("%0a".into())),
            ("demo://r/%ff", UriError::NotUtf8),
            ("demo://r/%c3", UriError::NotUtf8),
            ("demo://r/%c2%85", UriError::Control),
        ] {
            assert_eq!(refused(uri), want, "{uri}");
        }
    }

    #[test]
    fn control_characters_spaces_and_odd_shapes_are_refused() {
        for uri in [
            "demo://r/.\t./secret",
            "demo://r/a\nb",
            "demo://r/a\0",
            "demo://r/\u{85}",
            "demo://r/a\u{7f}",
        ] {
            assert_eq!(refused(uri), UriError::Control, "{uri:?}");
        }
        assert_eq!(refused(" demo://r/a"), UriError::EdgeSpace);
        assert_eq!(refused("demo://r/a "), UriError::EdgeSpace);
        assert_eq!(refused(""), UriError::Empty);
        assert_eq!(refused("no-scheme/a"), UriError::NoScheme);
        assert_eq!(refused("/abs/path"), UriError::NoScheme);
        assert!(matches!(refused("1x://r"), UriError::BadScheme(_)));
        assert_eq!(refused("demo://r/a//b"), UriError::EmptySegment);
        assert_eq!(refused("demo://r//a"), UriError::EmptySegment);
        assert_eq!(refused("demo:a/../b"), UriError::OpaqueDotSegment);
        assert_eq!(refused("demo:./b"), UriError::OpaqueDotSegment);
        same("urn:example:a.b", "urn:example:a.b");
        same("demo://r/a/", "demo://r/a/");
        same("demo://r", "demo://r");
        same("demo://r/", "demo://r/");
        let long = format!("demo://r/{}", "a".repeat(MAX_URI_BYTES));
        assert!(matches!(refused(&long), UriError::TooLong(_)));
    }

    #[test]
    fn json_unicode_escapes_are_judged_after_decoding() {
        // What the filter and service see once serde_json decoded the body.
        let uri: String = serde_json::from_str(
            r#""demo://resource/static/document/\u002e\u002e/\u002e\u002e/dynamic/text/1""#,
        )
        .unwrap();
        same(&uri, "demo://resource/dynamic/text/1");
        let uri: String = serde_json::from_str(r#""demo://r/a\u0000b""#).unwrap();
        assert_eq!(refused(&uri), UriError::Control);
    }

    #[test]
    fn errors_name_the_ambiguous_part() {
        let e = refused("demo://r/a%2Fb").to_string();
        assert!(e.contains("%2F") && e.contains("encoded '/'"), "{e}");
    }

    #[test]
    fn paths_drop_dots_and_repeated_slashes_and_refuse_parents() {
        for (input, want) in [
            ("/srv/data/x", "/srv/data/x"),
            ("/srv/data/./x", "/srv/data/x"),
            ("/srv//data///x", "/srv/data/x"),
            ("/srv/data/", "/srv/data/"),
            ("//srv/data", "/srv/data"),
            ("data/x", "data/x"),
            ("./x", "x"),
            ("/", "/"),
            ("100%", "100%"),
            ("/a%/b", "/a%/b"),
        ] {
            assert_eq!(canonical_path(input).as_deref(), Ok(want), "{input}");
            assert_eq!(canonical_path(want).as_deref(), Ok(want), "{want}");
        }
        for (input, want) in [
            ("/srv/data/../../etc/passwd", UriError::ParentSegment),
            ("..", UriError::ParentSegment),
            ("/srv/data/%2e%2e/x", UriError::EscapeInPath("%2e".into())),
            ("/srv/data\\..\\x", UriError::Backslash),
            ("/srv/data/x\0", UriError::Control),
            ("/a%/b%2F", UriError::EscapeInPath("%2F".into())),
        ] {
            assert_eq!(canonical_path(input), Err(want), "{input}");
        }
    }

    #[test]
    fn patterns_must_be_canonical() {
        assert_eq!(pattern_problem("demo://resource/static/document/*"), None);
        assert_eq!(pattern_problem("*"), None);
        assert_eq!(pattern_problem("*/secret*"), None);
        assert_eq!(pattern_problem("demo://r/?"), None);
        assert!(
            pattern_problem("DEMO://r/*")
                .unwrap()
                .contains("\"demo://r/*\"")
        );
        assert!(
            pattern_problem("demo://r/a/../b*")
                .unwrap()
                .contains("\"demo://r/b*\"")
        );
        assert!(pattern_problem("*/%2e%2e/*").unwrap().contains("no URI"));
        assert!(pattern_problem("*/%7e*").unwrap().contains("\"*/~*\""));
        assert_eq!(path_pattern_problem("/srv/data/*"), None);
        assert!(
            path_pattern_problem("/srv/./data/*")
                .unwrap()
                .contains("\"/srv/data/*\"")
        );
        assert!(path_pattern_problem("/srv/../*").is_some());
    }
}
