//! Table prefixes and schemas are validated; migrations are embedded, tracked in eventfold's own
//! table, idempotent, safe to run concurrently, and refuse a database changed behind their back.
mod common;

use eventfold::eventstore::contract::{Tally, TallyCommand};
use eventfold::eventstore::memory::MemoryStore;
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::sqlite::SqliteStore;
use eventfold::eventstore::{
    EventStore, ExecuteError, ExpectedVersion, Naming, Repository, StoreError,
};
use eventfold::{CommandMetadata, NewEvent, StreamId};

#[test]
fn invalid_identifiers_are_typed_errors() {
    for bad in [
        "Upper",
        "has space",
        "semi;colon",
        "quote\"",
        "1starts_with_digit",
        "dash-ed",
        &"x".repeat(33),
    ] {
        let err = Naming::new(bad).expect_err(bad);
        assert!(
            matches!(
                err,
                StoreError::InvalidIdentifier {
                    what: "table prefix",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(bad),
            "the error names the value: {err}"
        );
        let err = Naming::default().with_schema(bad).expect_err(bad);
        assert!(
            matches!(err, StoreError::InvalidIdentifier { what: "schema", .. }),
            "{err:?}"
        );
    }
    assert!(Naming::new("").is_ok(), "an empty prefix is allowed");
    assert!(
        Naming::default().with_schema("").is_err(),
        "an empty schema is not"
    );
    assert_eq!(
        Naming::new("app_")
            .unwrap()
            .with_schema("es")
            .unwrap()
            .table("events"),
        "\"es\".\"app_events\""
    );
}

#[tokio::test]
async fn oversized_or_empty_stream_ids_are_refused_before_writing() {
    let store = MemoryStore::new();
    let repo = Repository::<Tally, _>::new(store.clone());
    let long = "x".repeat(StreamId::MAX_ID_LEN + 1);
    for id in [long.as_str(), "", "new\nline"] {
        let err = repo
            .execute(id, &TallyCommand::Add(1), CommandMetadata::new())
            .await
            .expect_err("refused");
        assert!(
            matches!(err, ExecuteError::Store(StoreError::InvalidStreamId(_))),
            "{err:?}"
        );
    }
    assert!(store.is_empty());
}

#[tokio::test]
async fn postgres_schema_and_prefix_isolate_stores() {
    let (_, db) = common::postgres().await;
    let naming = Naming::new("billing_").unwrap().with_schema("es").unwrap();
    let a = PgStore::builder(db.pool().clone())
        .naming(naming)
        .build()
        .await
        .expect("migrate a");
    let b = PgStore::builder(db.pool().clone())
        .naming(Naming::new("shipping_").unwrap())
        .build()
        .await
        .expect("migrate b");
    let stream = StreamId::new("order", "1").unwrap();
    a.append(
        &stream,
        ExpectedVersion::NoStream,
        vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())],
    )
    .await
    .expect("append a");
    assert_eq!(a.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(
        b.stream_version(&stream).await.unwrap(),
        0,
        "another prefix is another store"
    );
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_schema IN ('es', 'public') ORDER BY 1, 2",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let names: Vec<String> = tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
    for expected in [
        "es.billing_events",
        "es.billing_migrations",
        "es.billing_snapshots",
        "es.billing_commands",
        "public.shipping_events",
        "public.shipping_migrations",
    ] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.contains("_sqlx_migrations")),
        "the application's migration table is never used"
    );
}

#[tokio::test]
async fn postgres_migrations_are_idempotent_concurrent_and_checked() {
    let (store, db) = common::postgres().await;
    let mut handles = Vec::new();
    for _ in 0..4 {
        let pool = db.pool().clone();
        handles.push(tokio::spawn(async move {
            PgStore::builder(pool)
                .naming(Naming::new("race_").unwrap())
                .build()
                .await
                .map(|_| ())
        }));
    }
    for handle in handles {
        handle.await.unwrap().expect("concurrent migration");
    }
    store.migrate().await.expect("second run is a no-op");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM eventfold_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 9, "every embedded migration is recorded once");
    sqlx::query("UPDATE eventfold_migrations SET checksum = checksum + 1")
        .execute(db.pool())
        .await
        .unwrap();
    let err = store.migrate().await.expect_err("checksum mismatch");
    assert!(
        matches!(err, StoreError::Migration { version: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("eventfold_migrations"), "{err}");
    sqlx::query("UPDATE eventfold_migrations SET checksum = checksum - 1")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO eventfold_migrations (version, name, checksum) VALUES (999, 'future', 0)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let err = store
        .migrate()
        .await
        .expect_err("database newer than the code");
    assert!(
        matches!(err, StoreError::Migration { version: 999, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn sqlite_refuses_a_schema_and_tracks_its_migrations() {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let err = SqliteStore::builder(pool.clone())
        .naming(Naming::default().with_schema("es").unwrap())
        .build()
        .await
        .expect_err("no schemas on SQLite");
    assert!(
        matches!(err, StoreError::InvalidIdentifier { what: "schema", .. }),
        "{err:?}"
    );
    let store = SqliteStore::builder(pool.clone())
        .naming(Naming::new("app_").unwrap())
        .build()
        .await
        .unwrap();
    store.migrate().await.expect("idempotent");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM app_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 8, "every embedded migration is recorded once");
}

/// A first append on a database restored from an old fixture.
async fn appends_on_the_old_database<S: EventStore>(store: &S) {
    let stream = StreamId::new("order", "old-1").unwrap();
    let result = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())],
        )
        .await
        .expect("append on the old database");
    assert_eq!(result.version, 1);
}

/// A SQLite database migrated by eventfold before its migrations became `.sql` files (main at
/// `1ca6a7f`, `eventfold migrate`): the checksums of its applied migrations still match, and the
/// store opens and appends.
#[tokio::test]
async fn sqlite_database_created_by_the_old_migration_text_still_migrates() {
    let path = std::env::temp_dir().join(format!(
        "eventfold-test-old-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::copy("tests/fixtures/main-1ca6a7f.sqlite", &path).expect("copy the fixture");
    let _cleanup = common::TempFile(path.clone());
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("an old database migrates cleanly (checksums unchanged)");
    appends_on_the_old_database(&store).await;
}

/// A PostgreSQL database migrated by eventfold before its migrations became `.sql` files (a
/// `pg_dump` of main at `1ca6a7f` after `eventfold migrate`): it still migrates and appends.
#[tokio::test]
async fn postgres_database_created_by_the_old_migration_text_still_migrates() {
    let db = eventfold::eventstore::postgres::testing::TestDb::create(4)
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL");
    let dump = std::fs::read_to_string("tests/fixtures/main-1ca6a7f-postgres.sql")
        .expect("read the fixture");
    // pg_dump empties the session's search_path: restore on a connection of its own, then close it.
    let mut conn = db.pool().acquire().await.unwrap().detach();
    sqlx::raw_sql(&dump)
        .execute(&mut conn)
        .await
        .expect("restore the old database");
    drop(conn);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM eventfold_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(applied, 6, "the fixture holds the six migrations of main");
    let store = PgStore::builder(db.pool().clone())
        .build()
        .await
        .expect("an old database migrates cleanly (checksums unchanged)");
    appends_on_the_old_database(&store).await;
}
