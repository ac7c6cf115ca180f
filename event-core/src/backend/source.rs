//! What a backend implements to feed the shared delivery loop: a [`DeliverySource`] that
//! fetches messages and an [`Acknowledge`] that settles each one.

use crate::broker::{BrokerError, Delivery};

/// A message fetched by a backend, with the means to settle it.
#[derive(Debug)]
pub struct Incoming<A> {
    /// The message and its metadata.
    pub delivery: Delivery,
    /// Settles the message with the broker.
    pub acker: A,
}

/// Settles one message with its broker.
///
/// The delivery loop awaits [`ack`](Acknowledge::ack) and [`nack`](Acknowledge::nack) before
/// it takes the next message of a subscription that handles one at a time, so they should
/// resolve once the outcome is *handed over*, not once the broker answered: a backend whose
/// acknowledgement is a round trip (a frame to write, a reply to await) queues it to a task
/// of its own that sends it, batches what gathered meanwhile, and reports failures. The queue
/// must be bounded (an await on a full queue is the loop's backpressure), and
/// [`DeliverySource::close`] must wait until it is sent. The contract stays the same: the
/// loop calls `ack` only after the handler finished, and a message whose acknowledgement
/// fails is redelivered by the broker.
///
/// If an acker is dropped without [`ack`](Acknowledge::ack) or [`nack`](Acknowledge::nack)
/// (its handler was cut off by the drain timeout), [`Acknowledge::abandon`] is called: the
/// message must stay available for redelivery.
pub trait Acknowledge: Send + 'static {
    /// The message is done: the broker may forget it (commit the offset, `basic.ack`).
    fn ack(self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The message was not processed: give it back for redelivery.
    fn nack(self, delivery: Delivery) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The handler was cut off; called synchronously from a destructor. The default does
    /// nothing, which suits brokers that redeliver whatever was not acknowledged.
    fn abandon(self, delivery: Delivery)
    where
        Self: Sized,
    {
        let _ = delivery;
    }

    /// Whether the message is still this subscriber's to settle (the default: always). A
    /// backend whose broker takes messages away while their handlers run (Kafka, when a
    /// rebalance revokes the partition and its revoke timeout passed) says `false` once it
    /// has: the loop then neither runs the handler again nor dead-letters the message (its
    /// new owner does either), and gives it back. Asked only after a failure, so it may
    /// take a lock.
    fn owned(&self) -> bool {
        true
    }
}

/// Where a subscription's messages come from.
pub trait DeliverySource: Send + 'static {
    /// How this source's messages are settled.
    type Acker: Acknowledge;

    /// The next message; `None` once the source is closed for good.
    ///
    /// Must be cancel-safe: the loop may drop the future and call again later, and no message
    /// may be lost when that happens.
    fn next(&mut self) -> impl Future<Output = Option<Incoming<Self::Acker>>> + Send;

    /// The next message if one is at hand without waiting (fetched earlier in a batch, say);
    /// `None` otherwise, and then the loop calls [`DeliverySource::next`].
    ///
    /// The loop asks before each fetch of a subscription that handles one message at a time:
    /// a message returned here skips building and polling the `next` future, and moves less
    /// on its way to the handler. The default has nothing at hand.
    fn next_at_hand(&mut self) -> Option<Incoming<Self::Acker>> {
        None
    }

    /// Called once after the loop stopped and drained: every acker was used or dropped.
    /// Returns once the acknowledgements handed over are sent.
    fn close(self) -> impl Future<Output = ()> + Send;
}
