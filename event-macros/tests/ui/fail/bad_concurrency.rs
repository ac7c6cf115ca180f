use event_core::subscriber;
use event_proto::users::v1::UserCreated;

#[subscriber(topic = "users.created", concurrency = 0)]
async fn send_welcome(_user: UserCreated) {}

fn main() {}
