//! Given/when/then tests for aggregates (feature `test-util`).
//!
//! An aggregate is a pure function, so its tests need no database: given past events, when a
//! command is handled, then expect new events or an error.
//!
//! ```
//! # use eventfold_core::{Aggregate, Event, EventTypeInfo, CodecError};
//! # #[derive(Debug, Clone, PartialEq)]
//! # enum CounterEvent { Incremented }
//! # impl Event for CounterEvent {
//! #     const CONTENT_TYPE: &'static str = "application/json";
//! #     fn event_type(&self) -> &'static str { "counter.incremented" }
//! #     fn schema_version(&self) -> u32 { 1 }
//! #     fn event_types() -> &'static [EventTypeInfo] { &[] }
//! #     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(vec![]) }
//! #     fn decode(t: &str, _: &[u8]) -> Result<Self, CodecError> { Ok(CounterEvent::Incremented) }
//! # }
//! # #[derive(Default, Debug)]
//! # struct Counter { value: u8 }
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("overflow")]
//! # struct Overflow;
//! # impl Aggregate for Counter {
//! #     const TYPE: &'static str = "counter";
//! #     type Command = ();
//! #     type Event = CounterEvent;
//! #     type Error = Overflow;
//! #     fn handle(&self, _: &()) -> Result<Vec<CounterEvent>, Overflow> {
//! #         if self.value == 2 { Err(Overflow) } else { Ok(vec![CounterEvent::Incremented]) }
//! #     }
//! #     fn apply(&mut self, _: &CounterEvent) { self.value += 1; }
//! # }
//! use eventfold_core::testing::given;
//!
//! given::<Counter>([]).when(()).then_expect_events([CounterEvent::Incremented]);
//! given::<Counter>([CounterEvent::Incremented, CounterEvent::Incremented]).when(()).then_expect_error(Overflow);
//! given::<Counter>([CounterEvent::Incremented])
//!     .when(())
//!     .then_expect_state(|counter| assert_eq!(counter.value, 2));
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;

/// Starts a test with the events that already happened.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in events {
        state.apply(&event);
    }
    Given { state }
}

/// The state built from past events.
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// Handles `command` in that state.
    pub fn when(self, command: A::Command) -> When<A> {
        let result = self.state.handle(&command);
        When {
            state: self.state,
            result,
        }
    }

    /// The state itself.
    pub fn state(&self) -> &A {
        &self.state
    }
}

/// The outcome of a command, to check.
pub struct When<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> When<A> {
    /// Expects exactly these events, in this order.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>)
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected, "the command produced other events"),
            Err(e) => panic!("expected events {expected:?}, but the command failed: {e}"),
        }
    }

    /// Expects the command to produce no event (and no error).
    #[track_caller]
    pub fn then_expect_no_events(self)
    where
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => assert!(events.is_empty(), "expected no events, got {events:?}"),
            Err(e) => panic!("expected no events, but the command failed: {e}"),
        }
    }

    /// Expects this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => {
                panic!("expected error {expected:?}, but the command produced {events:?}")
            }
            Err(e) => assert_eq!(e, expected, "the command failed with another error"),
        }
    }

    /// Expects an error whose message is `message`.
    #[track_caller]
    pub fn then_expect_error_message(self, message: &str)
    where
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error `{message}`, but the command produced {events:?}"),
            Err(e) => assert_eq!(
                e.to_string(),
                message,
                "the command failed with another error"
            ),
        }
    }

    /// Expects either these events or this error.
    #[track_caller]
    pub fn then_expect(self, expected: Result<Vec<A::Event>, A::Error>)
    where
        A::Event: PartialEq + Debug,
        A::Error: PartialEq + Debug,
    {
        assert_eq!(self.result, expected, "the command had another outcome");
    }

    /// Applies the produced events and hands the new state to `check`.
    #[track_caller]
    pub fn then_expect_state(self, check: impl FnOnce(&A)) {
        match self.result {
            Ok(events) => {
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                check(&state);
            }
            Err(e) => panic!("expected a new state, but the command failed: {e}"),
        }
    }

    /// The raw outcome.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
