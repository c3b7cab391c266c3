//! SCIM provisioning (`[scim]`, `/scim/v2` on each replica's HTTP side)
//! with requests shaped as Okta and Microsoft Entra ID send them (from
//! their public SCIM documentation), against two `latchkey serve`
//! replicas sharing one Redis, and what it changes for the people
//! provisioned: calls through a real Envoy running the Wasm filter,
//! balanced round-robin over the replicas. A deactivation refuses the
//! person's next call on both replicas; reactivation restores it; the
//! Groups a person is in are the roles a grant's `roles` match. Every
//! refusal is paired with the same request succeeding.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use latchkey_e2e::client::post_json;
use latchkey_e2e::stack::random_hex;
use latchkey_e2e::{Stack, StackOptions, TokenRequest};
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN_ENV: &str = "LATCHKEY_SCIM_TOKEN";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// Everyone sees `tool_00`; the `engineers` role (the `Engineering`
/// group, from a token's claims or from SCIM) sees every `tool_0*`.
const POLICY: &str = r#"
[policy.roles]
engineers = ["Engineering"]

[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_00"] }

[[policy.grants]]
name = "engineers"
gateway = "e2e"
assignments = ["fast"]
roles = ["engineers"]
tools = { allow = ["tool_0*"] }
"#;

const ALL_ZEROS: [&str; 10] = [
    "tool_00", "tool_01", "tool_02", "tool_03", "tool_04", "tool_05", "tool_06", "tool_07",
    "tool_08", "tool_09",
];

/// Two replicas, `fast` behind the policy, `[scim]` for `provider` with a
/// fresh token (remembered for the log scan); the stack and the token.
async fn stack(scenario: &str, provider: &str, extra: &str) -> Result<(Stack, String)> {
    let token = format!("scim-{}{}", random_hex(), random_hex());
    let stack = Stack::start(
        scenario,
        StackOptions {
            replicas: 2,
            fast_mcp_page_size: Some(100),
            policy: Some(POLICY.to_string()),
            extra_config: Some(format!(
                "[scim]\ntoken_env = \"{TOKEN_ENV}\"\nprovider = \"{provider}\"\n{extra}\n"
            )),
            replica_env: vec![(TOKEN_ENV.to_string(), token.clone())],
            ..Default::default()
        },
    )
    .await?;
    stack.remember_secret(&token);
    Ok((stack, token))
}

/// One SCIM answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    location: Option<String>,
    www_authenticate: Option<String>,
    body: Value,
}

impl Answer {
    /// Asserts a SCIM error: `status`, as a string in the body too, and `scim_type`.
    fn refused(&self, status: u16, scim_type: Option<&str>) -> Result<()> {
        ensure!(
            self.status == status,
            "expected {status}, got {}: {}",
            self.status,
            self.body
        );
        ensure!(
            self.content_type.starts_with("application/scim+json"),
            "{self:?}"
        );
        ensure!(self.body["schemas"] == json!([ERROR]), "{}", self.body);
        ensure!(
            self.body["status"] == json!(status.to_string()),
            "{}",
            self.body
        );
        ensure!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.body
        );
        match scim_type {
            Some(t) => ensure!(self.body["scimType"] == t, "{}", self.body),
            None => ensure!(self.body.get("scimType").is_none(), "{}", self.body),
        }
        Ok(())
    }
}

/// `method` on `path` under replica `replica`'s `/scim/v2`, with `token`.
async fn scim(
    stack: &Stack,
    replica: usize,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer> {
    let url = format!("{}/scim/v2{path}", stack.replicas[replica].http_url());
    let mut request = reqwest::Client::new()
        .request(method.clone(), &url)
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request
            .header("content-type", "application/scim+json; charset=utf-8")
            .body(b.to_string());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (content_type, location, www_authenticate) = (
        header("content-type").unwrap_or_default(),
        header("location"),
        header("www-authenticate"),
    );
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: not JSON: {text}"))?
    };
    Ok(Answer {
        status,
        content_type,
        location,
        www_authenticate,
        body,
    })
}

fn patch_op(operations: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": operations})
}

