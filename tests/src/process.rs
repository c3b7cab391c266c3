//! Child processes owned by a test: output to a log file, their own process
//! group (so helpers they spawn die with them), killed on drop, and bounded
//! waits for readiness that fail with the tail of the log.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where [`free_port`] picks from: below Linux's ephemeral range (32768 and
/// up by default). A port the kernel handed out for `bind(0)` is also what
/// it hands out as the source port of outgoing connections, and the tests
/// make many: one picked that way could be taken by a connection before
/// Envoy or a peer bound it. None below that range is ever taken so.
const PICKED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Ports this process handed out already, so two parts never get the same.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port that was free a moment ago on 127.0.0.1, not handed out before
/// by this process, outside the ephemeral range (see [`PICKED_PORTS`]).
pub fn free_port() -> u16 {
    pick(PICKED_PORTS, None)
}

/// A port for a Redis Cluster node: it and its cluster bus port (10 000
/// above) both free, both below the ephemeral range, neither handed out.
pub fn free_cluster_port() -> u16 {
    pick(10_000..20_000, Some(10_000))
}

/// 64 random bits, enough for test ids and port picks (no crypto needed):
/// the standard library's per-instance hash keys over the clock.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn pick(range: std::ops::Range<u16>, companion: Option<u16>) -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let free = |handed: &Vec<u16>, port: u16| {
        !handed.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok()
    };
    let span = range.end - range.start;
    for _ in 0..200 {
        let port = range.start + (random_u64() % u64::from(span)) as u16;
        let other = companion.map(|offset| port + offset);
        if free(&handed, port) && other.is_none_or(|o| free(&handed, o)) {
            handed.push(port);
            handed.extend(other);
            return port;
        }
    }
    // That range is full: whatever the kernel gives.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Starts something on a port that was free a moment ago, and again on
/// another when that one was taken in between (parallel tests pick ports
/// too): up to three tries, only when the failure says the address was in
/// use. `start` gets the port.
pub fn on_a_free_port<T>(mut start: impl FnMut(u16) -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        tries += 1;
        match start(free_port()) {
            Err(e) if tries < 3 && address_was_taken(&e) => {
                eprintln!("the port was taken before it was bound ({e:#}); trying another");
            }
            done => return done,
        }
    }
}

/// Whether a start failed because its port was taken (Node's `EADDRINUSE`,
/// the OS's "Address already in use" in a Rust or Redis log).
fn address_was_taken(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}").to_ascii_lowercase();
    text.contains("eaddrinuse") || text.contains("address already in use")
}

/// Process groups started by [`Process::spawn`] and not stopped yet, so a
/// program can stop them all from a signal handler ([`stop_all_started`]).
static STARTED_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn started_groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    STARTED_GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops every process group this program started and has not stopped yet
/// (TERM, then KILL after a second). For a binary's signal handler: drops do
/// not run when a program exits on a signal.
pub fn stop_all_started() {
    let groups = std::mem::take(&mut *started_groups());
    for pgid in &groups {
        // SAFETY: signalling process groups we created; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
    }
    if !groups.is_empty() {
        std::thread::sleep(Duration::from_secs(1));
    }
    for pgid in &groups {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Resolves when the program is asked to stop: SIGINT, SIGTERM or SIGHUP.
/// A binary that starts processes waits on this, then calls
/// [`stop_all_started`] (drops do not run when a signal ends a program).
pub async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // No handler could be installed: the default action ends the program.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Process> {
        use std::os::unix::process::CommandExt;
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        started_groups().push(child.id() as i32);
        Ok(Process {
            name: name.to_string(),
            log,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 25 lines of the log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to end by itself (a command
    /// run to completion, with its output in the log); past that it is
    /// stopped and this fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                if let Some(child) = self.child.take() {
                    started_groups().retain(|g| *g != child.id() as i32);
                }
                return Ok(status);
            }
            if start.elapsed() > timeout {
                self.stop();
                bail!(
                    "{} did not finish within {timeout:?}; tail of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `ready()` holds, failing early if the process exits.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before {what}; tail of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} not {what} after {timeout:?}; tail of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("listening on port {port}"), timeout, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    /// Waits until a GET of `url` answers with status `want`.
    pub fn wait_for_http(&mut self, url: &str, want: u16, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("answering {want} on {url}"), timeout, || {
            http_status(url) == Some(want)
        })
    }

    /// Waits until `latchkey serve`'s `/readyz` at `url` says this very
    /// process is ready: a port picked as free may have been taken by
    /// another test's `latchkey serve`, which would answer 200 too.
    pub fn wait_for_own_readyz(&mut self, url: &str, timeout: Duration) -> Result<()> {
        let me = format!("(pid {})", self.pid().unwrap_or_default());
        self.wait_until(&format!("ready as itself on {url}"), timeout, || {
            http_get(url).is_some_and(|(status, body)| status == 200 && body.contains(&me))
        })
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_lines(needle, 1, timeout)
    }

    /// Waits until `count` lines of the log contain `needle`: a line a
    /// process prints each time something happens (a key added, a reload)
    /// must be counted, or the second wait is answered by the first line.
    pub fn wait_for_log_lines(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        let log = self.log.clone();
        self.wait_until(
            &format!("logging {needle:?} {count} times"),
            timeout,
            || {
                std::fs::read_to_string(&log)
                    .is_ok_and(|t| t.lines().filter(|l| l.contains(needle)).count() >= count)
            },
        )
    }

    /// Stops the process group (TERM, then KILL after a grace period).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as i32;
        started_groups().retain(|g| *g != pgid);
        // SAFETY: signalling a process group we created; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = child.wait();
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Freezes / thaws the process (SIGSTOP / SIGCONT), e.g. to make it slow.
    pub fn pause(&self, paused: bool) {
        if let Some(pid) = self.pid() {
            let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocking HTTP GET status, for readiness checks (no async runtime needed).
pub fn http_status(url: &str) -> Option<u16> {
    http_get(url).map(|(status, _)| status)
}

/// Blocking HTTP/1.1 GET of a plain `http://host:port/path` URL: status and
/// body (read until the server closes; 2 s read timeout). `None` when
/// nothing answers.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(authority).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| PICKED_PORTS.contains(p)), "{ports:?}");
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn a_port_taken_in_between_is_tried_again_on_another_and_nothing_else_is() {
        let mut ports = Vec::new();
        let started = on_a_free_port(|port| {
            ports.push(port);
            if ports.len() == 1 {
                bail!("listen EADDRINUSE: address already in use 127.0.0.1:{port}")
            }
            Ok(port)
        })
        .unwrap();
        assert_eq!(ports.len(), 2, "one more try after the port was taken");
        assert_eq!(started, ports[1]);

        let mut tries = 0;
        let refused = on_a_free_port(|_| -> Result<()> {
            tries += 1;
            bail!("redis-server not found")
        });
        assert!(
            refused.is_err() && tries == 1,
            "another failure is not retried"
        );

        let mut tries = 0;
        let taken = on_a_free_port(|_| -> Result<()> {
            tries += 1;
            bail!("bind: Address already in use")
        });
        assert!(taken.is_err() && tries == 3, "three tries at most");
    }
}
