use event_core::subscriber;
use event_proto::users::v1::UserCreated;

struct Mailer;

impl Mailer {
    #[subscriber(topic = "users.created")]
    async fn send_welcome(&self, _user: UserCreated) {}
}

fn main() {}
