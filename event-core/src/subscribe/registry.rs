//! The registry of `#[subscriber]` functions, collected at link time.

use std::fmt;

use super::ErasedSubscriber;

/// A subscriber registered by `#[subscriber]`, collected with `inventory`.
///
/// [`ServiceBuilder::with_registered_subscribers`](crate::ServiceBuilder::with_registered_subscribers)
/// reads them all. Write them with the attribute, not by hand.
#[derive(Debug)]
pub struct Registration {
    /// Topic to subscribe to.
    pub topic: &'static str,
    /// Queue group, or `None` for broadcast.
    pub queue: Option<&'static str>,
    /// Path of the handler function (`my_crate::handlers::send_welcome`).
    pub handler: &'static str,
    /// Where the attribute stands.
    pub location: Location,
    /// Concurrency limit, when given.
    pub concurrency: Option<usize>,
    /// Handler runs before dead-lettering, when given.
    pub max_attempts: Option<u32>,
    /// Dead-letter topic, when given.
    pub dead_letter: Option<&'static str>,
    /// Builds the typed subscriber.
    pub make: fn() -> ErasedSubscriber,
}

inventory::collect!(Registration);

/// A place in the source code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// File, as `file!()` gives it.
    pub file: &'static str,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl Location {
    /// The location of the caller of a `#[track_caller]` function.
    #[track_caller]
    pub fn caller() -> Location {
        let l = std::panic::Location::caller();
        Location {
            file: l.file(),
            line: l.line(),
            column: l.column(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Every registered subscriber in this binary, sorted by topic, queue and handler path.
pub fn registered() -> Vec<&'static Registration> {
    let mut all: Vec<&'static Registration> = inventory::iter::<Registration>.into_iter().collect();
    all.sort_by(|a, b| {
        (a.topic, a.queue, a.handler, a.location).cmp(&(b.topic, b.queue, b.handler, b.location))
    });
    all
}
