//! One client connection: reads requests, runs them, writes the replies in order.
//!
//! Publishes are pipelined: a `PUBLISH` or `XADD` is handed to the broker at once and its reply
//! waits for the broker's answer while the next requests are read, up to
//! [`GatewayConfig::max_in_flight`](crate::GatewayConfig::max_in_flight) of them; any other
//! command first waits for those replies, so every reply leaves in request order and every
//! command sees the effects of the ones before it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use event_core::broker::Subscription;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::frame::{self, Limits, Protocol, Reply};
use crate::groups::Group;
use crate::serve::Shared;

/// Output is written once this much has gathered, even mid-pipeline.
const WRITE_AT: usize = 64 * 1024;

/// A message for a `SUBSCRIBE` connection: the subscription it came from (its generation, so
/// that what a subscription ended by `UNSUBSCRIBE` still sends is dropped, not written after
/// the `unsubscribe` reply), the topic and the payload.
pub(crate) type Push = (u64, Bytes, Bytes);

/// A `SUBSCRIBE` subscription, counted among the gateway's until it is dropped.
pub(crate) struct Subscribed {
    _subscription: Subscription,
    shared: Arc<Shared>,
}

impl Subscribed {
    /// Takes one of the gateway's `max_subscriptions`; `false` when none is left.
    pub(crate) fn reserve(shared: &Shared) -> bool {
        let max = shared.config.max_subscriptions;
        shared
            .subscribed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a reservation that found no subscription.
    pub(crate) fn unreserve(shared: &Shared) {
        shared.subscribed.fetch_sub(1, Ordering::AcqRel);
    }

    /// A subscription made on a reservation.
    pub(crate) fn new(subscription: Subscription, shared: Arc<Shared>) -> Self {
        Subscribed {
            _subscription: subscription,
            shared,
        }
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        Subscribed::unreserve(&self.shared);
    }
}

/// Whether the connection goes on after a command.
pub(crate) enum Flow {
    Continue,
    Close,
}

pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) shared: Arc<Shared>,
    peer: String,
    reader: Box<dyn AsyncRead + Send + Unpin>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub(crate) input: BytesMut,
    output: BytesMut,
    pub(crate) protocol: Protocol,
    pub(crate) authenticated: bool,
    pub(crate) name: Option<Bytes>,
    /// The broadcast subscriptions by topic, with their generation.
    pub(crate) subscriptions: HashMap<Bytes, (u64, Subscribed)>,
    /// The generation of the next subscription.
    pub(crate) next_generation: u64,
    pub(crate) push_sender: mpsc::Sender<Push>,
    pushes: mpsc::Receiver<Push>,
    in_flight: FuturesOrdered<BoxFuture<'static, Reply>>,
    /// The request size of each publish in flight, in order, and their sum.
    in_flight_sizes: VecDeque<usize>,
    in_flight_bytes: usize,
    /// The groups this connection read from: what it holds there is released when it ends.
    pub(crate) groups: Vec<Arc<Group>>,
    pub(crate) stop: CancellationToken,
    limits: Limits,
    /// The client closed its sending side.
    eof: bool,
    /// What was checked of the request not complete yet.
    scan: frame::Scan,
}

/// What ends the wait of a blocking command.
pub(crate) enum Interrupted {
    /// The client closed the connection.
    Closed,
    /// The gateway stops.
    Stopping,
}

