//! `latchkey policy check` and `latchkey policy lint`: the operator's view
//! of the policy in a config file, without a running service. `check`
//! judges one call as the gateway would and names the rule that decided;
//! `lint` reports rules that cannot do what they seem to, and (with
//! `--probe`) policy tool names that an upstream does not list.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use latchkey_filter::visibility::{ItemKind, pattern_matches};
use serde_json::Value;

use latchkey_check::upstream_tools;
use latchkey_core::config::Config;
use latchkey_core::policy::{Policy, Verdict};
use latchkey_core::principal::Caller;

// Parsed once per process; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Judge one call as the gateway would and name the rule that decided.
    Check {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// The user (`sub` of their token).
        #[arg(long)]
        user: String,
        /// A value of the user's `groups`/`roles` claim; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// The agent acting for the user (the token's `client_id`).
        #[arg(long)]
        agent: Option<String>,
        /// A scope of the token; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// How the person signed in (the token's `acr`).
        #[arg(long)]
        acr: Option<String>,
        /// How long ago the person signed in, in seconds (`auth_time`).
        #[arg(long)]
        signed_in_secs_ago: Option<u64>,
        /// The token's other claims, as a JSON object (for conditions).
        #[arg(long)]
        claims: Option<String>,
        #[arg(long)]
        gateway: String,
        /// The server assignment or combined endpoint (the last path
        /// segment of its URL).
        #[arg(long, alias = "assignment")]
        server: String,
        #[arg(long, group = "item")]
        tool: Option<String>,
        #[arg(long, group = "item")]
        prompt: Option<String>,
        /// A resource URI.
        #[arg(long, group = "item")]
        resource: Option<String>,
        /// The tool call's arguments, as JSON.
        #[arg(long)]
        args: Option<String>,
        /// The tool's annotations as its server lists them, as JSON, for
        /// approval rules that select by them (unknown when not given:
        /// such a rule then holds the call, as the gateway does when it
        /// cannot read them).
        #[arg(long)]
        annotations: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Report rules that can never match or are hidden by a deny; with
    /// --probe, also tool patterns no upstream lists.
    Lint {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// List each upstream's tools (no credential is sent) to compare.
        #[arg(long)]
        probe: bool,
    },
}

pub fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Check {
            config,
            user,
            roles,
            agent,
            scopes,
            acr,
            signed_in_secs_ago,
            claims,
            gateway,
            server,
            tool,
            prompt,
            resource,
            args,
            annotations,
            json,
        } => {
            let (config, policy) = load(&config)?;
            let (kind, name) = match (tool, prompt, resource) {
                (Some(t), _, _) => (ItemKind::Tool, t),
                (_, Some(p), _) => (ItemKind::Prompt, p),
                (_, _, Some(r)) => (ItemKind::Resource, r),
                _ => bail!("name what to check: --tool, --prompt or --resource"),
            };
            let arguments = match args {
                Some(a) => Some(
                    serde_json::from_str::<serde_json::Value>(&a)
                        .context("--args must be a JSON object, e.g. '{\"repo\":\"acme/api\"}'")?,
                ),
                None => None,
            };
            let annotations = match annotations {
                Some(a) => Some(serde_json::from_str::<Value>(&a).context(
                    "--annotations must be a JSON object, e.g. '{\"destructiveHint\":true}'",
                )?),
                None => None,
            };
            let claims = match claims {
                Some(c) => serde_json::from_str::<serde_json::Map<String, Value>>(&c).context(
                    "--claims must be a JSON object, e.g. '{\"department\":\"finance\"}'",
                )?,
                None => serde_json::Map::new(),
            };
            let outcome = check(
                &config,
                &policy,
                &CheckQuery {
                    user: &user,
                    roles: &roles,
                    agent: agent.as_deref(),
                    token: TokenFacts {
                        scopes,
                        acr,
                        signed_in_secs_ago,
                        claims,
                    },
                    gateway: &gateway,
                    assignment: &server,
                    kind,
                    name: &name,
                    arguments: arguments.as_ref(),
                    annotations: annotations.as_ref(),
                },
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"decision": outcome.decision, "reason": outcome.reason})
                );
            } else {
                println!("{}: {}", outcome.decision, outcome.reason);
            }
            Ok(())
        }
        PolicyCommand::Lint { config, probe } => {
            let (config, policy) = load(&config)?;
            let findings = super::block_on(lint(&config, &policy, probe))?;
            if findings.is_empty() {
                println!("no findings");
                return Ok(());
            }
            for f in &findings {
                println!("{f}");
            }
            // Non-zero so that CI can gate on a clean policy.
            std::process::exit(1)
        }
    }
}

