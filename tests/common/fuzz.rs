//! The budget of the proptest fuzz tests (`tests/hostile_input.rs`): short in CI, long on demand.
//!
//! * `EVENTFOLD_FUZZ_CASES=n`: `n` cases per target (default [`DEFAULT_CASES`]).
//! * `EVENTFOLD_FUZZ_SECS=s`: batches of that many cases, each with a fresh seed, until `s`
//!   seconds have passed for the target (at least one batch), e.g. `EVENTFOLD_FUZZ_SECS=600` for
//!   ten minutes per decoder.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseResult, TestError, TestRunner};

/// Cases per target when `EVENTFOLD_FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 2000;

/// The cases of one batch: `EVENTFOLD_FUZZ_CASES`, or [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("EVENTFOLD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CASES)
}

/// The time budget per target, `EVENTFOLD_FUZZ_SECS`, if set.
pub fn budget() -> Option<Duration> {
    std::env::var("EVENTFOLD_FUZZ_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Runs `test` on inputs of `strategy`, [`cases`] of them, or batches of them until the
/// [`budget`] is spent; panics with the (shrunk) failing input and the reason, a panic of `test`
/// included. Prints how many cases ran, and the fault suite's summary line (`FAULTS ...`, see
/// `scripts/faults.sh`).
pub fn run<S>(target: &str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let start = Instant::now();
    let cases = cases();
    let mut total: u64 = 0;
    loop {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => {
                panic!("fuzz target {target} failed: {reason}\nminimal input: {input:#?}")
            }
            Err(TestError::Abort(reason)) => panic!("fuzz target {target} aborted: {reason}"),
        }
        total += u64::from(cases);
        if budget().is_none_or(|budget| start.elapsed() >= budget) {
            break;
        }
    }
    eprintln!(
        "fuzz target {target}: {total} cases in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // The fault suite's summary line (`scripts/faults.sh` collects it): a failure panicked above.
    println!(
        "FAULTS fault=fuzz component={} injected=cases:{total},secs:{:.1} \
         checked=panics:0,property_failures:0 result=pass",
        target.replace(' ', "_"),
        start.elapsed().as_secs_f64()
    );
}
