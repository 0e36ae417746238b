//! The saga runtime: runs definitions against an event store that implements
//! [`SagaStore`](eventfold_eventstore::SagaStore) (memory, SQLite, PostgreSQL), with commands and
//! replies through the outbox, the relay and a consumer with its inbox.
//!
//! | piece | what it does | runs where |
//! |---|---|---|
//! | [`Orchestrator`] | starts sagas (in the caller's unit of work, idempotent on a business key) and applies inputs: one transition, one transaction | the orchestrating service |
//! | [`ReplyHandler`] / [`Orchestrator::reply_consumer`] | applies replies from the reply topic, beside their inbox marks | the orchestrating service |
//! | [`Scheduler`] | fires durable timers (deadlines, backoffs, operator retries) on the database's clock; any number of instances | the orchestrating service |
//! | [`ParticipantHandler`] | executes commands once per request key and replies through the outbox | each participant service |
//! | [`load`] | an instance's row, fold, history and timers (`sagas show`) | tools |
//!
//! # One transition, one transaction
//!
//! For every input the orchestrator loads the instance's stream (the saga's own events, ADR
//! 0020), asks the pure machine ([`crate::decide`]) with the database's `now`, and writes in one
//! unit of work: the saga events at the version it loaded, the commands (outbox rows), the
//! timers it sets and cancels, and the instance's row in the saga table. A reply's inbox mark,
//! a timer's deletion, or the caller's own writes (an order whose placement starts the saga)
//! are in the same unit of work. A crash at any point either committed all of it or none of it;
//! the relay delivers the commands at least once, the participant deduplicates by request key,
//! the orchestrator's inbox and fences drop duplicate replies, and the timers bring a saga
//! whose reply was lost to its timeout. Every started saga therefore ends `completed`,
//! `compensated` or `failed`, or parks visibly as `compensation_failed`.
//!
//! # Shared commits
//!
//! Where many inputs arrive at once they share transactions, with the same guarantees:
//!
//! - **Starts.** [`Orchestrator::start`] (a saga started in a unit of work of its own) queues
//!   its start; starts queued while a batch is being written are started by the next one, in
//!   one unit of work: each business key registered (in key order), each first transition
//!   decided at the database's clock of its insert, all written with one call
//!   (`SagaStore::write_saga_transitions`, one statement on PostgreSQL), one commit, then each
//!   caller answered. A lone start waits for nobody. A batch that fails is started again one
//!   start at a time, which idempotency on the business key makes safe.
//!   [`Orchestrator::start_in`] runs in the caller's unit of work and is never batched.
//! - **Replies.** [`Orchestrator::reply_consumer`] applies a polled batch of replies in one
//!   unit of work: their instances locked with one call, each transition decided in order, the
//!   transitions of distinct instances written with one call (ADR 0033).
//!
//! # Wiring a service
//!
//! ```
//! use std::time::Duration;
//! use eventfold_core::BoxError;
//! use eventfold_eventstore::memory::{MemoryStore, MemoryUnitOfWork};
//! use eventfold_outbox::{InProcessBroker, Relay};
//! use eventfold_saga::{Command, Outcome, Saga, SagaStatus};
//! use eventfold_saga::runtime::{Orchestrator, Participant, ParticipantContext, ParticipantHandler};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Order { id: String, cents: u64 }
//!
//! /// The payment service: charges an order (a real one would append to its own aggregate).
//! struct Payments;
//! impl Participant<MemoryUnitOfWork> for Payments {
//!     async fn execute(&self, _uow: &mut MemoryUnitOfWork, cx: &ParticipantContext) -> Result<Outcome, BoxError> {
//!         let cents: u64 = cx.payload()?;
//!         Ok(if cents > 10_000 { Outcome::failure("card declined") }
//!            else { Outcome::success(serde_json::json!({ "charged": cents })) })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let definition = Saga::<Order>::define("order.pay", 1)
//!     .step("charge", |s| s
//!         .invoke(|o: &Order| Command::new("payments.commands", "payment.charge", &o.cents))
//!         .timeout(Duration::from_secs(30)))
//!     .build()?;
//! let store = MemoryStore::new();                  // one database for both services here
//! let broker = InProcessBroker::new();
//! let orchestrator = Orchestrator::new(store.clone(), definition);
//! let mut replies = orchestrator.reply_consumer(broker.consumer("orders", &["order.pay.replies"]));
//! let mut payments = ParticipantHandler::new("payments", store.clone(), Payments)
//!     .consumer(broker.consumer("payments", &["payments.commands"]));
//! let mut relay = Relay::new(store.clone(), broker.clone());
//!
//! let started = orchestrator.start("order-1", Order { id: "order-1".into(), cents: 500 }, None).await?;
//! relay.run_once().await?;                                     // the command to the broker
//! payments.run_once(Duration::from_millis(100)).await?;        // charged, reply in the outbox
//! relay.run_once().await?;                                     // the reply to the broker
//! replies.run_once(Duration::from_millis(100)).await?;         // the saga completes
//! let state = orchestrator.state(started.saga_id).await?.expect("started");
//! assert_eq!(state.status, SagaStatus::Completed);
//! # Ok(())
//! # }
//! ```

mod cache;
mod error;
mod history;
mod orchestrator;
mod participant;
mod replies;
mod scheduler;
mod starts;
mod transition;
pub mod wire;

pub use error::RuntimeError;
pub use history::{HistoryEntry, SAGA_STREAM_TYPE, SagaInstance, load};
pub use orchestrator::{
    Applied, DEFAULT_STATE_CACHE, Orchestrator, RETRY_PARKED, Started, instance_stream,
};
pub use participant::{Participant, ParticipantContext, ParticipantHandler};
pub use replies::{REPLY_LANES, ReplyHandler};
pub use scheduler::{Scheduler, TickReport};
