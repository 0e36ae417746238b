//! The event store contract on PostgreSQL (a fresh database per test).
mod common;
eventfold::eventstore::eventstore_contract_tests!(common::postgres);
