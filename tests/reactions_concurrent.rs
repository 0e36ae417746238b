//! Several instances of one local reaction on the same store, under real concurrency (PostgreSQL:
//! one connection pool per instance; SQLite: one file): every event of the log takes effect
//! exactly once, because each reaction commits with the move of the checkpoint it locked.
mod common;

use common::ticks::{Note, TickEvent};

use std::collections::HashMap;
use std::time::Duration;

use eventfold::eventstore::{ExpectedVersion, ProjectionStore};
use eventfold::saga::choreography::LocalReactor;
use eventfold::{NewEvent, StreamId};

const EVENTS: u32 = 150;
const INSTANCES: usize = 4;

async fn each_event_takes_effect_once<S: ProjectionStore>(store: S) {
    let ticks = StreamId::new("tick", "1").expect("stream");
    let writer = {
        let store = store.clone();
        let ticks = ticks.clone();
        tokio::spawn(async move {
            for n in 0..EVENTS {
                let tick = NewEvent::encode(
                    &TickEvent::Ticked { n: u64::from(n) },
                    "",
                    &eventfold::CommandMetadata::new(),
                )
                .expect("encode");
                store
                    .append(&ticks, ExpectedVersion::Any, vec![tick])
                    .await
                    .expect("append");
            }
        })
    };
    let mut reactors = Vec::new();
    for _ in 0..INSTANCES {
        let store = store.clone();
        reactors.push(tokio::spawn(async move {
            let mut reactor = LocalReactor::new(store.clone(), Note).batch_size(7);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                reactor.run_once().await.expect("reactor");
                let done = store
                    .stream_version(&StreamId::new("effects", "all").expect("stream"))
                    .await
                    .expect("version");
                if done >= u64::from(EVENTS) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{done} effects in 60 s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    writer.await.expect("writer");
    for r in reactors {
        r.await.expect("reactor task");
    }
    // Let any reactor still in a transaction finish, then count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let effects = store
        .read_stream(&StreamId::new("effects", "all").expect("stream"), 1, 10_000)
        .await
        .expect("read");
    let mut per_cause: HashMap<_, usize> = HashMap::new();
    for e in &effects {
        *per_cause.entry(e.causation_id).or_default() += 1;
    }
    let twice: Vec<_> = per_cause.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events reacted to more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    assert_eq!(
        effects.len(),
        EVENTS as usize,
        "every event took effect once across {INSTANCES} instances"
    );
}

common::named_backend_tests!(4 => |store| each_event_takes_effect_once(store);
    postgres_instances_of_a_reaction_share_the_log: postgres,
    sqlite_instances_of_a_reaction_share_the_log: sqlite,
);
