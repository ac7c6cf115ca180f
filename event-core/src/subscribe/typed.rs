//! Typed subscribers with their types erased, and the raw handler that checks, decodes and calls them.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::broker::{Delivery, Failure, FailureKind, Outcome, RawHandler, SubscribeOptions};
use crate::codec::json::DescriptorCell;
use crate::codec::{self, DecodeError, DecodeSettings};
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
    /// Binds the handler to the state, decoding with the settings given.
    bind: Box<dyn FnOnce(Arc<StateMap>, DecodeSettings) -> Arc<dyn RawHandler> + Send>,
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
            bind: Box::new(move |state, settings| {
                Arc::new(TypedRawHandler::<M, Args, H> {
                    handler,
                    expected: message_type,
                    name,
                    state,
                    settings,
                    descriptor: DescriptorCell::default(),
                    drift: RateLimitedLog::new(Duration::from_secs(60)),
                    _types: PhantomData,
                })
            }),
        }
    }

    /// Binds the handler to `state`, decoding as `options` say (Confluent Schema Registry
    /// framing): what a service does for each subscriber when it starts.
    pub(crate) fn bind_with(
        self,
        state: Arc<StateMap>,
        options: &SubscribeOptions,
    ) -> Arc<dyn RawHandler> {
        (self.bind)(state, DecodeSettings::from(options))
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
    settings: DecodeSettings,
    /// `M`'s descriptor for proto3 JSON, looked up when the first JSON message arrives.
    descriptor: DescriptorCell,
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
        let decoded =
            match codec::decode::<M>(delivery, &self.expected, self.settings, &self.descriptor) {
                Ok(decoded) => decoded,
                Err(error) => return Box::pin(std::future::ready(decode_failure(error))),
            };
        if let Some(unknown_fields) = &decoded.drift {
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
                        unknown_fields = ?unknown_fields,
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use event_proto::users::v1::UserCreated;
    use prost::Message as _;

    use super::*;
    use crate::broker::{Message, Position};
    use crate::subscribe::State;

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<UserCreated>>>);

    async fn record(user: UserCreated, State(seen): State<Seen>) {
        seen.0.lock().unwrap().push(user);
    }

    fn user() -> UserCreated {
        UserCreated {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
        }
    }

    /// A handler of `record` bound as a service binds it, with `options`.
    fn bound(options: &SubscribeOptions) -> (Arc<dyn RawHandler>, Seen) {
        let seen = Seen::default();
        let mut state = StateMap::default();
        state.insert(seen.clone());
        let subscriber = ErasedSubscriber::new::<UserCreated, _, _>(record, "record");
        (subscriber.bind_with(Arc::new(state), options), seen)
    }

    /// A Confluent Schema Registry frame (schema id 42, message index [0]) around `user()`.
    fn framed_user() -> Delivery {
        let mut payload = vec![0x00, 0, 0, 0, 42, 0x00];
        payload.extend(user().encode_to_vec());
        Delivery::new(
            "users.created",
            Message::new(payload).with_header("ce_type", "users.v1.UserCreated"),
            Position::sequence(1),
        )
    }

    #[tokio::test]
    async fn the_subscription_options_decide_whether_frames_are_stripped() {
        let (handler, seen) = bound(&SubscribeOptions::new().schema_registry_framing(true));
        let outcome = handler.handle(&framed_user()).await;
        assert!(matches!(outcome, Outcome::Ack), "{outcome:?}");
        assert_eq!(*seen.0.lock().unwrap(), [user()]);

        let (handler, seen) = bound(&SubscribeOptions::new());
        let Outcome::DeadLetter(failure) = handler.handle(&framed_user()).await else {
            panic!("a framed payload decoded without the setting");
        };
        assert_eq!(failure.kind(), FailureKind::Decode);
        assert_eq!(failure.payload_kind(), Some("confluent-framed"));
        assert!(
            failure
                .describe()
                .contains("SubscribeOptions::schema_registry_framing(true)"),
            "{}",
            failure.describe()
        );
        assert!(seen.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn bound_without_options_a_subscriber_decodes_with_the_defaults() {
        let seen = Seen::default();
        let mut state = StateMap::default();
        state.insert(seen.clone());
        let subscriber = ErasedSubscriber::new::<UserCreated, _, _>(record, "record");
        let handler = (subscriber.bind)(Arc::new(state), DecodeSettings::default());
        assert!(matches!(
            handler.handle(&framed_user()).await,
            Outcome::DeadLetter(_)
        ));
    }
}
