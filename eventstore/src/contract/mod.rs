//! The backend contract suite (feature `test-util`): one definition of the event store's
//! behaviour, run against every backend.
//!
//! # Layout
//!
//! The suite is split by concern, one module per group of rules. Each rule is a public
//! `async fn(store)` that takes a fresh, empty store and panics (with a message) when the
//! backend breaks the contract:
//!
//! | group | what it checks | store trait |
//! | --- | --- | --- |
//! | [`events`] | append, read, expected versions, units of work, snapshots, upcasting | [`EventStore`] |
//! | [`commands`] | the repository's commands: idempotency, conflicts, rejections, the state cache | [`EventStore`] |
//! | [`log`] | the global log: order, filters, checkpoints, subscriptions | [`EventStore`] |
//! | [`outbox`] | outbox rows written with their events, routing, CloudEvents headers | [`crate::OutboxRelayStore`] |
//! | [`relay`] | what a relay relies on: claims, leases, failures, dead letters | [`crate::OutboxRelayStore`] |
//! | [`inbox`] | the consumer's inbox marks and parked messages | [`crate::InboxStore`] |
//! | [`projection`] | projection checkpoints, generations, pause, reset, parked events | [`crate::ProjectionStore`] |
//! | [`trace`] | what a flow left: events, sent, received and parked messages, dead letters, pending timers, and nothing of other flows or rolled-back writes | [`crate::TraceStore`] |
//! | [`sagas`] | saga instances by business key (also concurrent), updates, listing, counts; timers; claims of due timers (type, order, limit, leases, exclusivity); request outcomes; timer requests | [`crate::SagaStore`] |
//!
//! [`crate::eventstore_contract_tests!`] turns every group into `#[tokio::test]` functions for
//! one backend, one test module per group (`events::expected_version_rules`, ...). Rules that
//! need the relay itself (`eventfold-outbox`, which depends on this crate) live beside the relay
//! instead, in the workspace's `tests/relay.rs`.
//!
//! # Running the suite against a new backend
//!
//! 1. Implement [`EventStore`], [`crate::OutboxStore`], [`crate::OutboxRelayStore`],
//!    [`crate::InboxStore`], [`crate::ProjectionStore`], [`crate::SagaStore`] and
//!    [`crate::TraceStore`] for the store.
//! 2. Enable this crate's `test-util` feature in the backend's dev-dependencies, beside
//!    `tokio` with the `macros` and `rt-multi-thread` features.
//! 3. Write a fixture: an async fn, reachable from the test file's root, that returns a fresh,
//!    empty store and a guard that lives until the test ends (a temporary database that is
//!    dropped with it, or `()`). Every test calls it once.
//! 4. Instantiate the suite in an integration test file:
//!
//! ```text
//! // tests/contract_mystore.rs
//! async fn fresh() -> (MyStore, ()) {
//!     (MyStore::new(), ())
//! }
//! eventfold_eventstore::eventstore_contract_tests!(fresh);
//! ```
//!
//! The fixture may be a path (`common::postgres`); the generated test modules glob-import
//! their parent to reach it. A backend that implements only part of the traits can call the
//! rules of its groups directly instead, one `#[tokio::test]` each:
//! `eventfold_eventstore::contract::events::expected_version_rules(store).await`.
//!
//! # Adding a rule
//!
//! Write the `pub async fn` in its group's module and add its name to that group's list in
//! [`crate::eventstore_contract_tests!`]; every backend then runs it.

pub mod commands;
pub mod events;
pub mod inbox;
pub mod log;
pub mod outbox;
pub mod projection;
pub mod relay;
pub mod sagas;
pub mod trace;

use eventfold_core::{
    Aggregate, CodecError, Event, EventTypeInfo, NewEvent, OutboxMessage, StreamId,
};
use serde::{Deserialize, Serialize};

use crate::error::{ExpectedVersion, StoreError};
use crate::store::EventStore;