/// A filter as a query string (`?filter=...&startIndex=1&count=100`, as Okta pages).
fn filtered(resource: &str, filter: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a URL");
    url.query_pairs_mut()
        .append_pair("filter", filter)
        .append_pair("startIndex", "1")
        .append_pair("count", "100");
    format!("/{resource}?{}", url.query().unwrap_or_default())
}

/// A token for `sub` at the gateway whose `groups` claim says Engineering.
async fn engineer_token(stack: &Stack, sub: &str) -> Result<String> {
    stack
        .token_with(
            &TokenRequest::new(sub, &stack.gateway_url()).claim("groups", json!(["Engineering"])),
        )
        .await
}

fn decisions(stack: &Stack, n: usize, needle: &str) -> usize {
    stack.replicas[n]
        .process
        .as_ref()
        .map(|p| {
            p.log_text()
                .lines()
                .filter(|l| l.contains("\"latchkey::decision\"") && l.contains(needle))
                .count()
        })
        .unwrap_or(0)
}

/// One `tools/list` per replica (Envoy balances round-robin): each is
/// answered with exactly `expected` tools, and each replica decided one.
async fn sees_everywhere(stack: &Stack, token: &str, expected: &[&str]) -> Result<()> {
    let before: Vec<usize> = (0..2).map(|n| decisions(stack, n, "tools/list")).collect();
    for _ in 0..2 {
        let r = post_json(
            &stack.url("fast"),
            Some(token),
            &json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"}).to_string(),
            &[],
        )
        .await?;
        ensure!(r.status == 200, "tools/list: {} {}", r.status, r.body);
        let v = r.json()?;
        let mut names: Vec<&str> = v["result"]["tools"]
            .as_array()
            .context("a tool list")?
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        names.sort();
        ensure!(names == expected, "expected {expected:?}, saw {names:?}");
    }
    each_replica_decided(stack, &before, "tools/list").await
}

/// One `tools/list` per replica, each refused as a deactivated person's.
async fn refused_everywhere(stack: &Stack, token: &str) -> Result<()> {
    let before: Vec<usize> = (0..2)
        .map(|n| decisions(stack, n, "user_deactivated"))
        .collect();
    for _ in 0..2 {
        let r = post_json(
            &stack.url("fast"),
            Some(token),
            &json!({"jsonrpc": "2.0", "id": "d", "method": "tools/list"}).to_string(),
            &[],
        )
        .await?;
        ensure!(
            r.status == 403 && r.body.contains("deactivated"),
            "expected 403 (deactivated): {} {}",
            r.status,
            r.body
        );
    }
    each_replica_decided(stack, &before, "user_deactivated").await
}

async fn each_replica_decided(stack: &Stack, before: &[usize], needle: &str) -> Result<()> {
    // Decisions are logged right after they are answered.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for (n, b) in before.iter().enumerate() {
        ensure!(
            decisions(stack, n, needle) > *b,
            "replica {n} decided no {needle}: round-robin did not reach it"
        );
    }
    Ok(())
}

