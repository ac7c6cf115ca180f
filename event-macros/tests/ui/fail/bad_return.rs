use event_core::subscriber;
use event_proto::users::v1::UserCreated;

#[subscriber(topic = "users.created")]
async fn send_welcome(_user: UserCreated) -> bool {
    true
}

fn main() {}
