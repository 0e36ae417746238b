//! The shop example (`examples/shop`), run the way a newcomer runs it and checked by machine, on
//! the embedded default (SQLite files and the in-process broker) and on PostgreSQL with the
//! Kafka-protocol broker at `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092; unreachable fails).
//!
//! Both styles run on both setups: orchestrated (the place-order saga) and choreographed
//! (services reacting to each other's events).
//!
//! The example's modules are compiled into this test (`#[path]`) and its command line is given
//! the arguments a person would type; its output is captured and its `SHOP_JSON` line parsed.
//! Checked, not eyeballed: every order ended in exactly one outcome, and the mix is the one the
//! workload placed; each saga agrees with its order and ran the compensations its failure needs
//! (the choreographed services ran the refunds and releases instead); money and stock balance;
//! the read models equal a fold of the events, and a rebuild through the embedded CLI gives the
//! same rows; the failed order's saga (`sagas show`) and trace show its compensations in reverse
//! order.

#[path = "../examples/shop/main.rs"]
#[allow(dead_code)]
mod shop;
// The example's modules name each other `crate::services` and so on, as in its own crate.
#[allow(unused_imports)]
use shop::*;

use std::collections::BTreeMap;

use std::path::PathBuf;

use clap::Parser;
use serde_json::Value;
use shop::read_models::{OrderSummaryRow, ReadModels, StockLevelRow};
use shop::services::{Database, Open, Services};

/// Runs the shop's command line with `args`; its output.
async fn shop(args: &[&str]) -> String {
    let mut argv = vec!["shop"];
    argv.extend_from_slice(args);
    let parsed = shop::Shop::try_parse_from(&argv).expect("the arguments parse");
    let mut out = Vec::new();
    let result = shop::shop(parsed, &mut out).await;
    let out = String::from_utf8(out).expect("UTF-8 output");
    if let Err(e) = result {
        panic!("shop {args:?} failed: {e}\noutput:\n{out}");
    }
    out
}

/// `command` on the databases `database` names.
fn on<'a>(database: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    [database, command].concat()
}

/// The summary a run printed on its `SHOP_JSON` line.
fn summary_of(output: &str) -> Value {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("SHOP_JSON "))
        .unwrap_or_else(|| panic!("no SHOP_JSON line in:\n{output}"));
    serde_json::from_str(line).expect("SHOP_JSON is JSON")
}

fn counts(value: &Value) -> BTreeMap<String, u64> {
    value
        .as_object()
        .expect("an object of counts")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
        .collect()
}

