//! The per-thread cache of the topics a thread published to, so that a publish finds its topic
//! without the broker's topic-map lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::Inner;
use super::topic::Topic;

/// The topics this thread has published to, each with the broker it belongs to: a publish then
/// finds its topic without the broker's topic-map lock (in the memory bench, with the publisher
/// the slower side, that lock was about 100 ns of 700 per event; see `BENCHMARKS.md`).
///
/// A broker never removes a topic from its map, so an entry stays right for as long as its
/// broker lives; the `Weak` keeps the broker's address from being taken by another broker
/// meanwhile. Entries of dropped brokers are cleared when a name is added and the map has
/// grown past [`RecentTopics::PRUNE_ABOVE`] names; until then they hold their topic's queue
/// list (no messages: a broker's queues are emptied when their last member leaves).
#[derive(Default)]
pub(super) struct RecentTopics {
    /// Topic name → that topic on each broker this thread published it to.
    ///
    /// The names are this thread's own copies: the topic's name sits in a small allocation
    /// whose cache line may be shared with a consumer's reference counts, which change with
    /// every message (measured: 4 % of a publishing thread's time in comparing the name).
    by_name: HashMap<Box<str>, Vec<BrokerTopic>, foldhash::fast::RandomState>,
}

/// A topic and the broker it belongs to.
type BrokerTopic = (Weak<Inner>, Arc<Topic>);

thread_local! {
    pub(super) static RECENT: RefCell<RecentTopics> = RefCell::default();
}

impl RecentTopics {
    /// Names held before entries of dropped brokers are cleared.
    const PRUNE_ABOVE: usize = 256;

    /// `broker`'s topic named `name`, if this thread published to it before.
    pub(super) fn find(&self, broker: &Arc<Inner>, name: &str) -> Option<&Topic> {
        self.by_name.get(name)?.iter().find_map(|(owner, topic)| {
            std::ptr::eq(owner.as_ptr(), Arc::as_ptr(broker)).then_some(&**topic)
        })
    }

    /// Remembers `topic` of `broker`.
    pub(super) fn remember(&mut self, broker: &Arc<Inner>, topic: Arc<Topic>) {
        if !self.by_name.contains_key(&*topic.name) && self.by_name.len() >= Self::PRUNE_ABOVE {
            self.by_name.retain(|_, topics| {
                topics.retain(|(owner, _)| owner.strong_count() > 0);
                !topics.is_empty()
            });
        }
        let topics = self.by_name.entry(Box::from(&*topic.name)).or_default();
        topics.retain(|(owner, _)| owner.strong_count() > 0);
        topics.push((Arc::downgrade(broker), topic));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBroker;

    /// Entries of dropped brokers leave the thread's cache once it holds more names than
    /// [`RecentTopics::PRUNE_ABOVE`]; live ones stay.
    #[test]
    fn the_thread_cache_forgets_dropped_brokers() {
        let mut recent = RecentTopics::default();
        let live = MemoryBroker::new();
        let kept = live.topic_or_create("kept");
        recent.remember(&live.inner, kept);
        {
            let gone = MemoryBroker::new();
            for i in 0..RecentTopics::PRUNE_ABOVE {
                let name = format!("gone.{i}");
                recent.remember(&gone.inner, gone.topic_or_create(&name));
            }
            assert!(recent.find(&gone.inner, "gone.0").is_some());
        }
        assert_eq!(recent.by_name.len(), RecentTopics::PRUNE_ABOVE + 1);
        // a new name past the bound clears the dropped broker's entries
        recent.remember(&live.inner, live.topic_or_create("new"));
        assert_eq!(
            recent.by_name.len(),
            2,
            "only the live broker's names are left"
        );
        assert!(recent.find(&live.inner, "kept").is_some());
        assert!(recent.find(&live.inner, "new").is_some());
    }
}
