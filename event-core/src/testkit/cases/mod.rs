//! The conformance cases, by what they check; [`promised_capabilities`] runs those a broker's
//! capabilities promise.

mod delivery;
mod failures;
mod groups;
mod settling;
mod shutdown;
mod typed;

pub use delivery::{
    ack_after_handler, concurrent_publish, many_topics, order_per_key, publish_subscribe,
    topic_isolation,
};
pub use failures::{continue_after_errors, panic_is_contained, resend_on_error};
pub use groups::{
    broadcast, concurrent_subscribe, consumer_groups, group_resumes, queue_group_splits,
    replays_from_earliest,
};
pub use settling::{acks_out_of_order, settle_out_of_order};
pub use shutdown::{concurrent_close, drain_on_shutdown, unsubscribe_stops_delivery};
pub use typed::{
    context_propagates, dead_letter_after_retries, proto_json_is_typed,
    type_mismatch_dead_lettered, typed_headers_roundtrip,
};

use super::BrokerFactory;

/// Runs each case the broker's [`Capabilities`](crate::backend::Capabilities) promise:
/// [`order_per_key`] when it is `ordered_per_key`, [`group_resumes`] when `persistent`,
/// [`replays_from_earliest`] when `replays_to_new_subscribers`. The broker's own answer
/// decides, not a list written beside it.
///
/// # Panics
///
/// When a promised case fails, or when the broker promises none of them (then this test
/// would check nothing: such a broker does not belong in this suite's generated tests).
pub async fn promised_capabilities<F: BrokerFactory>(factory: &F) {
    let capabilities = factory.broker().await.capabilities();
    let mut checked = Vec::new();
    if capabilities.ordered_per_key {
        order_per_key(factory).await;
        checked.push("order_per_key");
    }
    if capabilities.persistent {
        group_resumes(factory).await;
        checked.push("group_resumes");
    }
    if capabilities.replays_to_new_subscribers {
        replays_from_earliest(factory).await;
        checked.push("replays_from_earliest");
    }
    assert!(
        !checked.is_empty(),
        "the broker promises no capability beyond the common contract: {capabilities:?}"
    );
    eprintln!("promised capabilities hold: {}", checked.join(", "));
}
