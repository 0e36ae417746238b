//! The test kit (feature `test-util`): drive a [`SagaDefinition`] in memory with a virtual clock.
//! No database, no sleeps. After every transition it checks that the state folded from the whole
//! history equals the state carried along.
//!
//! ```
//! use std::time::Duration;
//! use eventfold_saga::{Command, Saga, SagaStatus, testing::SagaTest};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Data { sku: String }
//!
//! let def = Saga::<Data>::define("order.place", 1)
//!     .step("reserve_stock", |s| s
//!         .invoke(|d: &Data| Command::new("inventory.commands", "inventory.reserve", &d.sku))
//!         .compensate(|d: &Data| Command::new("inventory.commands", "inventory.release", &d.sku))
//!         .timeout(Duration::from_secs(30)))
//!     .step("charge_payment", |s| s
//!         .invoke(|_: &Data| Command::new("payments.commands", "payment.charge", &1)))
//!     .build()?;
//!
//! let mut t = SagaTest::new(&def).given_started(Data { sku: "A-1".into() });
//! t.when_reply("reserve_stock", serde_json::json!({}))
//!     .when_reply_failed("charge_payment", "declined");
//! t.then_compensations(&["reserve_stock"]);
//! t.when_compensated("reserve_stock");
//! t.then_status(&SagaStatus::Compensated);
//! # Ok::<(), eventfold_saga::DefinitionError>(())
//! ```

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::definition::{SagaData, SagaDefinition};
use crate::event::SagaEvent;
use crate::machine::{Decision, Ignored, Input, TimerKey, TimerKind, TimerRequest};
use crate::message::{CommandKind, Outcome, Reply, SagaCommand};
use crate::state::{SagaState, SagaStatus};

/// A saga instance driven in memory.
pub struct SagaTest<'a, D> {
    def: &'a SagaDefinition<D>,
    state: SagaState,
    history: Vec<SagaEvent>,
    commands: Vec<SagaCommand>,
    timers: Vec<TimerRequest>,
    now: DateTime<Utc>,
    last_ignored: Option<Ignored>,
}

impl<'a, D: SagaData> SagaTest<'a, D> {
    /// A test of a definition; the virtual clock starts at 2026-01-01T00:00:00Z.
    pub fn new(def: &'a SagaDefinition<D>) -> Self {
        Self {
            def,
            state: SagaState::default(),
            history: Vec::new(),
            commands: Vec::new(),
            timers: Vec::new(),
            now: DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            last_ignored: None,
        }
    }

    /// Starts the saga with `data` (saga id and correlation id fixed).
    pub fn given_started(mut self, data: D) -> Self {
        self.when(Input::Start {
            saga_id: Uuid::from_u128(1),
            correlation_id: Uuid::from_u128(2),
            data,
        });
        self
    }

    /// Decides any input at the current virtual time and applies the decision. Panics on a
    /// [`crate::SagaError`] or when the folded history differs from the carried state.
    pub fn when(&mut self, input: Input<D>) -> &mut Self {
        let decision = self
            .def
            .decide(&self.state, input, self.now)
            .unwrap_or_else(|e| panic!("decide failed: {e}"));
        match decision {
            Decision::Ignored { why } => self.last_ignored = Some(why),
            Decision::Transition(t) => {
                self.last_ignored = None;
                for event in &t.events {
                    self.state.apply(event);
                }
                self.history.extend(t.events);
                self.commands.extend(t.commands);
                self.timers
                    .retain(|timer| !t.cancel_timers.contains(&timer.key));
                self.timers.extend(t.timers);
                assert_eq!(
                    SagaState::fold(&self.history),
                    self.state,
                    "the state folded from the history differs from the carried state"
                );
            }
        }
        self
    }

    fn awaited(&self, step: &str, kind: CommandKind) -> u32 {
        self.commands
            .iter()
            .rev()
            .find(|c| c.step == step && c.kind == kind)
            .map(|c| c.attempt)
            .unwrap_or_else(|| panic!("no {kind} command was sent for step {step}"))
    }

    /// Replies to the latest attempt of `step`'s action with an outcome.
    pub fn when_reply_outcome(&mut self, step: &str, outcome: Outcome) -> &mut Self {
        let attempt = self.awaited(step, CommandKind::Action);
        self.when_reply_at(step, attempt, CommandKind::Action, outcome)
    }

    /// A success reply (with a payload) to the latest attempt of `step`'s action.
    pub fn when_reply(&mut self, step: &str, payload: Value) -> &mut Self {
        self.when_reply_outcome(step, Outcome::success(payload))
    }

