//! Quickstart: typed protobuf events on the in-memory broker, no setup.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! What it shows:
//! - `#[subscriber]` functions registered at compile time and collected by the service;
//! - two queue groups (`mailer`, `analytics`) that each get every `UserCreated`, and two
//!   members of one group (`crm`) that share them;
//! - a handler that publishes a follow-up event: correlation and causation ids and user
//!   metadata travel on without the handler touching them;
//! - a JSON message published with the raw Broker API onto a protobuf topic: diagnosed and
//!   dead-lettered, not dropped.

use std::sync::Arc;
use std::time::Duration;

use event_core::broker::{Broker, Delivery, Message, Outcome, SubscribeOptions, handler_fn};
use event_core::memory::MemoryBroker;
use event_core::{Context, Event, Publisher, Service, State, Topic, subscriber};
use event_proto::users::v1::{UserCreated, WelcomeEmailSent};
use tokio::sync::mpsc;

const USERS_CREATED: Topic<UserCreated> = Topic::new("users.created");
const WELCOME_SENT: Topic<WelcomeEmailSent> = Topic::new("emails.welcome-sent");

/// What the handlers share: the follow-up publisher and a progress channel for `main`.
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

/// The `mailer` group: sends the welcome email, then publishes `WelcomeEmailSent`.
#[subscriber(topic = "users.created", queue = "mailer")]
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
    // No context passed: the current one (this handler's) is used.
    app.welcome_sent
        .publish(&WelcomeEmailSent {
            user_id: user.user_id,
            email: user.email,
        })
        .await?;
    Ok(())
}

/// The `analytics` group: a second group, so it gets every message too.
#[subscriber(topic = "users.created", queue = "analytics")]
async fn count_signup(user: Event<UserCreated>, State(app): State<App>) {
    app.report(format!(
        "[analytics] signup {} (message {}, {})",
        user.user_id,
        user.id().unwrap_or("-"),
        user.position()
    ));
}

/// Two members of the `crm` group: each message goes to one of them.
#[subscriber(topic = "users.created", queue = "crm")]
async fn crm_worker_a(user: UserCreated, State(app): State<App>) {
    app.report(format!("[crm a]     sync {}", user.user_id));
}

/// The other member of the `crm` group.
#[subscriber(topic = "users.created", queue = "crm")]
async fn crm_worker_b(user: UserCreated, State(app): State<App>) {
    app.report(format!("[crm b]     sync {}", user.user_id));
}

/// Sees the follow-up events with the chain's ids.
#[subscriber(topic = "emails.welcome-sent", queue = "audit")]
async fn audit_welcome(sent: Event<WelcomeEmailSent>, ctx: Context, State(app): State<App>) {
    app.report(format!(
        "[audit]     welcome sent to {}: correlation {} caused by {} (tenant {})",
        sent.email,
        ctx.correlation_id().unwrap_or("-"),
        sent.headers().get_str("causation-id").unwrap_or("-"),
        ctx.metadata().get("tenant").unwrap_or("-"),
    ));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();

    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
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
                    let h = d.headers();
                    let line = format!(
                        "[dlq]       {} gave up ({}): {}",
                        h.get_str("x-event-handler").unwrap_or("?"),
                        h.get_str("x-event-error-kind").unwrap_or("?"),
                        h.get_str("x-event-error").unwrap_or("?"),
                    );
                    println!("{line}");
                    let _ = progress.send(line);
                    Outcome::Ack
                }
            }),
        )
        .await?;

    let service = Service::builder("quickstart")
        .broker(broker.clone())
        .state(app)
        .with_registered_subscribers()
        .build()?;
    println!("subscribers:");
    for s in service.subscribers() {
        println!(
            "  {:<22} queue {:<10} {} ({})",
            s.topic,
            s.queue.as_deref().unwrap_or("-"),
            s.handler,
            s.message_type
        );
    }
    let running = service.start().await?;

    println!("\npublishing 3 users (tenant t-42) ...");
    let users = running.publisher(USERS_CREATED);
    let ctx = Context::new().with_metadata("tenant", "t-42")?;
    for (id, email) in [
        ("u-1", "ada@example.com"),
        ("u-2", "grace@example.com"),
        ("u-3", "edsger@example.com"),
    ] {
        let receipt = users
            .publish_with(
                &ctx,
                &UserCreated {
                    user_id: id.into(),
                    email: email.into(),
                    display_name: String::new(),
                },
            )
            .await?;
        println!(
            "published {id}: message {} at {}",
            receipt.message_id().unwrap_or("-"),
            receipt.position()
        );
    }

    println!("\npublishing raw JSON bytes onto the protobuf topic (the go-micro mistake) ...");
    broker
        .publish(
            "users.created",
            Message::new(r#"{"userId":"u-9","email":"x@example.com"}"#),
        )
        .await?;

    // 3 users × (mailer + analytics + crm) + 3 audits + the JSON message dead-lettered by each
    // of the three groups.
    let expected = 3 * 3 + 3 + 3;
    for seen in 0..expected {
        match tokio::time::timeout(Duration::from_secs(10), done.recv()).await {
            Ok(Some(_)) => {}
            _ => return Err(format!("only {seen} of {expected} events arrived").into()),
        }
    }

    let report = running.shutdown().await;
    dead_letters.unsubscribe().await;
    println!(
        "\ndone: {} subscriptions drained, nothing abandoned: {}",
        report.drained.len(),
        report.drained.iter().all(|(_, r)| r.abandoned == 0)
    );
    Ok(())
}
