//! Bad input gets an error reply, never a panic, and touches no other connection: malformed
//! RESP, an argument over the size limit, nested arrays, an endless inline line, garbage; and a
//! subscriber that stops reading slows its broker subscription down instead of filling the
//! gateway's memory. Raw bytes on a TCP socket, since no real client sends these.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestGateway, config};
use event_core::broker::{Broker, Message, TryPublish};
use event_core::memory::MemoryBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway() -> TestGateway {
    TestGateway::start(Arc::new(MemoryBroker::new()), config().max_bulk(1024)).await
}

/// Sends `bytes`, then reads until the gateway closes the connection.
async fn reply_then_close(gw: &TestGateway, bytes: &[u8]) -> String {
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut reply))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    String::from_utf8_lossy(&reply).into_owned()
}

async fn ping(socket: &mut TcpStream) -> String {
    socket.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = socket.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_an_error_and_the_connection_ends() {
    let gw = gateway().await;
    let mut bystander = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(ping(&mut bystander).await, "+PONG\r\n");
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n$x\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*zz\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        // declared over the limit: refused before the bytes are sent
        (
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nt\r\n$1025\r\n",
            "-ERR Protocol error: bulk string of 1025 bytes, over the limit of 1024 bytes\r\n",
        ),
        (
            b"*1\r\n*1\r\n*1\r\n",
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (b"*2\r\n$4\r\nECHO\r\n$2\r\nhiXX", "-ERR Protocol error: "),
        (
            b"*99999999\r\n",
            "-ERR Protocol error: 99999999 arguments, over the limit of 1048576\r\n",
        ),
    ];
    for (bytes, expected) in cases {
        let reply = reply_then_close(&gw, bytes).await;
        assert!(reply.starts_with(expected), "{bytes:?}: {reply:?}");
    }
    let endless = vec![b'a'; 70 * 1024];
    assert_eq!(
        reply_then_close(&gw, &endless).await,
        "-ERR Protocol error: too big inline request\r\n"
    );
    // what came before a bad request is answered first
    let reply = reply_then_close(&gw, b"PING\r\n*1\r\n$-7\r\n").await;
    assert_eq!(
        reply,
        "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    );
    // garbage of every kind: answered or cut, never a crash
    let mut seed = 7u64;
    for _ in 0..200 {
        let len = (seed % 97) as usize + 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b"*$\r\n0123:+-PINGxadd "[(seed >> 33) as usize % 20]
            })
            .collect();
        let mut socket = TcpStream::connect(gw.addr).await.unwrap();
        socket.write_all(&bytes).await.unwrap();
        socket.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut sink)).await;
    }
    // the connection that did nothing wrong is still served
    assert_eq!(ping(&mut bystander).await, "+PONG\r\n");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_slows_the_broker_not_the_gateway() {
    const BUFFER: usize = 4;
    const CAPACITY: usize = 8;
    let broker = Arc::new(MemoryBroker::builder().capacity(CAPACITY).build());
    let gw = TestGateway::start(broker.clone(), config().subscriber_buffer(BUFFER)).await;
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nfeed\r\n")
        .await
        .unwrap();
    let mut confirmation = [0u8; 64];
    let n = stalled.read(&mut confirmation).await.unwrap();
    assert!(String::from_utf8_lossy(&confirmation[..n]).contains("subscribe"));
    // from now on it reads nothing; 1 MiB messages, so that the sockets' buffers hold few
    let payload = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
    let mut accepted = 0usize;
    let mut waited = false;
    while accepted < 1000 {
        match broker.try_publish("feed", Message::new(payload.clone())) {
            TryPublish::Done(result) => {
                result.expect("published");
                accepted += 1;
            }
            TryPublish::WouldWait(message) => {
                // once the broker's queue is full, a publish waits: give the gateway time to
                // take what it can, then see whether the broker still holds the rest
                if tokio::time::timeout(Duration::from_millis(500), broker.publish("feed", message))
                    .await
                    .is_err()
                {
                    waited = true;
                    break;
                }
                accepted += 1;
            }
        }
    }
    assert!(
        waited,
        "the publisher is held back by the stalled subscriber"
    );
    // the gateway holds at most its buffer, the handler's one, what the sockets absorbed;
    // the rest is the broker's
    let held_by_the_gateway = accepted - broker.pending("feed");
    assert!(
        held_by_the_gateway <= BUFFER + 1 + 16,
        "{accepted} accepted, {} still in the broker",
        broker.pending("feed")
    );
    // and it serves everyone else meanwhile
    let mut other = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(ping(&mut other).await, "+PONG\r\n");
    drop(stalled);
    gw.stop().await;
}

