//! Which stream holds a topic's subject: found by subject, made when allowed, remembered.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::jetstream::Context;
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamByNameErrorKind};
use async_nats::jetstream::stream;
use event_core::broker::{BoxError, BrokerError};

use crate::BROKER_NAME;
use crate::config::{Config, Retention, Storage};
use crate::error::NatsBackendError;

/// How often making a stream (or adding a subject to the shared one) is tried when other
/// clients change the same streams at the same time.
const ATTEMPTS: usize = 5;

/// The streams of the topics this broker used.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    known: Mutex<HashMap<String, String>>,
}

pub(crate) fn api_error(operation: &'static str, what: &str, source: BoxError) -> BrokerError {
    BrokerError::Backend {
        broker: BROKER_NAME,
        operation: "manage JetStream streams",
        source: Box::new(NatsBackendError::JetStream {
            operation,
            what: what.to_owned(),
            source,
        }),
    }
}

/// JetStream does not answer: the server runs without it, or the account has none.
pub(crate) fn unavailable(config: &Config) -> BrokerError {
    api_error(
        "answer (no responders: JetStream is not enabled)",
        &config.address,
        "start nats-server with JetStream (-js), or use core NATS with mode=core (at most once, \
         no streams)"
            .into(),
    )
}

impl Streams {
    fn known(&self, topic: &str) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
    }

    fn remember(&self, topic: &str, stream: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), stream.to_owned());
    }

    /// Forgets the stream of `topic` (it was deleted, or the server lost it).
    pub(crate) fn forget(&self, topic: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// The stream that holds `topic`: remembered, found by subject, or made (with
    /// `create_streams`). `dead_letter_of` names the topic whose dead letters `topic` takes,
    /// for the error.
    pub(crate) async fn resolve(
        &self,
        config: &Config,
        js: &Context,
        topic: &str,
        dead_letter_of: Option<&str>,
    ) -> Result<String, BrokerError> {
        if let Some(stream) = self.known(topic) {
            return Ok(stream);
        }
        // boxed: the requests below are kilobytes of future state, which every future that
        // may call this (a publish's among them) would otherwise carry inline
        Box::pin(self.find_or_make(config, js, topic, dead_letter_of)).await
    }

    /// [`Streams::resolve`] for a topic whose stream is not remembered.
    async fn find_or_make(
        &self,
        config: &Config,
        js: &Context,
        topic: &str,
        dead_letter_of: Option<&str>,
    ) -> Result<String, BrokerError> {
        if let Some(stream) = lookup(config, js, topic).await? {
            self.remember(topic, &stream);
            return Ok(stream);
        }
        if !config.create_streams {
            return Err(not_found(config, topic, dead_letter_of));
        }
        let stream = match &config.stream {
            Some(shared) => add_to_shared(config, js, shared, topic).await?,
            None => create_own(config, js, topic).await?,
        };
        tracing::info!(
            broker = %config.address,
            topic,
            stream,
            "the topic's subject is now kept in a JetStream stream"
        );
        self.remember(topic, &stream);
        Ok(stream)
    }
}

pub(crate) fn not_found(config: &Config, topic: &str, dead_letter_of: Option<&str>) -> BrokerError {
    let hint: Cow<'static, str> = match dead_letter_of {
        Some(of) => format!(
            "it is the dead-letter topic of the subscription to {of:?}, and its messages must be \
             kept: add the subject to a JetStream stream (e.g. `nats stream add` with subject \
             {topic:?}, or a wildcard holding it), or let this broker make streams with \
             create_streams=true"
        )
        .into(),
        None => "no JetStream stream holds this subject: add it to a stream (e.g. `nats stream \
                 add` with the subject, or a wildcard holding it), or let this broker make \
                 streams with create_streams=true"
            .into(),
    };
    BrokerError::TopicNotFound {
        broker: BROKER_NAME,
        address: config.address.clone(),
        topic: topic.to_owned(),
        hint,
    }
}

