//! How this replica reaches Redis: one server, a Cluster, or the master a
//! set of Sentinels names — each through the `redis` crate's own client for
//! it. `store` sees one connection type either way; the invalidation
//! listener asks here for a server to subscribe on.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::{Mutex, RwLock};

use latchkey_core::config::RedisConfig;

/// The deployment shape named by `[redis]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Single { url: String },
    Cluster { nodes: Vec<String> },
    Sentinel { nodes: Vec<String>, master: String },
}

impl Topology {
    pub fn from_config(cfg: &RedisConfig) -> Topology {
        if !cfg.cluster_nodes.is_empty() {
            Topology::Cluster {
                nodes: cfg.cluster_nodes.clone(),
            }
        } else if !cfg.sentinel_nodes.is_empty() {
            Topology::Sentinel {
                nodes: cfg.sentinel_nodes.clone(),
                master: cfg.sentinel_master.clone().unwrap_or_default(),
            }
        } else {
            Topology::Single {
                url: cfg.url.clone(),
            }
        }
    }

    /// Cluster keys must share a slot for the multi-key change script: the
    /// whole prefix becomes one hash tag.
    pub fn key_prefix(&self, prefix: &str) -> String {
        match self {
            Topology::Cluster { .. } => format!("{{{prefix}}}"),
            _ => prefix.to_string(),
        }
    }

    /// Where Redis is, for messages: its URLs without their passwords.
    pub fn describe(&self) -> String {
        let list = |nodes: &[String]| {
            nodes
                .iter()
                .map(|n| redacted_url(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Topology::Single { url } => redacted_url(url),
            Topology::Cluster { nodes } => format!("the Cluster of {}", list(nodes)),
            Topology::Sentinel { nodes, master } => {
                format!("master '{master}' of the Sentinels {}", list(nodes))
            }
        }
    }
}

/// A Redis URL without its password, for messages.
pub fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable redis url>".into(),
    }
}

/// A connection to whichever topology is configured.
#[derive(Clone)]
pub enum Backend {
    Single {
        manager: ConnectionManager,
        client: redis::Client,
    },
    Cluster {
        connection: ClusterConnection,
        nodes: Vec<String>,
    },
    Sentinel(Arc<SentinelBackend>),
}

/// The current master's connection, replaced when a connection error says
/// the master may have moved.
pub struct SentinelBackend {
    sentinel: Mutex<SentinelClient>,
    current: RwLock<(ConnectionManager, redis::Client)>,
    config: redis::aio::ConnectionManagerConfig,
}

fn manager_config(timeout: Duration) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
}

impl Backend {
    pub async fn connect(topology: &Topology, timeout: Duration) -> redis::RedisResult<Backend> {
        match topology {
            Topology::Single { url } => {
                let client = redis::Client::open(url.as_str())?;
                let manager = client
                    .get_connection_manager_with_config(manager_config(timeout))
                    .await?;
                Ok(Backend::Single { manager, client })
            }
            Topology::Cluster { nodes } => {
                let connection = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?
                    .get_async_connection()
                    .await?;
                Ok(Backend::Cluster {
                    connection,
                    nodes: nodes.clone(),
                })
            }
            Topology::Sentinel { nodes, master } => {
                let mut sentinel = SentinelClient::build(
                    nodes.clone(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )?;
                let client = sentinel.async_get_client().await?;
                let config = manager_config(timeout);
                let manager = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok(Backend::Sentinel(Arc::new(SentinelBackend {
                    sentinel: Mutex::new(sentinel),
                    current: RwLock::new((manager, client)),
                    config,
                })))
            }
        }
    }

    /// A server to hold the invalidation subscription on. In a Cluster,
    /// PUBLISH reaches subscribers on every node, so any reachable node
    /// will do; with Sentinels, the current master.
    pub async fn pubsub_client(&self, attempt: usize) -> redis::RedisResult<redis::Client> {
        match self {
            Backend::Single { client, .. } => Ok(client.clone()),
            Backend::Cluster { nodes, .. } => {
                let node = &nodes[attempt % nodes.len().max(1)];
                redis::Client::open(node.as_str())
            }
            Backend::Sentinel(s) => {
                s.re_resolve().await;
                Ok(s.current.read().await.1.clone())
            }
        }
    }
}

impl SentinelBackend {
    /// Asks the Sentinels for the master again and reconnects if it moved.
    async fn re_resolve(&self) {
        let client = match self.sentinel.lock().await.async_get_client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the Sentinels did not name a master");
                return;
            }
        };
        if client.get_connection_info().addr()
            == self.current.read().await.1.get_connection_info().addr()
        {
            return;
        }
        match client
            .get_connection_manager_with_config(self.config.clone())
            .await
        {
            Ok(manager) => {
                tracing::warn!(master = %client.get_connection_info().addr(), "Redis master moved; reconnected");
                *self.current.write().await = (manager, client);
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the new Redis master"),
        }
    }
}

