//! The event store contract on the in-memory backend.
mod common;
eventfold::eventstore::eventstore_contract_tests!(common::memory);

/// The saga store's rules on memory, until every backend has a saga store (they then join the
/// `sagas` group of the macro).
mod sagas_memory {
    macro_rules! rules {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = super::common::memory().await;
                eventfold::eventstore::contract::sagas::$name(store).await;
            }
        )*};
    }
    rules!(
        registering_a_saga_is_idempotent_on_its_key,
        concurrent_registrations_agree_on_one_owner,
        sagas_are_updated_listed_and_counted,
        timers_are_stored_moved_and_deleted,
        due_timers_are_claimed_oldest_first_by_type,
        a_claim_expires_after_its_lease,
        leases_grow_with_the_claims,
        concurrent_claims_are_exclusive,
        request_outcomes_are_recorded_once,
        timer_requests_need_a_registered_saga,
    );
}
