//! The standalone `eventfold` binary, run as a real process (assert_cmd) against PostgreSQL (a
//! fresh database per test) and SQLite (a temporary file): migrations, the outbox with pending
//! rows and dead letters, the reserved commands, and failures that exit non-zero naming what
//! failed.
mod common;

use eventfold::eventstore::postgres::testing::TestDb;
use eventfold::eventstore::{
    EventStore, ExpectedVersion, InboxStore, OutboxRelayStore, OutboxRouting, ParkedMessage,
};
use eventfold::{NewEvent, StreamId};
use serde_json::Value;

use common::{
    eventfold_cli as eventfold, eventfold_fails as fails, eventfold_json as json,
    eventfold_ok as ok,
};

/// The URL of a test database on the server of `DATABASE_URL`.
fn pg_url(db: &TestDb) -> String {
    common::database_url(db.name())
}

fn sqlite_url(file: &common::TempFile) -> String {
    format!("sqlite://{}", file.0.display())
}

fn temp_sqlite_path() -> common::TempFile {
    common::TempFile(std::env::temp_dir().join(format!(
        "eventfold-cli-{}.db",
        uuid::Uuid::now_v7().simple()
    )))
}

/// Appends `n` events to `n` order streams; with routing, each writes one outbox row.
async fn append_orders<S: EventStore>(store: &S, n: u64) {
    for i in 0..n {
        let stream = StreamId::new("order", format!("o-{i}")).expect("stream id");
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::raw(
                    "order.placed",
                    1,
                    br#"{"cents":100}"#.to_vec(),
                )],
            )
            .await
            .expect("append");
    }
}

