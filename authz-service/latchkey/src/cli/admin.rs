//! The operator CLI's side of the admin API: subcommands become calls to
//! `latchkey.admin.v1.Admin`, answers become lines a person reads (or JSON
//! with `--json`). The token comes from `LATCHKEY_TOKEN` or a file, never
//! from a flag, so it stays out of shell history and `ps`.

use std::io::{BufRead, Read};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use latchkey_core::config::Config;
use latchkey_core::identity::{Availability, IdentitySecret};
use latchkey_core::vault::Secret;
use latchkey_proto::admin as pb;
use latchkey_proto::admin::admin_client::AdminClient;
use latchkey_store::credentials::{NewIdentity, TokenMeta};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{block_on, open_credentials};

#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin API of a `latchkey serve` replica.
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_ADMIN_URL",
        default_value = "http://127.0.0.1:9192"
    )]
    pub admin_url: String,
    /// A file holding the bearer token (else `LATCHKEY_TOKEN`).
    #[arg(long, global = true, env = "LATCHKEY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print answers as JSON, one document per line.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum IdentityCommand {
    /// Offline bootstrap: store a global identity straight into Redis with
    /// the master key file, before any admin token exists. Secret on stdin.
    PutShared {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// Identity id, as named by the assignment's `identity`.
        #[arg(long)]
        id: String,
        /// The server the identity authenticates to.
        #[arg(long)]
        server: String,
        /// Who is recorded as the creator.
        #[arg(long, default_value = "operator")]
        owner: String,
    },
    /// Store a static credential (API key, PAT) as a new identity; the
    /// secret is read from standard input. With --oauth, store tokens from
    /// the server's OAuth provider instead (migrated from elsewhere): the
    /// access token on stdin's first line and the refresh token, if any, on
    /// its second, or both from environment variables; never as arguments.
    Create {
        #[arg(long)]
        server: String,
        /// Generated when omitted.
        #[arg(long)]
        id: Option<String>,
        /// Defaults to you; someone else needs identities:manage.
        #[arg(long)]
        owner: Option<String>,
        /// Usable by others (needs identities:manage).
        #[arg(long)]
        global: bool,
        /// The secret is OAuth tokens (access, optional refresh), refreshed
        /// with the server's [servers.oauth] provider before they expire.
        #[arg(long)]
        oauth: bool,
        /// Read the access token from this environment variable, not stdin.
        #[arg(long, requires = "oauth", value_name = "VAR")]
        access_token_env: Option<String>,
        /// Read the refresh token from this environment variable.
        #[arg(long, requires = "oauth", value_name = "VAR")]
        refresh_token_env: Option<String>,
        /// Seconds until the access token expires, as the provider said
        /// (`expires_in`); 0 or negative: expired already. Omitted: unknown.
        #[arg(long, requires = "oauth", allow_hyphen_values = true)]
        expires_in: Option<i64>,
        /// A scope the tokens were granted; repeat for several.
        #[arg(long = "scope", requires = "oauth")]
        scopes: Vec<String>,
    },
    /// Your identities, or someone's (`--owner`), or everyone's (`--owner '*'`).
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        server: Option<String>,
    },
    /// One identity's metadata (never its secret).
    Show {
        id: String,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Make an identity selectable by others (it then belongs to the organisation).
    MakeGlobal {
        id: String,
    },
    MakePrivate {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Every request of the user is refused until reactivated; nothing is deleted.
    Deactivate {
        user: String,
    },
    Reactivate {
        user: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConnectionCommand {
    /// Your connections, or a user's, or everyone's (`--user '*'`).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Use an identity for a per-user server of a gateway.
    Use {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        server: String,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        user: Option<String>,
    },
    Disable {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        user: Option<String>,
    },
    Enable {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Offline: print a new random master key line (`key-id:base64`).
    Generate {
        #[arg(long, default_value = "k1")]
        id: String,
    },
    /// Key ids, which is active, and how many records each seals.
    List,
    /// Make a key active and re-encrypt every record with it, online.
    Rotate {
        #[arg(long)]
        to: String,
    },
}

/// A connected client plus the token every call carries.
pub(super) struct Session {
    pub(super) client: AdminClient<Channel>,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    json: bool,
}

impl Session {
    pub(super) async fn open(args: &AdminArgs) -> Result<Session> {
        let token = match &args.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?,
            None => std::env::var("LATCHKEY_TOKEN").map_err(|_| {
                anyhow::anyhow!(
                    "no admin token: set LATCHKEY_TOKEN (or --token-file) to a token from your identity provider for the admin audience"
                )
            })?,
        };
        let token = format!("Bearer {}", token.trim())
            .parse()
            .context("the admin token has characters that cannot go in a header")?;
        let channel = Channel::from_shared(args.admin_url.clone())
            .with_context(|| format!("'{}' is not a URL", args.admin_url))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", args.admin_url))?;
        let client = AdminClient::new(channel);
        Ok(Session {
            client,
            token,
            json: args.json,
        })
    }

    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }

    pub(super) fn json(&self) -> bool {
        self.json
    }

    pub(super) fn print(&self, value: Value, text: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text(&value));
        }
    }
}

