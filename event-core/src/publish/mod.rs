//! Typed publishing: [`Publisher<T>`] and typed [`Topic<T>`] constants.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::broker::{Broker, BrokerError, Message, PublishError, Receipt, TryPublish};
use crate::clock;
use crate::codec::{self, Codec, CodecError, ProtoJson};
use crate::context::Context;
use crate::headers::{HeaderName, HeaderValue, Headers, known};
use crate::telemetry::PublishTelemetry;
use tracing::Instrument;

pub(crate) mod id;

use id::new_id_and_time;

/// A new message id and the current time, as a [`Publisher`] writes them into `ce_id` and
/// `ce_time`: a UUID v7 (hyphenated, lower case) and RFC 3339 in UTC with milliseconds, from
/// one clock reading. Ids made by one thread increase strictly.
///
/// For programs that publish raw [`Message`]s with the framework's headers (a gateway, a
/// bridge); both values are stored inline, without allocating.
///
/// ```
/// let (id, time) = event_core::publish::message_id_and_time();
/// assert_eq!(id.to_str()?.len(), 36);
/// assert!(time.to_str()?.ends_with('Z'));
/// # Ok::<(), std::str::Utf8Error>(())
/// ```
pub fn message_id_and_time() -> (HeaderValue, HeaderValue) {
    let (id, time) = new_id_and_time();
    (
        HeaderValue::copy_from_slice(&id),
        HeaderValue::copy_from_slice(&time),
    )
}

/// A topic bound to its message type at compile time.
///
/// Declare it once and use it on both sides, so that publisher and subscriber of a topic
/// cannot disagree on its type:
///
/// ```
/// use event_core::Topic;
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub id: String }
/// # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
///
/// pub const USERS_CREATED: Topic<UserCreated> = Topic::new("users.created");
/// assert_eq!(USERS_CREATED.name(), "users.created");
/// ```
pub struct Topic<T> {
    name: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T> Topic<T> {
    /// A topic named `name` carrying `T`.
    pub const fn new(name: &'static str) -> Self {
        Topic {
            name,
            _type: PhantomData,
        }
    }

    /// The topic name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Topic<T> {}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic<{}>({:?})", std::any::type_name::<T>(), self.name)
    }
}

/// A topic name for `T`: a plain string, or a typed [`Topic<T>`].
pub trait TopicFor<T> {
    /// The topic name.
    fn topic_name(&self) -> &str;
}

impl<T> TopicFor<T> for Topic<T> {
    fn topic_name(&self) -> &str {
        self.name
    }
}
impl<T> TopicFor<T> for &str {
    fn topic_name(&self) -> &str {
        self
    }
}
impl<T> TopicFor<T> for String {
    fn topic_name(&self) -> &str {
        self
    }
}
impl<T> TopicFor<T> for &String {
    fn topic_name(&self) -> &str {
        self
    }
}

/// Publishes `T` messages to one topic. Cheap to clone.
///
/// Every message gets the headers described in `event-core/docs/wire.md`: `ce_specversion`, `ce_id`
/// (UUID v7), `ce_source` (the service name), `ce_type` (`T`'s protobuf full name), `ce_time`,
/// `content-type` (the codec's: `application/protobuf` unless told otherwise), a
/// `correlation-id`, and from the current [`Context`]: `causation-id`, trace context and user
/// metadata. Their order is not part of the contract.
///
/// The payload is protobuf binary ([`codec::Protobuf`]) by default; [`Publisher::json`] makes
/// it proto3 JSON (`application/json`, for consumers such as go-micro's default JSON codec),
/// and [`Publisher::with_codec`] takes any [`Codec`]. Typed subscribers read either, by
/// content type. `ce_time` and the id's timestamp come from the system clock, which a thread
/// reads at most once a second and extends with the monotonic clock in between: a step of
/// the system clock shows in them within a second.
///
/// ```
/// use event_core::{memory::MemoryBroker, Publisher};
/// # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub id: String }
/// # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = Publisher::<UserCreated>::new(std::sync::Arc::new(MemoryBroker::new()), "signup", "users.created");
/// let message = publisher.encode(&UserCreated { id: "u-1".into() }, None);
/// assert_eq!(message.headers.get_str("ce_type"), Some("users.v1.UserCreated"));
/// assert_eq!(message.headers.get_str("ce_source"), Some("signup"));
/// let receipt = publisher.publish(&UserCreated { id: "u-1".into() }).await?;
/// assert!(receipt.message_id().is_some());
/// # Ok(()) }
/// ```
pub struct Publisher<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    broker: Arc<dyn Broker>,
    topic: String,
    /// The producer's name, `ce_source`.
    source: String,
    message_type: HeaderValue,
    /// `ce_specversion`, `ce_source`, `ce_type` and `content-type`: the same on every message;
    /// shared by reference, or (past [`MAX_SHARED_PAIRS`]) this publisher's own to copy.
    constant_headers: Result<SharedHeaders, Box<[Entry]>>,
    /// The payload's codec; `None` for protobuf binary, encoded without a call through the
    /// trait.
    codec: Option<Box<dyn Codec<T>>>,
    telemetry: PublishTelemetry,
}

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.inner.topic)
            .field("type", &self.inner.message_type)
            .field("content_type", &self.content_type())
            .field("broker", &self.inner.broker.name())
            .finish()
    }
}

