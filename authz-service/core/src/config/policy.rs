//! `[policy]`: grants, roles, argument constraints and the answers for
//! hidden items, as written; `policy::Policy::compile` checks and compiles
//! them.

use serde::Deserialize;

/// `[policy]`: grants of tools, prompts and resources to users and roles.
/// Compiled and checked by `policy::Policy::compile`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Role name → values of the token's `groups`/`roles` claims that give
    /// it. A grant's `roles` may name these or claim values directly.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
    /// How calls to things the caller may not see are answered.
    #[serde(default)]
    pub hidden: HiddenAnswers,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    /// Calls that need a stronger or more recent sign-in (RFC 9470).
    #[serde(default)]
    pub step_up: Vec<StepUpConfig>,
    /// Calls that wait for a person to approve exactly that call.
    #[serde(default)]
    pub approvals: Vec<ApprovalConfig>,
}

/// `[[policy.approvals]]`: a call to one of `tools` on these assignments,
/// for callers the `condition` (CEL over the caller and the call) holds
/// for, goes upstream only once a person approved that very call (same
/// caller, agent, route, tool and arguments), once. The first rule that
/// covers a call decides who approves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    pub name: toml::Spanned<String>,
    pub gateway: String,
    pub assignments: Vec<String>,
    /// Tool names or patterns.
    pub tools: Vec<String>,
    pub condition: Option<String>,
    /// Who approves: unset, the person the call is for confirms it
    /// themself; a role (a `[policy.roles]` name or a claim value), anyone
    /// holding it but the caller (four eyes).
    pub approver_role: Option<String>,
    /// How long a request waits for a decision, and an approval for its
    /// call, in seconds.
    #[serde(default = "default_approval_ttl")]
    pub ttl_secs: u64,
    /// The audit trail records a digest of the arguments, never their
    /// values (the approval page still shows them to the approver).
    #[serde(default)]
    pub sensitive_arguments: bool,
    /// Tool annotations the tool must have, as its server lists them (e.g.
    /// `{ destructiveHint = true }`; a hint the tool does not give has the
    /// MCP spec's default). Only on assignments of servers with
    /// `trust_annotations = true`.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, bool>,
}

fn default_approval_ttl() -> u64 {
    600
}

/// `[[policy.step_up]]`: a call to one of `tools` on these assignments
/// needs a token whose `acr` is one of `acr_values` and whose `auth_time`
/// is at most `max_age_secs` old (each when set), for every caller the
/// `condition` (CEL over the caller and the call) holds for. Unlike a
/// grant, a rule gives nothing: every rule that matches a call must be met.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepUpConfig {
    pub name: toml::Spanned<String>,
    pub gateway: String,
    pub assignments: Vec<String>,
    /// Tool names or patterns.
    pub tools: Vec<String>,
    #[serde(default)]
    pub acr_values: Vec<String>,
    pub max_age_secs: Option<u64>,
    pub condition: Option<String>,
}

/// `[[policy.grants]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Names the grant in explanations and errors (its span gives the line).
    pub name: toml::Spanned<String>,
    pub gateway: String,
    /// Server assignments of that gateway this grant covers.
    pub assignments: Vec<String>,
    /// Users (`sub`) granted; `"*"` is every authenticated user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Roles granted (see `[policy.roles]`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Agents (the token's `client_id`/`azp`) granted. A grant names either
    /// people (users, roles) or agents. Once any grant of an assignment
    /// names agents, an agent there sees only what its own grants allow,
    /// intersected with what the user it acts for may see.
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub tools: PatternsConfig,
    #[serde(default)]
    pub prompts: PatternsConfig,
    /// Resource URIs; also rules resource templates by URI template.
    #[serde(default)]
    pub resources: PatternsConfig,
    #[serde(default)]
    pub constraints: Vec<ConstraintConfig>,
    /// Token scopes a call needs, by tool name or pattern: every pattern
    /// matching the tool adds its scopes. A token without them is answered
    /// 403 `insufficient_scope` naming them, so the client can ask for them
    /// (MCP step-up authorization). Lists are not affected.
    #[serde(default)]
    pub scopes: std::collections::BTreeMap<String, Vec<String>>,
    /// A CEL condition over the caller (see `policy::condition`): the
    /// grant applies only while it holds.
    pub condition: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternsConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `[[policy.grants.constraints]]`: one rule over one argument of the