/// What one `policy check` decided.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// `allowed`, `hidden`, `refused` (a constraint), `needs_scope` or
    /// `needs_step_up` (a new token would do), or `needs_approval`.
    pub decision: &'static str,
    /// The rule that decided, in words.
    pub reason: String,
}

/// Loads a config file and compiles its policy, as `latchkey serve` does.
pub fn load(path: &Path) -> Result<(Config, Policy)> {
    let config = Config::load(path)?;
    let text = std::fs::read_to_string(path)?;
    let policy = Policy::compile(&config, &text)
        .with_context(|| format!("config file {}", path.display()))?;
    Ok((config, policy))
}

/// One request to judge.
#[derive(Debug, Clone)]
pub struct CheckQuery<'a> {
    /// The user (`sub`).
    pub user: &'a str,
    /// Values of the user's `groups`/`roles` claims.
    pub roles: &'a [String],
    /// The agent acting for the user (the token's client).
    pub agent: Option<&'a str>,
    /// What the token says besides who.
    pub token: TokenFacts,
    pub gateway: &'a str,
    pub assignment: &'a str,
    pub kind: ItemKind,
    pub name: &'a str,
    /// A tool call's arguments.
    pub arguments: Option<&'a Value>,
    /// The tool's annotations, if known.
    pub annotations: Option<&'a Value>,
}

/// What a token says besides who: scopes, sign-in, other claims.
#[derive(Debug, Clone, Default)]
pub struct TokenFacts {
    pub scopes: Vec<String>,
    pub acr: Option<String>,
    pub signed_in_secs_ago: Option<u64>,
    pub claims: serde_json::Map<String, Value>,
}

/// Judges one request as the gateway would.
pub fn check(config: &Config, policy: &Policy, q: &CheckQuery<'_>) -> Result<CheckOutcome> {
    let CheckQuery {
        user,
        roles,
        agent,
        ref token,
        gateway,
        assignment,
        kind,
        name,
        ..
    } = *q;
    let Some(g) = config.gateway(gateway) else {
        bail!("unknown gateway '{gateway}'");
    };
    let caller = Caller {
        subject: user.to_owned(),
        client_id: agent.map(str::to_owned),
        agent: agent.map(str::to_owned),
        headless: agent == Some(user),
        roles: roles.to_vec(),
        scopes: token.scopes.clone(),
        acr: token.acr.clone(),
        auth_time: token
            .signed_in_secs_ago
            .map(|ago| (latchkey_core::unix_now().max(0) as u64).saturating_sub(ago)),
        claims: std::sync::Arc::new(token.claims.clone()),
        ..Caller::default()
    };
    if g.assignments.iter().any(|a| a.name == assignment) {
        return Ok(judge(policy, q, assignment, &caller));
    }
    let Some(combined) = g.combined.iter().find(|c| c.name == assignment) else {
        bail!("gateway '{gateway}' has no server assignment or combined endpoint '{assignment}'");
    };
    // As the gateway routes it: the first assignment whose policy shows the
    // name decides; when none does, the name is hidden.
    let shows = |a: &&String| {
        !matches!(
            policy.decide(gateway, a, &caller, kind, name, None),
            Verdict::Hidden { .. }
        )
    };
    Ok(match combined.assignments.iter().find(shows) {
        Some(member) => {
            let mut outcome = judge(policy, q, member, &caller);
            outcome.reason = format!(
                "via '{member}', the first assignment of '{assignment}' that shows it: {}",
                outcome.reason
            );
            outcome
        }
        None => CheckOutcome {
            decision: "hidden",
            reason: format!(
                "none of the assignments of '{assignment}' ({}) shows it",
                combined.assignments.join(", ")
            ),
        },
    })
}

