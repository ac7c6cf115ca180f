use event_core::subscriber;

#[subscriber(topic = "users.created")]
async fn send_welcome(_message: impl prost::Message) {}

fn main() {}
