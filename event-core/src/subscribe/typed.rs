use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::broker::{Delivery, Failure, FailureKind, Outcome, RawHandler};
use crate::codec::{self, DecodeError};
use crate::context::Context;
use crate::ratelimit::RateLimitedLog;

use super::handler::{Handler, IntoOutcome, Parts, StateMap, StateRequirement};

/// A typed subscriber with its types erased, ready to be bound to a service's state.
///
/// Made by [`ServiceBuilder::subscribe`](crate::ServiceBuilder::subscribe) and by the
/// `#[subscriber]` attribute.
pub struct ErasedSubscriber {
    pub(crate) message_type: String,
    pub(crate) handler_name: String,
    pub(crate) requirements: Vec<StateRequirement>,
    pub(crate) bind: Box<dyn FnOnce(Arc<StateMap>) -> Arc<dyn RawHandler> + Send>,
}

impl std::fmt::Debug for ErasedSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasedSubscriber")
            .field("message_type", &self.message_type)
            .field("handler", &self.handler_name)
            .finish_non_exhaustive()
    }
}

impl ErasedSubscriber {
    /// Erases `handler` for message type `M`, naming it `name` in logs and dead letters.
    pub fn new<M, Args, H>(handler: H, name: impl Into<String>) -> Self
    where
        M: prost::Message + prost::Name + Default + Send + 'static,
        Args: 'static,
        H: Handler<M, Args>,
    {
        let name = name.into();
        let message_type = M::full_name();
        ErasedSubscriber {
            requirements: H::requirements(),
            handler_name: name.clone(),
            message_type: message_type.clone(),
            bind: Box::new(move |state| {
                Arc::new(TypedRawHandler::<M, Args, H> {
                    handler,
                    expected: message_type,
                    name,
                    state,
                    drift: RateLimitedLog::new(Duration::from_secs(60)),
                    _types: PhantomData,
                })
            }),
        }
    }

    /// The protobuf full name of the message type.
    pub fn message_type(&self) -> &str {
        &self.message_type
    }

    /// The handler name.
    pub fn handler_name(&self) -> &str {
        &self.handler_name
    }
}

/// Decodes, diagnoses and calls a typed handler inside the message's [`Context`].
struct TypedRawHandler<M, Args, H> {
    handler: H,
    expected: String,
    name: String,
    state: Arc<StateMap>,
    drift: RateLimitedLog,
    _types: PhantomData<fn(M, Args)>,
}

impl<M, Args, H> RawHandler for TypedRawHandler<M, Args, H>
where
    M: prost::Message + prost::Name + Default + Send + 'static,
    Args: 'static,
    H: Handler<M, Args>,
{
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        let decoded = match codec::decode::<M>(delivery, &self.expected) {
            Ok(decoded) => decoded,
            Err(error) => return Box::pin(std::future::ready(decode_failure(error))),
        };
        if !decoded.unknown_fields.is_empty() {
            delivery.drift.increment(1);
            self.drift.error(
                (
                    delivery.topic().to_owned(),
                    self.expected.clone(),
                    "schema-drift",
                ),
                |suppressed| {
                    tracing::warn!(
                        topic = delivery.topic(),
                        message_type = %self.expected,
                        unknown_fields = ?decoded.unknown_fields,
                        suppressed_since_last = suppressed,
                        "message has fields this build does not know: the producer's schema is newer"
                    );
                },
            );
        }
        let context = Context::boxed_from_headers(delivery.headers());
        let parts = Parts {
            delivery,
            context: &context,
            state: &self.state,
            type_verified: decoded.type_verified,
        };
        match self.handler.call(decoded.message, &parts) {
            Ok(future) => Box::pin(Context::scoped(context, future).map(IntoOutcome::into_outcome)),
            Err(error) => Box::pin(std::future::ready(Outcome::DeadLetter(Failure::new(
                FailureKind::Extract,
                error,
            )))),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn message_type(&self) -> Option<&str> {
        Some(&self.expected)
    }
}

fn decode_failure(error: DecodeError) -> Outcome {
    let kind = error.diagnosis().payload_kind.as_str();
    Outcome::DeadLetter(Failure::new(error.failure_kind(), error).with_payload_kind(kind))
}