/// An answer's message; a warning the service attached (a change made but
/// not yet confirmed by every replica) goes to standard error first.
pub(super) trait IntoAnswer<T> {
    fn into_answer(self) -> T;
}

impl<T> IntoAnswer<T> for tonic::Response<T> {
    fn into_answer(self) -> T {
        if let Some(warning) = self
            .metadata()
            .get(latchkey_control::admin::WARNING_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            eprintln!("warning: {warning}");
        }
        self.into_inner()
    }
}

/// A refused call as an error a person can act on.
pub(super) fn refused(status: tonic::Status) -> anyhow::Error {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => {
            " (get a fresh token for the admin audience and set LATCHKEY_TOKEN)"
        }
        tonic::Code::Unavailable => " (is `latchkey serve` running and is Redis reachable?)",
        _ => "",
    };
    anyhow::anyhow!("{}{hint} [{:?}]", status.message(), status.code())
}

/// The access token and the optional refresh token of `identity create
/// --oauth`: from the named environment variables, else from standard input
/// (access token on the first line, refresh token on the second).
fn oauth_tokens(
    access_env: Option<String>,
    refresh_env: Option<String>,
) -> Result<(String, Option<String>)> {
    let from_env = |var: &str| {
        std::env::var(var)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (access, refresh) = match access_env {
        Some(var) => (
            from_env(&var).with_context(|| {
                format!("the environment variable {var} (--access-token-env) is not set or empty")
            })?,
            None,
        ),
        None => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the tokens from stdin")?;
            let mut lines = input.lines().map(str::trim).filter(|l| !l.is_empty());
            let access = lines.next().map(str::to_string).context(
                "no access token on standard input: pipe it in (and the refresh token on a second line), e.g. `printf '%s\\n%s' \"$AT\" \"$RT\" | latchkey identity create --oauth --server github`",
            )?;
            (access, lines.next().map(str::to_string))
        }
    };
    let refresh = match refresh_env {
        Some(var) => Some(from_env(&var).with_context(|| {
            format!("the environment variable {var} (--refresh-token-env) is not set or empty")
        })?),
        None => refresh,
    };
    Ok((access, refresh))
}

pub async fn whoami(args: &AdminArgs) -> Result<()> {
    let mut s = Session::open(args).await?;
    let r = s
        .client
        .who_am_i(s.request(pb::WhoAmIRequest {}))
        .await
        .map_err(refused)?
        .into_answer();
    s.print(
        json!({"subject": r.subject, "capabilities": r.capabilities}),
        |_| {
            format!(
                "{} (capabilities: {})",
                r.subject,
                if r.capabilities.is_empty() {
                    "none".to_string()
                } else {
                    r.capabilities.join(", ")
                }
            )
        },
    );
    Ok(())
}