    /// A definitive failure reply to the latest attempt of `step`'s action.
    pub fn when_reply_failed(&mut self, step: &str, reason: &str) -> &mut Self {
        self.when_reply_outcome(step, Outcome::failure(reason))
    }

    /// A success reply to the latest attempt of `step`'s compensation.
    pub fn when_compensated(&mut self, step: &str) -> &mut Self {
        let attempt = self.awaited(step, CommandKind::Compensation);
        self.when_reply_at(
            step,
            attempt,
            CommandKind::Compensation,
            Outcome::success(Value::Null),
        )
    }

    /// A failure reply to the latest attempt of `step`'s compensation.
    pub fn when_compensation_failed(&mut self, step: &str, reason: &str) -> &mut Self {
        let attempt = self.awaited(step, CommandKind::Compensation);
        self.when_reply_at(
            step,
            attempt,
            CommandKind::Compensation,
            Outcome::failure(reason),
        )
    }

    /// A reply with explicit fencing fields (for stale and duplicate replies).
    pub fn when_reply_at(
        &mut self,
        step: &str,
        attempt: u32,
        kind: CommandKind,
        outcome: Outcome,
    ) -> &mut Self {
        let reply = Reply {
            saga_id: self.state.saga_id,
            step: step.to_owned(),
            attempt,
            kind,
            outcome,
        };
        self.when(Input::Reply(reply))
    }

    /// Fires a timer now, whether it is pending or not (for stale and duplicate timers).
    pub fn when_timer(&mut self, step: &str, attempt: u32, kind: TimerKind) -> &mut Self {
        let key = TimerKey {
            step: step.to_owned(),
            attempt,
            kind,
        };
        self.timers.retain(|t| t.key != key);
        self.when(Input::TimerFired(key))
    }

    /// An operator resumes a parked saga.
    pub fn when_retry_parked(&mut self) -> &mut Self {
        self.when(Input::RetryParked)
    }

    /// Advances the virtual clock by `by`, firing the timers that fall due, in order of due time
    /// (each at its own due time).
    pub fn advance(&mut self, by: Duration) -> &mut Self {
        let until = self.now + TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
        loop {
            let next = self
                .timers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.due_at <= until)
                .min_by_key(|(i, t)| (t.due_at, *i))
                .map(|(i, _)| i);
            let Some(index) = next else { break };
            let timer = self.timers.remove(index);
            if timer.due_at > self.now {
                self.now = timer.due_at;
            }
            self.when(Input::TimerFired(timer.key));
        }
        self.now = until;
        self
    }

    /// Asserts the action and compensation commands sent so far, as `(step, kind)` in order.
    pub fn then_commands(&self, expected: &[(&str, CommandKind)]) -> &Self {
        let actual: Vec<(&str, CommandKind)> = self
            .commands
            .iter()
            .map(|c| (c.step.as_str(), c.kind))
            .collect();
        assert_eq!(actual, expected, "commands sent");
        self
    }

    /// Asserts the steps whose compensation was issued (first attempts), in order.
    pub fn then_compensations(&self, expected: &[&str]) -> &Self {
        assert_eq!(self.compensations(), expected, "compensations issued");
        self
    }

    /// Asserts the status.
    pub fn then_status(&self, expected: &SagaStatus) -> &Self {
        assert_eq!(&self.state.status, expected, "saga status");
        self
    }

    /// Asserts something about the state.
    pub fn then_state(&self, check: impl FnOnce(&SagaState)) -> &Self {
        check(&self.state);
        self
    }

    /// The state.
    pub fn state(&self) -> &SagaState {
        &self.state
    }

    /// The status.
    pub fn status(&self) -> &SagaStatus {
        &self.state.status
    }

    /// The saga data, decoded.
    pub fn data(&self) -> D {
        D::deserialize(&self.state.data).unwrap_or_else(|e| panic!("saga data: {e}"))
    }

    /// Every command sent so far.
    pub fn commands(&self) -> &[SagaCommand] {
        &self.commands
    }

    /// The whole history of the instance.
    pub fn history(&self) -> &[SagaEvent] {
        &self.history
    }

    /// The timers pending (stored and not fired or cancelled).
    pub fn pending_timers(&self) -> &[TimerRequest] {
        &self.timers
    }

    /// The steps whose compensation was issued (first attempts), in order.
    pub fn compensations(&self) -> Vec<&str> {
        self.history
            .iter()
            .filter_map(|e| match e {
                SagaEvent::StepCompensating { step, attempt: 1 } => Some(step.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Why the last input was ignored (`None` if it made a transition).
    pub fn last_ignored(&self) -> Option<&Ignored> {
        self.last_ignored.as_ref()
    }

    /// The virtual time.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }
}