impl<T> Publisher<T> {
    /// The content type of what this publisher sends (`application/protobuf` by default).
    pub fn content_type(&self) -> &str {
        match &self.inner.codec {
            Some(codec) => codec.content_type(),
            None => codec::PROTOBUF,
        }
    }
}

const SPECVERSION: (HeaderName, HeaderValue) =
    (known::CE_SPECVERSION, HeaderValue::from_static("1.0"));
const CONTENT_TYPE_PROTOBUF: (HeaderName, HeaderValue) = (
    known::CONTENT_TYPE,
    HeaderValue::from_static(crate::codec::PROTOBUF),
);

/// The headers every message of `source` of type `message_type` with `content_type` carries:
/// made once per such triple and shared by every publisher of it, for the life of the process.
/// A process has few of them (one per service, message type and codec); past
/// [`MAX_SHARED_PAIRS`] of them, a publisher gets its own copy (`Err`) and writes them into
/// each message instead.
fn shared_headers(
    source: &str,
    message_type: &str,
    content_type: &str,
) -> Result<SharedHeaders, Box<[Entry]>> {
    type Made = HashMap<(String, String, String), SharedHeaders>;
    static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
    let make = || -> Box<[Entry]> {
        let content_type = if content_type == codec::PROTOBUF {
            CONTENT_TYPE_PROTOBUF
        } else {
            (known::CONTENT_TYPE, HeaderValue::from(content_type))
        };
        Box::new([
            SPECVERSION,
            (known::CE_SOURCE, HeaderValue::from(source)),
            (known::CE_TYPE, HeaderValue::from(message_type)),
            content_type,
        ])
    };
    let mut made = MADE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // publishers are made rarely: the key's copies cost nothing that matters
    let key = (
        source.to_owned(),
        message_type.to_owned(),
        content_type.to_owned(),
    );
    if let Some(shared) = made.get(&key) {
        return Ok(shared);
    }
    if made.len() >= MAX_SHARED_PAIRS {
        return Err(make());
    }
    let shared: SharedHeaders = Box::leak(make());
    made.insert(key, shared);
    Ok(shared)
}

/// A header entry.
type Entry = crate::headers::HeaderEntry;

/// Header entries made once and kept for the life of the process.
type SharedHeaders = &'static [Entry];

/// How many (source, message type, content type) triples get shared headers (about 300 bytes
/// each).
const MAX_SHARED_PAIRS: usize = 1024;

impl<T: prost::Message + prost::Name> Publisher<T> {
    /// A publisher of `T` to `topic` through `broker`, naming `source` as the producer.
    ///
    /// The headers that are the same on every message (`ce_source`, `ce_type` and the like)
    /// are made once per `source` and `T` and kept for the life of the process, shared by
    /// every publisher of that pair, for the first 1,024 pairs: a source is meant to name a
    /// service, not a request or a tenant (put those in [`Context`] metadata).
    pub fn new(broker: Arc<dyn Broker>, source: &str, topic: impl TopicFor<T>) -> Self {
        Publisher::build(broker, source, topic.topic_name(), None)
    }