pub async fn identity(args: &AdminArgs, command: IdentityCommand) -> Result<()> {
    let mut s = Session::open(args).await?;
    match command {
        IdentityCommand::PutShared { .. } => bail!("put-shared runs offline, not over the API"),
        IdentityCommand::Create {
            server,
            id,
            owner,
            global,
            oauth,
            access_token_env,
            refresh_token_env,
            expires_in,
            scopes,
        } => {
            let (secret, oauth) = if oauth {
                let tokens = oauth_tokens(access_token_env, refresh_token_env)?;
                (
                    String::new(),
                    Some(pb::OauthTokens {
                        access_token: tokens.0,
                        refresh_token: tokens.1.unwrap_or_default(),
                        expires_in,
                        scopes,
                    }),
                )
            } else {
                let mut secret = String::new();
                std::io::stdin()
                    .read_to_string(&mut secret)
                    .context("reading the secret from stdin")?;
                let secret = secret.trim_end_matches(['\r', '\n']).to_string();
                if secret.is_empty() {
                    bail!(
                        "no secret on standard input: pipe it in, e.g. `printf %s \"$PAT\" | latchkey identity create --server github`"
                    );
                }
                (secret, None)
            };
            let r = s
                .client
                .create_identity(s.request(pb::CreateIdentityRequest {
                    id: id.unwrap_or_default(),
                    server,
                    owner: owner.unwrap_or_default(),
                    availability: if global {
                        pb::Availability::Global
                    } else {
                        pb::Availability::Private
                    } as i32,
                    secret,
                    oauth,
                }))
                .await
                .map_err(refused)?
                .into_answer();
            s.print(identity_json(&r), |v| {
                format!("created {}", identity_line(v))
            });
        }
        IdentityCommand::List { owner, server } => {
            let r = s
                .client
                .list_identities(s.request(pb::ListIdentitiesRequest {
                    owner: owner.unwrap_or_default(),
                    server: server.unwrap_or_default(),
                }))
                .await
                .map_err(refused)?
                .into_answer();
            for i in &r.identities {
                s.print(identity_json(i), identity_line);
            }
        }
        IdentityCommand::Show { id } => {
            let r = s
                .client
                .get_identity(s.request(pb::GetIdentityRequest { id }))
                .await
                .map_err(refused)?
                .into_answer();
            s.print(identity_json(&r), |v| {
                serde_json::to_string_pretty(v).unwrap_or_default()
            });
        }
        IdentityCommand::Disable { id } => set_identity_status(&mut s, id, false).await?,
        IdentityCommand::Enable { id } => set_identity_status(&mut s, id, true).await?,
        IdentityCommand::Delete { id } => {
            s.client
                .delete_identity(s.request(pb::DeleteIdentityRequest { id: id.clone() }))
                .await
                .map_err(refused)?;
            s.print(json!({"deleted": id}), |_| format!("deleted {id}"));
        }
        IdentityCommand::MakeGlobal { id } => {
            set_availability(&mut s, id, pb::Availability::Global).await?
        }
        IdentityCommand::MakePrivate { id } => {
            set_availability(&mut s, id, pb::Availability::Private).await?
        }
    }
    Ok(())
}

async fn set_identity_status(s: &mut Session, id: String, enabled: bool) -> Result<()> {
    let r = s
        .client
        .set_identity_status(s.request(pb::SetIdentityStatusRequest {
            id,
            status: status(enabled) as i32,
        }))
        .await
        .map_err(refused)?
        .into_answer();
    s.print(identity_json(&r), identity_line);
    Ok(())
}

async fn set_availability(s: &mut Session, id: String, a: pb::Availability) -> Result<()> {
    let r = s
        .client
        .set_identity_availability(s.request(pb::SetIdentityAvailabilityRequest {
            id,
            availability: a as i32,
        }))
        .await
        .map_err(refused)?
        .into_answer();
    s.print(identity_json(&r), identity_line);
    Ok(())
}

