//! Where a message sits in its broker, in a shape every backend can fill.
//!
//! A [`Position`] is a number (a sequence, an offset, a delivery tag), an optional partition
//! and a redelivery flag, plus the [`PositionKind`] of the backend that made it. The kind
//! says how the position reads in logs and diagnoses ("partition 2 offset 17", "delivery tag
//! 9") and which OpenTelemetry attribute carries the number, so that core needs to know no
//! broker to print or trace one.

use std::fmt;
use std::hash::{Hash, Hasher};

/// How one kind of position is rendered and traced; a backend defines one `static` per kind.
///
/// ```
/// use std::fmt;
/// use event_core::backend::{Position, PositionKind};
///
/// fn render(position: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///     write!(f, "slot {}", position.number())
/// }
/// static SLOT: PositionKind = PositionKind::new("slot", render).with_attribute("example.slot");
///
/// let position = Position::new(&SLOT, 7);
/// assert_eq!(position.to_string(), "slot 7");
/// assert_eq!(position.kind().attribute(), Some("example.slot"));
/// ```
pub struct PositionKind {
    name: &'static str,
    render: fn(&Position, &mut fmt::Formatter<'_>) -> fmt::Result,
    attribute: Option<&'static str>,
}

impl PositionKind {
    /// A kind called `name` (for `Debug` output), rendered by `render`.
    pub const fn new(
        name: &'static str,
        render: fn(&Position, &mut fmt::Formatter<'_>) -> fmt::Result,
    ) -> Self {
        PositionKind {
            name,
            render,
            attribute: None,
        }
    }

    /// Names the OpenTelemetry attribute that carries [`Position::number`] on publish and
    /// process spans (e.g. `messaging.kafka.offset`).
    #[must_use]
    pub const fn with_attribute(mut self, attribute: &'static str) -> Self {
        self.attribute = Some(attribute);
        self
    }

    /// The kind's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The OpenTelemetry attribute for the number, if the kind has one.
    pub fn attribute(&self) -> Option<&'static str> {
        self.attribute
    }
}

impl fmt::Debug for PositionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

fn render_sequence(position: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "sequence {}", position.number())
}

fn render_unknown(_: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("no position reported")
}

/// A per-topic publish sequence, starting at 1 (the memory broker's positions).
pub static SEQUENCE: PositionKind = PositionKind::new("sequence", render_sequence);

/// No position: the broker took the message but reports where it went.
static UNKNOWN: PositionKind = PositionKind::new("unknown", render_unknown);

/// Where a message sits in its broker: a number, an optional partition, a redelivery flag,
/// and the [`PositionKind`] of the backend that made it, which renders it.
#[derive(Clone, Copy)]
pub struct Position {
    kind: &'static PositionKind,
    number: u64,
    partition: Option<i32>,
    redelivered: bool,
}

impl Position {
    /// Number `number` of kind `kind`, in no partition, not redelivered.
    pub const fn new(kind: &'static PositionKind, number: u64) -> Self {
        Position {
            kind,
            number,
            partition: None,
            redelivered: false,
        }
    }

    /// Sequence `sequence` of an in-memory topic.
    pub const fn sequence(sequence: u64) -> Self {
        Position::new(&SEQUENCE, sequence)
    }

    /// No position: the broker confirmed the message without saying where it went.
    pub const fn unknown() -> Self {
        Position::new(&UNKNOWN, 0)
    }

    /// In partition `partition` (builder style).
    #[must_use]
    pub const fn in_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Flagged as redelivered by the broker (builder style).
    #[must_use]
    pub const fn redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// The kind of position.
    pub fn kind(&self) -> &'static PositionKind {
        self.kind
    }

    /// The number: a sequence, an offset, a delivery tag, as the kind says.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The partition, for brokers that have them.
    pub fn partition(&self) -> Option<i32> {
        self.partition
    }

    /// Whether the broker flagged the message as delivered before.
    pub fn is_redelivered(&self) -> bool {
        self.redelivered
    }

    /// Whether this position carries no information ([`Position::unknown`]).
    pub fn is_unknown(&self) -> bool {
        std::ptr::eq(self.kind, &UNKNOWN)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.kind.render)(self, f)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({self})")
    }
}

impl PartialEq for Position {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.kind, other.kind)
            && self.number == other.number
            && self.partition == other.partition
            && self.redelivered == other.redelivered
    }
}

impl Eq for Position {}

impl Hash for Position {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.name.hash(state);
        self.number.hash(state);
        self.partition.hash(state);
        self.redelivered.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_offset(position: &Position, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} offset {}",
            position.partition().unwrap_or_default(),
            position.number()
        )
    }
    static OFFSET: PositionKind = PositionKind::new("offset", render_offset);

    #[test]
    fn a_position_renders_as_its_kind_says() {
        assert_eq!(Position::sequence(4).to_string(), "sequence 4");
        assert_eq!(
            Position::new(&OFFSET, 17).in_partition(2).to_string(),
            "partition 2 offset 17"
        );
        assert_eq!(
            format!("{:?}", Position::sequence(4)),
            "Position(sequence 4)"
        );
        assert_eq!(Position::unknown().to_string(), "no position reported");
    }

    #[test]
    fn positions_of_different_kinds_differ() {
        assert_ne!(Position::sequence(4), Position::new(&OFFSET, 4));
        assert_eq!(Position::sequence(4), Position::sequence(4));
        assert_ne!(
            Position::sequence(4),
            Position::sequence(4).redelivered(true)
        );
        assert!(Position::unknown().is_unknown());
        assert!(!Position::sequence(1).is_unknown());
    }
}
