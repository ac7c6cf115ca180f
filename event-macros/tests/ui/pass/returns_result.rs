//! `Result<(), E>` with a hand-written error type, and an explicit `Outcome`.

use std::fmt;

use event_core::{Context, Outcome, subscriber};
use event_proto::users::v1::{UserCreated, WelcomeEmailSent};

#[derive(Debug)]
struct MailError;

impl fmt::Display for MailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the mail server refused the message")
    }
}

impl std::error::Error for MailError {}

#[subscriber(topic = "users.created", queue = "mailer")]
async fn send_welcome(user: UserCreated, _ctx: Context) -> Result<(), MailError> {
    if user.email.is_empty() {
        return Err(MailError);
    }
    Ok(())
}

#[subscriber(topic = "emails.welcome-sent", queue = "audit")]
async fn audit(sent: WelcomeEmailSent) -> Outcome {
    if sent.email.is_empty() {
        Outcome::dead_letter("no email address")
    } else {
        Outcome::Ack
    }
}

fn main() {}
