//! `Event<T>`, `State<S>` and `Headers`, with every option.

use event_core::{Event, Headers, State, subscriber};
use event_proto::users::v1::UserCreated;

#[derive(Clone)]
struct Db;

#[subscriber(
    topic = "users.created",
    queue = "audit",
    concurrency = 8,
    max_attempts = 5,
    dead_letter = "users.created.audit-dlq"
)]
async fn audit(user: Event<UserCreated>, State(_db): State<Db>, headers: Headers) {
    let _ = (user.id(), user.attempt(), user.position(), headers);
}

fn main() {}
