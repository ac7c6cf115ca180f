//! The listener: accepts connections, and stops gracefully.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_core::broker::{Broker, BrokerError};
use event_core::headers::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::connection::Connection;
use crate::groups::{Groups, StreamId};

/// Why [`Gateway::serve`] could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The broker did not connect.
    #[error("cannot connect to the broker at {address}")]
    Connect {
        /// The broker's address (no credentials).
        address: String,
        /// The broker's error.
        #[source]
        source: BrokerError,
    },
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) config: GatewayConfig,
    /// The configured `ce_source`, made once.
    pub(crate) source: HeaderValue,
    pub(crate) groups: Groups,
    pub(crate) next_client: AtomicU64,
    /// Open connections, for `INFO`.
    pub(crate) connected: AtomicUsize,
    /// Connections waiting in a blocking command, for `INFO`.
    pub(crate) blocked: AtomicUsize,
    /// `SUBSCRIBE` subscriptions held by all connections (at most `max_subscriptions`).
    pub(crate) subscribed: AtomicUsize,
    pub(crate) last_id: Mutex<StreamId>,
}

impl Shared {
    /// A new id for `XADD`'s reply.
    pub(crate) fn next_id(&self) -> StreamId {
        let mut last = self.last_id.lock().unwrap_or_else(|e| e.into_inner());
        *last = StreamId::next_after(*last);
        *last
    }
}

/// A Redis-protocol server in front of a broker.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("broker", &self.shared.broker.address())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Serves one connection that was accepted elsewhere (a TLS stream, a Unix socket, an
    /// in-memory pipe), until the client closes it or sends `QUIT`; `peer` names it in logs.
    /// The broker must be connected ([`Broker::connect`]); [`Gateway::serve`] does that.
    pub async fn serve_connection<S>(&self, stream: S, peer: impl std::fmt::Display)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Connection::new(
            stream,
            peer.to_string(),
            self.shared.clone(),
            CancellationToken::new(),
        )
        .run()
        .await;
    }

    /// A gateway in front of `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: GatewayConfig) -> Self {
        Gateway {
            shared: Arc::new(Shared {
                broker,
                source: HeaderValue::from(config.source.clone()),
                config,
                groups: Groups::default(),
                next_client: AtomicU64::new(1),
                connected: AtomicUsize::new(0),
                blocked: AtomicUsize::new(0),
                subscribed: AtomicUsize::new(0),
                last_id: Mutex::new(StreamId { ms: 0, seq: 0 }),
            }),
        }
    }

    /// Connects the broker, then serves the connections `listener` accepts until `shutdown`
    /// resolves. Then it stops gracefully: no new connection is accepted; each connection
    /// finishes the replies it owes (publishes the broker has not answered yet included) and
    /// closes; what clients hold unacknowledged and what waits in the groups goes back to the
    /// broker; subscriptions drain; the broker disconnects. Connections that take longer than
    /// the drain timeout are cut.
    ///
    /// # Errors
    ///
    /// [`ServeError::Connect`] when the broker does not connect; once serving, errors of one
    /// connection end that connection only.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let shared = &self.shared;
        shared
            .broker
            .connect()
            .await
            .map_err(|source| ServeError::Connect {
                address: shared.broker.address(),
                source,
            })?;
        let stop = CancellationToken::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let connection = Connection::new(stream, peer.to_string(), shared.clone(), stop.child_token());
                        connections.spawn(connection.run());
                    }
                    Err(error) => {
                        // out of file descriptors and the like: the listener itself is fine
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        tracing::info!(
            connections = connections.len(),
            "stopping: finishing replies"
        );
        stop.cancel();
        let finished = tokio::time::timeout(shared.config.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                connections = connections.len(),
                timeout = ?shared.config.drain_timeout,
                "connections still open after the drain timeout are cut"
            );
            connections.shutdown().await;
        }
        shared.groups.close_all().await;
        if let Err(error) = shared.broker.disconnect().await {
            tracing::warn!(%error, "broker disconnect failed");
        }
        tracing::info!("stopped");
        Ok(())
    }
}