/// One assignment's verdict, with the rule that decided it.
fn judge(policy: &Policy, q: &CheckQuery<'_>, assignment: &str, caller: &Caller) -> CheckOutcome {
    let CheckQuery {
        gateway,
        kind,
        name,
        arguments,
        annotations,
        ..
    } = *q;
    let explained = policy.explain(gateway, assignment, caller, kind, name);
    match policy.decide(gateway, assignment, caller, kind, name, arguments) {
        Verdict::Allowed if kind == ItemKind::Tool => {
            let empty = Value::Object(serde_json::Map::new());
            let args = arguments.unwrap_or(&empty);
            match policy.approval_for(gateway, assignment, caller, name, args, annotations) {
                None => CheckOutcome {
                    decision: "allowed",
                    reason: explained.reason,
                },
                Some(need) => CheckOutcome {
                    decision: "needs_approval",
                    reason: format!(
                        "{}; but approval rule '{}' holds the call until {} approves that very call",
                        explained.reason,
                        need.rule,
                        match &need.approver_role {
                            None => "the person it is for".to_string(),
                            Some(role) =>
                                format!("someone with the role '{role}' other than the caller"),
                        }
                    ),
                },
            }
        }
        Verdict::Allowed => CheckOutcome {
            decision: "allowed",
            reason: explained.reason,
        },
        Verdict::Hidden { .. } => CheckOutcome {
            decision: "hidden",
            reason: explained.reason,
        },
        Verdict::Ambiguous { problem, .. } => CheckOutcome {
            decision: "refused",
            reason: format!("the URI has no single meaning: {problem}"),
        },
        Verdict::Violation { message, .. } => CheckOutcome {
            decision: "refused",
            reason: format!(
                "{}; but the arguments break a constraint: {message}",
                explained.reason
            ),
        },
        Verdict::InsufficientScope { scopes, .. } => CheckOutcome {
            decision: "needs_scope",
            reason: format!(
                "{}; but the call needs a token with the scope {} (answered 403 insufficient_scope)",
                explained.reason,
                scopes.join(" ")
            ),
        },
        Verdict::StepUp(s) => CheckOutcome {
            decision: "needs_step_up",
            reason: format!(
                "{}; but step-up rule '{}' is not met: {} (answered 401 insufficient_user_authentication)",
                explained.reason, s.rule, s.problem
            ),
        },
    }
}

