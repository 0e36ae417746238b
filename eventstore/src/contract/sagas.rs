//! The saga store contract: the room for the rules every backend's saga store will follow
//! (saga instances, their state and versions, timeouts, the messages a step sends).
//!
//! It is empty for now. When the saga store comes, its rules are written here as
//! `pub async fn rule<S: SagaStore>(store: S)`, in the style of the other groups (a fresh,
//! empty store in; a panic with a message when the backend breaks the rule), and their names
//! go into the `sagas` group of [`crate::eventstore_contract_tests!`], which already
//! instantiates an (empty) `sagas` test module for every backend.