    /// A publisher like this one that encodes with `codec` (and sends its content type).
    ///
    /// ```
    /// use event_core::codec::Protobuf;
    /// # use event_core::{memory::MemoryBroker, Publisher};
    /// # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub id: String }
    /// # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
    /// let publisher = Publisher::<UserCreated>::new(std::sync::Arc::new(MemoryBroker::new()), "signup", "users.created")
    ///     .with_codec(Protobuf);
    /// assert_eq!(publisher.content_type(), "application/protobuf");
    /// ```
    pub fn with_codec(self, codec: impl Codec<T> + 'static) -> Self {
        let inner = &self.inner;
        Publisher::build(
            inner.broker.clone(),
            &inner.source,
            &inner.topic,
            Some(Box::new(codec)),
        )
    }

    fn build(
        broker: Arc<dyn Broker>,
        source: &str,
        topic: &str,
        codec: Option<Box<dyn Codec<T>>>,
    ) -> Self {
        clock::calibrate();
        let content_type = codec.as_ref().map_or(codec::PROTOBUF, |c| c.content_type());
        let constant_headers = shared_headers(source, &T::full_name(), content_type);
        Publisher {
            inner: Arc::new(Inner {
                telemetry: PublishTelemetry::new(broker.clone(), topic, &T::full_name()),
                broker,
                topic: topic.to_owned(),
                source: source.to_owned(),
                constant_headers,
                message_type: HeaderValue::from(T::full_name()),
                codec,
            }),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Publishes `message` with the current [`Context`]'s headers.
    ///
    /// The message is encoded and handed to the broker when this is called, not when the
    /// returned future is first polled: with a backend that enqueues without waiting (Kafka),
    /// publishes created one after another are pipelined even if they are awaited later.
    /// For the same reason the `publish {topic}` span (see [`crate::telemetry`]) is a child of
    /// the span current when this is called: inside an instrumented `async` block or
    /// `#[tracing::instrument]` function, not `publish(..).instrument(span)`.
    ///
    /// # Errors
    ///
    /// A [`PublishError`] holding the encoded message (with its id) when the broker does not
    /// take it; publishing that message again keeps its id, so consumers can deduplicate.
    ///
    /// With a codec that can fail ([`Publisher::json`]), a message the codec cannot write is
    /// not handed to the broker: the [`PublishError`]'s broker error is
    /// [`BrokerError::Backend`] with operation `"encode"` and the [`CodecError`] as its source,
    /// and its message has the headers and an empty payload (not for publishing again). The
    /// publish span and metrics record it as a failed publish.
    pub fn publish(
        &self,
        message: &T,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let (raw, id, failed) = Context::with_current(|ctx| self.encode_identified(message, ctx));
        self.send(raw, Some(id), failed)
    }

    /// Publishes `message` in `ctx` (for code that runs outside a handler).
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub fn publish_with(
        &self,
        ctx: &Context,
        message: &T,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let (raw, id, failed) = self.encode_identified(message, Some(ctx));
        self.send(raw, Some(id), failed)
    }

    /// Publishes `message` with a partition key (Kafka keeps order per key).
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub fn publish_keyed(
        &self,
        key: impl Into<Bytes>,
        message: &T,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let (mut raw, id, failed) =
            Context::with_current(|ctx| self.encode_identified(message, ctx));
        raw.key = Some(key.into());
        self.send(raw, Some(id), failed)
    }

    /// Publishes a message returned by a failed publish, unchanged (same id).
    ///
    /// The message must be one of this publisher's: its type header must name `T` (the
    /// other headers are sent as they are, as [`Broker::publish`] sends them).
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`], and [`BrokerError::WrongMessageType`] (nothing is sent)
    /// when the type header names another type or is missing.
    pub fn republish(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let failed =
            (message.headers.message_type_value() != Some(&self.inner.message_type)).then(|| {
                BrokerError::WrongMessageType {
                    topic: self.inner.topic.clone(),
                    expected: T::full_name(),
                    found: message.headers.message_type().map(str::to_owned),
                }
            });
        let id = message.headers.message_id_value().cloned();
        async move {
            match failed {
                Some(error) => Err(PublishError::new(self.inner.topic.clone(), message, error)),
                None => self.send(message, id, None).await,
            }
        }
    }

    /// Encodes `message` with its headers, as [`Publisher::publish`] would send it.
    ///
    /// # Panics
    ///
    /// When the publisher's codec cannot write `message` (never with the default protobuf
    /// codec): see [`Publisher::try_encode`].
    pub fn encode(&self, message: &T, ctx: Option<&Context>) -> Message {
        match self.try_encode(message, ctx) {
            Ok(message) => message,
            Err(error) => panic!("{}", crate::error_chain(&error)),
        }
    }

    /// Encodes `message` with its headers, as [`Publisher::publish`] would send it.
    ///
    /// # Errors
    ///
    /// The [`CodecError`] of a codec that cannot write `message` (never the default protobuf
    /// codec's).
    pub fn try_encode(&self, message: &T, ctx: Option<&Context>) -> Result<Message, CodecError> {
        match self.encode_identified(message, ctx) {
            (message, _, None) => Ok(message),
            (_, _, Some(error)) => Err(error),
        }
    }

    /// [`Publisher::encode`], and the message's id, for the receipt (so that it is not looked
    /// up in the headers again); and the codec's error, if it could not write the payload
    /// (then empty). Never a `Result` holding the message: moving that costs on every publish.
    fn encode_identified(
        &self,
        message: &T,
        ctx: Option<&Context>,
    ) -> (Message, HeaderValue, Option<CodecError>) {
        let (id, time) = new_id_and_time();
        // only what changes per message is written: the rest is shared by all of them. Id,
        // time and correlation id, and in a context the causation id, trace headers and
        // metadata:
        let changing = 3 + ctx.map_or(0, |c| 4 + c.metadata().len());
        let mut headers = match &self.inner.constant_headers {
            Ok(shared) => Headers::pooled(changing).with_shared(shared),
            Err(own) => {
                let mut headers = Headers::pooled(own.len() + changing);
                for (name, value) in own.iter() {
                    headers.append_copy(name.clone(), value);
                }
                headers
            }
        };
        headers.append_copied(known::CE_ID, &id);
        headers.append_copied(known::CE_TIME, &time);
        match ctx {
            Some(ctx) => ctx.write_headers(&mut headers, &id),
            None => Context::write_empty(&mut headers, &id),
        }
        let (payload, failed) = match &self.inner.codec {
            None => (codec::encode_payload(message), None),
            Some(codec) => match codec.encode(message) {
                Ok(payload) => (payload, None),
                Err(error) => (Bytes::new(), Some(error)),
            },
        };
        let message = Message {
            headers,
            key: None,
            payload,
        };
        (message, HeaderValue::copy_from_slice(&id), failed)
    }

    /// Hands the message to the broker now (a backend that can enqueue without waiting does
    /// so before this returns), then waits for the broker's answer; the receipt carries `id`.
    ///
    /// The publish runs in a `publish {topic}` span (see [`crate::telemetry`]) whose trace
    /// context, with the `opentelemetry` feature, replaces the message's trace headers. A
    /// message whose payload the codec could not write (`failed`) is not handed over: the
    /// publish fails with that error.
    fn send(
        &self,
        mut message: Message,
        id: Option<HeaderValue>,
        failed: Option<CodecError>,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send + '_ {
        let inner = &*self.inner;
        let span = inner.telemetry.span(&inner.topic, &mut message);
        // the fast path (no boxed future) when the broker can take the message at once
        let publishing = match failed {
            None => span.in_scope(|| match inner.broker.try_publish(&inner.topic, message) {
                TryPublish::Done(result) => Ok(result),
                TryPublish::WouldWait(message) => Err(inner.broker.publish(&inner.topic, message)),
            }),
            Some(error) => Ok(Err(PublishError::new(
                inner.topic.clone(),
                message,
                BrokerError::Backend {
                    broker: inner.broker.name(),
                    operation: "encode",
                    source: Box::new(error),
                },
            ))),
        };
        async move {
            let result = match publishing {
                Ok(result) => result,
                Err(publishing) => publishing.instrument(span.clone()).await,
            };
            inner.telemetry.finish(&span, &result);
            let receipt = result?;
            Ok(match id {
                Some(id) => receipt.with_message_id(id),
                None => receipt,
            })
        }
    }
}

impl<T: prost::Message + prost::Name + Default + 'static> Publisher<T> {
    /// A publisher like this one that sends proto3 JSON (`application/json`, the
    /// [`ProtoJson`] codec) instead of protobuf binary.
    ///
    /// ```
    /// use event_core::codec::json;
    /// # use event_core::{memory::MemoryBroker, Publisher};
    /// use event_proto::users::v1::UserCreated;
    ///
    /// json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)?;
    /// # let broker = std::sync::Arc::new(MemoryBroker::new());
    /// let publisher = Publisher::<UserCreated>::new(broker, "signup", "users.created").json()?;
    /// assert_eq!(publisher.content_type(), "application/json");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CodecError::DescriptorNotRegistered`] when no descriptor of `T` is registered
    /// ([`codec::json::register_file_descriptor_set`]): checked here, so that publishing does
    /// not find out.
    pub fn json(self) -> Result<Self, CodecError> {
        let codec = ProtoJson::new();
        // looks the descriptor up, and keeps it for every publish
        Codec::<T>::encode(&codec, &T::default())?;
        Ok(self.with_codec(codec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(seq: u64, payload_len: usize) -> event_proto::bench::v1::Tick {
        event_proto::bench::v1::Tick {
            seq,
            payload: Bytes::from(vec![seq as u8; payload_len]),
        }
    }

    /// The headers of an encoded message: every entry but the per-message id, time and
    /// correlation id (the id again), by name.
    fn constant_part(message: &Message) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = message
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "ce_id" | "ce_time" | "correlation-id"))
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        all.sort();
        all
    }

    /// A publisher past the shared pairs writes the same headers into each message as a
    /// publisher that shares them.
    #[test]
    fn publishers_with_and_without_shared_headers_write_the_same_headers() {
        let broker: Arc<dyn Broker> = Arc::new(crate::memory::MemoryBroker::new());
        let shared = Publisher::<event_proto::bench::v1::Tick>::new(broker, "bench", "t");
        let Ok(entries) = shared.inner.constant_headers else {
            panic!("the first pairs of a process are shared");
        };
        let own = Publisher::<event_proto::bench::v1::Tick> {
            inner: Arc::new(Inner {
                broker: shared.inner.broker.clone(),
                topic: "t".to_owned(),
                source: "bench".to_owned(),
                message_type: shared.inner.message_type.clone(),
                constant_headers: Err(entries.to_vec().into_boxed_slice()),
                codec: None,
                telemetry: PublishTelemetry::new(shared.inner.broker.clone(), "t", "bench.v1.Tick"),
            }),
        };
        let (a, b) = (
            shared.encode(&tick(1, 8), None),
            own.encode(&tick(1, 8), None),
        );
        assert_eq!(a.headers.len(), 7);
        assert_eq!(b.headers.len(), 7);
        assert_eq!(constant_part(&a), constant_part(&b));
        assert_eq!(a.headers.message_type(), Some("bench.v1.Tick"));
        assert_eq!(b.headers.source(), Some("bench"));
        assert!(a.headers.message_id().is_some() && b.headers.message_id().is_some());
    }

    fn memory() -> Arc<dyn Broker> {
        Arc::new(crate::memory::MemoryBroker::new())
    }

    #[test]
    fn a_json_publisher_sends_proto3_json_with_its_content_type() {
        use event_proto::users::v1::UserCreated;
        codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET).unwrap();
        let user = UserCreated {
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
        };
        let binary = Publisher::<UserCreated>::new(memory(), "signup", "users.created");
        let json = binary.clone().json().expect("registered");
        assert_eq!(binary.content_type(), "application/protobuf");
        assert_eq!(json.content_type(), "application/json");
        assert_eq!(json.topic(), "users.created");

        let (a, b) = (binary.encode(&user, None), json.encode(&user, None));
        assert_eq!(a.payload, prost::Message::encode_to_vec(&user));
        assert_eq!(
            b.payload,
            r#"{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}"#
        );
        assert_eq!(b.headers.content_type(), Some("application/json"));
        assert_eq!(b.headers.message_type(), Some("users.v1.UserCreated"));
        assert_eq!(b.headers.source(), Some("signup"));
        // every other header as the binary publisher writes it
        let without_content_type = |message: &Message| {
            constant_part(message)
                .into_iter()
                .filter(|(name, _)| name != "content-type")
                .collect::<Vec<_>>()
        };
        assert_eq!(without_content_type(&a), without_content_type(&b));
        assert_eq!(a.headers.len(), b.headers.len());
    }

    /// A type no descriptor set knows.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Unregistered {
        #[prost(string, tag = "1")]
        id: String,
    }

