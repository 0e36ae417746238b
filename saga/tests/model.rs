//! Model-based property test: random interleavings of replies (success, failure, duplicated,
//! stale, reordered), timer firings, crashes (state re-folded from history) and operator
//! retries, against the invariants of the compensation semantics.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use eventfold_saga::{
    Command, CommandKind, Decision, Input, Outcome, RetryPolicy, Saga, SagaCommand, SagaDefinition,
    SagaEvent, SagaState, TimerRequest,
};
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Data;

fn cmd(
    name: &'static str,
) -> impl Fn(&Data) -> Result<Command, eventfold_saga::StepError> + Send + Sync + 'static {
    move |_| Ok(Command::from_json("t", name, json!({})))
}

fn definition() -> SagaDefinition<Data> {
    let t = Duration::from_secs(10);
    let retry = RetryPolicy::fixed(2, Duration::from_secs(1));
    let comp = RetryPolicy::fixed(2, Duration::from_secs(2));
    Saga::<Data>::define("model", 1)
        .step("a", |s| {
            s.invoke(cmd("a"))
                .compensate(cmd("ua"))
                .timeout(t)
                .retry(retry.clone())
                .compensation_retry(comp.clone())
        })
        .parallel(|p| {
            p.step("b", |s| {
                s.invoke(cmd("b"))
                    .compensate(cmd("ub"))
                    .timeout(t)
                    .retry(retry.clone())
                    .compensation_retry(comp.clone())
            })
            .step("c", |s| {
                s.invoke(cmd("c"))
                    .compensate(cmd("uc"))
                    .compensate_on_failure(true)
                    .timeout(t)
                    .compensation_retry(comp.clone())
            })
        })
        .pivot("d", |s| s.invoke(cmd("d")).timeout(t).retry(retry.clone()))
        .step("e", |s| s.invoke(cmd("e")).timeout(t).retry(retry.clone()))
        .build()
        .expect("valid")
}

#[derive(Debug, Clone)]
enum Op {
    /// reply to the pick-th command ever sent (stale when it is an old one)
    Reply {
        pick: usize,
        success: bool,
        retryable: bool,
    },
    /// fire the pick-th pending timer (keep it pending: fired again later = duplicate)
    Timer {
        pick: usize,
        keep: bool,
    },
    /// the orchestrator crashes: the state is re-folded from the history
    Crash,
    RetryParked,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<usize>(), prop::bool::weighted(0.6), any::<bool>()).prop_map(|(pick, success, retryable)| Op::Reply { pick, success, retryable }),
        3 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, keep)| Op::Timer { pick, keep }),
        1 => Just(Op::Crash),
        1 => Just(Op::RetryParked),
    ]
}

struct World<'a> {
    def: &'a SagaDefinition<Data>,
    state: SagaState,
    history: Vec<SagaEvent>,
    sent: Vec<SagaCommand>,
    timers: Vec<TimerRequest>,
    now: DateTime<Utc>,
}

impl World<'_> {
    fn input(&mut self, input: Input<Data>) {
        match self
            .def
            .decide(&self.state, input, self.now)
            .expect("decide")
        {
            Decision::Ignored { .. } => {}
            Decision::Transition(t) => {
                for e in &t.events {
                    self.state.apply(e);
                }
                self.history.extend(t.events);
                self.sent.extend(t.commands);
                self.timers.retain(|x| !t.cancel_timers.contains(&x.key));
                self.timers.extend(t.timers);
                assert_eq!(
                    SagaState::fold(&self.history),
                    self.state,
                    "fold(history) == carried state"
                );
            }
        }
    }

    fn fire(&mut self, index: usize, keep: bool) {
        let timer = if keep {
            self.timers[index].clone()
        } else {
            self.timers.remove(index)
        };
        if timer.due_at > self.now {
            self.now = timer.due_at;
        }
        self.input(Input::TimerFired(timer.key));
    }
}