/// Reads from `socket` until what came ends a read with `needle` in it; all of it.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let needle = needle.as_bytes();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = socket.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
            // only the new bytes (and the needle's length before them) can hold it
            let from = got.len().saturating_sub(needle.len());
            got.extend_from_slice(&buf[..n]);
            if got[from..].windows(needle.len()).any(|w| w == needle) {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {:?} within 10 s", String::from_utf8_lossy(needle)));
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_authentication_a_request_is_small_as_in_redis() {
    let gw = TestGateway::start(Arc::new(MemoryBroker::new()), config().password("s3cret")).await;
    // refused from the prefix alone, with Redis's words, and the connection ends
    assert_eq!(
        reply_then_close(&gw, b"*11\r\n").await,
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    assert_eq!(
        reply_then_close(&gw, b"*2\r\n$4\r\nAUTH\r\n$16385\r\n").await,
        "-ERR Protocol error: unauthenticated bulk length\r\n"
    );
    // once authenticated, the configured limits apply
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    socket
        .write_all(b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n")
        .await
        .unwrap();
    read_until(&mut socket, "+OK\r\n").await;
    let mut echo = b"*11\r\n$4\r\nECHO\r\n".to_vec();
    for _ in 0..10 {
        echo.extend_from_slice(b"$1\r\nx\r\n");
    }
    socket.write_all(&echo).await.unwrap();
    let reply = read_until(&mut socket, "\r\n").await;
    assert!(reply.contains("wrong number of arguments"), "{reply}");
    assert_eq!(ping(&mut socket).await, "+PONG\r\n");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_limit_are_refused() {
    let gw = TestGateway::start(Arc::new(MemoryBroker::new()), config().max_subscriptions(2)).await;
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first
        .write_all(b"*4\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n")
        .await
        .unwrap();
    let refused = "-ERR cannot subscribe to c: the gateway's connections already hold 2 \
                   subscriptions (--max-subscriptions)\r\n";
    let replies = read_until(&mut first, refused).await;
    assert!(replies.contains("$1\r\nb\r\n:2\r\n"), "{replies}");
    // the limit counts every connection's subscriptions
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    second
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nd\r\n")
        .await
        .unwrap();
    read_until(
        &mut second,
        "-ERR cannot subscribe to d: the gateway's connections already hold 2",
    )
    .await;
    // one given up is one free
    first
        .write_all(b"*2\r\n$11\r\nUNSUBSCRIBE\r\n$1\r\na\r\n")
        .await
        .unwrap();
    read_until(&mut first, "unsubscribe").await;
    second
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nd\r\n")
        .await
        .unwrap();
    read_until(&mut second, "$9\r\nsubscribe\r\n$1\r\nd\r\n:1\r\n").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_subscription_does_not_keep_its_connection_s_requests_unread() {
    let broker = Arc::new(MemoryBroker::builder().capacity(8).build());
    let gw = TestGateway::start(broker.clone(), config().subscriber_buffer(4)).await;
    let mut subscriber = TcpStream::connect(gw.addr).await.unwrap();
    subscriber
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nfeed\r\n")
        .await
        .unwrap();
    read_until(&mut subscriber, ":1\r\n").await;
    // a publisher that always has the next message ready, until the test ends; 1 MiB
    // messages, so that each write to the subscriber takes a while
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (broker, stop) = (broker.clone(), stop.clone());
        let payload = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = broker.publish("feed", Message::new(payload.clone())).await;
                // once nothing subscribes, a publish does not wait: let the others run
                tokio::task::yield_now().await;
            }
        }
    });
    // the subscriber reads nothing until the gateway's buffer for it is full and the broker
    // holds the rest
    tokio::time::timeout(Duration::from_secs(10), async {
        while broker.pending("feed") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the broker holds messages for the subscriber");
    // the subscription's messages keep coming; the UNSUBSCRIBE is read and answered anyway
    subscriber
        .write_all(b"*2\r\n$11\r\nUNSUBSCRIBE\r\n$4\r\nfeed\r\n")
        .await
        .unwrap();
    read_until(
        &mut subscriber,
        "$11\r\nunsubscribe\r\n$4\r\nfeed\r\n:0\r\n",
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    gw.stop().await;
}
