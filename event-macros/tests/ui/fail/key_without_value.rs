use event_core::subscriber;
use event_proto::users::v1::UserCreated;

#[subscriber(topic = "users.created", queue)]
async fn send_welcome(_user: UserCreated) {}

#[subscriber(topic)]
async fn count_signup(_user: UserCreated) {}

fn main() {}
