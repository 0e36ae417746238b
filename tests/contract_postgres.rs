//! The event store contract on PostgreSQL (a fresh database per test).
mod common;
eventfold::eventstore::eventstore_contract_tests!(common::postgres);

/// The same contract with write coalescing on (ADR 0024): appends share commits.
mod coalescing {
    #[allow(unused_imports)]
    use super::*;
    eventfold::eventstore::eventstore_contract_tests!(common::postgres_coalescing);
}
