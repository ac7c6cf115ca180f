//! Typed topics refuse what a subscriber of their type would dead-letter: the client gets an
//! error reply with the library's diagnosis (expected type, what the bytes look like), and
//! nothing is published.

mod common;

use std::sync::Arc;

use common::{TestGateway, blocking, config, py, redis_cli};
use event_core::broker::{Broker, Outcome, SubscribeOptions, handler_fn};
use event_core::memory::MemoryBroker;
use event_gateway::{TypedTopics, TypedTopicsError};
use event_proto::users::v1::UserCreated;
use prost::Message as _;
use tokio::sync::mpsc;

fn typed() -> TypedTopics {
    TypedTopics::new()
        .add_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .unwrap()
        .topic("users", "users.v1.UserCreated")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_of_another_shape_are_refused_with_the_diagnosis() {
    let broker = Arc::new(MemoryBroker::new());
    let (tx, mut published) = mpsc::unbounded_channel();
    let _watch = broker
        .subscribe(
            "users",
            SubscribeOptions::new(),
            handler_fn("watch", move |d| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.into_message());
                    Outcome::Ack
                }
            }),
        )
        .await
        .unwrap();
    let gw = TestGateway::start(broker.clone(), config().typed_topics(typed())).await;
    let addr = gw.addr;
    let user = UserCreated {
        user_id: "u-1".to_owned(),
        email: "ada@example.com".to_owned(),
        display_name: "Ada".to_owned(),
    };
    let valid_hex: String = user
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    blocking(move || {
        let text = redis_cli(addr, &["PUBLISH", "users", "hello world"]);
        assert!(
            text.starts_with("(error) ERR refused, nothing published: "),
            "{text}"
        );
        assert!(
            text.contains("topic \"users\" takes users.v1.UserCreated"),
            "{text}"
        );
        assert!(
            text.contains("the payload is text \"hello world\""),
            "says what the bytes look like: {text}"
        );
        assert!(
            text.contains("hint: the producer sent plain text, not protobuf"),
            "{text}"
        );

        let json = redis_cli(
            addr,
            &["XADD", "users", "*", "payload", "{\"userId\":\"u-2\"}"],
        );
        assert!(json.contains("refused, nothing published"), "{json}");
        assert!(
            json.contains("the payload is JSON object with keys [\"userId\"]"),
            "{json}"
        );
        assert!(
            json.contains("send it with XADD and the field content-type application/json"),
            "{json}"
        );
        let unknown_key = redis_cli(
            addr,
            &[
                "XADD",
                "users",
                "*",
                "payload",
                "{\"userId\":\"u-2\",\"nick\":1}",
                "content-type",
                "application/json",
            ],
        );
        assert!(
            unknown_key.contains(
                "payload is not the proto3 JSON of users.v1.UserCreated (unrecognized field name 'nick'"
            ),
            "{unknown_key}"
        );

        let wrong_type = redis_cli(
            addr,
            &[
                "XADD",
                "users",
                "*",
                "payload",
                "x",
                "ce_type",
                "shop.v1.OrderPlaced",
            ],
        );
        assert!(
            wrong_type.contains(
                "type mismatch: expected users.v1.UserCreated, the message is shop.v1.OrderPlaced"
            ),
            "{wrong_type}"
        );
        assert!(
            wrong_type.contains("hint: the ce_type field says shop.v1.OrderPlaced"),
            "{wrong_type}"
        );

        // bytes that are not a valid protobuf encoding (a truncated length-delimited field)
        let broken = py(addr, 2, &["publish-hex", "users", "0a05ab"]);
        let error = broken[0]["error"].as_str().expect("an error reply");
        assert!(
            error.contains("payload is not a valid users.v1.UserCreated"),
            "{error}"
        );

        // proto3 JSON with its content type is the type: accepted
        let accepted = redis_cli(
            addr,
            &[
                "XADD",
                "users",
                "*",
                "payload",
                "{\"userId\":\"u-3\",\"email\":\"x@example.com\"}",
                "content-type",
                "application/json",
            ],
        );
        assert!(!accepted.contains("error"), "{accepted}");
        let accepted = py(addr, 2, &["publish-hex", "users", &valid_hex]);
        assert_eq!(accepted[0]["receivers"], 1, "{accepted:?}");
    })
    .await;
    // of all that, only the two accepted messages were published, with the type headers
    let first = published.recv().await.unwrap();
    assert_eq!(first.headers.content_type(), Some("application/json"));
    assert_eq!(first.headers.message_type(), Some("users.v1.UserCreated"));
    let second = published.recv().await.unwrap();
    assert_eq!(UserCreated::decode(second.payload.as_ref()).unwrap(), user);
    assert_eq!(second.headers.message_type(), Some("users.v1.UserCreated"));
    assert_eq!(second.headers.content_type(), Some("application/protobuf"));
    assert!(published.try_recv().is_err());
    gw.stop().await;
}

#[test]
fn a_topic_of_an_unknown_type_is_a_configuration_error() {
    let error = TypedTopics::new()
        .add_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .unwrap()
        .topic("users", "users.v1.UserDeleted")
        .unwrap_err();
    assert!(
        matches!(error, TypedTopicsError::UnknownType { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("users.v1.UserDeleted"),
        "{error}"
    );
}