/// `policy lint`: the policy's own findings, a `[servers.exchange]` that
/// cannot work (a client secret's variable unset; with `probe`, metadata
/// that is unreachable or does not offer the exchange) and, with `probe`,
/// tool names and patterns that match nothing the upstream lists.
pub async fn lint(config: &Config, policy: &Policy, probe: bool) -> Vec<String> {
    let mut findings = policy.lint();
    for server in &config.servers {
        let Some(settings) = &server.exchange else {
            continue;
        };
        let exchanger = latchkey_check::exchange::Exchanger::new(
            server,
            settings,
            &config.identity_provider.issuer,
            Duration::from_secs(10),
        );
        let problem = match exchanger {
            Err(e) => Some(e),
            Ok(x) if probe => x.probe().await.err(),
            Ok(_) => None,
        };
        if let Some(e) = problem {
            findings.push(format!("server '{}': [servers.exchange]: {e}", server.name));
        }
    }
    if !probe || !policy.is_enforced() {
        return findings;
    }
    for g in &config.gateways {
        for a in &g.assignments {
            let named = policy.tool_names(&g.name, &a.name);
            if named.is_empty() {
                continue;
            }
            let Some(server) = config.server(&a.server) else {
                continue;
            };
            match list_upstream_tools(server.url.as_str()).await {
                Ok(tools) => {
                    for pattern in named {
                        if !tools.iter().any(|t| pattern_matches(&pattern, t)) {
                            findings.push(format!(
                                "{}/{}: tools pattern \"{pattern}\" matches no tool server '{}' lists ({} tools)",
                                g.name,
                                a.name,
                                server.name,
                                tools.len()
                            ));
                        }
                    }
                }
                Err(e) => findings.push(format!(
                    "{}/{}: could not list the tools of server '{}' to compare ({e:#}); skipped",
                    g.name, a.name, server.name
                )),
            }
        }
    }
    findings
}

