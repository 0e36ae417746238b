//! The summary at the end of a run, checked: every order ended in exactly one outcome, the money
//! and the stock add up, the read models equal a fresh fold of the events. It is printed for
//! people, and as one `SHOP_JSON {...}` line for scripts and tests.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use eventfold::eventstore::{Checkpoint, EventStore, LogFilter};
use eventfold::saga::SagaEvent;
use eventfold::{Aggregate, BoxError, Envelope, Event, Upcasters};
use serde::Serialize;
use uuid::Uuid;

use crate::inventory::{
    Inventory, ReservationEvent, ReservationStatus, StockEvent, StockItem, quantities,
};
use crate::order::{Order, OrderEvent, OrderStatus, Orders};
use crate::payment::{PaymentEvent, Payments};
use crate::read_models::{OrderSummaryRow, StockLevelRow};
use crate::services::{Services, ShopStore};
use crate::style::Style;
use crate::style::orchestrated::SAGA_TYPE;
use crate::workload::{CATALOG, Driven, SOLD_OUT, planned_outcome};

/// The summary of a run (the `SHOP_JSON` line).
#[derive(Debug, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub setup: Setup,
    pub orders: usize,
    /// Orders by outcome: `confirmed`, `out_of_stock`, `payment_declined`, `payment_timed_out`.
    pub outcomes: BTreeMap<String, usize>,
    /// Orders by the outcome the workload meant them to have.
    pub planned: BTreeMap<String, usize>,
    /// Saga instances by status (orchestrated style).
    pub sagas: BTreeMap<String, usize>,
    /// Compensations the sagas ran, by step.
    pub compensations: BTreeMap<String, usize>,
    /// Payments whose success came after their timeout (and were refunded all the same).
    pub late_successes: usize,
    /// The business effects of the compensations, from the services' own events.
    pub effects: Effects,
    pub money: Money,
    pub stock: Vec<StockBalance>,
    pub read_models: Vec<ReadModelCheck>,
    pub seconds: f64,
    pub orders_per_second: f64,
    pub latency_ms: Latency,
    /// One order that did not go through, to trace.
    pub failed_order: Option<FailedOrder>,
    /// What does not add up; empty when the run is consistent.
    pub problems: Vec<String>,
}

