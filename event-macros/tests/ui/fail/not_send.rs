use std::rc::Rc;

use event_core::subscriber;
use event_proto::users::v1::UserCreated;

#[subscriber(topic = "users.created")]
async fn send_welcome(user: UserCreated) {
    let email = Rc::new(user.email);
    tokio::task::yield_now().await;
    drop(email);
}

fn main() {}