pub async fn user(args: &AdminArgs, command: UserCommand) -> Result<()> {
    let mut s = Session::open(args).await?;
    let (id, enabled) = match command {
        UserCommand::Deactivate { user } => (user, false),
        UserCommand::Reactivate { user } => (user, true),
    };
    let r = s
        .client
        .set_user_status(s.request(pb::SetPrincipalStatusRequest {
            id,
            status: status(enabled) as i32,
        }))
        .await
        .map_err(refused)?
        .into_answer();
    s.print(principal_json(&r), principal_line);
    Ok(())
}

pub async fn connection(args: &AdminArgs, command: ConnectionCommand) -> Result<()> {
    let mut s = Session::open(args).await?;
    let connection = match command {
        ConnectionCommand::List { user } => {
            let r = s
                .client
                .list_connections(s.request(pb::ListConnectionsRequest {
                    user: user.unwrap_or_default(),
                }))
                .await
                .map_err(refused)?
                .into_answer();
            for c in &r.connections {
                s.print(connection_json(c), connection_line);
            }
            return Ok(());
        }
        ConnectionCommand::Use {
            gateway,
            server,
            identity,
            user,
        } => s
            .client
            .use_identity(s.request(pb::UseIdentityRequest {
                user: user.unwrap_or_default(),
                gateway,
                server,
                identity_id: identity,
            }))
            .await
            .map_err(refused)?
            .into_answer(),
        ConnectionCommand::Disable { gateway, user } => {
            set_connection_status(&mut s, gateway, user, false).await?
        }
        ConnectionCommand::Enable { gateway, user } => {
            set_connection_status(&mut s, gateway, user, true).await?
        }
    };
    s.print(connection_json(&connection), connection_line);
    Ok(())
}

async fn set_connection_status(
    s: &mut Session,
    gateway: String,
    user: Option<String>,
    enabled: bool,
) -> Result<pb::Connection> {
    Ok(s.client
        .set_connection_status(s.request(pb::SetConnectionStatusRequest {
            user: user.unwrap_or_default(),
            gateway,
            status: status(enabled) as i32,
        }))
        .await
        .map_err(refused)?
        .into_answer())
}

pub async fn keys(args: &AdminArgs, command: KeysCommand) -> Result<()> {
    let mut s = Session::open(args).await?;
    match command {
        KeysCommand::Generate { .. } => bail!("keys generate runs offline, not over the API"),
        KeysCommand::List => {
            let r = s
                .client
                .list_keys(s.request(pb::ListKeysRequest {}))
                .await
                .map_err(refused)?
                .into_answer();
            for k in &r.keys {
                s.print(
                    json!({"id": k.id, "loaded": k.loaded, "active": k.active, "records": k.records}),
                    |_| {
                        format!(
                            "{}{}  records={}{}",
                            k.id,
                            if k.active { " (active)" } else { "" },
                            k.records,
                            if k.loaded {
                                ""
                            } else {
                                "  NOT LOADED on this replica"
                            }
                        )
                    },
                );
            }
        }
        KeysCommand::Rotate { to } => {
            let r = s
                .client
                .rotate_keys(s.request(pb::RotateKeysRequest { key_id: to }))
                .await
                .map_err(refused)?
                .into_answer();
            s.print(
                json!({"active_key": r.active_key, "re_encrypted": r.re_encrypted, "already_current": r.already_current}),
                |_| {
                    format!(
                        "active key is now {}; re-encrypted {} records ({} were already on it)",
                        r.active_key, r.re_encrypted, r.already_current
                    )
                },
            );
        }
    }
    Ok(())
}

pub(super) fn status(enabled: bool) -> pb::Status {
    if enabled {
        pb::Status::Enabled
    } else {
        pb::Status::Disabled
    }
}

fn status_name(value: i32) -> &'static str {
    match pb::Status::try_from(value) {
        Ok(pb::Status::Enabled) => "enabled",
        Ok(pb::Status::Disabled) => "disabled",
        _ => "unknown",
    }
}

