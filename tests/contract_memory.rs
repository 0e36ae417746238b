//! The event store contract on the in-memory backend.
mod common;
eventfold::eventstore::eventstore_contract_tests!(common::memory);
