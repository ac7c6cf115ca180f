//! Typed topics: a topic whose messages must be one protobuf type. A payload that a subscriber
//! of that type would not decode is refused before it is published, with the library's
//! diagnosis; an accepted one gets the type headers a typed publisher writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use event_core::broker::{Delivery, Message, Position};
use event_core::codec::{self, DecodeError, PayloadKind};
use event_core::headers::names;
use prost_reflect::DescriptorPool;

/// Why typed topics could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedTopicsError {
    /// A descriptor set file could not be read.
    #[error("cannot read the descriptor set {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// `.proto` files did not compile.
    #[error("cannot compile {files:?} (import paths {includes:?})")]
    Compile {
        /// The files.
        files: Vec<PathBuf>,
        /// The import paths.
        includes: Vec<PathBuf>,
        /// protox's error: file, line and what is wrong.
        #[source]
        source: Box<protox::Error>,
    },
    /// The bytes are not a descriptor set (or lack its imports).
    #[error("invalid descriptor set")]
    Register {
        /// Why.
        #[source]
        source: codec::json::RegisterError,
    },
    /// A topic maps to a type no descriptor describes.
    #[error(
        "topic {topic:?} maps to {message_type}, which none of the descriptors describes (they have {known} message types)"
    )]
    UnknownType {
        /// The topic.
        topic: String,
        /// The type named for it.
        message_type: String,
        /// How many types the descriptors have.
        known: usize,
    },
}

/// Topics and the protobuf type each must carry.
#[derive(Clone, Debug, Default)]
pub struct TypedTopics {
    types: HashMap<String, String>,
}

impl TypedTopics {
    /// No typed topics: every payload is published as it is.
    pub fn new() -> Self {
        TypedTopics::default()
    }

    /// Adds the message types of an encoded `FileDescriptorSet` (imports included), as
    /// `protoc --include_imports --descriptor_set_out` or `protox` write it.
    ///
    /// # Errors
    ///
    /// [`TypedTopicsError::Register`] when the bytes are not a descriptor set.
    pub fn add_descriptor_set(self, bytes: &[u8]) -> Result<Self, TypedTopicsError> {
        codec::json::register_file_descriptor_set(bytes)
            .map_err(|source| TypedTopicsError::Register { source })?;
        Ok(self)
    }

    /// Adds the message types of a descriptor set file.
    ///
    /// # Errors
    ///
    /// [`TypedTopicsError::Read`], or as [`TypedTopics::add_descriptor_set`].
    pub fn add_descriptor_set_file(self, path: &Path) -> Result<Self, TypedTopicsError> {
        let bytes = std::fs::read(path).map_err(|source| TypedTopicsError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.add_descriptor_set(&bytes)
    }

    /// Compiles `.proto` files (found in the `includes` import paths) and adds their types.
    ///
    /// # Errors
    ///
    /// [`TypedTopicsError::Compile`] naming the file and line that does not compile.
    pub fn add_proto_files(
        self,
        files: &[PathBuf],
        includes: &[PathBuf],
    ) -> Result<Self, TypedTopicsError> {
        let set = protox::compile(files, includes).map_err(|source| TypedTopicsError::Compile {
            files: files.to_vec(),
            includes: includes.to_vec(),
            source: Box::new(source),
        })?;
        self.add_descriptor_set(&prost::Message::encode_to_vec(&set))
    }

    /// Says that messages on `topic` must be `message_type` (a protobuf full name, such as
    /// `users.v1.UserCreated`), whose descriptor was added before.
    ///
    /// # Errors
    ///
    /// [`TypedTopicsError::UnknownType`] when no added descriptor describes the type.
    pub fn topic(
        mut self,
        topic: impl Into<String>,
        message_type: impl Into<String>,
    ) -> Result<Self, TypedTopicsError> {
        let (topic, message_type) = (topic.into(), message_type.into());
        if !codec::json::is_registered(&message_type) {
            return Err(TypedTopicsError::UnknownType {
                topic,
                message_type,
                known: DescriptorPool::global().all_messages().count(),
            });
        }
        self.types.insert(topic, message_type);
        Ok(self)
    }

    /// The type `topic` must carry, if it is typed.
    pub fn type_of(&self, topic: &str) -> Option<&str> {
        self.types.get(topic).map(String::as_str)
    }

    /// Whether no topic is typed.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Checks `message` for `topic` and, if the topic is typed, writes the type headers.
    pub(crate) fn admit(&self, topic: &str, message: &mut Message) -> Result<(), Box<DecodeError>> {
        let Some(expected) = self.type_of(topic) else {
            return Ok(());
        };
        let delivery = Delivery::new(topic, message.clone(), Position::unknown());
        codec::check(&delivery, expected).map_err(Box::new)?;
        let headers = &mut message.headers;
        if !headers.contains(names::CE_TYPE) {
            headers.insert(names::CE_TYPE, expected.to_owned());
        }
        if !headers.contains(names::CONTENT_TYPE) {
            headers.insert(names::CONTENT_TYPE, codec::PROTOBUF);
        }
        if !headers.contains(names::CE_SPECVERSION) {
            headers.insert(names::CE_SPECVERSION, "1.0");
        }
        Ok(())
    }
}

/// The reply text of a refused payload: what is wrong, what the bytes look like, and a hint in
/// the client's terms (fields and commands, not the Rust API).
pub(crate) fn explain(error: &DecodeError) -> String {
    let d = error.diagnosis();
    let full = error.to_string();
    let mut what = full.split(" (").next().unwrap_or(&full).to_owned();
    // the decoder's own words: where, and which key or value does not fit
    if let Some(source) = std::error::Error::source(error) {
        what.push_str(&format!(" ({source})"));
    }
    let mut text = format!(
        "{what}: topic {:?} takes {}; the payload is {} ({} bytes: {})",
        d.topic,
        d.expected_type,
        d.payload_kind,
        d.payload_len,
        if d.payload_preview.is_empty() {
            "-"
        } else {
            &d.payload_preview
        }
    );
    if let Some(content_type) = &d.content_type {
        text.push_str(&format!(", content type {content_type}"));
    }
    let json_content = d.content_type.as_deref().is_some_and(codec::is_json);
    let hint = match error {
        DecodeError::TypeMismatch { .. } => format!(
            "the ce_type field says {}: send {} on this topic, or leave ce_type out",
            d.found_type.as_deref().unwrap_or("?"),
            d.expected_type
        ),
        _ if matches!(d.payload_kind, PayloadKind::Json { .. }) && !json_content => format!(
            "if it is the proto3 JSON of {0}, send it with XADD and the field content-type \
             application/json; otherwise send the protobuf encoding of {0}",
            d.expected_type
        ),
        _ => {
            let hint = d.hint();
            hint.split(" (the message has no type header")
                .next()
                .unwrap_or(&hint)
                .to_owned()
        }
    };
    text.push_str("; hint: ");
    text.push_str(&hint);
    text
}