/// What ran: the style, the database and the broker.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub style: String,
    pub database: String,
    pub broker: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Effects {
    /// `reservation.released` events: orders whose stock went back on the shelf.
    pub reservations_released: usize,
    /// `payment.refunded` events.
    pub payments_refunded: usize,
    /// `order.rejected` events.
    pub orders_rejected: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Money {
    pub charged_cents: u64,
    pub refunded_cents: u64,
    /// Charged minus refunded: what the shop kept.
    pub kept_cents: u64,
    /// The totals of the confirmed orders: what the shop should have kept.
    pub confirmed_cents: u64,
}

#[derive(Debug, Serialize)]
pub struct StockBalance {
    pub sku: String,
    pub opening: u64,
    pub available: u64,
    pub reserved: u64,
    pub shipped: u64,
    /// What the confirmed orders asked for.
    pub confirmed_quantity: u64,
}

#[derive(Debug, Serialize)]
pub struct ReadModelCheck {
    pub name: String,
    pub rows: usize,
    pub events: usize,
    /// The rows equal a fold of the service's events.
    pub equals_fold: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedOrder {
    pub order_id: String,
    pub outcome: String,
    pub correlation_id: Uuid,
    pub saga_id: Option<Uuid>,
    /// The compensations its saga ran, in order.
    pub compensations: Vec<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a finished run against the services' aggregates, events and read models.
pub async fn summarize<S: ShopStore>(
    setup: Setup,
    style: Style,
    services: &Services<S>,
    driven: &Driven,
    opening_stock: u64,
) -> Result<Summary, BoxError> {
    let mut problems = Vec::new();
    let orders = Orders::new(services.order.clone());
    let payments = Payments::new(services.payment.clone());
    let inventory = Inventory::new(services.inventory.clone());

    // Every order ended in exactly one outcome, its saga agrees, and its money adds up.
    let mut outcomes = BTreeMap::new();
    let mut planned = BTreeMap::new();
    let mut sagas = BTreeMap::new();
    let mut compensations = BTreeMap::new();
    let mut late_successes = 0;
    let mut money = Money::default();
    let mut confirmed_quantities: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed: Vec<FailedOrder> = Vec::new();
    for placed in &driven.orders {
        let id = &placed.order.order_id;
        let order = orders.order(id).await?;
        let outcome = match order.status {
            OrderStatus::Confirmed => "confirmed".to_owned(),
            OrderStatus::Rejected(reason) => reason.as_str().to_owned(),
            other => {
                problems.push(format!("order {id} has no outcome: {other:?}"));
                "undecided".to_owned()
            }
        };
        if placed.decision.as_deref() != Some(outcome.as_str()) {
            problems.push(format!(
                "order {id}: the workload saw {:?}, the order is {outcome}",
                placed.decision
            ));
        }
        *outcomes.entry(outcome.clone()).or_insert(0) += 1;
        *planned
            .entry(planned_outcome(&placed.order, style).to_owned())
            .or_insert(0) += 1;

        let payment = payments.payment(id).await?;
        money.charged_cents += payment.charged;
        money.refunded_cents += payment.refunded;
        let kept = payment.charged.saturating_sub(payment.refunded);
        let should_keep = if outcome == "confirmed" {
            order.total_cents
        } else {
            0
        };
        if kept != should_keep || payment.refunded > payment.charged {
            problems.push(format!(
                "order {id} ({outcome}): charged {}, refunded {}, should keep {should_keep}",
                payment.charged, payment.refunded
            ));
        }
        if outcome == "confirmed" {
            money.confirmed_cents += order.total_cents;
            for (sku, quantity) in quantities(&order.lines) {
                *confirmed_quantities.entry(sku).or_insert(0) += quantity;
            }
        }

        // The orchestrated style's saga agrees with the order, and ran these compensations.
        let mut saga_id = None;
        let mut undone = Vec::new();
        if let Some(record) = services.order.saga_by_key(SAGA_TYPE, id).await? {
            *sagas.entry(record.status.clone()).or_insert(0) += 1;
            let expected = if outcome == "confirmed" {
                "completed"
            } else {
                "compensated"
            };
            if record.status != expected {
                problems.push(format!(
                    "order {id} is {outcome} but its saga {} is {}",
                    record.saga_id, record.status
                ));
            }
            saga_id = Some(record.saga_id);
            let saga = eventfold::saga::runtime::load(&services.order, record.saga_id).await?;
            for entry in saga.iter().flat_map(|s| &s.history) {
                match &entry.event {
                    SagaEvent::StepCompensated { step, .. } => {
                        *compensations.entry(step.clone()).or_insert(0) += 1;
                        undone.push(step.clone());
                    }
                    SagaEvent::StepSucceededLate { .. } => late_successes += 1,
                    _ => {}
                }
            }
        } else if style == Style::Orchestrated {
            problems.push(format!("order {id} has no saga"));
        } else {
            // The choreographed style's compensations are the services' own reactions.
            if inventory.reservation(id).await?.status == ReservationStatus::Released {
                undone.push("reservation.released".to_owned());
            }
            if payment.refunded > 0 {
                undone.push("payment.refunded".to_owned());
            }
        }
        if outcome != "confirmed" {
            failed.push(FailedOrder {
                order_id: id.clone(),
                outcome,
                correlation_id: placed.correlation_id,
                saga_id,
                compensations: undone,
            });
        }
    }
    money.kept_cents = money.charged_cents.saturating_sub(money.refunded_cents);
    if money.kept_cents != money.confirmed_cents {
        problems.push(format!(
            "money: the shop kept {} but the confirmed orders total {}",
            money.kept_cents, money.confirmed_cents
        ));
    }
    // The most instructive failure to trace: a late payment, else the one that undid the most.
    failed.sort_by_key(|order| {
        (
            order.outcome != "payment_timed_out",
            std::cmp::Reverse(order.compensations.len()),
            order.order_id.clone(),
        )
    });
    let failed_order = failed.into_iter().next();

    // The stock adds up: what arrived is on the shelf, held, or shipped to confirmed orders.
    let mut stock = Vec::new();
    for product in CATALOG.iter().chain([&SOLD_OUT]) {
        let item = inventory.item(product.sku).await?;
        let balance = StockBalance {
            sku: product.sku.to_owned(),
            opening: item.restocked,
            available: item.available,
            reserved: item.reserved_total(),
            shipped: item.shipped_total(),
            confirmed_quantity: confirmed_quantities.get(product.sku).copied().unwrap_or(0),
        };
        let expected_opening = if product.sku == SOLD_OUT.sku {
            0
        } else {
            opening_stock
        };
        if balance.opening != expected_opening
            || balance.available + balance.reserved + balance.shipped != balance.opening
            || balance.reserved != 0
            || balance.shipped != balance.confirmed_quantity
        {
            problems.push(format!(
                "stock of {} does not add up: {balance:?}",
                product.sku
            ));
        }
        stock.push(balance);
    }

    // The read models equal a fresh fold of the events they are built from.
    let order_events: Vec<Envelope<OrderEvent>> = events_of(&services.order, "order").await?;
    let stock_events: Vec<Envelope<StockEvent>> =
        events_of(&services.inventory, "stock_item").await?;
    let reservation_events: Vec<Envelope<ReservationEvent>> =
        events_of(&services.inventory, "reservation").await?;
    let payment_events: Vec<Envelope<PaymentEvent>> =
        events_of(&services.payment, "payment").await?;
    let summary_rows = services.order.order_summary().await?;
    let level_rows = services.inventory.stock_levels().await?;
    let expected_summary = fold_order_summary(&order_events);
    let expected_levels = fold_stock_levels(&stock_events);
    let read_models = vec![
        ReadModelCheck {
            name: "order_summary".into(),
            rows: summary_rows.len(),
            // The events it is built from (the choreographed style's progress notes are not).
            events: order_events
                .iter()
                .filter(|e| !matches!(e.payload, OrderEvent::StockReserved | OrderEvent::Paid))
                .count(),
            equals_fold: summary_rows == expected_summary,
        },
        ReadModelCheck {
            name: "stock_levels".into(),
            rows: level_rows.len(),
            events: stock_events.len(),
            equals_fold: level_rows == expected_levels,
        },
    ];
    for check in &read_models {
        if !check.equals_fold {
            problems.push(format!(
                "read model {} differs from a fold of its {} events",
                check.name, check.events
            ));
        }
    }
    // ... and agree with the aggregates.
    for balance in &stock {
        let row = level_rows.iter().find(|r| r.sku == balance.sku);
        let levels = row.map_or((0, 0, 0), |r| (r.available, r.reserved, r.shipped));
        let aggregate = (
            balance.available as i64,
            balance.reserved as i64,
            balance.shipped as i64,
        );
        if levels != aggregate {
            problems.push(format!(
                "stock_levels of {} is {levels:?}, the stock item {aggregate:?}",
                balance.sku
            ));
        }
    }
    let confirmed_rows = summary_rows.iter().filter(|r| r.status == "confirmed");
    let (rows_confirmed, rows_cents) =
        confirmed_rows.fold((0, 0), |(n, c), r| (n + 1, c + r.total_cents));
    if (rows_confirmed, rows_cents as u64)
        != (
            outcomes.get("confirmed").copied().unwrap_or(0),
            money.confirmed_cents,
        )
    {
        problems.push("order_summary's confirmed orders differ from the orders".to_owned());
    }

    let effects = Effects {
        reservations_released: reservation_events
            .iter()
            .filter(|e| matches!(e.payload, ReservationEvent::Released))
            .count(),
        payments_refunded: payment_events
            .iter()
            .filter(|e| matches!(e.payload, PaymentEvent::Refunded { .. }))
            .count(),
        orders_rejected: order_events
            .iter()
            .filter(|e| matches!(e.payload, OrderEvent::Rejected { .. }))
            .count(),
    };

    let mut latencies: Vec<Duration> = driven.orders.iter().filter_map(|o| o.latency()).collect();
    latencies.sort();
    let seconds = driven.elapsed.as_secs_f64();
    Ok(Summary {
        setup,
        orders: driven.orders.len(),
        outcomes,
        planned,
        sagas,
        compensations,
        late_successes,
        effects,
        money,
        stock,
        read_models,
        seconds,
        orders_per_second: driven.orders.len() as f64 / seconds.max(1e-9),
        latency_ms: Latency {
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: percentile(&latencies, 1.0),
        },
        failed_order,
        problems,
    })
}

/// The `order_summary` rows the events give, folded by the order aggregate itself (not by the
/// projection's code).
fn fold_order_summary(events: &[Envelope<OrderEvent>]) -> Vec<OrderSummaryRow> {
    let mut by_order: BTreeMap<&str, Vec<&OrderEvent>> = BTreeMap::new();
    for event in events {
        by_order
            .entry(event.stream_id.id())
            .or_default()
            .push(&event.payload);
    }
    by_order
        .into_iter()
        .map(|(order_id, events)| {
            let customer = events.iter().find_map(|e| match e {
                OrderEvent::Placed { customer, .. } => Some(customer.clone()),
                _ => None,
            });
            let order = Order::fold(events);
            let (status, reason) = match order.status {
                OrderStatus::Confirmed => ("confirmed", None),
                OrderStatus::Rejected(reason) => ("rejected", Some(reason.as_str().to_owned())),
                _ => ("placed", None),
            };
            OrderSummaryRow {
                order_id: order_id.to_owned(),
                customer: customer.unwrap_or_default(),
                items: order.lines.iter().map(|l| i64::from(l.quantity)).sum(),
                total_cents: order.total_cents as i64,
                status: status.to_owned(),
                reason,
            }
        })
        .collect()
}

/// The `stock_levels` rows the events give, folded by the stock item aggregate.
fn fold_stock_levels(events: &[Envelope<StockEvent>]) -> Vec<StockLevelRow> {
    let mut by_sku: BTreeMap<&str, Vec<&StockEvent>> = BTreeMap::new();
    for event in events {
        by_sku
            .entry(event.stream_id.id())
            .or_default()
            .push(&event.payload);
    }
    by_sku
        .into_iter()
        .map(|(sku, events)| {
            let item = StockItem::fold(events);
            StockLevelRow {
                sku: sku.to_owned(),
                available: item.available as i64,
                reserved: item.reserved_total() as i64,
                shipped: item.shipped_total() as i64,
            }
        })
        .collect()
}

/// Every event of a stream type in a service's log, decoded.
pub async fn events_of<E: Event, S: EventStore>(
    store: &S,
    stream_type: &str,
) -> Result<Vec<Envelope<E>>, BoxError> {
    let filter = LogFilter::all().stream_types([stream_type]);
    let upcasters = Upcasters::default();
    let mut events = Vec::new();
    let mut from = Checkpoint::START;
    loop {
        let batch = store.read_log(from, 1_000, &filter).await?;
        for event in batch.events {
            events.push(eventfold::decode_event::<E>(event.event, &upcasters)?);
        }
        from = batch.checkpoint;
        if batch.reached_end && !batch.held_back {
            return Ok(events);
        }
    }
}

/// The `q` quantile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1_000.0
}

/// `$1,234.56`.
pub fn dollars(cents: u64) -> String {
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("${grouped}.{:02}", cents % 100)
}

/// Prints the summary for people.
pub fn print(summary: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    let mark = |ok: bool| if ok { "ok" } else { "DOES NOT ADD UP" };
    writeln!(out)?;
    writeln!(
        out,
        "== {} orders in {:.1} s ({:.0} orders/s), {} style, {}, {}",
        summary.orders,
        summary.seconds,
        summary.orders_per_second,
        summary.setup.style,
        summary.setup.database,
        summary.setup.broker
    )?;
    writeln!(out, "\norders by outcome     actual  planned")?;
    for (outcome, n) in &summary.outcomes {
        let planned = summary.planned.get(outcome).copied().unwrap_or(0);
        writeln!(out, "  {outcome:<20} {n:>6} {planned:>8}")?;
    }
    if !summary.sagas.is_empty() {
        let sagas: Vec<String> = summary
            .sagas
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        writeln!(out, "\nsagas ({SAGA_TYPE}): {}", sagas.join(", "))?;
        let steps: Vec<String> = summary
            .compensations
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        writeln!(out, "  compensations run, by step: {}", steps.join(", "))?;
        writeln!(
            out,
            "  late payment successes, refunded all the same: {}",
            summary.late_successes
        )?;
    }
    if summary.sagas.is_empty() {
        writeln!(
            out,
            "\nno saga: the services undid the failed orders on their own"
        )?;
    }
    let e = &summary.effects;
    writeln!(
        out,
        "  compensating effects: {} reservations released, {} payments refunded, {} orders rejected",
        e.reservations_released, e.payments_refunded, e.orders_rejected
    )?;
    let m = &summary.money;
    writeln!(
        out,
        "\nmoney: charged {}, refunded {}, kept {} = confirmed orders {}: {}",
        dollars(m.charged_cents),
        dollars(m.refunded_cents),
        dollars(m.kept_cents),
        dollars(m.confirmed_cents),
        mark(m.kept_cents == m.confirmed_cents)
    )?;
    writeln!(
        out,
        "\nstock        opening  available  reserved  shipped  confirmed orders"
    )?;
    for s in &summary.stock {
        writeln!(
            out,
            "  {:<14} {:>6} {:>10} {:>9} {:>8} {:>17}",
            s.sku, s.opening, s.available, s.reserved, s.shipped, s.confirmed_quantity
        )?;
    }
    writeln!(out, "\nread models")?;
    for r in &summary.read_models {
        writeln!(
            out,
            "  {:<14} {} rows, equal to a fold of {} events: {}",
            r.name,
            r.rows,
            r.events,
            mark(r.equals_fold)
        )?;
    }
    let l = &summary.latency_ms;
    writeln!(
        out,
        "\nlatency, order placed to decided: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        l.p50, l.p99, l.max
    )?;
    if summary.ok() {
        writeln!(
            out,
            "\nevery order has one outcome; money, stock and read models add up"
        )?;
    } else {
        writeln!(out, "\nPROBLEMS:")?;
        for p in &summary.problems {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(())
}
