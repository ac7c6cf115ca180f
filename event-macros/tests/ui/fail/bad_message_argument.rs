use event_core::{Context, subscriber};
use event_proto::users::v1::UserCreated;

#[subscriber(topic = "users.created")]
async fn send_welcome(_user: &UserCreated, _ctx: Context) {}

fn main() {}