/// The read models' rows, read from the databases `database` (`--data-dir` or
/// `--database-url` and its value) names.
async fn read_models(database: &[&str]) -> (Vec<OrderSummaryRow>, Vec<StockLevelRow>) {
    let (dir, url) = match database {
        ["--data-dir", dir] => (Some(PathBuf::from(dir)), None),
        ["--database-url", url] => (None, Some(*url)),
        other => panic!("not a database: {other:?}"),
    };
    match Database::from_args(dir, url).expect("a database") {
        Database::Sqlite(dir) => {
            let services = Services::sqlite(&dir, Open::Existing).await.expect("open");
            rows_of(&services).await
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => {
            let services = Services::postgres(&url, Open::Existing)
                .await
                .expect("open");
            rows_of(&services).await
        }
    }
}

async fn rows_of<S: ReadModels>(
    services: &Services<S>,
) -> (Vec<OrderSummaryRow>, Vec<StockLevelRow>) {
    let orders = services.order.order_summary().await.expect("order_summary");
    let stock = services
        .inventory
        .stock_levels()
        .await
        .expect("stock_levels");
    (orders, stock)
}

/// Runs `orders` orders in `style` on `database` (`--data-dir DIR` or `--database-url URL`) and
/// `broker` (nothing, or `--brokers HOST:PORT`), then checks the run's summary and operates on
/// its databases through the embedded CLI.
async fn run_and_check(database: &[&str], broker: &[&str], style: &str, orders: usize) {
    let orders_arg = orders.to_string();
    let mut args = [database, broker].concat();
    args.extend(["--style", style, "--orders", &orders_arg]);
    let output = shop(&args).await;
    let summary = summary_of(&output);
    let problems = summary["problems"].as_array().expect("problems");
    assert!(
        problems.is_empty(),
        "the run does not add up: {problems:#?}\n{output}"
    );
    assert_eq!(summary["style"], style);

    // Every order ended in exactly one outcome, and the mix is the one the workload placed. The
    // sold-out and declined orders fail on their own. A payment that answers late times out in
    // the orchestrated style (the saga owns a deadline); a busy shop may let one more time out,
    // and a busy database may fire a timeout after the late answer came, which confirms the
    // order: the sum holds either way.
    let outcomes = counts(&summary["outcomes"]);
    let planned = counts(&summary["planned"]);
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    assert_eq!(
        outcomes.values().sum::<u64>(),
        orders as u64,
        "{outcomes:?}"
    );
    assert!(!outcomes.contains_key("undecided"), "{outcomes:?}");
    assert_eq!(
        get(&outcomes, "out_of_stock"),
        get(&planned, "out_of_stock")
    );
    let (confirmed, declined, timed_out) = (
        get(&outcomes, "confirmed"),
        get(&outcomes, "payment_declined"),
        get(&outcomes, "payment_timed_out"),
    );
    assert!(
        declined <= get(&planned, "payment_declined"),
        "{outcomes:?}"
    );
    assert_eq!(
        confirmed + declined + timed_out,
        ["confirmed", "payment_declined", "payment_timed_out"]
            .iter()
            .map(|o| get(&planned, o))
            .sum::<u64>()
    );
    for outcome in ["confirmed", "out_of_stock", "payment_declined"] {
        assert!(
            get(&outcomes, outcome) > 0,
            "no {outcome} order: {outcomes:?}"
        );
    }
    let rejected = orders as u64 - confirmed;
    let effects = &summary["effects"];
    assert_eq!(effects["orders_rejected"].as_u64(), Some(rejected));

    if style == "orchestrated" {
        assert!(timed_out > 0, "no payment timed out: {outcomes:?}");
        // Each saga agrees with its order, and ran the compensations its failure needs: every
        // rejected order's acceptance; the stock of those whose payment failed or timed out;
        // the payment of those whose payment timed out (its outcome was unknown: it succeeded
        // late, and was refunded all the same).
        let sagas = counts(&summary["sagas"]);
        assert_eq!(get(&sagas, "completed"), confirmed, "{sagas:?}");
        assert_eq!(get(&sagas, "compensated"), rejected, "{sagas:?}");
        let compensations = counts(&summary["compensations"]);
        assert_eq!(get(&compensations, "accept_order"), rejected);
        assert_eq!(get(&compensations, "reserve_stock"), declined + timed_out);
        assert_eq!(get(&compensations, "charge_payment"), timed_out);
        let late = summary["late_successes"].as_u64().expect("late successes");
        assert!(
            late >= 1 && late <= timed_out,
            "{late} late, {timed_out} timeouts"
        );
        assert_eq!(effects["payments_refunded"].as_u64(), Some(late));
        assert_eq!(
            effects["reservations_released"].as_u64(),
            Some(declined + timed_out)
        );
    } else {
        // No saga: the services undo on their own. Nobody waits with a clock, so a late payment
        // makes a slow order, not a rejected one. A sold-out order was charged (the payment
        // service does not wait for the stock) and is refunded; a declined one's stock is
        // released.
        assert_eq!(timed_out, 0, "{outcomes:?}");
        assert_eq!(confirmed, get(&planned, "confirmed"));
        assert_eq!(summary["sagas"], serde_json::json!({}));
        assert_eq!(
            effects["payments_refunded"].as_u64(),
            Some(get(&outcomes, "out_of_stock"))
        );
        assert_eq!(effects["reservations_released"].as_u64(), Some(declined));
    }

    // Money and stock balance.
    let money = &summary["money"];
    let cents = |k: &str| money[k].as_u64().expect("cents");
    assert_eq!(
        cents("charged_cents") - cents("refunded_cents"),
        cents("kept_cents")
    );
    assert_eq!(cents("kept_cents"), cents("confirmed_cents"));
    assert!(cents("refunded_cents") > 0);
    for item in summary["stock"].as_array().expect("stock") {
        let n = |k: &str| item[k].as_u64().expect("a quantity");
        assert_eq!(
            n("available") + n("reserved") + n("shipped"),
            n("opening"),
            "{item}"
        );
        assert_eq!(n("reserved"), 0, "{item}");
        assert_eq!(n("shipped"), n("confirmed_quantity"), "{item}");
    }

    // The read models equal a fold of the events...
    for model in summary["read_models"].as_array().expect("read models") {
        assert_eq!(model["equals_fold"], Value::Bool(true), "{model}");
    }
    // ... and rebuilding them through the embedded CLI gives the same rows.
    let before = read_models(database).await;
    assert_eq!(before.0.len(), orders);
    for (name, events) in [
        ("order_summary", &summary["read_models"][0]["events"]),
        ("stock_levels", &summary["read_models"][1]["events"]),
    ] {
        let rebuilt = shop(&on(database, &["projections", "rebuild", name, "--json"])).await;
        let rebuilt: Value = serde_json::from_str(&rebuilt).expect("rebuild --json");
        assert_eq!(rebuilt["applied"], *events, "{rebuilt}");
    }
    assert_eq!(read_models(database).await, before);

    // The failed order's trace shows what undid it; in the orchestrated style, its saga shows
    // the compensations in reverse order of the steps.
    let failed = &summary["failed_order"];
    let correlation_id = failed["correlation_id"].as_str().expect("correlation id");
    let trace = shop(&on(database, &["trace", correlation_id])).await;
    let mermaid = shop(&on(database, &["trace", correlation_id, "--mermaid"])).await;
    assert!(mermaid.starts_with("sequenceDiagram"), "{mermaid}");
    let undone: Vec<&str> = failed["compensations"]
        .as_array()
        .expect("compensations")
        .iter()
        .map(|c| c.as_str().expect("a name"))
        .collect();
    if style == "orchestrated" {
        assert_eq!(failed["outcome"], "payment_timed_out", "{failed}");
        assert_eq!(undone, ["charge_payment", "reserve_stock", "accept_order"]);
        let saga_id = failed["saga_id"].as_str().expect("saga id");
        let shown = shop(&on(database, &["sagas", "show", saga_id, "--json"])).await;
        let shown: Value = serde_json::from_str(&shown).expect("sagas show --json");
        let history = shown["history"].as_array().expect("history");
        let compensated: Vec<&str> = history
            .iter()
            .filter(|h| h["type"] == "saga.step_compensated")
            .map(|h| h["event"]["step"].as_str().expect("step"))
            .collect();
        assert_eq!(compensated, undone);
        assert!(
            history
                .iter()
                .any(|h| h["type"] == "saga.step_succeeded_late")
        );
        let listed = shop(&on(
            database,
            &[
                "sagas",
                "list",
                "--state",
                "compensated",
                "--limit",
                "10000",
                "--json",
            ],
        ))
        .await;
        let listed: Value = serde_json::from_str(&listed).expect("sagas list --json");
        assert_eq!(listed.as_array().map(Vec::len), Some(rejected as usize));
        for what in [
            "payment.charged",
            "payment.refunded",
            "stock.released",
            "order.rejected",
            "saga.step_succeeded_late",
            "saga.compensated",
        ] {
            assert!(trace.contains(what), "no {what} in the trace:\n{trace}");
        }
        assert!(mermaid.contains("payment.refund"), "{mermaid}");
    } else {
        assert!(!undone.is_empty(), "{failed}");
        for what in undone
            .iter()
            .copied()
            .chain(["order.placed", "order.rejected"])
        {
            assert!(trace.contains(what), "no {what} in the trace:\n{trace}");
        }
        // The flow crosses the services by their events only.
        assert!(trace.contains("received by inventory"), "{trace}");
        assert!(trace.contains("received by payment"), "{trace}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_adds_up_on_sqlite_and_the_in_process_broker() {
    on_sqlite("orchestrated", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choreographed_shop_adds_up_on_sqlite_and_the_in_process_broker() {
    on_sqlite("choreographed", 200).await;
}

/// Runs the shop in `style` on SQLite in a fresh data directory and the in-process broker.
async fn on_sqlite(style: &str, orders: usize) {
    let dir = temp_dir();
    run_and_check(
        &["--data-dir", &dir.display().to_string()],
        &[],
        style,
        orders,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh data directory.
fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("eventfold-shop-test-{}", uuid::Uuid::now_v7()))
}

#[cfg(all(feature = "postgres", feature = "kafka", feature = "test-util"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_adds_up_on_postgres_and_kafka() {
    on_postgres_and_kafka("orchestrated", 150).await;
}

#[cfg(all(feature = "postgres", feature = "kafka", feature = "test-util"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choreographed_shop_adds_up_on_postgres_and_kafka() {
    on_postgres_and_kafka("choreographed", 150).await;
}

/// Runs the shop in `style` on a fresh PostgreSQL database and the Kafka-protocol broker.
#[cfg(all(feature = "postgres", feature = "kafka", feature = "test-util"))]
async fn on_postgres_and_kafka(style: &str, orders: usize) {
    use eventfold::eventstore::postgres::testing::{DEFAULT_DATABASE_URL, TestDb};

    let db = TestDb::create(2)
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL");
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let url = match server.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{}", &server[..slash], db.name()),
        _ => format!("{server}/{}", db.name()),
    };
    let brokers = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    run_and_check(
        &["--database-url", &url],
        &["--brokers", &brokers],
        style,
        orders,
    )
    .await;
}
