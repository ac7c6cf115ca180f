//! `#[subscriber]` functions in a test binary are registered, and a service built with
//! `with_registered_subscribers()` runs them: each handler gets exactly the events of its
//! own topic, on the in-memory broker.
//!
//! The registry is global to the binary, so this test binary holds exactly the two
//! subscribers below and one test that uses them.

use std::time::Duration;

use event_core::memory::MemoryBroker;
use event_core::{Context, Event, Service, State, Topic, subscriber};
use event_proto::shop::v1::OrderPlaced;
use event_proto::users::v1::UserCreated;
use tokio::sync::mpsc;

const USERS_CREATED: Topic<UserCreated> = Topic::new("registered.users.created");
const ORDERS_PLACED: Topic<OrderPlaced> = Topic::new("registered.orders.placed");

/// How long an expected event may take.
const WAIT: Duration = Duration::from_secs(10);

/// Where the handlers report what they were given.
#[derive(Clone)]
struct Inbox {
    users: mpsc::UnboundedSender<(String, Option<String>)>,
    orders: mpsc::UnboundedSender<String>,
}

#[subscriber(topic = "registered.users.created", queue = "mailer")]
async fn welcome(user: Event<UserCreated>, State(inbox): State<Inbox>) {
    let id = user.id().map(str::to_owned);
    let _ = inbox.users.send((user.into_message().user_id, id));
}

#[subscriber(topic = "registered.orders.placed")]
async fn bill(order: OrderPlaced, _ctx: Context, State(inbox): State<Inbox>) {
    let _ = inbox.orders.send(order.order_id);
}

/// The next `n` items of `rx`, waiting at most [`WAIT`] for each.
async fn take<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize, what: &str) -> Vec<T> {
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => panic!("{what}: the service dropped its state after {i} of {n}"),
            Err(_) => panic!("{what}: only {i} of {n} arrived within {WAIT:?}"),
        }
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_subscribers_get_exactly_their_events() {
    let (users_tx, mut users) = mpsc::unbounded_channel();
    let (orders_tx, mut orders) = mpsc::unbounded_channel();
    let service = Service::builder("registered")
        .broker(MemoryBroker::new())
        .state(Inbox {
            users: users_tx,
            orders: orders_tx,
        })
        .with_registered_subscribers()
        .build()
        .expect("both #[subscriber] functions are registered in this test binary");

    let planned: Vec<_> = service
        .subscribers()
        .into_iter()
        .map(|s| (s.topic, s.queue, s.handler, s.message_type, s.registered))
        .collect();
    assert_eq!(
        planned,
        [
            (
                ORDERS_PLACED.name().to_owned(),
                None,
                concat!(module_path!(), "::bill").to_owned(),
                "shop.v1.OrderPlaced".to_owned(),
                true
            ),
            (
                USERS_CREATED.name().to_owned(),
                Some("mailer".to_owned()),
                concat!(module_path!(), "::welcome").to_owned(),
                "users.v1.UserCreated".to_owned(),
                true
            ),
        ],
        "sorted by topic, from the registry"
    );

    let running = service.start().await.expect("start");
    let user_publisher = running.publisher(USERS_CREATED);
    let order_publisher = running.publisher(ORDERS_PLACED);
    let mut user_ids = Vec::new();
    for user_id in ["u-1", "u-2", "u-3"] {
        let receipt = user_publisher
            .publish(&UserCreated {
                user_id: user_id.into(),
                ..UserCreated::default()
            })
            .await
            .expect("publish a user");
        user_ids.push((user_id.to_owned(), receipt.message_id().map(str::to_owned)));
    }
    for order_id in ["o-1", "o-2"] {
        order_publisher
            .publish(&OrderPlaced {
                order_id: order_id.into(),
                ..OrderPlaced::default()
            })
            .await
            .expect("publish an order");
    }

    let mut got_users = take(&mut users, 3, "welcome's users").await;
    let mut got_orders = take(&mut orders, 2, "bill's orders").await;
    // stopping drains the subscribers: whatever else they were going to get, they have now
    running.stop().await;
    assert!(
        users.try_recv().is_err(),
        "welcome got more than the 3 users"
    );
    assert!(
        orders.try_recv().is_err(),
        "bill got more than the 2 orders"
    );
    got_users.sort();
    got_orders.sort();
    assert_eq!(
        got_users, user_ids,
        "each user once, with the id its publish gave"
    );
    assert!(user_ids.iter().all(|(_, id)| id.is_some()), "{user_ids:?}");
    assert_eq!(got_orders, ["o-1", "o-2"]);
}
