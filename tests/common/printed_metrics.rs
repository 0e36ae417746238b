//! A `metrics` recorder for the child processes of the crash tests: every increment of a counter
//! it is told to report is printed on stdout as `metric <name> <n>`, for the parent to add up
//! ([`add_line`]; stdout is line-buffered, so a killed child loses at most the increment it was
//! printing). Its base, a recorder of counters only ([`CountersOnly`]), also serves the tests that
//! count in their own process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Installs the recorder as this process's only one. `name` gives the printed name of a
/// counter's key, or `None` for a counter not reported.
pub fn install(name: fn(&metrics::Key) -> Option<String>) {
    let recorder = CountersOnly(move |key: &metrics::Key| match name(key) {
        Some(name) => metrics::Counter::from_arc(Arc::new(PrintedCounter(name))),
        None => metrics::Counter::noop(),
    });
    metrics::set_global_recorder(recorder).expect("the only recorder");
}

/// A counter's name with its labels, as `name{key=value,...}`, but the labels `skip` accepts.
pub fn labelled_name(key: &metrics::Key, skip: impl Fn(&str) -> bool) -> String {
    let labels: Vec<String> = key
        .labels()
        .filter(|l| !skip(l.key()))
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

/// What the parent sums from its children's `metric <name> <n>` lines, by name.
pub type Counters = Arc<Mutex<BTreeMap<String, u64>>>;

/// Adds the count of a child's `metric <name> <n>` line to `counters` (other lines are left).
pub fn add_line(counters: &Counters, line: &str) {
    if let Some(metric) = line.strip_prefix("metric ")
        && let Some((key, n)) = metric.rsplit_once(' ')
        && let Ok(n) = n.parse::<u64>()
    {
        *counters.lock().unwrap().entry(key.to_owned()).or_default() += n;
    }
}

/// A recorder of counters only, each made by the function it holds (gauges and histograms are
/// dropped).
pub struct CountersOnly<F>(pub F);

struct PrintedCounter(String);

impl metrics::CounterFn for PrintedCounter {
    fn increment(&self, value: u64) {
        if value > 0 {
            println!("metric {} {value}", self.0);
        }
    }

    fn absolute(&self, _value: u64) {}
}

impl<F> metrics::Recorder for CountersOnly<F>
where
    F: Fn(&metrics::Key) -> metrics::Counter + Send + Sync + 'static,
{
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        (self.0)(key)
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
