//! # eventfold-saga
//!
//! Orchestrated sagas: a pure core (no I/O, no database, no broker, no clock) and, in
//! [`runtime`], the orchestrator, the durable timer scheduler and the participant helper that
//! run it on the event store and the outbox.
//!
//! * **Definition** ([`Saga::define`] → [`SagaBuilder`] → [`SagaDefinition`]): typed saga data,
//!   steps with stable names (participant invocations or local steps), compensations, timeouts,
//!   retry policies, parallel groups (fork/join), at most one pivot, data migrations.
//! * **Events** ([`SagaEvent`]): a saga instance is an event-sourced stream of its transitions
//!   (ADR 0020); [`SagaState`] is their pure fold.
//! * **Machine** ([`decide`]): `(definition, state, input, now) → Decision`, deterministic; a
//!   stale or duplicate reply or timer is [`Decision::Ignored`]. Compensation semantics: ADR 0019
//!   and the book's chapter on sagas.
//! * **Test kit** (`testing`, feature `test-util`): a virtual clock, given/when/then.
//! * **Runtime** ([`runtime`]): [`runtime::Orchestrator`] (starts in the caller's unit of work,
//!   idempotent on a business key; one transaction per transition), [`runtime::Scheduler`]
//!   (durable timers on the database clock, several instances), [`runtime::ParticipantHandler`]
//!   (commands executed once per request key, replies through the outbox).
//!
//! What the runtime does per input: load the instance (fold its events), call [`decide`] with the
//! database's `now`, then in **one transaction** append [`Transition::events`] at the expected
//! version it loaded ([`SagaState::version`]), write [`Transition::commands`] to the outbox,
//! insert [`Transition::timers`] and delete [`Transition::cancel_timers`], and mark the consumed
//! reply or timer in the inbox. A version conflict means another input won: reload and decide
//! again.
//!
//! ```
//! use std::time::Duration;
//! use eventfold_saga::{Command, RetryPolicy, Saga, SagaStatus, testing::SagaTest};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct OrderData { order_id: String, cents: u64, payment_id: Option<String> }
//!
//! #[derive(serde::Deserialize)]
//! struct Charged { payment_id: String }
//!
//! let definition = Saga::<OrderData>::define("order.place", 1)
//!     .step("reserve_stock", |s| s
//!         .invoke(|d: &OrderData| Command::new("inventory.commands", "inventory.reserve", &d.order_id))
//!         .compensate(|d: &OrderData| Command::new("inventory.commands", "inventory.release", &d.order_id))
//!         .timeout(Duration::from_secs(30))
//!         .retry(RetryPolicy::exponential(3, Duration::from_millis(100), 2.0, Duration::from_secs(5))))
//!     .pivot("charge_payment", |s| s
//!         .invoke(|d: &OrderData| Command::new("payments.commands", "payment.charge", &d.cents))
//!         .on_reply(|d: &mut OrderData, r: Charged| { d.payment_id = Some(r.payment_id); Ok(()) })
//!         .timeout(Duration::from_secs(30)))
//!     .step("schedule_shipment", |s| s
//!         .invoke(|d: &OrderData| Command::new("shipping.commands", "shipment.schedule", &d.order_id))
//!         .timeout(Duration::from_secs(30)))
//!     .build()?;
//!
//! let mut t = SagaTest::new(&definition)
//!     .given_started(OrderData { order_id: "o-1".into(), cents: 1200, payment_id: None });
//! t.when_reply("reserve_stock", serde_json::json!({}))
//!     .when_reply("charge_payment", serde_json::json!({ "payment_id": "p-9" }))
//!     .when_reply("schedule_shipment", serde_json::json!({}));
//! t.then_status(&SagaStatus::Completed);
//! assert_eq!(t.data().payment_id.as_deref(), Some("p-9"));
//! # Ok::<(), eventfold_saga::DefinitionError>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod choreography;
pub mod definition;
pub mod error;
pub mod event;
pub mod machine;
pub mod message;
pub mod runtime;
pub mod state;
#[cfg(feature = "test-util")]
pub mod testing;

pub use definition::{
    ParallelBuilder, RetryPolicy, Saga, SagaBuilder, SagaData, SagaDefinition, StepBuilder,
    StepInfo,
};
pub use error::{DefinitionError, MigrationError, SagaError, StepError};
pub use event::SagaEvent;
pub use machine::{
    Decision, Ignored, Input, TimerKey, TimerKind, TimerRequest, Transition, decide,
};
pub use message::{Command, CommandKind, Outcome, Reply, SagaCommand};
pub use state::{CompensationPhase, SagaState, SagaStatus, StepPhase, StepState};

/// The book's chapter on sagas, so that its examples are compiled and run as doctests.
#[cfg(all(doctest, feature = "test-util"))]
#[doc = include_str!("../../book/src/sagas.md")]
pub struct BookSagasChapter;

/// The book's chapter on running sagas, compiled and run as doctests.
#[cfg(all(doctest, feature = "test-util"))]
#[doc = include_str!("../../book/src/saga-runtime.md")]
pub struct BookSagaRuntimeChapter;