/// Whether a JetStream API request went unanswered (no responders): JetStream is off.
pub(crate) fn no_responders(error: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{RequestError, RequestErrorKind};
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(request) = error.downcast_ref::<RequestError>()
            && request.kind() == RequestErrorKind::NoResponders
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The stream whose subjects hold `topic`, if any.
async fn lookup(config: &Config, js: &Context, topic: &str) -> Result<Option<String>, BrokerError> {
    match js.stream_by_subject(topic).await {
        Ok(stream) => Ok(Some(stream)),
        Err(error) => match error.kind() {
            GetStreamByNameErrorKind::NotFound => Ok(None),
            GetStreamByNameErrorKind::Request if no_responders(&error) => Err(unavailable(config)),
            _ => Err(api_error(
                "look up the stream of a subject",
                topic,
                Box::new(error),
            )),
        },
    }
}

fn stream_config(config: &Config, name: &str, subjects: Vec<String>) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects,
        storage: match config.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        retention: match config.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        num_replicas: config.replicas,
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        max_messages: config.max_messages,
        duplicate_window: config.duplicate_window.unwrap_or_default(),
        description: Some("made by event-nats".to_owned()),
        ..stream::Config::default()
    }
}

/// Another client made it meanwhile: the name is taken, or the subject is in another stream.
fn raced(kind: &CreateStreamErrorKind) -> bool {
    use async_nats::jetstream::ErrorCode;
    matches!(kind, CreateStreamErrorKind::JetStream(e)
        if e.error_code() == ErrorCode::STREAM_NAME_EXIST
            || e.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP)
}

fn create_error(
    config: &Config,
    what: &str,
    error: async_nats::jetstream::context::CreateStreamError,
) -> BrokerError {
    if error.kind() == CreateStreamErrorKind::JetStreamUnavailable {
        return unavailable(config);
    }
    api_error("create or update a stream", what, Box::new(error))
}

/// A stream of the topic's own.
async fn create_own(config: &Config, js: &Context, topic: &str) -> Result<String, BrokerError> {
    let name = crate::wire::stream_name(&config.stream_prefix, topic);
    match js
        .create_stream(stream_config(config, &name, vec![topic.to_owned()]))
        .await
    {
        Ok(_) => Ok(name),
        Err(error) if raced(&error.kind()) => match lookup(config, js, topic).await? {
            Some(stream) => Ok(stream),
            None => Err(api_error(
                "create a stream",
                &format!("{name} for {topic}"),
                format!(
                    "the stream name {name:?} is taken by a stream that does not hold {topic:?}; \
                     set stream_prefix, or stream, to another name"
                )
                .into(),
            )),
        },
        Err(error) => Err(create_error(config, &name, error)),
    }
}

/// Adds `topic` to the subjects of the shared stream `name` (made when missing).
async fn add_to_shared(
    config: &Config,
    js: &Context,
    name: &str,
    topic: &str,
) -> Result<String, BrokerError> {
    for _ in 0..ATTEMPTS {
        match js.get_stream(name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| api_error("read a stream", name, Box::new(e)))?;
                let mut updated = info.config.clone();
                if !updated.subjects.iter().any(|s| s == topic) {
                    updated.subjects.push(topic.to_owned());
                    match js.update_stream(&updated).await {
                        Ok(_) => {}
                        Err(error) if raced(&error.kind()) => {}
                        Err(error) => return Err(create_error(config, name, error)),
                    }
                }
            }
            Err(error) => {
                let missing = matches!(
                    error.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref e)
                        if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                );
                if !missing {
                    return Err(api_error("read a stream", name, Box::new(error)));
                }
                match js
                    .create_stream(stream_config(config, name, vec![topic.to_owned()]))
                    .await
                {
                    Ok(_) => {}
                    Err(error) if raced(&error.kind()) => {}
                    Err(error) => return Err(create_error(config, name, error)),
                }
            }
        }
        // another client may have updated the subjects at the same time: read them back
        if let Some(stream) = lookup(config, js, topic).await? {
            return Ok(stream);
        }
    }
    Err(api_error(
        "add a subject to a stream",
        &format!("{topic} to {name}"),
        "other clients kept changing the stream's subjects at the same time".into(),
    ))
}
