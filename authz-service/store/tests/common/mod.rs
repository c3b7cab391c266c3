//! A `redis-server` of the test's own, on a free loopback port, for the
//! integration tests of the layers that talk to Redis (`store`,
//! `credentials`). `scripts/setup` installs `redis-server`.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use latchkey_store::redis_backend::Topology;
use latchkey_store::store::Store;

/// A `redis-server` of this test's own, stopped when dropped.
pub struct Redis {
    pub child: Child,
    pub url: String,
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/setup installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, url }
    }

    pub async fn store(&self) -> Store {
        let topology = Topology::Single {
            url: self.url.clone(),
        };
        Store::connect(&topology, "t", Duration::from_secs(2), 100)
            .await
            .expect("the store connects")
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