/// Runs the whole contract against one backend: one `#[tokio::test]` per rule, in one module
/// per group (`events`, `commands`, `log`, `outbox`, `relay`, `inbox`, `projection`, `sagas`, `trace`).
/// `$fresh` is an async fn returning `(store, guard)`; the guard (for example a test database)
/// lives until the test ends. See the [`contract`](crate::contract) module for a walk-through.
#[macro_export]
macro_rules! eventstore_contract_tests {
    ($fresh:path) => {
        $crate::eventstore_contract_tests!(@group $fresh; events:
            append_and_read_round_trip_keeps_all_metadata,
            expected_version_rules,
            empty_append_is_refused,
            payloads_at_the_limit_are_stored_and_past_it_refused,
            duplicate_event_id_is_refused_and_nothing_is_written,
            large_append_keeps_order_and_names_a_late_duplicate,
            read_stream_from_version_with_limit,
            unit_of_work_sees_its_own_writes,
            rollback_leaves_nothing_behind,
            dropped_unit_of_work_rolls_back,
            cancelled_begin_leaves_the_store_usable,
            snapshots_keep_the_latest,
            repository_snapshot_plus_tail_equals_full_replay,
            snapshot_with_another_version_is_ignored,
            upcasting_on_read,
            decode_errors_name_stream_and_event,
            global_positions_increase,
        );
        $crate::eventstore_contract_tests!(@group $fresh; commands:
            idempotent_commands_append_once,
            concurrent_duplicates_of_a_command_append_once,
            command_id_reused_on_another_stream_is_refused,
            repository_reports_conflicts_and_retries,
            rejected_command_writes_nothing,
            state_cache_survives_writers_it_does_not_know,
        );
        $crate::eventstore_contract_tests!(@group $fresh; log:
            log_reads_every_committed_event_in_order,
            log_filters_skip_over_other_events,
            log_never_shows_rolled_back_events,
            subscription_catches_up_then_follows_live_appends,
            subscription_resumes_from_a_stored_checkpoint,
        );
        $crate::eventstore_contract_tests!(@group $fresh; outbox:
            outbox_rows_commit_with_their_events_or_not_at_all,
            concurrent_appends_write_outbox_rows_in_version_order,
            append_and_enqueue_writes_events_and_messages_together,
            append_many_writes_each_append_in_order,
        );
        $crate::eventstore_contract_tests!(@group $fresh; relay:
            relay_claims_one_due_row_per_key_and_parks_what_fails,
            relay_leases_split_the_slots_and_fence_completion,
            retrying_key_does_not_starve_others,
        );
        $crate::eventstore_contract_tests!(@group $fresh; inbox:
            inbox_marks_a_message_once_per_consumer,
            inbox_marks_a_batch_once_per_consumer,
        );
        $crate::eventstore_contract_tests!(@group $fresh; projection:
            projection_checkpoints_commit_with_the_unit_of_work,
        );
        $crate::eventstore_contract_tests!(@group $fresh; sagas:
            registering_a_saga_is_idempotent_on_its_key,
            registering_sagas_at_once_answers_each_in_order,
            concurrent_registrations_agree_on_one_owner,
            sagas_are_updated_listed_and_counted,
            timers_are_stored_moved_and_deleted,
            due_timers_are_claimed_oldest_first_by_type,
            a_claim_expires_after_its_lease,
            a_released_claim_is_due_again_at_once,
            leases_grow_with_the_claims,
            concurrent_claims_are_exclusive,
            request_outcomes_are_recorded_once,
            timer_requests_need_a_registered_saga,
            locking_a_saga_serialises_units_of_work,
            a_transition_ends_with_its_timers_and_row,
            a_transition_is_written_at_once,
            transitions_of_several_instances_are_written_at_once,
        );
        $crate::eventstore_contract_tests!(@group $fresh; trace:
            trace_reads_every_record_of_a_flow,
        );
    };
    (@group $fresh:path; $group:ident: $($name:ident),* $(,)?) => {
        mod $group {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = $fresh().await;
                    $crate::contract::$group::$name(store).await;
                }
            )*
        }
    };
}

