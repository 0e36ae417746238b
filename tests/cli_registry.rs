//! The embedded CLI (`eventfold::cli::Command`) with a real registry of projections over SQLite
//! and PostgreSQL: list, status, rebuild in place and blue/green, pause, resume, reset,
//! dead letters, and a poison event failing a rebuild; then the standalone binary on the same
//! database, which sees the stored projection without its code.
mod common;
mod saga_common;

use clap::Parser;
use eventfold::cli::{Cli, CliError, CliStore};
use eventfold::eventstore::{EventStore, ExpectedVersion};
use eventfold::projections::{ErrorPolicy, Projection, ProjectionOptions, Projections, Tables};
use eventfold::{BoxError, Envelope, Event, NewEvent, StreamId};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed { cents: i64 },
}

/// Sums the cents of each order into `order_totals`; an order of 0 cents is a poison event.
struct Totals;

fn check(event: &Envelope<OrderEvent>) -> Result<i64, BoxError> {
    let OrderEvent::Placed { cents } = event.payload;
    if cents == 0 {
        return Err("an order of 0 cents is invalid".into());
    }
    Ok(cents)
}

/// `Totals` on one backend: `$uow` its unit of work, `$cents` the column type and `$upsert` the
/// statement adding an order's cents (`{table}` is the view's table).
macro_rules! totals_for {
    ($uow:ty, $cents:literal, $upsert:literal) => {
        impl Projection<$uow> for Totals {
            type Event = OrderEvent;

            fn name(&self) -> &str {
                "order_totals"
            }

            fn tables(&self) -> Vec<String> {
                vec!["order_totals".to_owned()]
            }

            async fn setup(&self, uow: &mut $uow, tables: &Tables) -> Result<(), BoxError> {
                sqlx::query(&format!(
                    concat!(
                        "CREATE TABLE {} (order_id TEXT PRIMARY KEY, cents ",
                        $cents,
                        " NOT NULL)"
                    ),
                    tables.table("order_totals")
                ))
                .execute(uow.connection())
                .await?;
                Ok(())
            }

            async fn apply(
                &self,
                uow: &mut $uow,
                tables: &Tables,
                event: &Envelope<OrderEvent>,
            ) -> Result<(), BoxError> {
                let cents = check(event)?;
                sqlx::query(&format!($upsert, table = tables.table("order_totals")))
                    .bind(event.stream_id.id().to_owned())
                    .bind(cents)
                    .execute(uow.connection())
                    .await?;
                Ok(())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
totals_for!(
    eventfold::eventstore::sqlite::SqliteUnitOfWork,
    "INTEGER",
    "INSERT INTO {table} (order_id, cents) VALUES (?1, ?2) \
     ON CONFLICT (order_id) DO UPDATE SET cents = cents + excluded.cents"
);
#[cfg(feature = "postgres")]
totals_for!(
    eventfold::eventstore::postgres::PgUnitOfWork,
    "BIGINT",
    "INSERT INTO {table} AS t (order_id, cents) VALUES ($1, $2) \
     ON CONFLICT (order_id) DO UPDATE SET cents = t.cents + excluded.cents"
);

/// Appends an `order.placed` event; its id.
async fn place<S: EventStore>(store: &S, order: &str, cents: i64) -> uuid::Uuid {
    let event = NewEvent::encode(
        &OrderEvent::Placed { cents },
        "test",
        &eventfold::CommandMetadata::new(),
    )
    .expect("encode");
    let id = event.event_id;
    store
        .append(
            &StreamId::new("order", order).expect("stream id"),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .expect("append");
    id
}

/// Runs `args` through the embedded command, returning its output or its error.
async fn cli<S: CliStore>(projections: &Projections<S>, args: &[&str]) -> Result<String, CliError> {
    let parsed = Cli::try_parse_from(std::iter::once("app").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
    let mut out = Vec::new();
    let run = parsed.command.execute(projections, &mut out);
    assert_send(&run);
    run.await?;
    Ok(String::from_utf8(out).expect("utf-8"))
}

fn assert_send<T: Send>(_: &T) {}

async fn cli_json<S: CliStore>(projections: &Projections<S>, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = cli(projections, &args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

fn status_of<'a>(statuses: &'a Value, name: &str) -> &'a Value {
    statuses
        .as_array()
        .expect("an array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {statuses}"))
}

/// The whole embedded flow on one store; `sum_sql` reads `SUM(cents)` from the readers' view,
/// through `pool`.
async fn registry_flow<S, DB>(store: S, url: &str, pool: sqlx::Pool<DB>, sum_sql: &'static str)
where
    S: CliStore,
    Totals: Projection<S::UnitOfWork>,
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
{
    let sum = || view_sum(pool.clone(), sum_sql);
    for (order, cents) in [("o-1", 100), ("o-2", 250), ("o-1", 50)] {
        place(&store, order, cents).await;
    }
    let projections = Projections::new(store.clone()).register_with(
        Totals,
        ProjectionOptions::default().policy(ErrorPolicy::Park),
    );

    let listed = cli_json(&projections, &["projections", "list"]).await;
    assert_eq!(
        listed,
        serde_json::json!([{
            "name": "order_totals", "version": 1,
            "tables": ["order_totals"], "event_types": ["order.placed"]
        }])
    );
    let table = cli(&projections, &["projections", "list"])
        .await
        .expect("list");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("order_totals") && table.contains("order.placed"),
        "{table}"
    );

    let before = cli_json(&projections, &["projections", "status"]).await;
    let before = status_of(&before, "order_totals");
    assert_eq!(before["registered"], true);
    assert_eq!(before["position"], 0);
    assert_eq!(before["head"], 3);

    // In place.
    let report = cli_json(&projections, &["projections", "rebuild", "order_totals"]).await;
    assert_eq!(report["name"], "order_totals");
    assert_eq!(report["mode"], "in_place");
    assert_eq!(report["applied"], 3);
    assert!(report["seconds"].as_f64().is_some());
    assert_eq!(sum().await, 400);
    let generation = report["generation"].as_u64().expect("generation");
    let after = cli_json(&projections, &["projections", "status"]).await;
    let after = status_of(&after, "order_totals");
    assert_eq!(
        (after["position"].as_u64(), after["lag_events"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(after["generation"], generation);

    // Blue/green, dropping the old tables.
    place(&store, "o-3", 600).await;
    let report = cli_json(
        &projections,
        &[
            "projections",
            "rebuild",
            "order_totals",
            "--blue-green",
            "--drop-old",
        ],
    )
    .await;
    assert_eq!(report["mode"], "blue_green");
    assert_eq!(report["applied"], 4);
    let switched = report["generation"].as_u64().expect("generation");
    assert!(switched > generation, "{report}");
    let dropped = report["dropped"].as_array().expect("dropped");
    assert!(
        dropped.iter().any(|t| t
            .as_str()
            .is_some_and(|t| t.contains(&format!("order_totals__g{generation}")))),
        "{report}"
    );
    assert_eq!(sum().await, 1000);
    let human = cli(
        &projections,
        &["projections", "rebuild", "order_totals", "--blue-green"],
    )
    .await
    .expect("rebuild");
    assert!(
        human.contains("rebuilt `order_totals` blue/green"),
        "{human}"
    );
    let dropped = cli_json(&projections, &["projections", "drop-old", "order_totals"]).await;
    assert_eq!(dropped["name"], "order_totals");
    assert_eq!(
        dropped["dropped"].as_array().map(Vec::len),
        Some(1),
        "{dropped}"
    );
    assert_eq!(sum().await, 1000);

    // Pause, resume.
    let paused = cli_json(&projections, &["projections", "pause", "order_totals"]).await;
    assert_eq!(
        paused,
        serde_json::json!({"name": "order_totals", "paused": true})
    );
    let status = cli_json(&projections, &["projections", "status"]).await;
    assert_eq!(status_of(&status, "order_totals")["status"], "paused");
    let resumed = cli(&projections, &["projections", "resume", "order_totals"])
        .await
        .expect("resume");
    assert_eq!(resumed.trim(), "resumed `order_totals`");
    let status = cli_json(&projections, &["projections", "status"]).await;
    assert_eq!(status_of(&status, "order_totals")["paused"], false);
    // The overview.
    let overview = cli_json(&projections, &["status"]).await;
    assert_eq!(
        status_of(&overview["projections"], "order_totals")["registered"],
        true
    );
    assert_eq!(overview["log_head"]["position"], 4);
    let human = cli(&projections, &["status"]).await.expect("status");
    assert!(
        human.contains("projections") && human.contains("order_totals"),
        "{human}"
    );

    // Unknown names are refused, naming the known ones.
    let err = cli(&projections, &["projections", "rebuild", "nope"])
        .await
        .expect_err("unknown projection");
    assert!(matches!(err, CliError::UnknownProjection { .. }), "{err}");
    assert!(err.to_string().contains("known: order_totals"), "{err}");

    // A poison event: the runner parks it (policy Park) and goes on; `dead-letters` shows it.
    // (Its id from the append, not from the log's tail: a transaction elsewhere in the cluster
    // may hold the log's horizon back for a moment.)
    let poison = place(&store, "o-4", 0).await;
    let runner = projections
        .runner()
        .poll_interval(std::time::Duration::from_millis(20))
        .start();
    place(&store, "o-5", 5).await;
    tokio::time::timeout(std::time::Duration::from_secs(30), runner.wait_for(6))
        .await
        .expect("the runner catches up in time")
        .expect("wait_for");
    runner.stop().await.expect("stop");
    let parked = cli_json(
        &projections,
        &["projections", "dead-letters", "order_totals"],
    )
    .await;
    let parked = parked.as_array().expect("an array");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["event_id"], poison.to_string());
    assert_eq!(parked[0]["global_position"], 5);
    assert_eq!(parked[0]["stream_id"], "order-o-4");
    assert!(
        parked[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("0 cents"))
    );
    let status = cli_json(&projections, &["projections", "status"]).await;
    assert_eq!(status_of(&status, "order_totals")["parked"], 1);
    assert_eq!(sum().await, 1005);

    // A rebuild fails fast on it, naming the event; the model keeps serving.
    let err = cli(
        &projections,
        &["projections", "rebuild", "order_totals", "--blue-green"],
    )
    .await
    .expect_err("the poison event fails the rebuild");
    let message = err.to_string();
    assert!(
        message.contains("projections rebuild order_totals"),
        "{message}"
    );
    assert!(message.contains(&poison.to_string()), "{message}");
    assert!(message.contains("0 cents is invalid"), "{message}");
    assert_eq!(sum().await, 1005);

    // Reset: a request for the running service.
    let reset = cli_json(&projections, &["projections", "reset", "order_totals"]).await;
    assert_eq!(reset["reset_requested"], true);
    let state = store
        .projection_state("order_totals")
        .await
        .expect("state")
        .expect("stored");
    assert!(state.reset_requested);

    // The standalone binary on the same database sees the projection without its code.
    let status = common::eventfold_json(url, &["projections", "status"]);
    let stored = status_of(&status, "order_totals");
    assert_eq!(stored["registered"], false);
    assert_eq!(stored["parked"], 1);
    assert_eq!(stored["position"], 6);
    let human = common::eventfold_ok(url, &["projections", "status"]);
    assert!(human.contains("not registered in this program"), "{human}");
    assert_eq!(
        common::eventfold_json(url, &["projections", "pause", "order_totals"]),
        serde_json::json!({"name": "order_totals", "paused": true})
    );
    let status = common::eventfold_json(url, &["status"]);
    assert_eq!(
        status_of(&status["projections"], "order_totals")["status"],
        "paused"
    );
    assert!(
        common::eventfold_ok(url, &["projections", "resume", "order_totals"]).contains("resumed")
    );
    assert!(
        !store
            .projection_state("order_totals")
            .await
            .expect("state")
            .expect("stored")
            .paused
    );
    let parked = common::eventfold_json(url, &["projections", "dead-letters", "order_totals"]);
    assert_eq!(parked[0]["event_id"], poison.to_string());
    let table = common::eventfold_ok(url, &["projections", "dead-letters", "order_totals"]);
    assert!(
        table.starts_with("POSITION") && table.contains("0 cents"),
        "{table}"
    );
    assert_eq!(
        common::eventfold_json(url, &["projections", "reset", "order_totals"])["reset_requested"],
        true
    );
    let stderr = common::eventfold_fails(url, &["projections", "rebuild", "order_totals"]);
    assert!(
        stderr.contains("not registered in this program"),
        "{stderr}"
    );
}

/// The sum that `sql` reads from the view, on either SQL backend's pool.
async fn view_sum<DB: sqlx::Database>(pool: sqlx::Pool<DB>, sql: &'static str) -> i64
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
{
    let (sum,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&pool)
        .await
        .expect("read the view");
    sum
}

#[tokio::test]
async fn sqlite_embedded_commands_with_a_registry() {
    let (store, file) = common::sqlite().await;
    let url = format!("sqlite://{}", file.0.display());
    let pool = store.pool().clone();
    let sum_sql = "SELECT COALESCE(SUM(cents), 0) FROM \"order_totals\"";
    registry_flow(store, &url, pool, sum_sql).await;
}

#[tokio::test]
async fn postgres_embedded_commands_with_a_registry() {
    let (store, db) = common::postgres().await;
    let url = common::database_url(db.name());
    let pool = store.pool().clone();
    let sum_sql = "SELECT COALESCE(SUM(cents), 0)::BIGINT FROM \"order_totals\"";
    registry_flow(store, &url, pool, sum_sql).await;
}

#[tokio::test]
async fn memory_store_needs_no_migrations() {
    let projections = Projections::new(eventfold::eventstore::memory::MemoryStore::new());
    let migrated = cli_json(&projections, &["migrate"]).await;
    assert_eq!(
        migrated,
        serde_json::json!({"backend": "memory", "migrations": []})
    );
    let sagas = cli_json(&projections, &["sagas", "list"]).await;
    assert_eq!(sagas, serde_json::json!([]));
    let err = cli(
        &projections,
        &["trace", "0190a0b0-0000-7000-8000-000000000000"],
    )
    .await
    .expect_err("an unknown flow");
    assert!(
        matches!(err, CliError::UnknownFlow { databases: 1, .. }),
        "{err}"
    );
}

/// `sagas list|show|retry` on a SQLite store with one completed and one parked saga: the
/// listing filters by state, `show` has the steps, history and timers, and `retry` resumes the
/// parked one through the running scheduler (and refuses a saga that is not parked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_list_show_and_retry() {
    use std::time::Duration;
    let (store, _file) = common::sqlite().await;
    let mut world = saga_common::World::new(store.clone(), Duration::from_secs(60), 5);
    let done = world
        .orchestrator
        .start(
            "ok",
            saga_common::Order {
                id: "ok".into(),
                cents: 5,
                ..Default::default()
            },
            None,
        )
        .await
        .expect("start");
    let parked = world
        .orchestrator
        .start(
            "parked",
            saga_common::Order {
                id: "parked".into(),
                cents: 7,
                fail: Some("ship".into()),
                fail_compensation: Some("charge".into()),
            },
            None,
        )
        .await
        .expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        world.round().await;
        let state = world
            .orchestrator
            .state(parked.saga_id)
            .await
            .expect("state")
            .expect("saga");
        if state.status.is_parked() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not parked: {}",
            state.status
        );
    }
    world
        .pump_until_terminal(&[done.saga_id], Duration::from_secs(20))
        .await;
    let projections = Projections::new(store.clone());

    let all = cli_json(&projections, &["sagas", "list"]).await;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    let stuck = cli_json(
        &projections,
        &["sagas", "list", "--state", "compensation_failed"],
    )
    .await;
    assert_eq!(stuck[0]["saga_id"], parked.saga_id.to_string(), "{stuck}");
    assert_eq!(stuck[0]["business_key"], "parked");
    assert!(
        stuck[0]["detail"].as_str().unwrap_or("").contains("charge"),
        "{stuck}"
    );
    let text = cli(&projections, &["sagas", "list"]).await.expect("list");
    assert!(text.contains("test.order completed: 1"), "{text}");

    let shown = cli_json(
        &projections,
        &["sagas", "show", &parked.saga_id.to_string()],
    )
    .await;
    assert_eq!(
        shown["state"]["status"]["status"], "compensation_failed",
        "{shown}"
    );
    let steps: Vec<&str> = shown["state"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(steps, ["reserve", "charge", "ship"]);
    assert_eq!(shown["history"][0]["type"], "saga.started");
    let text = cli(
        &projections,
        &["sagas", "show", &parked.saga_id.to_string()],
    )
    .await
    .expect("show");
    assert!(
        text.contains("saga.parked") && text.contains("compensation_failed"),
        "{text}"
    );

    let err = cli(&projections, &["sagas", "retry", &done.saga_id.to_string()])
        .await
        .expect_err("not parked");
    assert!(matches!(err, CliError::SagaNotParked { .. }), "{err}");
    let retried = cli_json(
        &projections,
        &["sagas", "retry", &parked.saga_id.to_string()],
    )
    .await;
    assert_eq!(retried["retry_requested"], true);
    world
        .pump_until_terminal(&[parked.saga_id], Duration::from_secs(20))
        .await;
    let after = cli_json(&projections, &["sagas", "list", "--state", "compensated"]).await;
    assert_eq!(after[0]["saga_id"], parked.saga_id.to_string(), "{after}");
}
