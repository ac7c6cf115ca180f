//! Typed subscribers: handlers, their arguments, and registration.
//!
//! A subscriber is a plain `async fn`. Its first argument is the message `T` (or [`Event<T>`]
//! for the id, headers, position and attempt); the others are extracted from the delivery:
//! [`Context`](crate::Context), [`State<S>`] and [`Headers`](crate::Headers). It returns `()`,
//! `Result<(), E>` or an explicit [`Outcome`](crate::broker::Outcome); an `Err` is retried and
//! then dead-lettered; a panic counts as an error.
//!
//! ```
//! use event_core::{Context, Event, State};
//! # #[derive(Clone, PartialEq, prost::Message)] pub struct UserCreated { #[prost(string, tag = "1")] pub email: String }
//! # impl prost::Name for UserCreated { const NAME: &'static str = "UserCreated"; const PACKAGE: &'static str = "users.v1"; }
//! # #[derive(Clone)] struct Mailer;
//! # #[derive(Debug)] struct MailError;
//! # impl std::fmt::Display for MailError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("mail") } }
//! # impl std::error::Error for MailError {}
//!
//! async fn send_welcome(user: UserCreated, ctx: Context, State(mailer): State<Mailer>) -> Result<(), MailError> {
//!     Ok(())
//! }
//!
//! async fn audit(event: Event<UserCreated>) {
//!     println!("{:?} attempt {} at {}", event.id(), event.attempt(), event.position());
//! }
//! ```

mod event;
mod handler;
mod registry;
mod typed;

pub use event::Event;
pub use handler::{
    ExtractError, FromDelivery, FromMessage, Handler, IntoOutcome, Parts, State, StateMap,
    StateRequirement,
};
pub use registry::{Location, Registration, registered};
pub use typed::ErasedSubscriber;
