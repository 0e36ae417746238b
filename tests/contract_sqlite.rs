//! The event store contract on SQLite (a fresh database file per test).
mod common;
eventfold::eventstore::eventstore_contract_tests!(common::sqlite);

/// The same contract with write coalescing on (ADR 0024): appends share commits.
mod coalescing {
    #[allow(unused_imports)]
    use super::*;
    eventfold::eventstore::eventstore_contract_tests!(common::sqlite_coalescing);
}