/// The lifecycle events `actor` wrote, as (action, target).
fn events_by(stack: &Stack, actor: &str) -> Result<Vec<(String, String)>> {
    let events = match stack.audit_events() {
        Ok(events) => events,
        // Nothing was ever written: no stream yet.
        Err(e) if format!("{e:#}").contains("no audit stream") => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(events
        .into_iter()
        .filter(|e| e["event"] == "lifecycle" && e["actor"] == actor)
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["target"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// `expected` appear in `events`, in this order (others may come between).
fn in_order(events: &[(String, String)], expected: &[(&str, &str)]) -> Result<()> {
    let mut at = 0;
    for (action, target) in expected {
        let found = events[at..]
            .iter()
            .position(|(a, t)| a == action && t == target)
            .with_context(|| format!("no {action} of {target} after event {at} in {events:?}"))?;
        at += found + 1;
    }
    Ok(())
}

/// Keys SCIM writes, and a person's principal record, in Redis.
fn scim_keys(stack: &Stack, user: &str) -> Result<Vec<String>> {
    Ok(stack
        .redis
        .dump_all()?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains(":scim:") || k.ends_with(&format!(":user:{user}")))
        .collect())
}

fn okta_user(user_name: &str) -> Value {
    json!({"schemas": [USER_SCHEMA], "userName": user_name,
        "name": {"givenName": "Alice", "familyName": "Liddell"},
        "emails": [{"primary": true, "value": format!("{user_name}@example.com"), "type": "work"}],
        "displayName": "Alice Liddell", "locale": "en-US", "externalId": "00ujl29u0le5T6Aj10h7",
        "groups": [], "password": "1mz050nq", "active": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_provisions_a_person_and_a_group_and_deactivation_refuses_their_next_call_on_both_replicas()
-> Result<()> {
    let (stack, token) = stack("scim_okta", "okta", "").await?;
    let t = Some(token.as_str());
    let alice = engineer_token(&stack, "alice").await?;
    let bob = engineer_token(&stack, "bob").await?;

    // Before SCIM knows her, alice's token claims give her the role.
    sees_everywhere(&stack, &alice, &ALL_ZEROS).await?;

    // Okta looks the person up first, then creates them.
    let lookup = scim(
        &stack,
        0,
        t,
        Method::GET,
        &filtered("Users", "userName eq \"alice\""),
        None,
    )
    .await?;
    assert_eq!(lookup.status, 200, "{}", lookup.body);
    assert_eq!(lookup.body["totalResults"], 0);
    let created = scim(
        &stack,
        0,
        t,
        Method::POST,
        "/Users",
        Some(&okta_user("alice")),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(created.content_type.starts_with("application/scim+json"));
    let id = created.body["id"].as_str().context("an id")?.to_string();
    assert_eq!(
        created.location.as_deref(),
        created.body["meta"]["location"].as_str()
    );
    assert_eq!(created.body["active"], true);
    assert_eq!(created.body["meta"]["resourceType"], "User");
    assert!(
        created.body.get("password").is_none(),
        "a password is never returned"
    );

    // Found through the other replica, in any case, with numbers as numbers.
    for name in ["alice", "ALICE"] {
        let found = scim(
            &stack,
            1,
            t,
            Method::GET,
            &filtered("Users", &format!("userName eq \"{name}\"")),
            None,
        )
        .await?;
        assert_eq!(found.status, 200, "{}", found.body);
        assert_eq!(
            (
                found.body["totalResults"].as_u64(),
                found.body["startIndex"].as_u64()
            ),
            (Some(1), Some(1))
        );
        assert_eq!(found.body["Resources"][0]["id"], id.as_str());
    }
    let got = scim(&stack, 1, t, Method::GET, &format!("/Users/{id}"), None).await?;
    assert_eq!((got.status, &got.body["userName"]), (200, &json!("alice")));

    // Provisioned over SCIM, her groups are SCIM's: none yet. Bob, not
    // provisioned, keeps his token's claims.
    sees_everywhere(&stack, &alice, &["tool_00"]).await?;
    sees_everywhere(&stack, &bob, &ALL_ZEROS).await?;

    // Group push: look up, create, add her (Okta's incremental form).
    let lookup = scim(
        &stack,
        1,
        t,
        Method::GET,
        &filtered("Groups", "displayName eq \"Engineering\""),
        None,
    )
    .await?;
    assert_eq!(lookup.body["totalResults"], 0, "{}", lookup.body);
    let group = scim(
        &stack,
        1,
        t,
        Method::POST,
        "/Groups",
        Some(&json!({"schemas": [GROUP_SCHEMA], "displayName": "Engineering", "members": []})),
    )
    .await?;
    assert_eq!(group.status, 201, "{}", group.body);
    let gid = group.body["id"].as_str().context("a group id")?.to_string();
    let added = scim(
        &stack,
        0,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(&patch_op(json!([
            {"op": "add", "path": "members", "value": [{"value": id, "display": "alice"}]}
        ]))),
    )
    .await?;
    assert_eq!(added.status, 204, "{:?}", added);
    sees_everywhere(&stack, &alice, &ALL_ZEROS).await?;
    let user = scim(&stack, 0, t, Method::GET, &format!("/Users/{id}"), None).await?;
    assert_eq!(
        user.body["groups"][0]["value"],
        gid.as_str(),
        "{}",
        user.body
    );

    // Deactivation (Okta's form): refused on both replicas at once.
    let off = scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(&patch_op(
            json!([{"op": "replace", "value": {"active": false}}]),
        )),
    )
    .await?;
    assert_eq!(
        (off.status, &off.body["active"]),
        (200, &json!(false)),
        "{}",
        off.body
    );
    refused_everywhere(&stack, &alice).await?;
    sees_everywhere(&stack, &bob, &ALL_ZEROS).await?;
    // Deactivated people stay readable.
    let still = scim(&stack, 0, t, Method::GET, &format!("/Users/{id}"), None).await?;
    assert_eq!((still.status, &still.body["active"]), (200, &json!(false)));

    // Reactivation restores, with her SCIM groups.
    let on = scim(
        &stack,
        0,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(&patch_op(
            json!([{"op": "replace", "value": {"active": true}}]),
        )),
    )
    .await?;
    assert_eq!(on.status, 200, "{}", on.body);
    sees_everywhere(&stack, &alice, &ALL_ZEROS).await?;

    // Okta's rename carries the group's id: the role follows the name.
    let renamed = scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(&patch_op(json!([
            {"op": "replace", "value": {"id": gid, "displayName": "Platform"}}
        ]))),
    )
    .await?;
    assert_eq!(renamed.status, 204, "{:?}", renamed);
    sees_everywhere(&stack, &alice, &["tool_00"]).await?;

    // Every change is in the audit trail with the identity provider as actor.
    let events = events_by(&stack, "scim:okta")?;
    in_order(
        &events,
        &[
            ("scim.user.create", "alice"),
            ("scim.group.create", "Engineering"),
            ("scim.group.patch", "Engineering"),
            ("scim.user.patch", "alice"),
            ("user.deactivate", "alice"),
            ("scim.user.patch", "alice"),
            ("user.reactivate", "alice"),
            ("scim.group.patch", "Platform"),
        ],
    )?;
    let audit = serde_json::to_string(&stack.audit_events()?)?;
    assert!(
        !audit.contains("1mz050nq"),
        "Okta's placeholder password is nowhere"
    );
    assert!(!audit.contains(&token));
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_id_shapes_deactivate_with_string_booleans_delete_and_move_people_between_groups()
-> Result<()> {
    let (stack, token) = stack("scim_entra", "entra", "").await?;
    let t = Some(token.as_str());
    let carol = engineer_token(&stack, "carol").await?;

    // Entra's "Test Connection": a random userName, an empty list.
    let probe = scim(
        &stack,
        0,
        t,
        Method::GET,
        &filtered(
            "Users",
            "userName eq \"8c0dbb5a-0d1e-4bd6-9a0d-6f2c6ab0d6b7\"",
        ),
        None,
    )
    .await?;
    assert_eq!(
        (probe.status, &probe.body["totalResults"]),
        (200, &json!(0))
    );

    let created = scim(
        &stack,
        0,
        t,
        Method::POST,
        "/Users",
        Some(&json!({
            "schemas": [USER_SCHEMA, ENTERPRISE],
            "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
            "userName": "carol", "active": true,
            "emails": [{"primary": true, "type": "work", "value": "carol@contoso.example"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "Carol Danvers", "familyName": "Danvers", "givenName": "Carol"},
            "roles": [],
            ENTERPRISE: {"employeeNumber": "701984", "department": "Research"}
        })),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().context("an id")?.to_string();
    assert_eq!(created.body[ENTERPRISE]["department"], "Research");

    let by_external = scim(
        &stack,
        1,
        t,
        Method::GET,
        &filtered(
            "Users",
            "externalId eq \"0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef\"",
        ),
        None,
    )
    .await?;
    assert_eq!(
        by_external.body["Resources"][0]["id"],
        id.as_str(),
        "{}",
        by_external.body
    );

    // Entra's default PATCH forms: capitalised ops, filtered paths.
    let updated = scim(&stack, 1, t, Method::PATCH, &format!("/Users/{id}"), Some(&patch_op(json!([
        {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "carol.d@contoso.example"},
        {"op": "Replace", "path": "name.familyName", "value": "Rambeau"},
        {"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": [{"$ref": null, "value": "boss-1"}]}
    ])))).await?;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(
        updated.body["emails"][0]["value"],
        "carol.d@contoso.example"
    );
    assert_eq!(updated.body["name"]["familyName"], "Rambeau");
    assert_eq!(updated.body[ENTERPRISE]["manager"]["value"], "boss-1");

    // Groups with Microsoft's own schema URN; members added and removed
    // the way Entra sends them.
    let group = scim(&stack, 0, t, Method::POST, "/Groups", Some(&json!({
        "schemas": [GROUP_SCHEMA, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
        "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159", "displayName": "Engineering",
        "meta": {"resourceType": "Group"}
    }))).await?;
    assert_eq!(group.status, 201, "{}", group.body);
    let gid = group.body["id"].as_str().context("a group id")?.to_string();
    let lookup = scim(
        &stack,
        1,
        t,
        Method::GET,
        &format!(
            "{}&excludedAttributes=members",
            filtered("Groups", "displayName eq \"Engineering\"")
        ),
        None,
    )
    .await?;
    assert_eq!(
        lookup.body["Resources"][0]["id"],
        gid.as_str(),
        "{}",
        lookup.body
    );

    sees_everywhere(&stack, &carol, &["tool_00"]).await?;
    let add =
        patch_op(json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": id}]}]));
    let added = scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(&add),
    )
    .await?;
    assert_eq!(added.status, 204, "{:?}", added);
    sees_everywhere(&stack, &carol, &ALL_ZEROS).await?;
    let with = scim(&stack, 0, t, Method::GET, &format!("/Groups/{gid}"), None).await?;
    assert_eq!(
        with.body["members"][0]["value"],
        id.as_str(),
        "{}",
        with.body
    );
    let without = scim(
        &stack,
        0,
        t,
        Method::GET,
        &format!("/Groups/{gid}?excludedAttributes=members"),
        None,
    )
    .await?;
    assert!(without.body.get("members").is_none(), "{}", without.body);

    let removed = scim(
        &stack,
        0,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(&patch_op(json!([
            {"op": "Remove", "path": "members", "value": [{"$ref": null, "value": id}]}
        ]))),
    )
    .await?;
    assert_eq!(removed.status, 204, "{:?}", removed);
    sees_everywhere(&stack, &carol, &["tool_00"]).await?;
    // And back, then out again with the RFC form (Entra's aadOptscim062020).
    scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(&add),
    )
    .await?;
    sees_everywhere(&stack, &carol, &ALL_ZEROS).await?;
    let out = scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(&patch_op(json!([
            {"op": "remove", "path": format!("members[value eq \"{id}\"]")}
        ]))),
    )
    .await?;
    assert_eq!(out.status, 204, "{:?}", out);
    sees_everywhere(&stack, &carol, &["tool_00"]).await?;
    scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Groups/{gid}"),
        Some(&add),
    )
    .await?;

    // Disable: "Replace", "active", "False" (a string).
    let off = scim(
        &stack,
        0,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(&patch_op(
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )),
    )
    .await?;
    assert_eq!(
        (off.status, &off.body["active"]),
        (200, &json!(false)),
        "{}",
        off.body
    );
    refused_everywhere(&stack, &carol).await?;
    let on = scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(&patch_op(
            json!([{"op": "Replace", "path": "active", "value": "True"}]),
        )),
    )
    .await?;
    assert_eq!(on.status, 200, "{}", on.body);
    sees_everywhere(&stack, &carol, &ALL_ZEROS).await?;

    // Hard delete: refused at once, the resource gone, the group without her.
    let deleted = scim(&stack, 1, t, Method::DELETE, &format!("/Users/{id}"), None).await?;
    assert_eq!(deleted.status, 204, "{:?}", deleted);
    refused_everywhere(&stack, &carol).await?;
    scim(&stack, 0, t, Method::GET, &format!("/Users/{id}"), None)
        .await?
        .refused(404, None)?;
    scim(&stack, 0, t, Method::DELETE, &format!("/Users/{id}"), None)
        .await?
        .refused(404, None)?;
    let group = scim(&stack, 0, t, Method::GET, &format!("/Groups/{gid}"), None).await?;
    assert!(group.body.get("members").is_none(), "{}", group.body);
    let gone = scim(
        &stack,
        1,
        t,
        Method::DELETE,
        &format!("/Groups/{gid}"),
        None,
    )
    .await?;
    assert_eq!(gone.status, 204);

    let events = events_by(&stack, "scim:entra")?;
    in_order(
        &events,
        &[
            ("scim.user.create", "carol"),
            ("scim.user.patch", "carol"),
            ("scim.group.create", "Engineering"),
            ("scim.group.patch", "Engineering"),
            ("scim.user.patch", "carol"),
            ("user.deactivate", "carol"),
            ("user.reactivate", "carol"),
            ("scim.user.delete", "carol"),
            ("user.deactivate", "carol"),
            ("scim.group.delete", "Engineering"),
        ],
    )?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scim_input_gets_scim_errors_and_requests_without_the_token_store_nothing() -> Result<()>
{
    let (stack, token) = stack("scim_errors", "okta", "max_users = 2").await?;
    let t = Some(token.as_str());
    let wrong = format!("scim-{}{}", random_hex(), random_hex());
    stack.remember_secret(&wrong);

    // Without the token, or with another, nothing is stored.
    for (label, bearer) in [("no token", None), ("a wrong token", Some(wrong.as_str()))] {
        let r = scim(
            &stack,
            0,
            bearer,
            Method::POST,
            "/Users",
            Some(&okta_user("dave")),
        )
        .await?;
        r.refused(401, None).with_context(|| label.to_string())?;
        assert_eq!(
            r.www_authenticate.as_deref(),
            Some("Bearer realm=\"latchkey-scim\"")
        );
        let r = scim(&stack, 1, bearer, Method::GET, "/Users", None).await?;
        r.refused(401, None)?;
    }
    let basic = reqwest::Client::new()
        .post(format!("{}/scim/v2/Users", stack.replicas[0].http_url()))
        .basic_auth("okta", Some(&token))
        .body(okta_user("dave").to_string())
        .send()
        .await?;
    assert_eq!(
        basic.status().as_u16(),
        401,
        "the token only as a bearer token"
    );
    assert!(
        scim_keys(&stack, "dave")?.is_empty(),
        "{:?}",
        scim_keys(&stack, "dave")?
    );
    assert!(events_by(&stack, "scim:okta")?.is_empty());
    // The same request with the token creates.
    let created = scim(
        &stack,
        0,
        t,
        Method::POST,
        "/Users",
        Some(&okta_user("dave")),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().context("an id")?.to_string();
    assert!(!scim_keys(&stack, "dave")?.is_empty());

    // The same userName in another case conflicts.
    scim(
        &stack,
        1,
        t,
        Method::POST,
        "/Users",
        Some(&okta_user("DAVE")),
    )
    .await?
    .refused(409, Some("uniqueness"))?;
    // Unknown attributes, wrong types, a bad path, a bad filter.
    let mut unknown = okta_user("erin");
    unknown["favouriteColour"] = json!("blue");
    scim(&stack, 0, t, Method::POST, "/Users", Some(&unknown))
        .await?
        .refused(400, Some("invalidSyntax"))?;
    let mut wrong_type = okta_user("erin");
    wrong_type["active"] = json!("perhaps");
    scim(&stack, 0, t, Method::POST, "/Users", Some(&wrong_type))
        .await?
        .refused(400, Some("invalidValue"))?;
    let mut not_a_list = okta_user("erin");
    not_a_list["emails"] = json!("erin@example.com");
    scim(
        &stack,
        0,
        t,
        Method::PUT,
        &format!("/Users/{id}"),
        Some(&not_a_list),
    )
    .await?
    .refused(400, Some("invalidValue"))?;
    scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(&patch_op(
            json!([{"op": "replace", "path": "shoeSize", "value": 9}]),
        )),
    )
    .await?
    .refused(400, Some("invalidPath"))?;
    scim(
        &stack,
        1,
        t,
        Method::PATCH,
        &format!("/Users/{id}"),
        Some(&patch_op(
            json!([{"op": "replace", "path": "active", "value": "maybe"}]),
        )),
    )
    .await?
    .refused(400, Some("invalidValue"))?;
    for filter in [
        "userName co \"da\"",
        "emails.value eq \"dave@example.com\"",
        "userName eq \"a\" or userName eq \"b\"",
    ] {
        scim(&stack, 0, t, Method::GET, &filtered("Users", filter), None)
            .await?
            .refused(400, Some("invalidFilter"))
            .with_context(|| filter.to_string())?;
    }
    // Unknown ids, in any shape, are 404.
    for unknown in [
        "010101001010101011001010101011",
        "00919288221112222",
        "0123456789abcdef0123456789abcdef",
    ] {
        scim(
            &stack,
            0,
            t,
            Method::GET,
            &format!("/Users/{unknown}"),
            None,
        )
        .await?
        .refused(404, None)?;
        scim(
            &stack,
            1,
            t,
            Method::PATCH,
            &format!("/Groups/{unknown}"),
            Some(&patch_op(
                json!([{"op": "replace", "value": {"displayName": "x"}}]),
            )),
        )
        .await?
        .refused(404, None)?;
    }
    // A group naming a member that is not a User here.
    scim(&stack, 0, t, Method::POST, "/Groups",
        Some(&json!({"schemas": [GROUP_SCHEMA], "displayName": "Ghosts", "members": [{"value": "0123456789abcdef0123456789abcdef"}]}))).await?
        .refused(400, Some("invalidValue"))?;
    // Not JSON; over the body bound; over the number of Users.
    let r = reqwest::Client::new()
        .post(format!("{}/scim/v2/Users", stack.replicas[0].http_url()))
        .bearer_auth(&token)
        .header("content-type", "application/scim+json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let mut huge = okta_user("frank");
    huge["displayName"] = json!("x".repeat(70 * 1024));
    let r = scim(&stack, 0, t, Method::POST, "/Users", Some(&huge)).await?;
    r.refused(413, None)?;
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("65536"),
        "{}",
        r.body
    );
    let mut long = okta_user("frank");
    long["title"] = json!("x".repeat(2000));
    let r = scim(&stack, 0, t, Method::POST, "/Users", Some(&long)).await?;
    r.refused(400, Some("invalidValue"))?;
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("1024"),
        "{}",
        r.body
    );
    assert_eq!(
        scim(
            &stack,
            0,
            t,
            Method::POST,
            "/Users",
            Some(&okta_user("frank"))
        )
        .await?
        .status,
        201
    );
    let full = scim(
        &stack,
        1,
        t,
        Method::POST,
        "/Users",
        Some(&okta_user("gina")),
    )
    .await?;
    full.refused(400, None)?;
    assert!(
        full.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("max_users"),
        "{}",
        full.body
    );

    // Discovery answers.
    let config = scim(&stack, 0, t, Method::GET, "/ServiceProviderConfig", None).await?;
    assert_eq!(
        (config.status, &config.body["patch"]["supported"]),
        (200, &json!(true))
    );
    let types = scim(&stack, 0, t, Method::GET, "/ResourceTypes", None).await?;
    assert_eq!(types.body["totalResults"], 2);
    let schemas = scim(&stack, 0, t, Method::GET, "/Schemas", None).await?;
    assert_eq!(schemas.body["totalResults"], 3);
    scim(&stack, 0, t, Method::GET, "/Bulk", None)
        .await?
        .refused(404, None)?;
    // Discovery needs the token too.
    scim(&stack, 0, None, Method::GET, "/ServiceProviderConfig", None)
        .await?
        .refused(401, None)?;

    stack.assert_no_secret_in_logs()?;
    Ok(())
}