/// Errors after which the Sentinels are asked for the master again: the
/// connection broke, or it now leads to a replica. The connection manager
/// reconnects to the address it had on its own, so after a failover it can
/// land on the demoted master without any connection error surfacing; only
/// `READONLY` says so.
fn master_may_have_moved(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

impl ConnectionLike for Backend {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Backend::Single { manager, .. } => manager.req_packed_command(cmd),
            Backend::Cluster { connection, .. } => connection.req_packed_command(cmd),
            Backend::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut manager = s.current.read().await.0.clone();
                    let result = manager.req_packed_command(cmd).await;
                    if let Err(e) = &result
                        && master_may_have_moved(e)
                    {
                        s.re_resolve().await;
                    }
                    result
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Backend::Single { manager, .. } => manager.req_packed_commands(cmd, offset, count),
            Backend::Cluster { connection, .. } => {
                connection.req_packed_commands(cmd, offset, count)
            }
            Backend::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut manager = s.current.read().await.0.clone();
                    let result = manager.req_packed_commands(cmd, offset, count).await;
                    if let Err(e) = &result
                        && master_may_have_moved(e)
                    {
                        s.re_resolve().await;
                    }
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    fn server_error(reply: &[u8]) -> redis::RedisError {
        redis::parse_redis_value(reply)
            .and_then(redis::Value::extract_error)
            .expect_err("an error reply")
    }

    #[test]
    fn a_read_only_replica_or_a_broken_connection_sends_us_to_the_sentinels() {
        assert!(master_may_have_moved(&server_error(
            b"-READONLY You can't write against a read only replica.\r\n"
        )));
        let dropped =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(master_may_have_moved(&dropped));
        // A mistake of ours is not a reason to look for another master.
        assert!(!master_may_have_moved(&server_error(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        )));
    }

    use super::*;

    #[test]
    fn topology_from_config_and_cluster_hash_tag() {
        let mut cfg = RedisConfig::default();
        assert_eq!(
            Topology::from_config(&cfg),
            Topology::Single {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        cfg.cluster_nodes = vec!["redis://127.0.0.1:7000".into()];
        let t = Topology::from_config(&cfg);
        assert!(matches!(t, Topology::Cluster { .. }));
        assert_eq!(t.key_prefix("latchkey"), "{latchkey}");
        cfg.cluster_nodes.clear();
        cfg.sentinel_nodes = vec!["redis://127.0.0.1:26379".into()];
        cfg.sentinel_master = Some("mymaster".into());
        let t = Topology::from_config(&cfg);
        assert_eq!(t.key_prefix("latchkey"), "latchkey");
        assert!(matches!(t, Topology::Sentinel { ref master, .. } if master == "mymaster"));
    }

    #[test]
    fn descriptions_name_every_node_and_no_password() {
        let single = Topology::Single {
            url: "redis://:hunter2@cache.internal:6380/0".into(),
        };
        assert_eq!(single.describe(), "redis://:***@cache.internal:6380/0");
        let cluster = Topology::Cluster {
            nodes: vec!["redis://a:7000".into(), "redis://u:pw@b:7001".into()],
        };
        assert_eq!(
            cluster.describe(),
            "the Cluster of redis://a:7000, redis://u:***@b:7001"
        );
        let sentinel = Topology::Sentinel {
            nodes: vec!["redis://s:26379".into()],
            master: "mymaster".into(),
        };
        assert_eq!(
            sentinel.describe(),
            "master 'mymaster' of the Sentinels redis://s:26379"
        );
        assert_eq!(redacted_url("not a url"), "<unparseable redis url>");
    }
}
