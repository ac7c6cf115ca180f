//! A Kafka broker of a test's own: one KRaft node from the jars `scripts/brokers.sh` caches,
//! on free ports and a log dir of its own, so a test can kill, stop and restart it without
//! disturbing the shared broker of the other tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

const POM: &str = include_str!("../../../scripts/kafka/pom.xml");
const LOG4J: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/kafka/log4j2.properties"
);

/// The Kafka version `scripts/kafka/pom.xml` pins.
pub fn kafka_version() -> &'static str {
    let start = POM
        .find("<kafka.version>")
        .expect("pom names kafka.version")
        + 15;
    let end = start + POM[start..].find('<').expect("closing tag");
    &POM[start..end]
}

/// The directory of the broker's jars: `$EVENT_KAFKA_LIBS`, else where `scripts/brokers.sh`
/// puts them.
pub fn kafka_libs() -> PathBuf {
    if let Ok(dir) = std::env::var("EVENT_KAFKA_LIBS") {
        return dir.into();
    }
    let home = std::env::var("EVENT_BROKERS_HOME").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/event-brokers"),
        PathBuf::from,
    );
    home.join(format!("kafka-{}", kafka_version())).join("libs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One Apache Kafka process (broker and controller) with its data in `dir`.
pub struct KafkaNode {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    child: Option<Child>,
}

impl KafkaNode {
    /// Formats a log dir under `dir` and starts the node; returns once it answers a metadata
    /// request.
    pub fn start(dir: &Path) -> KafkaNode {
        let libs = kafka_libs();
        assert!(
            libs.is_dir(),
            "no Kafka jars in {} (scripts/brokers.sh start fetches them)",
            libs.display()
        );
        std::fs::create_dir_all(dir.join("data")).expect("node dir");
        let mut node = KafkaNode {
            dir: dir.to_owned(),
            port: free_port(),
            controller_port: free_port(),
            child: None,
        };
        std::fs::write(node.dir.join("server.properties"), node.properties())
            .expect("server.properties");
        let format = node
            .java()
            .args(["kafka.tools.StorageTool", "format", "-t"])
            .arg("ZXZlbnQtdGVzdC1ub2RlAA")
            .arg("-c")
            .arg(node.dir.join("server.properties"))
            .output()
            .expect("run java (scripts/brokers.sh needs it too)");
        assert!(
            format.status.success(),
            "formatting {} failed: {}",
            node.dir.display(),
            String::from_utf8_lossy(&format.stderr)
        );
        node.spawn();
        node
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn properties(&self) -> String {
        format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={data}\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=3\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             auto.create.topics.enable=false\n\
             group.initial.rebalance.delay.ms=0\n",
            port = self.port,
            controller = self.controller_port,
            data = self.dir.join("data").display(),
        )
    }

    fn java(&self) -> Command {
        let mut java = Command::new("java");
        java.args(["-Xms128m", "-Xmx512m", "-XX:+UseG1GC"])
            .arg(format!("-Dlog4j2.configurationFile={LOG4J}"))
            .arg(format!("-Dkafka.logs.dir={}", self.dir.display()))
            .arg("-cp")
            .arg(format!("{}/*", kafka_libs().display()));
        java
    }

    /// Starts the process on the same ports and log dir; returns once it serves.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the node runs already");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .expect("node stdout log");
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start java");
        self.child = Some(child);
        self.wait_serving(Duration::from_secs(90));
    }

    /// Blocks until a metadata request names this node.
    fn wait_serving(&mut self, limit: Duration) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()
            .expect("probe client");
        let deadline = Instant::now() + limit;
        loop {
            // blocks until connected or the timeout: no sleep needed between tries
            match producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
            {
                Ok(metadata) if !metadata.brokers().is_empty() => return,
                _ if Instant::now() > deadline => panic!(
                    "the test's Kafka node did not serve within {limit:?}; see {}",
                    self.dir.join("server.log").display()
                ),
                _ => {}
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("poll node"))
            {
                panic!(
                    "the test's Kafka node exited with {status}; see {}",
                    self.dir.join("server.log").display()
                );
            }
        }
    }

    /// SIGKILL: the process ends at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill node");
            child.wait().expect("reap node");
        }
    }

    /// SIGTERM and wait for the exit: a controlled shutdown (SIGKILL after 60 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let (done, exited) = std::sync::mpsc::channel();
            let waiter = std::thread::spawn(move || {
                let _ = child.wait();
                let _ = done.send(());
            });
            if exited.recv_timeout(Duration::from_secs(60)).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            let _ = waiter.join();
        }
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        self.kill();
    }
}
