//! Drives the go-micro peer (this directory, built by `interop/go-micro/build.sh`) from the
//! Rust interop tests, which include this file (`#[path]`): `event-amqp/tests/go_micro.rs`,
//! `event-kafka/tests/go_micro_peer.rs`, `event-kafka/tests/kafka.rs` (the `record` command) and
//! `event-nats/tests/go_micro.rs`.
//!
//! The peer prints one JSON object a line on standard output (see `main.go`); a [`Peer`]
//! hands them over as they come, with a timeout, and shows the peer's standard error (go-micro's
//! log) when something goes wrong.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Where the tests find the peer: the path `interop/go-micro/build.sh` prints.
pub const PEER_ENV: &str = "EVENT_GO_MICRO_PEER";

/// How long a line may take.
pub const LINE_WAIT: Duration = Duration::from_secs(60);

/// The peer's binary; panics (the tests fail, they do not skip) when it is not built.
pub fn binary() -> PathBuf {
    let Some(path) = std::env::var_os(PEER_ENV) else {
        panic!(
            "{PEER_ENV} is not set: build the go-micro peer with interop/go-micro/build.sh and \
             set {PEER_ENV} to the path it prints (scripts/test.sh does both)"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{PEER_ENV}={} is not a file: build the go-micro peer with interop/go-micro/build.sh",
        path.display()
    );
    path
}

/// A running peer.
pub struct Peer {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    command: String,
}

impl Peer {
    /// Runs `go-micro-peer ARGS`.
    pub fn spawn(args: &[&str]) -> Peer {
        let binary = binary();
        let command = format!("{} {}", binary.display(), args.join(" "));
        let mut child = Command::new(&binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("run {command}: {e} (build it with interop/go-micro/build.sh)")
            });
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .expect("stderr log")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Peer {
            child,
            lines,
            stderr,
            command,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().expect("stderr log").clone()
    }

    /// The next line, parsed; panics when none comes in time or the peer stopped.
    pub async fn line(&mut self, what: &str) -> Value {
        match tokio::time::timeout(LINE_WAIT, self.lines.recv()).await {
            Ok(Some(line)) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{what}: the peer printed {line:?}, not JSON: {e}")),
            Ok(None) => panic!(
                "{what}: the peer exited ({}); its log:\n{}",
                self.command,
                self.log()
            ),
            Err(_) => panic!(
                "{what}: no line from the peer in {LINE_WAIT:?} ({}); its log:\n{}",
                self.command,
                self.log()
            ),
        }
    }

    /// The next line, which must be a `{"event": EVENT, ...}`.
    pub async fn event(&mut self, event: &str) -> Value {
        let line = self.line(event).await;
        assert_eq!(line["event"], event, "{line}");
        line
    }

    /// The next `n` lines, each a `{"event": EVENT, ...}`.
    pub async fn events(&mut self, event: &str, n: usize) -> Vec<Value> {
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            lines.push(self.event(event).await);
        }
        lines
    }

    /// Waits for the peer to exit, which it must do with status 0 and without printing more.
    pub async fn exit(mut self) {
        let what = "the peer's exit";
        match tokio::time::timeout(LINE_WAIT, self.lines.recv()).await {
            Ok(None) => {}
            Ok(Some(line)) => panic!("{what}: an unexpected line {line}"),
            Err(_) => panic!(
                "{what}: still running after {LINE_WAIT:?} ({}); its log:\n{}",
                self.command,
                self.log()
            ),
        }
        // standard output is closed: the process is exiting
        let status = self.child.wait().expect("wait for the peer");
        assert!(
            status.success(),
            "{} exited with {status}; its log:\n{}",
            self.command,
            self.log()
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // a failed test leaves no peer behind
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `line[key]` as a string map (a published line's `header`, a received line's `metadata`).
pub fn string_map(line: &Value, key: &str) -> std::collections::BTreeMap<String, String> {
    line[key]
        .as_object()
        .unwrap_or_else(|| panic!("{key} is not an object in {line}"))
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{key}.{k} is not a string in {line}"));
            (k.clone(), v.to_owned())
        })
        .collect()
}

/// `line[key]` as a string.
pub fn str_field<'a>(line: &'a Value, key: &str) -> &'a str {
    line[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {line}"))
}
