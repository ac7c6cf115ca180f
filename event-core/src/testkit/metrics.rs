//! A metrics recorder for tests: plain atomic values, read without resetting them.
//!
//! `metrics_util`'s `DebuggingRecorder` swaps every counter and gauge to zero when it takes a
//! snapshot, so tests that run in parallel in one binary and read their own counters would
//! reset each other's. This recorder keeps the values in a `metrics_util` registry and reads
//! them in place; tests tell their metrics apart by labels (unique topics or groups).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// What was recorded, by metric name and labels.
#[derive(Debug)]
pub struct Metrics {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

#[derive(Debug)]
struct SharedRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for SharedRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// Installs the recorder as the global one, once; later calls return the same handle.
///
/// Call it before making brokers, publishers and services: their instruments are registered
/// with the recorder installed when they are made.
///
/// # Panics
///
/// If another global metrics recorder was installed first.
pub fn install() -> &'static Metrics {
    static INSTALLED: OnceLock<Metrics> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let registry = Arc::new(Registry::atomic());
        metrics::set_global_recorder(SharedRecorder(registry.clone()))
            .expect("testkit::metrics::install: another metrics recorder was installed before");
        Metrics { registry }
    })
}

impl Metrics {
    /// The sum of the counters named `name` whose labels include all of `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry
            .get_counter_handles()
            .into_iter()
            .filter(|(key, _)| matches(key, name, labels))
            .map(|(_, value)| value.load(Ordering::SeqCst))
            .sum()
    }

    /// The sum of the gauges named `name` whose labels include all of `labels`.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.registry
            .get_gauge_handles()
            .into_iter()
            .filter(|(key, _)| matches(key, name, labels))
            .map(|(_, value)| f64::from_bits(value.load(Ordering::SeqCst)))
            .sum()
    }

    /// How many samples the histograms named `name` with all of `labels` hold.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.registry
            .get_histogram_handles()
            .into_iter()
            .filter(|(key, _)| matches(key, name, labels))
            .map(|(_, bucket)| bucket.data().len())
            .sum()
    }
}

impl Metrics {
    /// Every gauge named `name` whose labels include all of `labels`: its labels (sorted) and
    /// its value.
    pub fn gauges(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(Vec<(String, String)>, f64)> {
        self.registry
            .get_gauge_handles()
            .into_iter()
            .filter(|(key, _)| matches(key, name, labels))
            .map(|(key, value)| {
                let mut labels: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                (labels, f64::from_bits(value.load(Ordering::SeqCst)))
            })
            .collect()
    }
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels.iter().all(|(k, v)| {
            key.labels()
                .any(|label| label.key() == *k && label.value() == *v)
        })
}
