use event_core::subscriber;

#[subscriber(topic = "users.created")]
struct Mailer;

fn main() {}
