//! A nats-server of a test's own: the binary `scripts/brokers.sh` installs (Debian's
//! `nats-server`, or `EVENT_NATS_SERVER`), on a free loopback port and a store dir of the
//! test's, so that stopping, killing and restarting it disturbs no other test.

#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    jetstream: bool,
}

fn binary() -> String {
    if let Ok(path) = std::env::var("EVENT_NATS_SERVER") {
        return path;
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(candidate).exists() {
            return candidate.to_owned();
        }
    }
    "nats-server".to_owned()
}

impl NatsServer {
    /// Starts a server with its store under `dir` (JetStream on when `jetstream`), and waits
    /// until it serves.
    pub fn start(dir: &Path, jetstream: bool) -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        std::fs::create_dir_all(dir).expect("the store dir");
        let mut server = NatsServer {
            child: None,
            port,
            dir: dir.to_owned(),
            jetstream,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and store.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server runs already");
        let mut command = Command::new(binary());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-l")
            .arg(self.dir.join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.dir.join("store"));
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} (scripts/brokers.sh start nats installs it): {e}",
                binary()
            )
        });
        self.child = Some(child);
        self.wait_serving();
    }

    /// Waits until the server greets a connection with its INFO line.
    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut socket) = TcpStream::connect(("127.0.0.1", self.port)) {
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let mut greeting = [0u8; 5];
                if socket.read_exact(&mut greeting).is_ok() && &greeting == b"INFO " {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server exited with {status}; its log: {}",
                    std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not serve on port {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: the server shuts down in order.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