fn check_invariants(history: &[SagaEvent], sent: &[SagaCommand]) -> Result<(), TestCaseError> {
    let mut started: Vec<String> = Vec::new();
    let mut compensating: Vec<String> = Vec::new();
    let mut compensated: HashSet<String> = HashSet::new();
    let mut compensation_began = false;
    for e in history {
        match e {
            SagaEvent::StepStarted { step, .. } => {
                prop_assert!(
                    !compensation_began,
                    "step {} started after compensation began",
                    step
                );
                if !started.contains(step) {
                    started.push(step.clone());
                }
            }
            SagaEvent::CompensationStarted { .. } => compensation_began = true,
            SagaEvent::StepCompensating { step, attempt } => {
                prop_assert!(
                    started.contains(step),
                    "compensation of {} that never started",
                    step
                );
                prop_assert!(!compensated.contains(step), "{} compensated twice", step);
                if *attempt == 1 {
                    prop_assert!(
                        !compensating.contains(step),
                        "compensation of {} issued twice",
                        step
                    );
                    compensating.push(step.clone());
                }
            }
            SagaEvent::StepCompensated { step, .. } => {
                prop_assert!(
                    compensated.insert(step.clone()),
                    "{} compensated twice",
                    step
                );
            }
            _ => {}
        }
    }
    let order: Vec<usize> = compensating
        .iter()
        .map(|s| started.iter().position(|x| x == s).unwrap_or(0))
        .collect();
    prop_assert!(
        order.windows(2).all(|w| w[0] > w[1]),
        "compensations not in reverse start order: {:?} (started {:?})",
        compensating,
        started
    );
    let mut seen = HashSet::new();
    for c in sent {
        prop_assert!(
            seen.insert((c.step.clone(), c.attempt, c.kind)),
            "command sent twice: {:?}",
            (&c.step, c.attempt, c.kind)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn sagas_terminate_and_compensate_correctly(ops in prop::collection::vec(op(), 0..60)) {
        let def = definition();
        let mut w = World {
            def: &def,
            state: SagaState::default(),
            history: vec![],
            sent: vec![],
            timers: vec![],
            now: DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
        };
        w.input(Input::Start { saga_id: uuid::Uuid::from_u128(7), correlation_id: uuid::Uuid::from_u128(8), data: Data });
        for op in ops {
            match op {
                Op::Reply { pick, success, retryable } => {
                    if w.sent.is_empty() { continue; }
                    let c = w.sent[pick % w.sent.len()].clone();
                    let outcome = if success { Outcome::success(json!({})) } else if retryable { Outcome::retryable("busy") } else { Outcome::failure("no") };
                    w.now += TimeDelta::milliseconds(10);
                    w.input(Input::Reply(c.reply(outcome)));
                }
                Op::Timer { pick, keep } => {
                    if w.timers.is_empty() { continue; }
                    let i = pick % w.timers.len();
                    w.fire(i, keep);
                }
                Op::Crash => w.state = SagaState::fold(&w.history),
                Op::RetryParked => w.input(Input::RetryParked),
            }
            check_invariants(&w.history, &w.sent)?;
        }
        // inputs exhausted: fire every timer (in due order); after the pivot the participants
        // answer (forward-only steps are retried forever otherwise)
        let mut answered: HashMap<(String, u32), ()> = HashMap::new();
        for _ in 0..500 {
            if w.state.status.is_terminal() || w.state.status.is_parked() { break; }
            if w.state.pivot_passed {
                let awaited: Vec<SagaCommand> = w.sent.iter().filter(|c| c.kind == CommandKind::Action
                    && w.state.step(&c.step).is_some_and(|s| s.attempt == c.attempt)
                    && !answered.contains_key(&(c.step.clone(), c.attempt))).cloned().collect();
                for c in awaited {
                    answered.insert((c.step.clone(), c.attempt), ());
                    w.input(Input::Reply(c.reply(Outcome::success(json!({})))));
                }
            }
            if w.timers.is_empty() { continue; }
            let i = w.timers.iter().enumerate().min_by_key(|(i, t)| (t.due_at, *i)).map(|(i, _)| i).unwrap_or(0);
            w.fire(i, false);
        }
        check_invariants(&w.history, &w.sent)?;
        prop_assert!(w.state.status.is_terminal() || w.state.status.is_parked(), "not terminal: {:?}", w.state.status);
        // a compensated saga compensated every started step that needs it
        if w.state.status == eventfold_saga::SagaStatus::Compensated {
            for s in &w.state.steps {
                let needs = s.phase == eventfold_saga::StepPhase::Succeeded || s.timed_out || s.succeeded_late || s.name == "c";
                if needs && !["d", "e"].contains(&s.name.as_str()) {
                    prop_assert_eq!(s.compensation, eventfold_saga::CompensationPhase::Compensated, "step {} not compensated", &s.name);
                }
            }
        }
        if w.state.status == eventfold_saga::SagaStatus::Completed {
            let any_compensation = w.history.iter().any(|e| matches!(e, SagaEvent::StepCompensating { .. }));
            prop_assert!(!any_compensation, "a completed saga compensated");
        }
        // a parked saga resumed by an operator, with compensations that now succeed, compensates
        if w.state.status.is_parked() {
            w.input(Input::RetryParked);
            for _ in 0..50 {
                if w.state.status.is_terminal() { break; }
                let awaited: Vec<SagaCommand> = w.sent.iter().filter(|c| c.kind == CommandKind::Compensation
                    && w.state.step(&c.step).is_some_and(|s| s.compensation_attempt == c.attempt)).cloned().collect();
                for c in awaited { w.input(Input::Reply(c.reply(Outcome::success(json!({}))))); }
                if let Some(i) = (!w.timers.is_empty()).then_some(0) { w.fire(i, false); }
            }
            check_invariants(&w.history, &w.sent)?;
            prop_assert_eq!(w.state.status.clone(), eventfold_saga::SagaStatus::Compensated);
        }
    }
}
