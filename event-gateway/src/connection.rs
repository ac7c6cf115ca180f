//! One client connection: reads requests, runs them, writes the replies in order.
//!
//! Publishes are pipelined: a `PUBLISH` or `XADD` is handed to the broker at once and its reply
//! waits for the broker's answer while the next requests are read, up to
//! [`GatewayConfig::max_in_flight`](crate::GatewayConfig::max_in_flight) of them; any other
//! command first waits for those replies, so every reply leaves in request order and every
//! command sees the effects of the ones before it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use event_core::broker::Subscription;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::frame::{self, Limits, Protocol, Reply};
use crate::groups::Group;
use crate::serve::Shared;

/// Output is written once this much has gathered, even mid-pipeline.
const WRITE_AT: usize = 64 * 1024;

/// A message for a `SUBSCRIBE` connection: topic and payload.
pub(crate) type Push = (Bytes, Bytes);

/// Whether the connection goes on after a command.
pub(crate) enum Flow {
    Continue,
    Close,
}

pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) shared: Arc<Shared>,
    peer: SocketAddr,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    pub(crate) input: BytesMut,
    output: BytesMut,
    pub(crate) protocol: Protocol,
    pub(crate) authenticated: bool,
    pub(crate) name: Option<Bytes>,
    pub(crate) subscriptions: HashMap<Bytes, Subscription>,
    pub(crate) push_sender: mpsc::Sender<Push>,
    pushes: mpsc::Receiver<Push>,
    in_flight: FuturesOrdered<BoxFuture<'static, Reply>>,
    /// The groups this connection read from: what it holds there is released when it ends.
    pub(crate) groups: Vec<Arc<Group>>,
    pub(crate) stop: CancellationToken,
    limits: Limits,
}

/// What ends the wait of a blocking command.
pub(crate) enum Interrupted {
    /// The client closed the connection.
    Closed,
    /// The gateway stops.
    Stopping,
}

impl Connection {
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> Self {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let (push_sender, pushes) = mpsc::channel(shared.config.subscriber_buffer);
        let id = shared
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let limits = Limits {
            max_bulk: shared.config.max_bulk,
            max_request: shared.config.max_bulk.saturating_mul(4).max(64 * 1024),
        };
        Connection {
            id,
            authenticated: shared.config.password.is_none(),
            shared,
            peer,
            reader,
            writer,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            protocol: Protocol::Resp2,
            name: None,
            subscriptions: HashMap::new(),
            push_sender,
            pushes,
            in_flight: FuturesOrdered::new(),
            groups: Vec::new(),
            stop,
            limits,
        }
    }

    pub(crate) async fn run(mut self) {
        let span = tracing::info_span!("gateway.connection", client = self.id, peer = %self.peer);
        metrics::gauge!("event_gateway_connections").increment(1.0);
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("event_gateway_connections_total").increment(1);
        async {
            tracing::debug!("connected");
            match self.serve().await {
                Ok(()) => tracing::debug!("closed"),
                Err(error) => tracing::debug!(%error, "connection lost"),
            }
        }
        .instrument(span)
        .await;
        metrics::gauge!("event_gateway_connections").decrement(1.0);
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        loop {
            loop {
                match frame::next_request(&mut self.input, self.limits) {
                    Ok(Some(args)) if args.is_empty() => {}
                    Ok(Some(args)) => {
                        if let Flow::Close = self.execute(args).await {
                            self.settle_in_flight().await;
                            return self.flush().await;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // the rest of the stream cannot be read: answer, then close
                        tracing::debug!(%error, "protocol error");
                        metrics::counter!("event_gateway_protocol_errors_total").increment(1);
                        self.settle_in_flight().await;
                        self.reply(Reply::err(error));
                        return self.flush().await;
                    }
                }
                if self.output.len() >= WRITE_AT {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            self.input.reserve(16 * 1024);
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    self.settle_in_flight().await;
                    return self.flush().await;
                }
                Some(reply) = self.in_flight.next(), if !self.in_flight.is_empty() => self.reply(reply),
                Some((topic, payload)) = self.pushes.recv() => self.reply(Reply::Push(vec![
                    Reply::bulk_static("message"),
                    Reply::Bulk(topic),
                    Reply::Bulk(payload),
                ])),
                read = self.reader.read_buf(&mut self.input) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Queues a reply behind those owed.
    pub(crate) fn reply(&mut self, reply: Reply) {
        reply.write(self.protocol, &mut self.output);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.writer.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Waits for every pipelined publish and writes their replies.
    pub(crate) async fn settle_in_flight(&mut self) {
        while let Some(reply) = self.in_flight.next().await {
            self.reply(reply);
        }
    }

    /// Queues a reply that waits for the broker, after the replies owed before it.
    pub(crate) async fn reply_later(&mut self, reply: BoxFuture<'static, Reply>) {
        if self.in_flight.len() >= self.shared.config.max_in_flight
            && let Some(first) = self.in_flight.next().await
        {
            self.reply(first);
        }
        self.in_flight.push_back(reply);
    }

    /// Waits for `wake` while watching the connection: bytes that arrive meanwhile are kept
    /// for later (a pipeline), the end of the stream or the gateway stopping ends the wait.
    pub(crate) async fn wait_for<F: Future>(&mut self, wake: F) -> Result<F::Output, Interrupted> {
        struct Blocked<'a>(&'a AtomicUsize);
        impl Drop for Blocked<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.shared.blocked.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let _blocked = Blocked(&shared.blocked);
        tokio::pin!(wake);
        loop {
            let room = self.input.len() < self.limits.max_request;
            if room {
                self.input.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(Interrupted::Stopping),
                output = &mut wake => return Ok(output),
                read = self.reader.read_buf(&mut self.input), if room => match read {
                    Ok(0) | Err(_) => return Err(Interrupted::Closed),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Remembers a group this connection reads from.
    pub(crate) fn touch(&mut self, group: &Arc<Group>) {
        if !self.groups.iter().any(|g| Arc::ptr_eq(g, group)) {
            self.groups.push(group.clone());
        }
    }

    /// Releases what the connection holds in the groups it read from.
    pub(crate) fn release_groups(&mut self) {
        for group in self.groups.drain(..) {
            let released = group.release_connection(self.id, self.shared.config.reclaim_after);
            if released > 0 {
                tracing::debug!(
                    topic = group.topic(),
                    released,
                    "unacknowledged messages go to the next reader after the reclaim delay"
                );
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.release_groups();
        // the subscriptions drop with the connection: each stops and drains in the background
    }
}
