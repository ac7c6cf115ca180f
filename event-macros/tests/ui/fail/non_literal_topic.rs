use event_core::subscriber;
use event_proto::users::v1::UserCreated;

const TOPIC: &str = "users.created";

#[subscriber(topic = TOPIC)]
async fn send_welcome(_user: UserCreated) {}

fn main() {
    let _ = TOPIC;
}
