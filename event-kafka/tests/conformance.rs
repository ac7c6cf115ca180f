//! The core conformance suite through `KafkaBroker`, against the real broker; Kafka's
//! capabilities (order per key, persistence, replay from the earliest offset) add the cases
//! that check them.

mod common;

use common::KafkaFactory;

event_core::conformance_suite!(kafka, KafkaFactory::default());

/// proto3 JSON (go-micro's default content type), with and without a type header, is
/// consumed as a typed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_json_is_a_typed_event() {
    event_core::codec::json::register_file_descriptor_set(event_proto::FILE_DESCRIPTOR_SET)
        .expect("the proto crate's descriptors");
    let expected = event_proto::users::v1::UserCreated {
        user_id: "u-1".into(),
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
    };
    event_core::testkit::proto_json_is_typed(
        &KafkaFactory::default(),
        r#"{"userId":"u-1","email":"ada@example.com","displayName":"Ada"}"#,
        expected,
    )
    .await;
}
