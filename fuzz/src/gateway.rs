//! The `gateway` target: arbitrary bytes as a client's side of one event-gateway connection,
//! over the in-memory broker with a typed topic (`users` → `users.v1.UserCreated`), through
//! the whole command path: request framing, every command's argument parsing, publishing,
//! subscriptions and queue groups, the replies in RESP2 and RESP3.
//!
//! The input is split on the byte `0xFF` (which no RESP request contains) into writes, so that
//! requests arrive cut at arbitrary points as they do from a socket. The client then closes
//! its side; the connection must end (replies owed wait at most the drain timeout for a
//! broker that holds a publish back) (a blocking read sees the end of the stream), and the
//! gateway must neither panic nor hang.

use std::sync::OnceLock;
use std::time::Duration;

use event_core::memory::MemoryBroker;
use event_gateway::{Gateway, GatewayConfig, TypedTopics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The runtime and the typed topics, made once; each input gets a broker and gateway of its
/// own, so that one input's groups and backlog do not change what the next one meets.
struct Harness {
    runtime: tokio::runtime::Runtime,
    typed: TypedTopics,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let typed = TypedTopics::new()
            .add_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
            .expect("the event-proto descriptors")
            .topic("users", "users.v1.UserCreated")
            .expect("a known type");
        Harness { runtime, typed }
    })
}

fn gateway(typed: &TypedTopics) -> Gateway {
    let config = GatewayConfig::new()
        .typed_topics(typed.clone())
        .max_bulk(4096)
        .group_window(8)
        .reclaim_after(Duration::ZERO)
        .drain_timeout(Duration::from_millis(100));
    // a small queue, so that inputs reach the broker's backpressure too
    let broker = std::sync::Arc::new(MemoryBroker::builder().capacity(16).build());
    Gateway::new(broker, config)
}

/// Feeds `data` to one connection and reads what it answers until it ends.
pub fn run(data: &[u8]) {
    let harness = harness();
    harness.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let gateway = gateway(&harness.typed);
        let served = tokio::spawn(async move { gateway.serve_connection(server, "fuzz").await });
        let (mut from_gateway, mut to_gateway) = tokio::io::split(client);
        // the replies are read while the requests are written: a gateway that cannot write
        // stops reading, as over a socket
        let reading = async {
            let mut replies = Vec::new();
            let _ = from_gateway.read_to_end(&mut replies).await;
            replies
        };
        let writing = async {
            for chunk in data.split(|b| *b == 0xFF) {
                if to_gateway.write_all(chunk).await.is_err() {
                    break;
                }
            }
            let _ = to_gateway.shutdown().await;
        };
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let (_, replies) = tokio::join!(writing, reading);
            (served.await, replies)
        })
        .await;
        let (served, _replies) = ended.expect("the connection ends once the client closed it");
        served.expect("the connection task does not panic");
    });
}
