//! The conformance suite on the in-memory broker.

use event_core::memory::MemoryBroker;
use event_core::testkit::{self, MemoryFactory};

event_core::conformance_suite!(memory, MemoryFactory(MemoryBroker::new()));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_order_per_key() {
    testkit::order_per_key(&MemoryFactory(MemoryBroker::new())).await;
}