/// tools it names. Exactly one of the checks is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintConfig {
    /// Tool name or pattern the constraint applies to.
    pub tool: String,
    /// JSON Pointer (RFC 6901) into the call's `arguments` (not used by
    /// `condition`, which reads them whole).
    #[serde(default)]
    pub argument: String,
    /// When the argument is absent: allowed if true, else a violation.
    #[serde(default)]
    pub optional: bool,
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    /// Glob (`*`, `?`) the string value must match.
    pub pattern: Option<String>,
    /// How `pattern` judges the value: `"path"` or `"uri"` canonicalise it
    /// first (see `latchkey_filter::uri`; a value with no single canonical
    /// form breaks the constraint), `"none"` compares it as sent. Unset: a
    /// pattern starting with `/` is a path, one starting `scheme://` a URI.
    pub canonical: Option<CanonicalForm>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_length: Option<usize>,
    /// The argument must not be given at all.
    #[serde(default)]
    pub forbidden: bool,
    /// A CEL condition over the caller and the call (`arguments.amount
    /// <= 1000 || 'finance' in roles`) that must hold.
    pub condition: Option<String>,
}

/// What a `pattern` constraint's argument is, for its canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CanonicalForm {
    /// A file path: `.` and repeated `/` dropped; `..` and escapes refused.
    Path,
    /// An absolute URI, canonical as resource URIs are.
    Uri,
    /// The string as sent.
    None,
}

impl CanonicalForm {
    pub fn name(self) -> &'static str {
        match self {
            CanonicalForm::Path => "path",
            CanonicalForm::Uri => "uri",
            CanonicalForm::None => "none",
        }
    }
}

/// `[policy.hidden]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenAnswers {
    #[serde(default = "default_hidden_tool")]
    pub tool: HiddenAnswer,
    #[serde(default = "default_hidden_prompt")]
    pub prompt: HiddenAnswer,
    #[serde(default = "default_hidden_resource")]
    pub resource: HiddenAnswer,
}

impl Default for HiddenAnswers {
    fn default() -> Self {
        Self {
            tool: default_hidden_tool(),
            prompt: default_hidden_prompt(),
            resource: default_hidden_resource(),
        }
    }
}

/// The answer to a call naming something hidden: what the upstream answers
/// for a name it does not know, so the caller learns nothing. `{name}` in
/// `message` is replaced by the name called.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenAnswer {
    #[serde(default)]
    pub style: HiddenStyle,
    #[serde(default = "default_hidden_code")]
    pub code: i64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenStyle {
    /// A JSON-RPC error (the MCP spec's answer to an unknown tool).
    #[default]
    JsonrpcError,
    /// A tool result with `isError: true` (what some SDKs answer).
    ToolResult,
}

fn default_hidden_code() -> i64 {
    -32602
}
fn default_hidden_tool() -> HiddenAnswer {
    HiddenAnswer {
        style: HiddenStyle::JsonrpcError,
        code: -32602,
        message: "Unknown tool: {name}".into(),
    }
}
fn default_hidden_prompt() -> HiddenAnswer {
    HiddenAnswer {
        style: HiddenStyle::JsonrpcError,
        code: -32602,
        message: "Unknown prompt: {name}".into(),
    }
}
fn default_hidden_resource() -> HiddenAnswer {
    HiddenAnswer {
        style: HiddenStyle::JsonrpcError,
        code: -32002,
        message: "Resource not found: {name}".into(),
    }
}
