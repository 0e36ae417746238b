//! The read models, as projections of each service's own events: `order_summary` (a row per
//! order, in the order service's database) and `stock_levels` (a row per product, in the
//! inventory service's). eventfold applies each event once, with the checkpoint in the read
//! model's transaction, and can rebuild them from the events at any time:
//! `cargo run --example shop -- projections rebuild order_summary`.
//!
//! The SQL is the same on SQLite and PostgreSQL (`$1` placeholders work on both); only sqlx's
//! connection types differ, so a macro stamps the impls out for each backend.

use std::future::Future;

use eventfold::BoxError;
use eventfold::eventstore::EventStore;
use eventfold::projections::{Projections, Tables};
use serde::Serialize;

use crate::inventory::StockEvent;
use crate::order::OrderEvent;

/// A row per order: who, how much, and where it is (`placed`, `confirmed`, `rejected`).
pub struct OrderSummary;

/// A row per product: on the shelf, held for orders, shipped.
pub struct StockLevels;

/// A row of `order_summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderSummaryRow {
    pub order_id: String,
    pub customer: String,
    pub items: i64,
    pub total_cents: i64,
    pub status: String,
    pub reason: Option<String>,
}

/// A row of `stock_levels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockLevelRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub shipped: i64,
}

/// What an order event does to its row.
fn order_row_change(order_id: &str, event: &OrderEvent) -> OrderSummaryRow {
    let (customer, items, total, status, reason) = match event {
        OrderEvent::Placed {
            customer,
            lines,
            total_cents,
            ..
        } => (
            customer.clone(),
            lines.iter().map(|l| i64::from(l.quantity)).sum(),
            *total_cents as i64,
            "placed",
            None,
        ),
        OrderEvent::Confirmed => (String::new(), 0, 0, "confirmed", None),
        // Not among the projection's event types (see `event_types`).
        OrderEvent::StockReserved | OrderEvent::Paid => (String::new(), 0, 0, "placed", None),
        OrderEvent::Rejected { reason, .. } => (
            String::new(),
            0,
            0,
            "rejected",
            Some(reason.as_str().to_owned()),
        ),
    };
    OrderSummaryRow {
        order_id: order_id.to_owned(),
        customer,
        items,
        total_cents: total,
        status: status.to_owned(),
        reason,
    }
}

/// What a stock event does to its product's row: (available, reserved, shipped) deltas.
fn stock_deltas(event: &StockEvent) -> (i64, i64, i64) {
    match event {
        StockEvent::Restocked { quantity } => (*quantity as i64, 0, 0),
        StockEvent::Reserved { quantity, .. } => (-(*quantity as i64), *quantity as i64, 0),
        StockEvent::Released { quantity, .. } => (*quantity as i64, -(*quantity as i64), 0),
        StockEvent::Shipped { quantity, .. } => (0, -(*quantity as i64), *quantity as i64),
    }
}

/// The read models of the services, and the registries (`Projections`) that run them and that
/// the embedded CLI operates on.
pub trait ReadModels: EventStore {
    /// The order service's projections: `order_summary`.
    fn order_projections(&self) -> Projections<Self>;
    /// The inventory service's projections: `stock_levels`.
    fn inventory_projections(&self) -> Projections<Self>;
    /// The rows of `order_summary`.
    fn order_summary(&self) -> impl Future<Output = Result<Vec<OrderSummaryRow>, BoxError>> + Send;
    /// The rows of `stock_levels`.
    fn stock_levels(&self) -> impl Future<Output = Result<Vec<StockLevelRow>, BoxError>> + Send;
}

