//! The event store contract on SQLite (a fresh database file per test).
mod common;
eventfold::eventstore::eventstore_contract_tests!(common::sqlite);
