//! The connect page driven without a browser, as an attacker drives it: a
//! client that follows no redirect by itself, the cookies and CSRF token
//! read from each answer, and OAuth answers that can be edited (an `iss`
//! removed, a callback delivered at another address) before they are
//! delivered. Every step asserts the status a well-behaved page answers,
//! so a flow that went elsewhere fails where it went.

use anyhow::{Context, Result};

/// A client that follows no redirect (each step is asserted).
pub fn raw_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// The `Location` header of `r`.
pub fn location(r: &reqwest::Response) -> Result<String> {
    Ok(r.headers()
        .get("location")
        .context("a Location header")?
        .to_str()?
        .to_string())
}

/// The `name=value` of cookie `name` set by `r`.
pub fn set_cookie(r: &reqwest::Response, name: &str) -> Result<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
        .with_context(|| format!("no {name} cookie set"))
}

/// The `name=value` of the flow cookie `r` sets (its sealed state).
pub fn flow_cookie(r: &reqwest::Response) -> Result<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|v| v.starts_with("latchkey_flow_") && !v.ends_with('='))
        .map(str::to_string)
        .context("no flow cookie set")
}

/// Whether `r` removes the flow cookie `flow` (`name=value`).
pub fn clears(r: &reqwest::Response, flow: &str) -> bool {
    let name = flow.split('=').next().unwrap_or_default();
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.starts_with(&format!("{name}=;")) && v.contains("Max-Age=0"))
}

/// Starts signing in on the connect page without a browser: the identity
/// provider's redirect back after `login` signed in there, and the flow
/// cookie the page set.
pub async fn start_sign_in(
    c: &reqwest::Client,
    page: &str,
    login: &str,
) -> Result<(String, String)> {
    let r = c.get(page).send().await?;
    assert_eq!(r.status(), 303);
    let flow = flow_cookie(&r)?;
    let r = c
        .get(format!("{}&login={login}", location(&r)?))
        .send()
        .await?;
    assert_eq!(r.status(), 302);
    Ok((location(&r)?, flow))
}

/// Signs `login` in on the connect page without a browser; the session cookie.
pub async fn sign_in(c: &reqwest::Client, page: &str, login: &str) -> Result<String> {
    let (callback, flow) = start_sign_in(c, page, login).await?;
    let r = c.get(callback).header("cookie", &flow).send().await?;
    assert_eq!(r.status(), 303);
    assert!(clears(&r, &flow), "the flow cookie is removed");
    set_cookie(&r, "latchkey_connect")
}

/// Presses a button of gateway `e2e`'s connect page for `server` as
/// `session`: reads the page for its CSRF token, then POSTs
/// `/connect/e2e/<action>` (`authorise`, `use`, `disconnect`).
pub async fn press(
    c: &reqwest::Client,
    http: &str,
    session: &str,
    action: &str,
    server: &str,
) -> Result<reqwest::Response> {
    let page = c
        .get(format!("{http}/connect/e2e"))
        .header("cookie", session)
        .send()
        .await?
        .text()
        .await?;
    let csrf = csrf_in(&page)?;
    Ok(c.post(format!("{http}/connect/e2e/{action}"))
        .header("cookie", session)
        .form(&[("csrf", csrf.as_str()), ("server", server)])
        .send()
        .await?)
}

/// Starts authorising `server` with `session`; the provider's redirect back
/// (with a code and the state) after `login` signed in there, and the flow
/// cookie the page set.
pub async fn authorise(
    c: &reqwest::Client,
    http: &str,
    session: &str,
    server: &str,
    login: &str,
) -> Result<(String, String)> {
    let r = press(c, http, session, "authorise", server).await?;
    assert_eq!(r.status(), 303);
    let flow = flow_cookie(&r)?;
    let r = c
        .get(format!("{}&login={login}", location(&r)?))
        .send()
        .await?;
    assert_eq!(r.status(), 302);
    Ok((location(&r)?, flow))
}

/// Query parameter `name` of `url`, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `url` with query parameter `name` set to `value` (`None`: removed).
pub fn with_param(url: &str, name: &str, value: Option<&str>) -> Result<String> {
    let mut u = reqwest::Url::parse(url)?;
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    Ok(u.to_string())
}

/// `a` and `b` as one Cookie header.
pub fn both(a: &str, b: &str) -> String {
    format!("{a}; {b}")
}

/// The CSRF token of the connect page's forms.
pub fn csrf_in(page: &str) -> Result<String> {
    Ok(page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("a CSRF token in the page")?
        .to_string())
}

/// GET `url` with `cookie`: the status and the page.
pub async fn get(c: &reqwest::Client, url: &str, cookie: &str) -> Result<(u16, String)> {
    let r = c.get(url).header("cookie", cookie).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}
