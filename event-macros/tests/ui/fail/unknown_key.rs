use event_core::subscriber;
use event_proto::users::v1::UserCreated;

#[subscriber(topc = "users.created")]
async fn send_welcome(_user: UserCreated) {}

#[subscriber(topic = "users.created", retries = 3)]
async fn count_signup(_user: UserCreated) {}

fn main() {}
