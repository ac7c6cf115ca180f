//! Backend-specific telemetry attributes, handed to the spans core creates.

/// The value of a backend-specific span attribute (see [`Broker::message_attributes`]).
///
/// [`Broker::message_attributes`]: crate::broker::Broker::message_attributes
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttributeValue<'a> {
    /// Text.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A flag.
    Bool(bool),
}

/// Where a backend writes its attributes: called once per attribute with its OpenTelemetry
/// name and value.
pub type AttributeSink<'s> = dyn FnMut(&'static str, AttributeValue<'_>) + 's;
