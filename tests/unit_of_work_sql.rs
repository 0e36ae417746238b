//! The application's own SQL commits and rolls back together with the events (guarantee 1, for
//! the part that exists so far), on PostgreSQL and SQLite.
mod common;

use eventfold::eventstore::contract::{Tally, TallyCommand};
use eventfold::eventstore::{EventStore, ExecuteError, Repository, UnitOfWork};
use eventfold::{CommandMetadata, StreamId};

macro_rules! atomic_with_app_sql {
    ($name:ident, $fresh:path, $store:ty, $param:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            /// A new unit of work holding `Add(amount)` to `o-1`, then the application's row
            /// (`insert`) with the new total, in the same transaction.
            async fn add_with_row(
                repo: &Repository<Tally, $store>,
                amount: u64,
                insert: &str,
            ) -> <$store as EventStore>::UnitOfWork {
                let mut uow = repo.store().begin().await.unwrap();
                let done = repo
                    .execute_in(
                        &mut uow,
                        "o-1",
                        &TallyCommand::Add(amount),
                        CommandMetadata::new(),
                    )
                    .await
                    .unwrap();
                sqlx::query(insert)
                    .bind("o-1")
                    .bind(done.state.total as i64)
                    .execute(uow.connection())
                    .await
                    .unwrap();
                uow
            }

            /// The one number that `sql` reads from the application's table.
            async fn app_number(store: &$store, sql: &str) -> i64 {
                let (n,): (i64,) = sqlx::query_as(sql).fetch_one(store.pool()).await.unwrap();
                n
            }

            let (store, _guard) = $fresh().await;
            sqlx::query("CREATE TABLE app_orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)")
                .execute(store.pool())
                .await
                .unwrap();
            let insert = concat!(
                "INSERT INTO app_orders (id, total) VALUES (",
                $param,
                "1, ",
                $param,
                "2)"
            );
            let repo = Repository::<Tally, _>::new(store.clone());
            let stream = StreamId::new("tally", "o-1").unwrap();

            // Rolled back: neither the events nor the row exist.
            let uow = add_with_row(&repo, 5, insert).await;
            uow.rollback().await.unwrap();
            assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
            let rows = app_number(&store, "SELECT count(*) FROM app_orders").await;
            assert_eq!(rows, 0);

            // The application's SQL fails after the append: the transaction is abandoned, nothing stays.
            let mut uow = store.begin().await.unwrap();
            repo.execute_in(
                &mut uow,
                "o-1",
                &TallyCommand::Add(5),
                CommandMetadata::new(),
            )
            .await
            .unwrap();
            sqlx::query("INSERT INTO missing_table VALUES (1)")
                .execute(uow.connection())
                .await
                .expect_err("no such table");
            drop(uow);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(store.stream_version(&stream).await.unwrap(), 0);

            // Committed: both.
            let uow = add_with_row(&repo, 7, insert).await;
            uow.commit().await.unwrap();
            assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
            let total = app_number(&store, "SELECT total FROM app_orders WHERE id = 'o-1'").await;
            assert_eq!(total, 7);

            // A rejected command inside the unit of work is a typed error.
            let mut uow = store.begin().await.unwrap();
            let err = repo
                .execute_in(
                    &mut uow,
                    "o-1",
                    &TallyCommand::Add(5000),
                    CommandMetadata::new(),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, ExecuteError::Rejected { .. }), "{err:?}");
            uow.rollback().await.unwrap();
        }
    };
}

atomic_with_app_sql!(
    postgres_app_sql_commits_with_events,
    common::postgres,
    eventfold::eventstore::postgres::PgStore,
    "$"
);
atomic_with_app_sql!(
    sqlite_app_sql_commits_with_events,
    common::sqlite,
    eventfold::eventstore::sqlite::SqliteStore,
    "?"
);

/// SQLite: an append that fails inside a unit of work writes nothing of itself, also when it is
/// one statement (written without a savepoint: SQLite undoes a failed statement's own rows and
/// keeps the transaction), and with several statements (more events than one insert takes, in a
/// savepoint); what the unit of work wrote before it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_failed_append_in_a_unit_of_work_writes_nothing_of_itself() {
    use eventfold::NewEvent;
    use eventfold::eventstore::{ExpectedVersion, StoreError};
    let (store, _file) = common::sqlite().await;
    let event = |n: u32| NewEvent::raw("tally.added", 2, format!(r#"{{"n":{n}}}"#).into_bytes());
    let kept = StreamId::new("tally", "kept").unwrap();
    let taken = event(1);
    let mut uow = store.begin().await.unwrap();
    uow.append(&kept, ExpectedVersion::NoStream, vec![taken.clone()])
        .await
        .unwrap();
    for (name, size) in [("one-statement", 3usize), ("several-statements", 150)] {
        let refused = StreamId::new("tally", name).unwrap();
        let mut events: Vec<NewEvent> = (0..size as u32).map(event).collect();
        events[size - 1].event_id = taken.event_id;
        let err = uow
            .append(&refused, ExpectedVersion::Any, events)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::DuplicateEventId { event_id, .. } if event_id == taken.event_id),
            "{name}: {err:?}"
        );
    }
    uow.commit().await.unwrap();
    assert_eq!(store.stream_version(&kept).await.unwrap(), 1);
    for name in ["one-statement", "several-statements"] {
        let refused = StreamId::new("tally", name).unwrap();
        assert_eq!(
            store.stream_version(&refused).await.unwrap(),
            0,
            "{name}: the failed append wrote nothing of itself"
        );
    }
}
