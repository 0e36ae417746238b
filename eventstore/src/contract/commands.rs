//! Commands through the repository: idempotent command ids (also under concurrency and across
//! streams), optimistic-concurrency conflicts and retries, domain rejections, and a state cache
//! that other writers make stale.

use eventfold_core::CommandMetadata;
use uuid::Uuid;

use super::{OverCap, Tally, TallyCommand, TallyEvent, added, stream};
use crate::error::{ExecuteError, ExpectedVersion, StoreError};
use crate::repository::Repository;
use crate::store::{EventStore, UnitOfWork};

/// Executing the same command id twice appends once and returns the first result.
pub async fn idempotent_commands_append_once<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone());
    let command_id = Uuid::now_v7();
    let meta = CommandMetadata::new().command_id(command_id);
    let first = repo
        .execute("idem", &TallyCommand::AddMany(vec![1, 2]), meta.clone())
        .await
        .expect("first");
    repo.execute("idem", &TallyCommand::Add(10), CommandMetadata::new())
        .await
        .expect("other");
    let again = repo
        .execute("idem", &TallyCommand::AddMany(vec![1, 2]), meta)
        .await
        .expect("second");
    assert!(!first.deduplicated);
    assert!(again.deduplicated);
    assert_eq!(again.version, first.version);
    assert_eq!(
        again.state, first.state,
        "the state right after the first execution"
    );
    let ids = |e: &[eventfold_core::Envelope<TallyEvent>]| {
        e.iter().map(|e| e.event_id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&again.events), ids(&first.events));
    assert_eq!(again.events[1].payload, TallyEvent::Added { n: 2 });
    assert_eq!(
        store
            .stream_version(&stream("idem"))
            .await
            .expect("version"),
        3
    );
    let record = store
        .find_command(command_id)
        .await
        .expect("find")
        .expect("recorded");
    assert_eq!((record.version_before, record.version_after), (0, 2));
    assert_eq!(
        first.events[0].correlation_id, command_id,
        "correlation defaults to the command id"
    );
    assert_eq!(first.events[0].causation_id, Some(command_id));
}

/// The same command sent by 8 tasks at once is appended once; every task gets its result.
pub async fn concurrent_duplicates_of_a_command_append_once<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone()).with_max_attempts(10);
    let meta = CommandMetadata::new().command_id(Uuid::now_v7());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (repo, meta) = (repo.clone(), meta.clone());
        tasks.push(tokio::spawn(async move {
            repo.execute("dup", &TallyCommand::AddMany(vec![3, 4]), meta)
                .await
        }));
    }
    let mut ids = Vec::new();
    let mut fresh = 0;
    for task in tasks {
        let done = task.await.expect("task").expect("every duplicate succeeds");
        fresh += usize::from(!done.deduplicated);
        assert_eq!(done.version, 2);
        assert_eq!(done.state.total, 7);
        ids.push(done.events.iter().map(|e| e.event_id).collect::<Vec<_>>());
    }
    assert_eq!(fresh, 1, "exactly one execution appended");
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "all got the same events"
    );
    assert_eq!(
        store.stream_version(&stream("dup")).await.expect("version"),
        2
    );
}

/// A command id may not be replayed against another stream.
pub async fn command_id_reused_on_another_stream_is_refused<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone());
    let meta = CommandMetadata::new().command_id(Uuid::now_v7());
    repo.execute("one", &TallyCommand::Add(1), meta.clone())
        .await
        .expect("first");
    let err = repo
        .execute("two", &TallyCommand::Add(1), meta)
        .await
        .expect_err("reuse");
    assert!(
        matches!(err, ExecuteError::Store(StoreError::CommandIdReused { .. })),
        "{err:?}"
    );
    assert_eq!(
        store.stream_version(&stream("two")).await.expect("version"),
        0
    );
}

