use event_core::{Context, subscriber};

// A local message rather than `event_proto`'s: rustc lists the types implementing
// `prost::Name` that it knows, and this keeps the list short and stable.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserCreated {
    #[prost(string, tag = "1")]
    pub email: String,
}

impl prost::Name for UserCreated {
    const NAME: &'static str = "UserCreated";
    const PACKAGE: &'static str = "users.v1";
}

#[subscriber(topic = "users.created")]
async fn send_welcome(_ctx: Context, _user: UserCreated) {}

fn main() {}
