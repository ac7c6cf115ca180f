//! Shared by the gateway's tests: a gateway served in the test process, and the real Redis
//! clients that talk to it (`redis-cli` from Debian's redis-tools, redis-py from the tests'
//! virtualenv, go-redis built by `interop/go-redis/build.sh`). A missing client fails the
//! test with what provides it; nothing is skipped.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use event_core::broker::Broker;
use event_gateway::{Gateway, GatewayConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A gateway serving on a free loopback port of the test process.
pub struct TestGateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// Serves `broker` with `config`.
    pub async fn start(broker: Arc<dyn Broker>, config: GatewayConfig) -> TestGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = Gateway::new(broker, config);
        let task = tokio::spawn(async move {
            gateway
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("the gateway serves");
        });
        TestGateway {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The port, as the clients take it.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Stops gracefully and waits until it stopped.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        self.task
            .take()
            .expect("stopped once")
            .await
            .expect("serve ended cleanly");
    }
}

/// The tests' settings: a short reclaim delay, so that what a killed client held goes on soon.
pub fn config() -> GatewayConfig {
    GatewayConfig::new().reclaim_after(Duration::from_millis(300))
}

fn output_of(mut command: Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}); scripts/brokers.sh installs it"));
    assert!(
        output.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `redis-cli -p <port> args...` on its own connection; its output (`--no-raw` form, as a
/// terminal shows it).
pub fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    redis_cli_with(addr, &[], args)
}

/// `redis-cli` with extra options first (`-a`, `-3`, ...).
pub fn redis_cli_with(addr: SocketAddr, options: &[&str], args: &[&str]) -> String {
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let mut command = Command::new("redis-cli");
    command
        .args(["-h", &host, "-p", &port, "--no-raw"])
        .args(options)
        .args(args);
    output_of(command, "redis-cli (Debian's redis-tools)")
}

/// The Python of the tests' virtualenv (redis-py installed), as `scripts/brokers.sh` makes it.
pub fn python() -> String {
    std::env::var("EVENT_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
        format!("{home}/.cache/event-brokers/venv/bin/python")
    })
}

/// The go-redis client of `interop/go-redis/` (`EVENT_GO_REDIS_CLIENT`, set by
/// `scripts/test.sh`; else where `build.sh` puts it).
pub fn go_redis_client() -> String {
    std::env::var("EVENT_GO_REDIS_CLIENT").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
        format!("{home}/.cache/event-interop/go-redis-client")
    })
}

/// Runs a redis-py script (`script` gets the port as `sys.argv[1]`, then `args`); its stdout.
pub fn redis_py(addr: SocketAddr, script: &str, args: &[&str]) -> String {
    let mut command = Command::new(python());
    command
        .arg("-c")
        .arg(script)
        .arg(addr.port().to_string())
        .args(args);
    output_of(command, "the tests' Python with redis-py")
}

/// Runs the go-redis client to completion; its JSON lines.
pub fn go_redis(addr: SocketAddr, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = Command::new(go_redis_client());
    command.args(["--addr", &addr.to_string()]).args(args);
    json_lines(&output_of(
        command,
        "the go-redis client (interop/go-redis/build.sh builds it)",
    ))
}

/// Parses JSON lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A client process that keeps running while the test reads its output line by line.
pub struct Running {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    what: String,
}

/// How long a test waits for a client's next line before it fails.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

impl Running {
    /// Starts `program args...` with stdout piped.
    pub fn spawn(program: &str, args: &[&str], what: &str) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what} ({e})"));
        let stdout: ChildStdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            what: what.to_owned(),
        }
    }

    /// The next line it prints; fails the test if none comes within a minute.
    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => line,
            Err(error) => panic!("{}: no line ({error})", self.what),
        }
    }

    /// The next line, parsed as JSON.
    pub fn json(&mut self) -> serde_json::Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for it to exit; panics unless it succeeded.
    pub fn finish(mut self) {
        let status = self.child.wait().expect("waited");
        assert!(status.success(), "{} failed: {status}", self.what);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking call off the runtime's threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

/// The redis-py client script of the tests.
pub const REDIS_PY_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/redis_py_client.py"
);

/// Runs the redis-py client to completion (RESP `protocol`); its JSON lines.
pub fn py(addr: SocketAddr, protocol: u8, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = Command::new(python());
    command
        .arg(REDIS_PY_CLIENT)
        .arg(addr.port().to_string())
        .arg(protocol.to_string())
        .args(args);
    json_lines(&output_of(command, "the tests' Python with redis-py"))
}

/// Starts the redis-py client; read its lines as it goes.
pub fn py_running(addr: SocketAddr, protocol: u8, args: &[&str]) -> Running {
    let port = addr.port().to_string();
    let protocol = protocol.to_string();
    let mut all = vec![REDIS_PY_CLIENT, port.as_str(), protocol.as_str()];
    all.extend_from_slice(args);
    Running::spawn(&python(), &all, "the redis-py client")
}

/// Starts the go-redis client; read its lines as it goes.
pub fn go_running(addr: SocketAddr, args: &[&str]) -> Running {
    let addr = addr.to_string();
    let mut all = vec!["--addr", addr.as_str()];
    all.extend_from_slice(args);
    Running::spawn(&go_redis_client(), &all, "the go-redis client")
}
