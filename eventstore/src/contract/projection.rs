//! Projection bookkeeping: checkpoints that move only when their unit of work commits,
//! generations being built and switched, pause, reset requests, status and parked events.

use eventfold_core::{NewEvent, StreamId};

use crate::error::ExpectedVersion;
use crate::log::{Checkpoint, LogFilter};
use crate::projection::{ParkedEvent, ProjectionState, ProjectionStore};
use crate::store::UnitOfWork;

/// The stored state of the projection `name`, which must exist.
async fn state_of<S: ProjectionStore>(store: &S, name: &str) -> ProjectionState {
    store
        .projection_state(name)
        .await
        .expect("state")
        .expect("exists")
}

/// Projection bookkeeping: checkpoints move only when their unit of work commits; generations,
/// builds, pause, reset requests and parked events are kept per projection.
pub async fn projection_checkpoints_commit_with_the_unit_of_work<S: ProjectionStore>(store: S) {
    let stream = StreamId::new("tally", "p-1").expect("stream id");
    let appended = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![
                NewEvent::raw("tally.reset", 1, b"{}".to_vec()),
                NewEvent::raw("tally.reset", 1, b"{}".to_vec()),
            ],
        )
        .await
        .expect("append");
    // On PostgreSQL a transaction of another database may hold the log back for a moment.
    let mut batch = store
        .read_log(Checkpoint::START, 10, &LogFilter::all())
        .await
        .expect("read");
    for _ in 0..500 {
        if batch.events.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        batch = store
            .read_log(Checkpoint::START, 10, &LogFilter::all())
            .await
            .expect("read");
    }
    assert_eq!(batch.events.len(), 2, "both events are readable");
    let first = batch.events[0].checkpoint;
    assert_eq!(
        store
            .checkpoint_at(appended.positions[0])
            .await
            .expect("checkpoint at"),
        Some(first),
        "the checkpoint after an event is found by its position"
    );
    assert_eq!(store.checkpoint_at(999_999).await.expect("none"), None);
    assert!(
        store
            .projection_state("orders")
            .await
            .expect("state")
            .is_none()
    );

    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .create_projection(&mut uow, "orders", 1)
            .await
            .expect("create")
    );
    assert!(
        !store
            .create_projection(&mut uow, "orders", 1)
            .await
            .expect("again")
    );
    uow.commit().await.expect("commit");
    let state = state_of(&store, "orders").await;
    assert_eq!(
        (
            state.generation,
            state.version,
            state.checkpoint,
            state.position
        ),
        (1, 1, Checkpoint::START, 0)
    );
    assert!(!state.paused && !state.reset_requested && state.building.is_none());

    // A rolled-back checkpoint does not move.
    let mut uow = store.begin().await.expect("begin");
    let locked = store
        .lock_projection_checkpoint(&mut uow, "orders", 1)
        .await
        .expect("lock")
        .expect("row");
    assert_eq!(
        (locked.active_generation, locked.checkpoint),
        (1, Checkpoint::START)
    );
    store
        .save_projection_checkpoint(&mut uow, "orders", 1, first, appended.positions[0])
        .await
        .expect("save");
    uow.rollback().await.expect("rollback");
    assert_eq!(
        state_of(&store, "orders").await.checkpoint,
        Checkpoint::START
    );
    let mut uow = store.begin().await.expect("begin");
    store
        .save_projection_checkpoint(&mut uow, "orders", 1, first, appended.positions[0])
        .await
        .expect("save");
    uow.commit().await.expect("commit");
    let state = state_of(&store, "orders").await;
    assert_eq!(
        (state.checkpoint, state.position),
        (first, appended.positions[0])
    );

    // Pause, reset requests, status.
    assert!(
        store
            .set_projection_paused("orders", true)
            .await
            .expect("pause")
    );
    assert!(
        !store
            .set_projection_paused("nope", true)
            .await
            .expect("pause unknown")
    );
    assert!(
        store
            .request_projection_reset("orders")
            .await
            .expect("reset")
    );
    assert!(
        store
            .set_projection_status("orders", "failed", Some("boom"))
            .await
            .expect("status")
    );
    let state = state_of(&store, "orders").await;
    assert!(state.paused && state.reset_requested);
    assert_eq!(
        (state.status.as_str(), state.last_error.as_deref()),
        ("failed", Some("boom"))
    );

    // Parking moves the checkpoint in the same unit of work.
    let poison = &batch.events[1];
    let mut uow = store.begin().await.expect("begin");
    store
        .park_projection_event(
            &mut uow,
            ParkedEvent {
                projection: "orders".into(),
                generation: 1,
                event_id: poison.event.event_id,
                global_position: poison.event.global_position,
                stream_id: poison.event.stream_id.to_string(),
                event_type: poison.event.event_type.clone(),
                error: "bad payload".into(),
                parked_at: eventfold_core::metadata::now_micros(),
            },
        )
        .await
        .expect("park");
    store
        .save_projection_checkpoint(
            &mut uow,
            "orders",
            1,
            poison.checkpoint,
            poison.event.global_position,
        )
        .await
        .expect("save");
    uow.commit().await.expect("commit");
    let parked = store
        .parked_projection_events("orders", 10)
        .await
        .expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].event_id, parked[0].error.as_str()),
        (poison.event.event_id, "bad payload")
    );
    assert_eq!(state_of(&store, "orders").await.parked, 1);

    // A build generation, then the switch.
    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .lock_projection(&mut uow, "orders")
            .await
            .expect("lock")
            .is_some()
    );
    store
        .start_projection_generation(&mut uow, "orders", 2, 2)
        .await
        .expect("start");
    uow.commit().await.expect("commit");
    let state = state_of(&store, "orders").await;
    let building = state.building.expect("a build in progress");
    assert_eq!(
        (building.generation, building.version, building.checkpoint),
        (2, 2, Checkpoint::START)
    );
    let mut uow = store.begin().await.expect("begin");
    let locked = store
        .lock_projection_checkpoint(&mut uow, "orders", 2)
        .await
        .expect("lock")
        .expect("row");
    assert_eq!((locked.active_generation, locked.version), (1, 2));
    store
        .activate_projection_generation(&mut uow, "orders", 2)
        .await
        .expect("activate");
    uow.commit().await.expect("commit");
    let state = state_of(&store, "orders").await;
    assert_eq!((state.generation, state.version, state.parked), (2, 2, 0));
    assert!(state.building.is_none() && !state.reset_requested);
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        store
            .old_projection_generations(&mut uow, "orders")
            .await
            .expect("old"),
        vec![1]
    );
    store
        .remove_projection_generation(&mut uow, "orders", 1)
        .await
        .expect("remove");
    assert!(
        store
            .old_projection_generations(&mut uow, "orders")
            .await
            .expect("old")
            .is_empty()
    );
    uow.commit().await.expect("commit");
    assert_eq!(store.projection_states().await.expect("states").len(), 1);
}
