use event_core::{Context, Headers, subscriber};
use event_proto::users::v1::UserCreated;

#[subscriber(topic = "users.created")]
async fn send_welcome(
    _user: UserCreated,
    _a: Context,
    _b: Context,
    _c: Context,
    _d: Context,
    _e: Headers,
    _f: Headers,
    _g: Headers,
    _h: Headers,
) {
}

fn main() {}
