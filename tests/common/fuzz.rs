//! The budget of the proptest fuzz tests (`tests/hostile_input.rs`): short in CI, long on demand.
//!
//! * `EVENTFOLD_FUZZ_CASES=n`: `n` cases per target (default [`DEFAULT_CASES`]).
//! * `EVENTFOLD_FUZZ_SECS=s`: batches of that many cases, each with a fresh seed, until the
//!   target has had `s` seconds of CPU time (at least one batch), e.g. `EVENTFOLD_FUZZ_SECS=600`
//!   for ten minutes per decoder. CPU time of the fuzzing thread, not wall time, so targets that
//!   share the machine with others (or with a build) still get their full budget; where the
//!   thread's CPU time cannot be read (not Linux), wall time.
//! * `EVENTFOLD_FUZZ_ROUND_TRIP_SECS=s`: the budget of the round-trip properties ([`round_trip`]:
//!   valid values through encode and decode), which are not fed hostile input; the decoders'
//!   budget when unset.

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

/// The time budget per decoder target, `EVENTFOLD_FUZZ_SECS`, if set.
pub fn budget() -> Option<Duration> {
    secs_from("EVENTFOLD_FUZZ_SECS")
}

fn secs_from(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The CPU time this thread has run so far (`/proc/thread-self/schedstat`, nanoseconds on the
/// CPU), or `None` where that file cannot be read.
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// A clock for the budget: the thread's CPU time where it can be read, else wall time.
struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Self {
        Clock {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// The budget spent so far, and whether it is CPU time.
    fn spent(&self) -> (Duration, bool) {
        match (self.cpu, thread_cpu_time()) {
            (Some(start), Some(now)) => (now.saturating_sub(start), true),
            _ => (self.wall.elapsed(), false),
        }
    }
}

/// [`run`] for a round-trip property (valid values through encode and decode), whose budget is
/// `EVENTFOLD_FUZZ_ROUND_TRIP_SECS` when set, else the decoders' budget.
pub fn round_trip<S>(target: &str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    run_with(
        target,
        secs_from("EVENTFOLD_FUZZ_ROUND_TRIP_SECS").or_else(budget),
        strategy,
        test,
    )
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
    run_with(target, budget(), strategy, test)
}

fn run_with<S>(
    target: &str,
    budget: Option<Duration>,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) where
    S: Strategy,
    S::Value: Debug,
{
    let clock = Clock::start();
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
        if budget.is_none_or(|budget| clock.spent().0 >= budget) {
            break;
        }
    }
    let (spent, cpu) = clock.spent();
    let unit = if cpu { "cpu_secs" } else { "secs" };
    eprintln!(
        "fuzz target {target}: {total} cases in {:.1} s ({}; {:.1} s wall)",
        spent.as_secs_f64(),
        if cpu { "CPU time" } else { "wall time" },
        clock.wall.elapsed().as_secs_f64()
    );
    // The fault suite's summary line (`scripts/faults.sh` collects it): a failure panicked above.
    println!(
        "FAULTS fault=fuzz component={} injected=cases:{total},{unit}:{:.1} \
         checked=panics:0,property_failures:0 result=pass",
        target.replace(' ', "_"),
        spent.as_secs_f64()
    );
}