macro_rules! read_models_on {
    ($store:ty, $uow:ty) => {
        impl eventfold::projections::Projection<$uow> for OrderSummary {
            type Event = OrderEvent;

            fn name(&self) -> &str {
                "order_summary"
            }

            fn tables(&self) -> Vec<String> {
                vec!["order_summary".into()]
            }

            fn event_types(&self) -> Vec<String> {
                ["order.placed", "order.confirmed", "order.rejected"]
                    .map(String::from)
                    .to_vec()
            }

            async fn setup(&self, uow: &mut $uow, tables: &Tables) -> Result<(), BoxError> {
                let sql = format!(
                    "CREATE TABLE {} (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
                     items BIGINT NOT NULL, total_cents BIGINT NOT NULL, status TEXT NOT NULL, \
                     reason TEXT)",
                    tables.table("order_summary")
                );
                sqlx::query(&sql).execute(uow.connection()).await?;
                Ok(())
            }

            async fn apply(
                &self,
                uow: &mut $uow,
                tables: &Tables,
                event: &eventfold::Envelope<OrderEvent>,
            ) -> Result<(), BoxError> {
                let row = order_row_change(event.stream_id.id(), &event.payload);
                let table = tables.table("order_summary");
                if let OrderEvent::Placed { .. } = event.payload {
                    let sql = format!(
                        "INSERT INTO {table} (order_id, customer, items, total_cents, status, reason) \
                         VALUES ($1, $2, $3, $4, $5, $6)"
                    );
                    sqlx::query(&sql)
                        .bind(row.order_id)
                        .bind(row.customer)
                        .bind(row.items)
                        .bind(row.total_cents)
                        .bind(row.status)
                        .bind(row.reason)
                        .execute(uow.connection())
                        .await?;
                } else {
                    let sql =
                        format!("UPDATE {table} SET status = $1, reason = $2 WHERE order_id = $3");
                    sqlx::query(&sql)
                        .bind(row.status)
                        .bind(row.reason)
                        .bind(row.order_id)
                        .execute(uow.connection())
                        .await?;
                }
                Ok(())
            }
        }

        impl eventfold::projections::Projection<$uow> for StockLevels {
            type Event = StockEvent;

            fn name(&self) -> &str {
                "stock_levels"
            }

            fn tables(&self) -> Vec<String> {
                vec!["stock_levels".into()]
            }

            async fn setup(&self, uow: &mut $uow, tables: &Tables) -> Result<(), BoxError> {
                let sql = format!(
                    "CREATE TABLE {} (sku TEXT PRIMARY KEY, available BIGINT NOT NULL, \
                     reserved BIGINT NOT NULL, shipped BIGINT NOT NULL)",
                    tables.table("stock_levels")
                );
                sqlx::query(&sql).execute(uow.connection()).await?;
                Ok(())
            }

            async fn apply(
                &self,
                uow: &mut $uow,
                tables: &Tables,
                event: &eventfold::Envelope<StockEvent>,
            ) -> Result<(), BoxError> {
                let (available, reserved, shipped) = stock_deltas(&event.payload);
                let sql = format!(
                    "INSERT INTO {} AS s (sku, available, reserved, shipped) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (sku) DO UPDATE SET available = s.available + excluded.available, \
                     reserved = s.reserved + excluded.reserved, shipped = s.shipped + excluded.shipped",
                    tables.table("stock_levels")
                );
                sqlx::query(&sql)
                    .bind(event.stream_id.id())
                    .bind(available)
                    .bind(reserved)
                    .bind(shipped)
                    .execute(uow.connection())
                    .await?;
                Ok(())
            }
        }

        impl ReadModels for $store {
            fn order_projections(&self) -> Projections<Self> {
                Projections::new(self.clone()).register(OrderSummary)
            }

            fn inventory_projections(&self) -> Projections<Self> {
                Projections::new(self.clone()).register(StockLevels)
            }

            async fn order_summary(&self) -> Result<Vec<OrderSummaryRow>, BoxError> {
                let view = Tables::new(self.naming().schema().map(str::to_owned), 1)
                    .view("order_summary");
                let sql = format!(
                    "SELECT order_id, customer, items, total_cents, status, reason FROM {view} \
                     ORDER BY order_id"
                );
                let rows: Vec<(String, String, i64, i64, String, Option<String>)> =
                    sqlx::query_as(&sql).fetch_all(self.pool()).await?;
                Ok(rows
                    .into_iter()
                    .map(|(order_id, customer, items, total_cents, status, reason)| {
                        OrderSummaryRow { order_id, customer, items, total_cents, status, reason }
                    })
                    .collect())
            }

            async fn stock_levels(&self) -> Result<Vec<StockLevelRow>, BoxError> {
                let view = Tables::new(self.naming().schema().map(str::to_owned), 1)
                    .view("stock_levels");
                let sql =
                    format!("SELECT sku, available, reserved, shipped FROM {view} ORDER BY sku");
                let rows: Vec<(String, i64, i64, i64)> =
                    sqlx::query_as(&sql).fetch_all(self.pool()).await?;
                Ok(rows
                    .into_iter()
                    .map(|(sku, available, reserved, shipped)| StockLevelRow {
                        sku,
                        available,
                        reserved,
                        shipped,
                    })
                    .collect())
            }
        }
    };
}

read_models_on!(
    eventfold::eventstore::sqlite::SqliteStore,
    eventfold::eventstore::sqlite::SqliteUnitOfWork
);
#[cfg(feature = "postgres")]
read_models_on!(
    eventfold::eventstore::postgres::PgStore,
    eventfold::eventstore::postgres::PgUnitOfWork
);
