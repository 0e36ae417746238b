//! Invariants of the repository for random command sequences, on every backend:
//! the state the repository returns equals the fold of the stored events after a reload, and
//! snapshot + tail equals a full replay.
mod common;

use eventfold::eventstore::contract::{Tally, TallyCommand, TallyEvent};
use eventfold::eventstore::{EventStore, ExecuteError, Repository};
use eventfold::{Aggregate, CommandMetadata, StreamId, Upcasters, decode_event, decode_event_ref};
use proptest::prelude::*;

fn command() -> impl Strategy<Value = TallyCommand> {
    prop_oneof![
        4 => (0u64..400).prop_map(TallyCommand::Add),
        2 => proptest::collection::vec(0u64..10, 0..4).prop_map(TallyCommand::AddMany),
        1 => Just(TallyCommand::Reset),
    ]
}

async fn check<S: EventStore>(
    store: S,
    id: &str,
    commands: &[TallyCommand],
    every: u64,
) -> Result<(), TestCaseError> {
    let with = Repository::<Tally, _>::new(store.clone()).with_snapshots(every);
    let without = Repository::<Tally, _>::new(store.clone());
    let mut last = Tally::default();
    let mut version = 0;
    for command in commands {
        match with.execute(id, command, CommandMetadata::new()).await {
            Ok(done) => {
                prop_assert_eq!(done.version, version + done.events.len() as u64);
                version = done.version;
                last = done.state;
            }
            Err(ExecuteError::Rejected { .. }) => {}
            Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other}"))),
        }
    }
    let stream = StreamId::new("tally", id).expect("stream id");
    let stored = store.read_stream(&stream, 1, u64::MAX).await.expect("read");
    prop_assert_eq!(stored.len() as u64, version);
    let mut events: Vec<TallyEvent> = Vec::with_capacity(stored.len());
    for e in stored {
        let by_ref = decode_event_ref::<TallyEvent>(&e, &Upcasters::new()).expect("decode by ref");
        let owned = decode_event::<TallyEvent>(e, &Upcasters::new()).expect("decode");
        prop_assert_eq!(
            &by_ref,
            &owned,
            "decoding a borrowed event gives the same envelope"
        );
        events.push(owned.payload);
    }
    let folded = Tally::fold(events.iter());
    prop_assert_eq!(
        &folded,
        &last,
        "fold of stored events differs from the returned state"
    );
    prop_assert_eq!(
        &without.load(id).await.expect("replay").state,
        &last,
        "full replay differs"
    );
    prop_assert_eq!(
        &with.load(id).await.expect("snapshot").state,
        &last,
        "snapshot + tail differs"
    );
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn memory_fold_equals_returned_state(commands in proptest::collection::vec(command(), 1..40), every in 1u64..6) {
        runtime().block_on(async {
            let (store, _) = common::memory().await;
            check(store, "p", &commands, every).await
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sqlite_fold_equals_returned_state(commands in proptest::collection::vec(command(), 1..30), every in 1u64..6) {
        runtime().block_on(async {
            let (store, _file) = common::sqlite().await;
            check(store, "p", &commands, every).await
        })?;
    }
}

#[test]
fn postgres_fold_equals_returned_state() {
    // One database for all cases; each case uses its own stream.
    let rt = runtime();
    let (store, _db) = rt.block_on(common::postgres());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let strategy = (proptest::collection::vec(command(), 1..30), 1u64..6);
    runner
        .run(&strategy, |(commands, every)| {
            let id = uuid::Uuid::now_v7().to_string();
            rt.block_on(check(store.clone(), &id, &commands, every))
        })
        .expect("property holds on PostgreSQL");
}