    impl prost::Name for Unregistered {
        const NAME: &'static str = "Unregistered";
        const PACKAGE: &'static str = "nowhere.v1";
    }

    #[test]
    fn json_needs_the_descriptor_when_the_publisher_is_made() {
        let error = Publisher::<Unregistered>::new(memory(), "test", "t")
            .json()
            .unwrap_err();
        assert!(
            matches!(&error, CodecError::DescriptorNotRegistered { message_type } if message_type == "nowhere.v1.Unregistered"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn republish_sends_only_messages_of_the_publishers_type() {
        let broker = memory();
        let ticks = Publisher::<event_proto::bench::v1::Tick>::new(broker.clone(), "test", "t");
        let own = ticks.encode(&tick(1, 8), None);
        assert!(ticks.republish(own).await.is_ok());
        let mut foreign = ticks.encode(&tick(2, 8), None);
        foreign
            .headers
            .insert(crate::headers::names::CE_TYPE, "users.v1.UserCreated");
        let error = ticks.republish(foreign).await.unwrap_err();
        assert!(
            matches!(
                error.broker_error(),
                BrokerError::WrongMessageType { expected, found: Some(found), .. }
                    if expected == "bench.v1.Tick" && found == "users.v1.UserCreated"
            ),
            "{error:?}"
        );
        // given back untouched
        assert_eq!(
            error.message().headers.message_type(),
            Some("users.v1.UserCreated")
        );
        let untyped = ticks.republish(Message::new("raw")).await.unwrap_err();
        assert!(
            matches!(
                untyped.broker_error(),
                BrokerError::WrongMessageType { found: None, .. }
            ),
            "{untyped:?}"
        );
    }

    #[tokio::test]
    async fn a_message_the_codec_cannot_write_is_not_published() {
        // unchecked: the descriptor is missing when publishing
        let publisher =
            Publisher::<Unregistered>::new(memory(), "test", "t").with_codec(ProtoJson::new());
        let message = Unregistered { id: "x".into() };
        let error = publisher.publish(&message).await.unwrap_err();
        assert_eq!(error.topic(), "t");
        let BrokerError::Backend {
            operation, source, ..
        } = error.broker_error()
        else {
            panic!("{error:?}");
        };
        assert_eq!(*operation, "encode");
        assert!(
            matches!(
                source.downcast_ref::<CodecError>(),
                Some(CodecError::DescriptorNotRegistered { .. })
            ),
            "{source:?}"
        );
        assert!(error.message().payload.is_empty());
        assert_eq!(
            error.message().headers.message_type(),
            Some("nowhere.v1.Unregistered")
        );
        let keyed = publisher.publish_keyed("k", &message).await.unwrap_err();
        assert_eq!(keyed.message().key.as_deref(), Some(&b"k"[..]));
        assert!(matches!(
            publisher.try_encode(&message, None),
            Err(CodecError::DescriptorNotRegistered { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "no descriptor of nowhere.v1.Unregistered is registered")]
    fn encode_panics_where_try_encode_fails() {
        let publisher =
            Publisher::<Unregistered>::new(memory(), "test", "t").with_codec(ProtoJson::new());
        let _ = publisher.encode(&Unregistered::default(), None);
    }
}