/// The outbox commands against a migrated store with routing on, reached through `url`.
/// `floor`: whether the backend has an outbox floor (PostgreSQL), whose lag the status shows.
async fn outbox_flow<S: EventStore + OutboxRelayStore + InboxStore>(
    store: S,
    url: &str,
    floor: bool,
) {
    let store = store.with_outbox(OutboxRouting::new());
    let empty = json(url, &["outbox", "status"]);
    assert_eq!(empty["pending"], 0);
    if floor {
        assert_eq!(
            empty["floor_lag"], 0,
            "a new outbox: the floor is at the next row"
        );
    } else {
        assert_eq!(empty["floor_lag"], Value::Null, "no floor on this backend");
    }
    assert_eq!(empty["dead_letters"], 0);
    assert_eq!(empty["oldest"], Value::Null);

    append_orders(&store, 3).await;
    let status = json(url, &["outbox", "status"]);
    assert_eq!(status["pending"], 3, "{status}");
    if floor {
        // Rows 1 to 3 wait; the floor (0) has not advanced yet: the claim would start 1 early.
        assert_eq!(status["floor_lag"], 1, "{status}");
    }
    assert_eq!(status["dead_letters"], 0);
    assert!(status["oldest"].is_string(), "{status}");
    assert!(
        status["oldest_age_seconds"]
            .as_f64()
            .is_some_and(|a| a >= 0.0)
    );

    // Park the first row, as the relay does when the broker refuses it.
    let rows = store.read_outbox(10).await.expect("read the outbox");
    assert_eq!(rows.len(), 3);
    let seq = rows[0].seq;
    store
        .park_outbox(seq, "broker refused: message too large")
        .await
        .expect("park");

    let status = json(url, &["outbox", "status"]);
    assert_eq!(
        (status["pending"].as_u64(), status["dead_letters"].as_u64()),
        (Some(2), Some(1))
    );
    let letters = json(url, &["outbox", "dead-letters", "--limit", "10"]);
    let letters = letters.as_array().expect("an array");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["seq"], seq);
    assert_eq!(letters[0]["topic"], "order");
    assert_eq!(letters[0]["key"], "o-0");
    assert_eq!(letters[0]["type"], "order.placed");
    assert_eq!(letters[0]["error"], "broker refused: message too large");
    assert_eq!(letters[0]["message_id"], rows[0].message.id.to_string());

    // Human output: aligned table with the error.
    let table = ok(url, &["outbox", "dead-letters"]);
    assert!(table.starts_with("SEQ"), "{table}");
    assert!(table.contains("message too large"), "{table}");
    let human = ok(url, &["outbox", "status"]);
    assert!(
        human.contains("pending") && human.contains("dead letters"),
        "{human}"
    );

    // Retry: back in the outbox.
    let retried = json(url, &["outbox", "retry", &seq.to_string()]);
    assert_eq!(retried["seq"], seq);
    assert_eq!(retried["action"], "retried");
    let status = json(url, &["outbox", "status"]);
    assert_eq!(
        (status["pending"].as_u64(), status["dead_letters"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(store.read_outbox(10).await.expect("read")[0].seq, seq);

    // Skip: gone for good.
    store.park_outbox(seq, "refused again").await.expect("park");
    let skipped = ok(url, &["outbox", "skip", &seq.to_string()]);
    assert!(
        skipped.contains(&format!("dead letter {seq} skipped")),
        "{skipped}"
    );
    let status = json(url, &["outbox", "status"]);
    assert_eq!(
        (status["pending"].as_u64(), status["dead_letters"].as_u64()),
        (Some(2), Some(0))
    );

    // Unknown dead letters: non-zero, naming the seq.
    let err = fails(url, &["outbox", "retry", &seq.to_string()]);
    assert!(
        err.contains(&format!("no dead letter with seq {seq}")),
        "{err}"
    );
    let err = fails(url, &["outbox", "skip", "987654"]);
    assert!(err.contains("outbox skip 987654"), "{err}");

    // A consumer's parked messages.
    assert_eq!(
        json(url, &["outbox", "parked", "billing"]),
        Value::Array(Vec::new())
    );
    let message_id = uuid::Uuid::now_v7();
    store
        .park_message(ParkedMessage {
            consumer: "billing".to_owned(),
            message_id,
            topic: "order".to_owned(),
            partition: 3,
            offset: 41,
            key: "o-9".to_owned(),
            message_type: "order.placed".to_owned(),
            payload: b"{}".to_vec(),
            headers: Default::default(),
            attempts: 5,
            error: "handler failed: no such customer".to_owned(),
            parked_at: chrono::Utc::now(),
        })
        .await
        .expect("park a message");
    let parked = json(url, &["outbox", "parked", "billing", "--limit", "5"]);
    assert_eq!(parked[0]["message_id"], message_id.to_string());
    assert_eq!(
        (
            parked[0]["partition"].as_u64(),
            parked[0]["offset"].as_u64()
        ),
        (Some(3), Some(41))
    );
    assert_eq!(parked[0]["error"], "handler failed: no such customer");
    let table = ok(url, &["outbox", "parked", "billing"]);
    assert!(
        table.starts_with("TOPIC") && table.contains("no such customer"),
        "{table}"
    );
    assert!(ok(url, &["outbox", "parked", "shipping"]).contains("no parked messages"));

    // The overview carries the outbox and the log head.
    let overview = json(url, &["status"]);
    assert_eq!(overview["outbox"]["pending"], 2);
    assert_eq!(overview["log_head"]["position"], 3);
    assert!(overview["projections"].is_array(), "{overview}");
}

#[tokio::test]
async fn postgres_outbox_status_dead_letters_retry_skip() {
    let (store, db) = common::postgres().await;
    outbox_flow(store, &pg_url(&db), true).await;
}

#[tokio::test]
async fn sqlite_outbox_status_dead_letters_retry_skip() {
    let (store, file) = common::sqlite().await;
    outbox_flow(store, &sqlite_url(&file), false).await;
}

#[tokio::test]
async fn postgres_migrate_is_idempotent_and_other_commands_need_it() {
    let db = TestDb::create(2).await.expect("PostgreSQL at DATABASE_URL");
    let url = pg_url(&db);

    let err = fails(&url, &["outbox", "status"]);
    assert!(err.contains("outbox status"), "{err}");
    assert!(err.contains("eventfold_outbox"), "{err}");
    assert!(err.contains("run `eventfold migrate`"), "{err}");

    let first = json(&url, &["migrate"]);
    assert_eq!(first["backend"], "postgres");
    let migrations = first["migrations"].as_array().expect("migrations");
    assert!(!migrations.is_empty());
    assert_eq!(migrations[0]["version"], 1);
    assert!(migrations.iter().all(|m| m["name"].is_string()));
    let again = json(&url, &["migrate"]);
    assert_eq!(again, first, "a second migrate applies nothing new");
    let human = ok(&url, &["migrate"]);
    assert!(human.contains("postgres: schema up to date"), "{human}");

    let status = json(&url, &["status"]);
    assert_eq!(status["outbox"]["pending"], 0);
    assert_eq!(status["projections"], Value::Array(Vec::new()));

    // Another prefix and schema are another set of tables.
    let err = fails(
        &url,
        &["--prefix", "shop_", "--schema", "ops", "outbox", "status"],
    );
    assert!(err.contains("prefixed `shop_`"), "{err}");
    let shop = json(&url, &["--prefix", "shop_", "--schema", "ops", "migrate"]);
    assert_eq!(shop["migrations"], first["migrations"]);
    let status = json(
        &url,
        &["outbox", "status", "--prefix", "shop_", "--schema", "ops"],
    );
    assert_eq!(status["pending"], 0);
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'ops' \
         AND table_name = 'shop_migrations'",
    )
    .fetch_all(db.pool())
    .await
    .expect("query");
    assert_eq!(tables.len(), 1);
}

#[tokio::test]
async fn sqlite_migrate_creates_the_file_and_other_commands_do_not() {
    let file = temp_sqlite_path();
    let url = sqlite_url(&file);

    let err = fails(&url, &["status"]);
    assert!(err.contains("connecting to the database"), "{err}");
    assert!(err.contains("only `eventfold migrate` creates it"), "{err}");
    assert!(
        !file.0.exists(),
        "a read-only command must not create the file"
    );

    let migrated = json(&url, &["migrate"]);
    assert_eq!(migrated["backend"], "sqlite");
    assert_eq!(migrated["migrations"][0]["version"], 1);
    assert!(file.0.exists());
    assert_eq!(json(&url, &["migrate"]), migrated);
    let status = json(&url, &["status"]);
    assert_eq!(status["outbox"]["dead_letters"], 0);
    assert_eq!(status["log_head"]["position"], 0);

    let err = fails(&url, &["--schema", "ops", "status"]);
    assert!(err.contains("SQLite has no schemas"), "{err}");
}

#[test]
fn bad_urls_and_missing_databases_fail_naming_what() {
    let err = fails("mysql://root:hunter2@127.0.0.1/app", &["status"]);
    assert!(err.contains("unsupported database URL scheme"), "{err}");
    assert!(err.contains("mysql://root:***@127.0.0.1/app"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    let output = assert_cmd::Command::cargo_bin("eventfold")
        .expect("binary")
        .env_remove("DATABASE_URL")
        .arg("status")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--database-url"));

    let err = fails(
        &common::database_url("eventfold_no_such_database"),
        &["status"],
    );
    assert!(err.contains("connecting to the database"), "{err}");
    assert!(err.contains("eventfold_no_such_database"), "{err}");

    let err = fails("sqlite:///tmp/x.db", &["--prefix", "Bad-Prefix", "status"]);
    assert!(
        err.contains("--prefix") && err.contains("Bad-Prefix"),
        "{err}"
    );
}

#[tokio::test]
async fn reserved_and_registry_only_commands_explain_themselves() {
    let (_store, file) = common::sqlite().await;
    let url = sqlite_url(&file);
    // `sagas` arrived: an unknown instance is named, and retry refuses what is not parked.
    let err = fails(
        &url,
        &["sagas", "show", "0190a0b0-0000-7000-8000-000000000000"],
    );
    assert!(
        err.contains("saga 0190a0b0-0000-7000-8000-000000000000 does not exist"),
        "{err}"
    );
    // `trace` arrived too: a flow nobody recorded is named.
    let err = fails(&url, &["trace", "0190a0b0-0000-7000-8000-000000000001"]);
    assert!(
        err.contains("no record of this flow in the 1 database(s) read"),
        "{err}"
    );
    let err = fails(&url, &["projections", "rebuild", "order_totals"]);
    assert!(
        err.contains("`order_totals` is not registered in this program"),
        "{err}"
    );
    assert!(err.contains("projections reset order_totals"), "{err}");
    let err = fails(&url, &["projections", "drop-old", "order_totals", "--json"]);
    assert!(err.contains("projections drop-old order_totals"), "{err}");
    // `projections run` runs the registered projections: the standalone binary has none.
    let err = fails(&url, &["projections", "run"]);
    assert!(
        err.contains("projections run: no projection is registered in this program"),
        "{err}"
    );

    let listed = json(&url, &["projections", "list"]);
    assert_eq!(listed, Value::Array(Vec::new()));
    let human = ok(&url, &["projections", "list"]);
    assert!(human.contains("no projections are registered"), "{human}");

    for args in [
        &["projections", "pause", "nope"][..],
        &["projections", "resume", "nope"],
        &["projections", "reset", "nope"],
        &["projections", "dead-letters", "nope"],
    ] {
        let err = fails(&url, args);
        assert!(err.contains("unknown projection `nope`"), "{args:?}: {err}");
    }

    // clap's own usage errors exit with 2.
    let output = eventfold(&url)
        .args(["projections", "rebuild", "x", "--drop-old"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
}

/// `trace` merges the records of two services' databases (SQLite orders, PostgreSQL payments):
/// the command the orders service sent and the payments inbox's receipt are one node, the
/// payment event hangs under it; `--mermaid` draws the two services, `--json` has every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_merges_the_databases_of_several_services() {
    use eventfold::eventstore::{InboxEntry, UnitOfWork};
    use eventfold::outbox::OutboxMessage;
    use eventfold_core::outbox::headers;

    let (orders, orders_file) = common::sqlite().await;
    let orders = orders.with_source("orders");
    let (payments, payments_db) = common::postgres().await;
    let payments = payments.with_source("payments");
    let flow = uuid::Uuid::now_v7();

    let mut placed = NewEvent::raw("order.placed", 1, b"{}".to_vec());
    placed.correlation_id = flow;
    let mut uow = orders.begin().await.expect("begin");
    uow.append(
        &StreamId::new("order", "7").expect("stream"),
        ExpectedVersion::NoStream,
        vec![placed.clone()],
    )
    .await
    .expect("append");
    let charge = OutboxMessage::new("payments", "7", "payment.charge", b"{}".to_vec())
        .header(headers::CORRELATION_ID, flow.to_string())
        .header(headers::CAUSATION_ID, placed.event_id.to_string())
        .header(headers::SOURCE, "orders");
    uow.enqueue(vec![charge.clone()]).await.expect("enqueue");
    uow.commit().await.expect("commit");

    let mut uow = payments.begin().await.expect("begin");
    assert!(
        uow.mark_received(
            "payment-commands",
            &InboxEntry::received(charge.id, "payment.charge", "payments", &charge.headers),
        )
        .await
        .expect("mark")
    );
    let mut charged = NewEvent::raw("payment.charged", 1, b"{}".to_vec());
    charged.correlation_id = flow;
    charged.causation_id = Some(charge.id);
    uow.append(
        &StreamId::new("payment", "7").expect("stream"),
        ExpectedVersion::NoStream,
        vec![charged],
    )
    .await
    .expect("append");
    uow.commit().await.expect("commit");

    let flow_arg = flow.to_string();
    let run = |extra: &[&str]| {
        common::stdout_of_success(
            eventfold(&sqlite_url(&orders_file))
                .arg("--database-url")
                .arg(pg_url(&payments_db))
                .args(["trace", flow_arg.as_str()])
                .args(extra),
            &format!("trace {extra:?}"),
        )
    };
    let text = run(&[]);
    assert!(text.contains(&flow_arg), "{text}");
    let line = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}:\n{text}"))
    };
    assert!(
        line("order.placed") < line("payment.charge")
            && line("payment.charge") < line("payment.charged"),
        "causal order:\n{text}"
    );
    assert!(text.contains("received by payments"), "{text}");
    let mermaid = run(&["--mermaid"]);
    assert!(mermaid.starts_with("sequenceDiagram"), "{mermaid}");
    assert!(
        mermaid.contains("orders") && mermaid.contains("payments"),
        "{mermaid}"
    );
    let json: Value = serde_json::from_str(&run(&["--json"])).expect("JSON");
    assert_eq!(json["correlation_id"], flow_arg);
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3), "{json:#}");
    // The orders database alone does not know the payment.
    let alone = ok(&sqlite_url(&orders_file), &["trace", flow_arg.as_str()]);
    assert!(!alone.contains("payment.charged"), "{alone}");
}
