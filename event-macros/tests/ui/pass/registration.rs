//! The function stays a plain callable `async fn`, and the registration carries the topic,
//! queue group, options and the handler's path.

use event_core::{Context, subscriber};
use event_proto::users::v1::UserCreated;

mod handlers {
    use event_core::subscriber;
    use event_proto::users::v1::UserCreated;

    #[subscriber(
        topic = "users.created",
        queue = "mailer",
        concurrency = 2,
        max_attempts = 3
    )]
    pub async fn send_welcome(user: UserCreated) -> Result<(), std::io::Error> {
        if user.email.contains('@') {
            Ok(())
        } else {
            Err(std::io::Error::other("no @ in the address"))
        }
    }
}

#[subscriber(topic = "users.deleted", dead_letter = "users.deleted.dlq")]
async fn forget(_user: UserCreated, _ctx: Context) {}

fn main() {
    // Still a plain function: its pointer can be taken and it can be called directly.
    let pointer: fn(UserCreated, Context) -> _ = forget;
    let _ = pointer;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(handlers::send_welcome(UserCreated {
        email: "ada@example.com".into(),
        ..Default::default()
    }));
    assert!(ok.is_ok());
    let err = runtime.block_on(handlers::send_welcome(UserCreated::default()));
    assert!(err.is_err());

    let all = event_core::subscribe::registered();
    assert_eq!(all.len(), 2, "{all:#?}");

    let welcome = all
        .iter()
        .find(|r| r.handler == concat!(module_path!(), "::handlers::send_welcome"))
        .expect("send_welcome is registered");
    assert_eq!(welcome.topic, "users.created");
    assert_eq!(welcome.queue, Some("mailer"));
    assert_eq!(welcome.concurrency, Some(2));
    assert_eq!(welcome.max_attempts, Some(3));
    assert_eq!(welcome.dead_letter, None);
    let made = (welcome.make)();
    assert_eq!(made.message_type(), "users.v1.UserCreated");
    assert_eq!(made.handler_name(), welcome.handler);
    assert!(
        welcome.location.file.ends_with("registration.rs"),
        "{:?}",
        welcome.location
    );

    let forget = all
        .iter()
        .find(|r| r.handler == concat!(module_path!(), "::forget"))
        .expect("forget is registered");
    assert_eq!(forget.topic, "users.deleted");
    assert_eq!(forget.queue, None);
    assert_eq!(forget.concurrency, None);
    assert_eq!(forget.max_attempts, None);
    assert_eq!(forget.dead_letter, Some("users.deleted.dlq"));
    assert_eq!(forget.location.line, 27);
}
