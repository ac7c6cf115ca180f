use event_core::subscriber;

#[subscriber(topic = "users.created")]
async fn send_welcome<M: prost::Message>(_message: M) {}

fn main() {}