/// Lists an upstream's tools' names, sending no credential: an upstream
/// that needs one is reported, not probed.
pub async fn list_upstream_tools(url: &str) -> Result<Vec<String>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let tools = upstream_tools::list_tools(&client, url, None, "latchkey-policy-lint")
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(tools
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lint_names_an_exchange_that_cannot_work() {
        let text = |exchange: &str| {
            include_str!("../../../testdata/gateway.toml").replace(
                "url = \"http://127.0.0.1:1/mcp\"\n",
                &format!("url = \"http://127.0.0.1:1/mcp\"\n[servers.exchange]\nclient_id = \"gw\"\n{exchange}\n"),
            )
        };
        let findings = |exchange: &str, probe: bool| {
            let text = text(exchange);
            let config = Config::parse(&text).unwrap();
            let policy = Policy::compile(&config, &text).unwrap();
            super::super::block_on(lint(&config, &policy, probe)).unwrap()
        };
        let unset = findings(
            "kind = \"token_exchange\"\nclient_secret_env = \"LATCHKEY_TEST_NEVER_SET\"",
            false,
        );
        assert!(
            unset
                .iter()
                .any(|f| f.contains("server 'gh'") && f.contains("LATCHKEY_TEST_NEVER_SET")),
            "{unset:?}"
        );
        // Nothing listens on port 1: the authorization server's metadata cannot be read.
        let id_jag = "kind = \"id_jag\"\ntoken_endpoint = \"http://127.0.0.1:1/token\"\n\
                      authorization_server = \"http://127.0.0.1:1\"";
        let probed = findings(id_jag, true);
        assert!(
            probed
                .iter()
                .any(|f| f.contains("server 'gh'") && f.contains("could not be reached")),
            "{probed:?}"
        );
        let unprobed = findings(id_jag, false);
        assert!(
            !unprobed.iter().any(|f| f.contains("[servers.exchange]")),
            "without --probe nothing is fetched: {unprobed:?}"
        );
    }

    #[test]
    fn a_combined_endpoint_is_judged_as_the_gateway_routes_it() {
        // `gh` = gh-read (shared: get_*, create_draft) then gh-write (per
        // user: create_*, get_private).
        let text = concat!(
            include_str!("../../../testdata/gateway.toml"),
            include_str!("../../../testdata/combined.toml")
        );
        let config = Config::parse(text).unwrap();
        let policy = Policy::compile(&config, text).unwrap();
        let ask = |assignment: &'static str, tool: &'static str| {
            check(
                &config,
                &policy,
                &CheckQuery {
                    user: "alice",
                    roles: &[],
                    agent: None,
                    token: TokenFacts::default(),
                    gateway: "g",
                    assignment,
                    kind: ItemKind::Tool,
                    name: tool,
                    arguments: None,
                    annotations: None,
                },
            )
        };
        // Only the shared assignment shows get_issue.
        let o = ask("gh", "get_issue").unwrap();
        assert_eq!(o.decision, "allowed");
        assert!(o.reason.starts_with("via 'gh-read'"), "{}", o.reason);
        assert!(o.reason.contains("reads"), "{}", o.reason);
        // Only the per-user one shows create_issue.
        let o = ask("gh", "create_issue").unwrap();
        assert_eq!(o.decision, "allowed");
        assert!(o.reason.starts_with("via 'gh-write'"), "{}", o.reason);
        // Both show create_draft: the first listed decides.
        let o = ask("gh", "create_draft").unwrap();
        assert!(o.reason.starts_with("via 'gh-read'"), "{}", o.reason);
        // Neither shows delete_repo.
        let o = ask("gh", "delete_repo").unwrap();
        assert_eq!(o.decision, "hidden");
        assert!(o.reason.contains("gh-read, gh-write"), "{}", o.reason);
        // A member is still judged on its own.
        assert_eq!(ask("gh-read", "create_issue").unwrap().decision, "hidden");
        let e = ask("gh-nope", "get_issue").unwrap_err().to_string();
        assert!(
            e.contains("no server assignment or combined endpoint 'gh-nope'"),
            "{e}"
        );
    }

    #[test]
    fn check_says_what_a_token_lacks_and_which_calls_wait_for_approval() {
        let text = concat!(
            include_str!("../../../testdata/gateway.toml"),
            r#"
[[gateways.assignments]]
name = "gh"
server = "gh"
scheme = "shared"
identity = "gh-sa"
[[policy.grants]]
name = "everyone"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["*"] }
scopes = { "merge_*" = ["repo:write"] }
[[policy.step_up]]
name = "mfa-to-delete"
gateway = "g"
assignments = ["gh"]
tools = ["delete_*"]
acr_values = ["mfa"]
[[policy.approvals]]
name = "big-releases"
gateway = "g"
assignments = ["gh"]
tools = ["release"]
condition = "arguments.assets > 10"
approver_role = "release-managers"
"#
        );
        let config = Config::parse(text).unwrap();
        let policy = Policy::compile(&config, text).unwrap();
        let ask = |tool: &'static str, token: TokenFacts, args: Option<Value>| {
            check(
                &config,
                &policy,
                &CheckQuery {
                    user: "alice",
                    roles: &[],
                    agent: None,
                    token,
                    gateway: "g",
                    assignment: "gh",
                    kind: ItemKind::Tool,
                    name: tool,
                    arguments: args.as_ref(),
                    annotations: None,
                },
            )
            .unwrap()
        };
        let o = ask("merge_pr", TokenFacts::default(), None);
        assert_eq!(o.decision, "needs_scope");
        assert!(o.reason.contains("repo:write"), "{}", o.reason);
        let scoped = TokenFacts {
            scopes: vec!["repo:write".into()],
            ..TokenFacts::default()
        };
        assert_eq!(ask("merge_pr", scoped, None).decision, "allowed");
        let o = ask("delete_branch", TokenFacts::default(), None);
        assert_eq!(o.decision, "needs_step_up");
        assert!(o.reason.contains("mfa-to-delete"), "{}", o.reason);
        let mfa = TokenFacts {
            acr: Some("mfa".into()),
            signed_in_secs_ago: Some(5),
            ..TokenFacts::default()
        };
        assert_eq!(ask("delete_branch", mfa, None).decision, "allowed");
        let o = ask(
            "release",
            TokenFacts::default(),
            Some(json!({"assets": 20})),
        );
        assert_eq!(o.decision, "needs_approval");
        assert!(
            o.reason.contains("big-releases") && o.reason.contains("release-managers"),
            "{}",
            o.reason
        );
        let small = ask("release", TokenFacts::default(), Some(json!({"assets": 2})));
        assert_eq!(small.decision, "allowed");
    }
}
