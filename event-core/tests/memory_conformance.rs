//! The conformance suite on the in-memory broker.

use event_core::memory::MemoryBroker;
use event_core::testkit::MemoryFactory;

event_core::conformance_suite!(memory, MemoryFactory(MemoryBroker::new()));
