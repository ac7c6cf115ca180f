use event_core::subscriber;

#[subscriber(topic = "users.created")]
async fn send_welcome() {}

fn main() {}
