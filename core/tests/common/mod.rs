//! Records and realistic flows for the trace tests.
#![allow(dead_code)] // each test file uses part of it

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use eventfold_core::trace::{TraceKind, TraceRecord};
use uuid::Uuid;

/// 2024-05-01T10:00:00Z, the start of every flow here.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
        .single()
        .expect("a valid date")
}

/// A recognisable id: `01900000-0000-7000-8000-0000000000nn`.
pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

/// A record of `kind` at `us` microseconds after [`t0`], with no cause, subject, sender or error.
pub fn rec(kind: TraceKind, id: Uuid, name: &str, service: &str, us: i64) -> TraceRecord {
    TraceRecord {
        kind,
        id,
        correlation_id: Uuid::nil(),
        causation_id: None,
        name: name.to_owned(),
        service: service.to_owned(),
        at: t0() + TimeDelta::microseconds(us),
        subject: String::new(),
        from_service: None,
        error: None,
    }
}

/// Builder-style setters for [`rec`].
pub trait RecordExt {
    /// Sets the causation id.
    fn caused_by(self, cause: Uuid) -> Self;
    /// Sets the subject (stream and version, topic, consumer).
    fn on(self, subject: &str) -> Self;
    /// Sets the sending service of a delivery.
    fn sent_by(self, service: &str) -> Self;
    /// Sets the error.
    fn failing(self, error: &str) -> Self;
    /// Sets the correlation id.
    fn in_flow(self, flow: Uuid) -> Self;
}

impl RecordExt for TraceRecord {
    fn caused_by(mut self, cause: Uuid) -> Self {
        self.causation_id = Some(cause);
        self
    }
    fn on(mut self, subject: &str) -> Self {
        self.subject = subject.to_owned();
        self
    }
    fn sent_by(mut self, service: &str) -> Self {
        self.from_service = Some(service.to_owned());
        self
    }
    fn failing(mut self, error: &str) -> Self {
        self.error = Some(error.to_owned());
        self
    }
    fn in_flow(mut self, flow: Uuid) -> Self {
        self.correlation_id = flow;
        self
    }
}

use TraceKind::{DeadLetter, Event, Parked, Received, Sent, Timer};

/// The orchestrated saga's correlation id.
pub fn saga_flow_id() -> Uuid {
    id(0xa0)
}

/// An orchestrated saga (fulfilment of order 42, run by the order service), as the order,
/// inventory and payment databases recorded it, taken while it compensates: stock reserved,
/// the payment command parked by the payment consumer, the step timed out, the reservation
/// released, the release's reply not yet received by the order service and its timeout timer
/// pending.
pub fn saga_databases() -> Vec<(&'static str, Vec<TraceRecord>)> {
    let (placed, started, step1, reserve) = (id(0x01), id(0x02), id(0x03), id(0x04));
    let (reserved, reply1, step1_done, step2) = (id(0x05), id(0x06), id(0x07), id(0x08));
    let (charge, timed_out, compensating, release) = (id(0x09), id(0x0a), id(0x0b), id(0x0c));
    let (released, reply2, timer) = (id(0x0d), id(0x0e), id(0x0f));
    let saga = "saga/fulfilment-42";
    let order = vec![
        rec(Event, placed, "order.placed", "order", 0).on("order-42 v1"),
        rec(Event, started, "saga.started", "order", 1_800)
            .caused_by(placed)
            .on(&format!("{saga} v1")),
        rec(Event, step1, "saga.step_started", "order", 1_900)
            .caused_by(started)
            .on(&format!("{saga} v2 reserve")),
        rec(Sent, reserve, "inventory.reserve", "order", 1_900)
            .caused_by(step1)
            .on("inventory.commands/42"),
        rec(Received, reply1, "saga.reply", "order", 29_700)
            .caused_by(reserve)
            .sent_by("inventory")
            .on("saga-replies"),
        rec(Event, step1_done, "saga.step_completed", "order", 30_400)
            .caused_by(reply1)
            .on(&format!("{saga} v3 reserve")),
        rec(Event, step2, "saga.step_started", "order", 30_400)
            .caused_by(reply1)
            .on(&format!("{saga} v4 charge")),
        rec(Sent, charge, "payment.charge", "order", 30_400)
            .caused_by(step2)
            .on("payment.commands/42"),
        rec(Event, timed_out, "saga.step_timed_out", "order", 30_031_000)
            .caused_by(step2)
            .on(&format!("{saga} v5 charge")),
        rec(
            Event,
            compensating,
            "saga.compensating",
            "order",
            30_031_000,
        )
        .caused_by(timed_out)
        .on(&format!("{saga} v6 release")),
        rec(Sent, release, "inventory.release", "order", 30_031_000)
            .caused_by(compensating)
            .on("inventory.commands/42"),
        rec(Timer, timer, "step.timeout", "order", 60_031_000)
            .on(&format!("{saga} release attempt 1")),
    ];
    let inventory = vec![
        rec(Received, reserve, "inventory.reserve", "inventory", 14_200)
            .caused_by(step1)
            .sent_by("order")
            .on("inventory-commands"),
        rec(Event, reserved, "stock.reserved", "inventory", 15_100)
            .caused_by(reserve)
            .on("stock-sku-7 v12"),
        rec(Sent, reply1, "saga.reply", "inventory", 15_100)
            .caused_by(reserve)
            .on("saga.replies/42"),
        rec(
            Received,
            release,
            "inventory.release",
            "inventory",
            30_052_300,
        )
        .caused_by(compensating)
        .sent_by("order")
        .on("inventory-commands"),
        rec(Event, released, "stock.released", "inventory", 30_053_000)
            .caused_by(release)
            .on("stock-sku-7 v13"),
        rec(Sent, reply2, "saga.reply", "inventory", 30_053_000)
            .caused_by(release)
            .on("saga.replies/42"),
    ];
    let payment = vec![
        rec(Parked, charge, "payment.charge", "payment", 1_262_000)
            .caused_by(step2)
            .sent_by("order")
            .on("payment-commands")
            .failing("card declined: insufficient funds; issuer code #51\nafter 5 attempts"),
    ];
    in_flow(
        saga_flow_id(),
        vec![
            ("order", order),
            ("inventory", inventory),
            ("payment", payment),
        ],
    )
}