fn identity_json(i: &pb::Identity) -> Value {
    json!({
        "id": i.id,
        "server": i.server,
        "owner": i.owner,
        "availability": match pb::Availability::try_from(i.availability) {
            Ok(pb::Availability::Global) => "global",
            Ok(pb::Availability::Private) => "private",
            _ => "unknown",
        },
        "status": status_name(i.status),
        "kind": i.kind,
        "version": i.version,
        "key_id": i.key_id,
        "created_by": i.created_by,
        "created_at": i.created_at,
        "updated_by": i.updated_by,
        "updated_at": i.updated_at,
        "expires_at": i.expires_at,
        "scopes": i.scopes,
        "consent_required": i.consent_required,
    })
}

fn identity_line(v: &Value) -> String {
    format!(
        "{}  server={} owner={} {} {} v{} key={}{}",
        v["id"].as_str().unwrap_or(""),
        v["server"].as_str().unwrap_or(""),
        v["owner"].as_str().unwrap_or(""),
        v["availability"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["version"],
        v["key_id"].as_str().unwrap_or(""),
        if v["consent_required"].as_bool() == Some(true) {
            " consent-required"
        } else {
            ""
        },
    )
}

pub(super) fn principal_json(p: &pb::Principal) -> Value {
    json!({"id": p.id, "kind": p.kind, "status": status_name(p.status), "updated_by": p.updated_by, "updated_at": p.updated_at})
}

pub(super) fn principal_line(v: &Value) -> String {
    format!(
        "{} {}: {}",
        v["kind"].as_str().unwrap_or(""),
        v["id"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or("")
    )
}

fn connection_json(c: &pb::Connection) -> Value {
    let identities: serde_json::Map<String, Value> = c
        .identities
        .iter()
        .map(|i| (i.server.clone(), Value::String(i.identity_id.clone())))
        .collect();
    json!({"user": c.user, "gateway": c.gateway, "status": status_name(c.status), "identities": identities, "updated_by": c.updated_by, "updated_at": c.updated_at})
}

fn connection_line(v: &Value) -> String {
    format!(
        "{} on {}: {} {}",
        v["user"].as_str().unwrap_or(""),
        v["gateway"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["identities"]
    )
}

/// `latchkey identity put-shared`: stores a service-account secret read
/// from standard input straight into Redis (no admin API, no token), for
/// bootstrapping before any operator exists.
pub fn put_shared(config: PathBuf, id: String, server: String, owner: String) -> Result<()> {
    let config = Config::load(&config)?;
    if config.server(&server).is_none() {
        bail!("unknown server '{server}': declare it under [[servers]] in the config first");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the secret from stdin")?;
    let secret = line.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        bail!(
            "no secret on standard input: pipe it in, e.g. `printf %s \"$TOKEN\" | latchkey identity put-shared ...`"
        );
    }
    let secret = IdentitySecret::Static {
        value: Secret::new(secret),
    };
    block_on(async {
        let credentials = open_credentials(&config).await?;
        let record = credentials
            .put_identity(NewIdentity {
                actor: &format!("{owner} (offline put-shared)"),
                id: &id,
                server: &server,
                owner: &owner,
                availability: Availability::Global,
                secret: &secret,
                replace: true,
                meta: TokenMeta::default(),
            })
            .await?;
        println!(
            "stored identity '{}' for server '{}' (version {}, key {})",
            record.id, record.server, record.version, record.sealed.key_id
        );
        // Running replicas may have cached the old secret (or its absence).
        let settled = latchkey_store::propagation::settle(
            &credentials.store,
            latchkey_store::propagation::SETTLE_WITHIN,
        )
        .await
        .unwrap_or_else(|e| latchkey_store::propagation::Settled::Unknown(e.to_string()));
        if let Some(warning) = settled.warning() {
            eprintln!("warning: {warning}");
        }
        anyhow::Ok(())
    })?
}