/// The events of the contract's test aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TallyEvent {
    /// `tally.added` (version 2: v1 had `amount` instead of `n`).
    Added {
        /// How much.
        n: u64,
    },
    /// `tally.reset`.
    Reset,
}

#[derive(Serialize, Deserialize)]
struct AddedPayload {
    n: u64,
}

impl Event for TallyEvent {
    const CONTENT_TYPE: &'static str = "application/json";

    fn event_type(&self) -> &'static str {
        match self {
            TallyEvent::Added { .. } => "tally.added",
            TallyEvent::Reset => "tally.reset",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            TallyEvent::Added { .. } => 2,
            TallyEvent::Reset => 1,
        }
    }

    fn event_types() -> &'static [EventTypeInfo] {
        &[
            EventTypeInfo {
                name: "tally.added",
                version: 2,
                variant: "Added",
            },
            EventTypeInfo {
                name: "tally.reset",
                version: 1,
                variant: "Reset",
            },
        ]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            TallyEvent::Added { n } => {
                eventfold_core::codec::json::encode("tally.added", &AddedPayload { n: *n })
            }
            TallyEvent::Reset => Ok(b"{}".to_vec()),
        }
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        match event_type {
            "tally.added" => {
                let p: AddedPayload = eventfold_core::codec::json::decode(event_type, payload)?;
                Ok(TallyEvent::Added { n: p.n })
            }
            "tally.reset" => Ok(TallyEvent::Reset),
            other => Err(CodecError::UnknownEventType {
                event_type: other.to_owned(),
            }),
        }
    }
}

/// The contract's test aggregate: a running total with a cap.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The total.
    pub total: u64,
    /// Events applied.
    pub applied: u64,
}

/// Commands of [`Tally`].
#[derive(Debug, Clone)]
pub enum TallyCommand {
    /// Add `n` (rejected above a total of 1000).
    Add(u64),
    /// Add each of these as its own event.
    AddMany(Vec<u64>),
    /// Reset to zero.
    Reset,
}

/// The domain error of [`Tally`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the total would exceed 1000")]
pub struct OverCap;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = OverCap;

    fn handle(&self, command: &TallyCommand) -> Result<Vec<TallyEvent>, OverCap> {
        match command {
            TallyCommand::Add(n) if self.total + n > 1000 => Err(OverCap),
            TallyCommand::Add(n) => Ok(vec![TallyEvent::Added { n: *n }]),
            TallyCommand::AddMany(ns) => {
                Ok(ns.iter().map(|n| TallyEvent::Added { n: *n }).collect())
            }
            TallyCommand::Reset => Ok(vec![TallyEvent::Reset]),
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        self.applied += 1;
        match event {
            TallyEvent::Added { n } => self.total += n,
            TallyEvent::Reset => self.total = 0,
        }
    }
}

/// `tally-<id>`, the stream of the contract's test aggregate.
fn stream(id: &str) -> StreamId {
    StreamId::new("tally", id).expect("valid stream id")
}

/// A `tally.added` event (schema version 2) of `n`.
fn added(n: u64) -> NewEvent {
    NewEvent::raw("tally.added", 2, format!(r#"{{"n":{n}}}"#).into_bytes())
}

async fn append_ok<S: EventStore>(
    store: &S,
    id: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) {
    store
        .append(id, expected, events)
        .await
        .expect("append should succeed");
}

/// The error of an append that the store must refuse.
async fn append_err<S: EventStore>(
    store: &S,
    id: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> StoreError {
    store
        .append(id, expected, events)
        .await
        .expect_err("the append should be refused")
}

/// The application's own outbox message of the contract and the relay tests: a billing request
/// for the customer `key`, on the topic `billing`, with an empty JSON payload.
pub fn billing_request(key: &str) -> OutboxMessage {
    OutboxMessage::new("billing", key, "billing.requested", b"{}".to_vec())
}