/// The choreographed flow's correlation id.
pub fn choreography_flow_id() -> Uuid {
    id(0xb0)
}

/// A choreographed flow across three services with no coordinator, as each service's database
/// recorded it: order placed → payment charged (payment reacts) → shipment scheduled (shipping
/// reacts) and order paid (order reacts) → order shipped; shipping's e-mail notification is a
/// dead letter (the relay could not reach the broker).
pub fn choreography_databases() -> Vec<(&'static str, Vec<TraceRecord>)> {
    let (placed, charged, paid, scheduled) = (id(0x21), id(0x22), id(0x23), id(0x24));
    let (mail, shipped) = (id(0x25), id(0x26));
    let order = vec![
        rec(Event, placed, "order.placed", "order", 0).on("order-77 v1"),
        rec(Received, charged, "payment.charged", "order", 27_000)
            .caused_by(placed)
            .sent_by("payment")
            .on("order-reactor"),
        rec(Event, paid, "order.paid", "order", 27_800)
            .caused_by(charged)
            .on("order-77 v2"),
        rec(Received, scheduled, "shipment.scheduled", "order", 41_500)
            .caused_by(charged)
            .sent_by("shipping")
            .on("order-reactor"),
        rec(Event, shipped, "order.shipped", "order", 42_100)
            .caused_by(scheduled)
            .on("order-77 v3"),
    ];
    let payment = vec![
        rec(Received, placed, "order.placed", "payment", 12_400)
            .sent_by("order")
            .on("payment-reactor"),
        rec(Event, charged, "payment.charged", "payment", 13_900)
            .caused_by(placed)
            .on("payment-77 v1"),
    ];
    let shipping = vec![
        rec(Received, charged, "payment.charged", "shipping", 25_300)
            .caused_by(placed)
            .sent_by("payment")
            .on("shipping-reactor"),
        rec(Event, scheduled, "shipment.scheduled", "shipping", 26_000)
            .caused_by(charged)
            .on("shipment-77 v1"),
        rec(Sent, mail, "notification.email", "shipping", 26_000)
            .caused_by(charged)
            .on("notifications/77"),
        rec(
            DeadLetter,
            mail,
            "notification.email",
            "shipping",
            5_026_000,
        )
        .caused_by(charged)
        .on("notifications/77")
        .failing("broker unreachable: connection refused (os error 111)"),
    ];
    in_flow(
        choreography_flow_id(),
        vec![
            ("order", order),
            ("payment", payment),
            ("shipping", shipping),
        ],
    )
}

fn in_flow(
    flow: Uuid,
    databases: Vec<(&'static str, Vec<TraceRecord>)>,
) -> Vec<(&'static str, Vec<TraceRecord>)> {
    databases
        .into_iter()
        .map(|(service, records)| {
            (
                service,
                records.into_iter().map(|r| r.in_flow(flow)).collect(),
            )
        })
        .collect()
}

/// Every record of the databases, in the order given.
pub fn merged(databases: &[(&'static str, Vec<TraceRecord>)]) -> Vec<TraceRecord> {
    databases
        .iter()
        .flat_map(|(_, records)| records.clone())
        .collect()
}