impl Connection {
    pub(crate) fn new<S>(
        stream: S,
        peer: String,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let (push_sender, pushes) = mpsc::channel(shared.config.subscriber_buffer);
        let id = shared
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let limits = Limits {
            max_bulk: shared.config.max_bulk,
            max_request: shared.config.max_bulk.saturating_mul(4).max(64 * 1024),
            unauthenticated: false,
        };
        Connection {
            id,
            authenticated: shared.config.password.is_none(),
            shared,
            peer,
            reader: Box::new(reader),
            writer: Box::new(writer),
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            protocol: Protocol::Resp2,
            name: None,
            subscriptions: HashMap::new(),
            next_generation: 0,
            push_sender,
            pushes,
            in_flight: FuturesOrdered::new(),
            in_flight_sizes: VecDeque::new(),
            in_flight_bytes: 0,
            groups: Vec::new(),
            stop,
            limits,
            eof: false,
            scan: frame::Scan::default(),
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
                let limits = frame::Limits {
                    unauthenticated: !self.authenticated,
                    ..self.limits
                };
                match frame::next_request(&mut self.input, limits, &mut self.scan) {
                    Ok(Some(args)) if args.is_empty() => {}
                    Ok(Some(args)) => {
                        if let Flow::Close = self.execute(args).await {
                            return self.flush().await;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // the rest of the stream cannot be read: answer, then close
                        tracing::debug!(%error, "protocol error");
                        metrics::counter!("event_gateway_protocol_errors_total").increment(1);
                        if self.settle_in_flight().await {
                            self.reply(Reply::err(error));
                        }
                        self.flush().await?;
                        self.linger().await;
                        return Ok(());
                    }
                }
                if self.output.len() >= WRITE_AT {
                    self.flush().await?;
                }
            }
            self.flush().await?;
            self.input.reserve(16 * 1024);
            // not biased: a subscription that always has a message must not keep the client's
            // requests (an UNSUBSCRIBE, a PING) unread, nor a client that always sends keep its
            // messages from it
            tokio::select! {
                () = self.stop.cancelled() => {
                    self.settle_in_flight().await;
                    return self.flush().await;
                }
                Some(reply) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.reply_owed(reply);
                    // and every other one that is ready: one write for all of them
                    while let Some(Some(reply)) = self.in_flight.next().now_or_never() {
                        self.reply_owed(reply);
                    }
                }
                Some(push) = self.pushes.recv() => {
                    self.push(push);
                    // and what else waits, up to one write's worth: one write for all of them
                    while self.output.len() < WRITE_AT {
                        match self.pushes.try_recv() {
                            Ok(push) => self.push(push),
                            Err(_) => break,
                        }
                    }
                }
                read = self.reader.read_buf(&mut self.input) => {
                    if read? == 0 {
                        // a client that closed only its sending side still reads: the replies
                        // it is owed go out, unless the broker takes too long
                        self.eof = true;
                        self.settle_in_flight().await;
                        return self.flush().await;
                    }
                }
            }
        }
    }

    /// Whether no reply waits for the broker.
    pub(crate) fn nothing_owed(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Queues the reply of the oldest pipelined publish, which no longer holds its request.
    fn reply_owed(&mut self, reply: Reply) {
        let bytes = self.in_flight_sizes.pop_front().unwrap_or(0);
        self.in_flight_bytes -= bytes;
        self.reply(reply);
    }

    /// Queues a subscription's message, unless it is from a subscription ended since.
    fn push(&mut self, (generation, topic, payload): Push) {
        if self
            .subscriptions
            .get(&topic)
            .is_some_and(|(g, _)| *g == generation)
        {
            self.reply(Reply::Push(vec![
                Reply::bulk_static("message"),
                Reply::Bulk(topic),
                Reply::Bulk(payload),
            ]));
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

    /// Closes after a protocol error so that the client reads the error: the sending side
    /// first, then what the client still sends is read and dropped for a moment. (Closing
    /// with unread bytes makes the kernel reset the connection, and a reset can overtake the
    /// error reply.)
    async fn linger(&mut self) {
        let _ = self.writer.shutdown().await;
        let mut sink = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            let mut dropped = 0usize;
            while dropped < self.limits.max_request {
                match self.reader.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => dropped += n,
                }
            }
        })
        .await;
    }

    /// Waits for every pipelined publish and writes their replies, reading what the client
    /// sends meanwhile. `false` when the client closed its side and the broker has not
    /// answered within the drain timeout after that: nobody waits for those replies.
    pub(crate) async fn settle_in_flight(&mut self) -> bool {
        let drain = self.shared.config.drain_timeout;
        let mut deadline = self.eof.then(|| tokio::time::Instant::now() + drain);
        while !self.in_flight.is_empty() {
            let room = !self.eof && self.input.len() < self.limits.max_request;
            if room {
                self.input.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                Some(reply) = self.in_flight.next() => self.reply_owed(reply),
                read = self.reader.read_buf(&mut self.input), if room => {
                    if !matches!(read, Ok(n) if n > 0) {
                        self.eof = true;
                        deadline = Some(tokio::time::Instant::now() + drain);
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => return false,
            }
        }
        true
    }

    /// Queues a reply that waits for the broker, after the replies owed before it; `bytes` is
    /// the size of the request it holds. The publishes in flight are bounded in number
    /// (`max_in_flight`) and in the bytes they hold (those of one largest request): past
    /// either, the replies owed are waited for first. `false` as
    /// [`Connection::settle_in_flight`].
    pub(crate) async fn reply_later(
        &mut self,
        reply: BoxFuture<'static, Reply>,
        bytes: usize,
    ) -> bool {
        let full = self.in_flight.len() >= self.shared.config.max_in_flight
            || self.in_flight_bytes + bytes > self.limits.max_request;
        if full && !self.in_flight.is_empty() && !self.settle_in_flight().await {
            return false;
        }
        self.in_flight.push_back(reply);
        self.in_flight_sizes.push_back(bytes);
        self.in_flight_bytes += bytes;
        true
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
            if self.eof {
                return Err(Interrupted::Closed);
            }
            let room = self.input.len() < self.limits.max_request;
            if room {
                self.input.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(Interrupted::Stopping),
                output = &mut wake => return Ok(output),
                read = self.reader.read_buf(&mut self.input), if room => match read {
                    Ok(0) | Err(_) => {
                        self.eof = true;
                        return Err(Interrupted::Closed);
                    }
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.release_groups();
        // the subscriptions drop with the connection: each stops and drains in the background
    }
}