/// A stream changed between load and append is a conflict; with attempts left it is retried.
pub async fn repository_reports_conflicts_and_retries<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone()).with_max_attempts(1);
    repo.execute("race", &TallyCommand::Add(1), CommandMetadata::new())
        .await
        .expect("first");
    // Two units of work load version 1; the second to append loses.
    let mut a = store.begin().await.expect("begin");
    let outcome_a = repo
        .execute_in(
            &mut a,
            "race",
            &TallyCommand::Add(2),
            CommandMetadata::new(),
        )
        .await;
    assert!(outcome_a.is_ok());
    a.commit().await.expect("commit a");
    let mut b = store.begin().await.expect("begin");
    b.append(&stream("race"), ExpectedVersion::Exact(1), vec![added(3)])
        .await
        .expect_err("stale expected version");
    let _ = b.rollback().await;
    let err = store
        .append(&stream("race"), ExpectedVersion::Exact(1), vec![added(3)])
        .await
        .expect_err("conflict");
    assert!(err.is_conflict());
    assert_eq!(repo.load("race").await.expect("load").state.total, 3);
    let retrying = Repository::<Tally, _>::new(store.clone()).with_max_attempts(5);
    let done = retrying
        .execute("race", &TallyCommand::Add(4), CommandMetadata::new())
        .await
        .expect("retry");
    assert_eq!(done.state.total, 7);
    assert_eq!(done.version, 3);
}

/// A domain error is returned as `Rejected` and nothing is written.
pub async fn rejected_command_writes_nothing<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone());
    repo.execute("cap", &TallyCommand::Add(1000), CommandMetadata::new())
        .await
        .expect("fits");
    let err = repo
        .execute(
            "cap",
            &TallyCommand::Add(1),
            CommandMetadata::new().command_id(Uuid::now_v7()),
        )
        .await
        .expect_err("over the cap");
    match err {
        ExecuteError::Rejected { source, stream_id } => {
            assert_eq!(source, OverCap);
            assert_eq!(stream_id, stream("cap"));
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        store.stream_version(&stream("cap")).await.expect("version"),
        1
    );
}
/// A cached state made stale by another writer costs a conflict and a reload, never a lost
/// update; with no attempt left the conflict is reported and the next command succeeds.
pub async fn state_cache_survives_writers_it_does_not_know<S: EventStore>(store: S) {
    let cached = Repository::<Tally, _>::new(store.clone()).with_cache(16);
    let other = Repository::<Tally, _>::new(store.clone());
    cached
        .execute("c", &TallyCommand::Add(1), CommandMetadata::new())
        .await
        .expect("first");
    other
        .execute("c", &TallyCommand::Add(10), CommandMetadata::new())
        .await
        .expect("other writer");
    let done = cached
        .execute("c", &TallyCommand::Add(100), CommandMetadata::new())
        .await
        .expect("retried");
    assert_eq!((done.state.total, done.version), (111, 3));
    other
        .execute("c", &TallyCommand::Add(1000 - 111), CommandMetadata::new())
        .await
        .expect("other writer");
    let strict = cached.clone().with_max_attempts(1);
    let err = strict
        .execute("c", &TallyCommand::Reset, CommandMetadata::new())
        .await
        .expect_err("stale cache, one attempt");
    assert!(
        matches!(err, ExecuteError::Conflict { attempts: 1, .. }),
        "{err:?}"
    );
    // The stale entry was dropped: the cap is now enforced from the real state.
    let err = strict
        .execute("c", &TallyCommand::Add(1), CommandMetadata::new())
        .await
        .expect_err("cap");
    assert!(matches!(err, ExecuteError::Rejected { .. }), "{err:?}");
    let done = cached
        .execute("c", &TallyCommand::Reset, CommandMetadata::new())
        .await
        .expect("reset");
    assert_eq!((done.state.total, done.version), (0, 5));
    assert_eq!(other.load("c").await.expect("load").state, done.state);
}
