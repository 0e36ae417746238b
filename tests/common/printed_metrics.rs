//! A `metrics` recorder for the child processes of the crash tests: every increment of a counter
//! it is told to report is printed on stdout as `metric <name> <n>`, for the parent to add up
//! (stdout is line-buffered, so a killed child loses at most the increment it was printing).

use std::sync::Arc;

/// Installs the recorder as this process's only one. `name` gives the printed name of a
/// counter's key, or `None` for a counter not reported.
pub fn install(name: fn(&metrics::Key) -> Option<String>) {
    metrics::set_global_recorder(PrintingRecorder { name }).expect("the only recorder");
}

struct PrintingRecorder {
    name: fn(&metrics::Key) -> Option<String>,
}

struct PrintedCounter(String);

impl metrics::CounterFn for PrintedCounter {
    fn increment(&self, value: u64) {
        if value > 0 {
            println!("metric {} {value}", self.0);
        }
    }

    fn absolute(&self, _value: u64) {}
}

impl metrics::Recorder for PrintingRecorder {
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
        match (self.name)(key) {
            Some(name) => metrics::Counter::from_arc(Arc::new(PrintedCounter(name))),
            None => metrics::Counter::noop(),
        }
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
