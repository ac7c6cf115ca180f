//! The signup story the broker examples share: the quickstart's handlers, wired by hand to
//! a broker given by the example (`kafka.rs`, `amqp.rs`).

use std::sync::Arc;
use std::time::Duration;

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::{Context, Event, Publisher, Service, State, Topic};
use event_proto::users::v1::{UserCreated, WelcomeEmailSent};
use tokio::sync::mpsc;

pub(crate) const USERS_CREATED: Topic<UserCreated> = Topic::new("users.created");
pub(crate) const WELCOME_SENT: Topic<WelcomeEmailSent> = Topic::new("emails.welcome-sent");

#[derive(Clone)]
struct App {
    welcome_sent: Publisher<WelcomeEmailSent>,
    progress: mpsc::UnboundedSender<String>,
}

impl App {
    fn report(&self, line: String) {
        println!("{line}");
        let _ = self.progress.send(line);
    }
}

async fn send_welcome(
    user: UserCreated,
    ctx: Context,
    State(app): State<App>,
) -> Result<(), event_core::broker::PublishError> {
    app.report(format!(
        "[mailer]    welcome mail to {} (tenant {})",
        user.email,
        ctx.metadata().get("tenant").unwrap_or("-")
    ));
    app.welcome_sent
        .publish(&WelcomeEmailSent {
            user_id: user.user_id,
            email: user.email,
        })
        .await?;
    Ok(())
}

async fn count_signup(user: Event<UserCreated>, State(app): State<App>) {
    app.report(format!(
        "[analytics] signup {} (message {}, {})",
        user.user_id,
        user.id().unwrap_or("-"),
        user.position()
    ));
}

async fn audit_welcome(sent: Event<WelcomeEmailSent>, ctx: Context, State(app): State<App>) {
    app.report(format!(
        "[audit]     welcome sent to {}: correlation {} caused by {} (tenant {})",
        sent.email,
        ctx.correlation_id().unwrap_or("-"),
        sent.headers().get_str("causation-id").unwrap_or("-"),
        ctx.metadata().get("tenant").unwrap_or("-"),
    ));
}

/// Runs the story on `broker` (connected): two queue groups and an audit subscriber, two
/// typed publishes and one JSON message on the protobuf topic; returns when all eight steps
/// happened.
pub(crate) async fn run(broker: Arc<dyn Broker>) -> Result<(), Box<dyn std::error::Error>> {
    let (progress, mut done) = mpsc::unbounded_channel();
    let app = App {
        welcome_sent: Publisher::new(broker.clone(), "mailer", WELCOME_SENT),
        progress: progress.clone(),
    };

    // Dead letters of users.created: print each diagnosis.
    let dead_letters = broker
        .subscribe(
            "users.created.dlq",
            SubscribeOptions::new(),
            handler_fn("print-dead-letters", move |d: Delivery| {
                let progress = progress.clone();
                async move {
                    let line = format!(
                        "[dlq]       {}: {}",
                        d.headers().get_str("x-event-payload-kind").unwrap_or("-"),
                        d.headers().get_str("x-event-error").unwrap_or("-")
                    );
                    println!("{line}");
                    let _ = progress.send(line);
                    Outcome::Ack
                }
            }),
        )
        .await?;

    let service = Service::builder("signup")
        .broker(broker.clone())
        .state(app)
        .subscribe_with(
            USERS_CREATED,
            SubscribeOptions::new().queue("mailer"),
            send_welcome,
        )
        .subscribe_with(
            USERS_CREATED,
            SubscribeOptions::new().queue("analytics"),
            count_signup,
        )
        .subscribe_with(
            WELCOME_SENT,
            SubscribeOptions::new().queue("audit"),
            audit_welcome,
        )
        .build()?
        .start()
        .await?;

    let users = service.publisher(USERS_CREATED);
    let ctx = Context::new().with_metadata("tenant", "t-42")?;
    for (id, email) in [("u-1", "ada@example.com"), ("u-2", "grace@example.com")] {
        users
            .publish_with(
                &ctx,
                &UserCreated {
                    user_id: id.into(),
                    email: email.into(),
                    display_name: String::new(),
                },
            )
            .await?;
    }
    // Someone publishes JSON onto the protobuf topic with the raw Broker API.
    broker
        .publish(
            USERS_CREATED.name(),
            Message::new(r#"{"user_id":"u-3","email":"oops@example.com"}"#),
        )
        .await?;

    // 2 x mailer, 2 x analytics, 2 x audit, and 2 dead letters: each queue group gets its
    // own copy of the JSON message, and each diagnoses and dead-letters it
    const STEPS: usize = 8;
    let mut seen = 0;
    while seen < STEPS {
        match tokio::time::timeout(Duration::from_secs(15), done.recv()).await {
            Ok(Some(_)) => seen += 1,
            _ => return Err(format!("only {seen} of {STEPS} steps happened within 15 s").into()),
        }
    }
    service.shutdown().await;
    dead_letters.unsubscribe().await;
    broker.disconnect().await?;
    println!("done: every event handled, the JSON message diagnosed and kept in users.created.dlq");
    Ok(())
}
