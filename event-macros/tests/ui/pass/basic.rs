//! The message and the context, in a queue group.

use event_core::{Context, subscriber};
use event_proto::users::v1::UserCreated;

#[subscriber(topic = "users.created", queue = "mailer")]
async fn send_welcome(user: UserCreated, ctx: Context) {
    let _ = (user.email, ctx.correlation_id());
}

/// Broadcast: no queue group.
#[subscriber(topic = "users.created")]
async fn log_signup(_user: UserCreated) {}

fn main() {}
