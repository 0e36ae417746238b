//! The order service: an order per customer order (stream `order-{id}`), placed, then confirmed
//! once paid and shipped, or rejected with the reason.
//!
//! In the orchestrated style the saga tells the order when to confirm or reject. In the
//! choreographed style the order itself notes the other services' facts (the stock is reserved,
//! the payment went through) and confirms itself when it has both.

use eventfold::eventstore::{EventStore, ExecuteError, Repository};
use eventfold::{BoxError, CommandMetadata, Event, aggregate};
use serde::{Deserialize, Serialize};

use crate::messages::{Card, OrderLine, PlaceOrder, total_cents};

/// What happens to an order.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum OrderEvent {
    /// `order.placed`.
    Placed {
        customer: String,
        lines: Vec<OrderLine>,
        total_cents: u64,
        card: Card,
    },
    /// Choreographed style: the inventory reserved the stock (`order.stock_reserved`).
    StockReserved,
    /// Choreographed style: the payment went through (`order.paid`).
    Paid,
    /// Paid and shipped: `order.confirmed`.
    Confirmed,
    /// Not going through: `order.rejected`.
    Rejected {
        reason: RejectReason,
        detail: String,
    },
}

/// Why an order was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    OutOfStock,
    PaymentDeclined,
    PaymentTimedOut,
    Other,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfStock => "out_of_stock",
            RejectReason::PaymentDeclined => "payment_declined",
            RejectReason::PaymentTimedOut => "payment_timed_out",
            RejectReason::Other => "other",
        }
    }
}

#[derive(Debug, Clone)]
pub enum OrderCommand {
    Place {
        customer: String,
        lines: Vec<OrderLine>,
        card: Card,
    },
    /// The stock is reserved: confirms the order if it is paid too.
    NoteStockReserved,
    /// The payment went through: confirms the order if its stock is reserved too.
    NotePaid,
    Confirm,
    Reject {
        reason: RejectReason,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("the order was placed already")]
    AlreadyPlaced,
    #[error("an order needs at least one line")]
    Empty,
    #[error("the order was never placed")]
    NotPlaced,
    #[error("the order was {0} already")]
    Decided(&'static str),
}

/// Where an order is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    #[default]
    New,
    Placed,
    Confirmed,
    Rejected(RejectReason),
}

/// An order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub lines: Vec<OrderLine>,
    pub total_cents: u64,
    pub stock_reserved: bool,
    pub paid: bool,
}

#[aggregate]
impl Order {
    // Confirming a confirmed order, or rejecting a rejected one, changes nothing: the saga's
    // commands may come twice.
    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::*;
        Ok(match (self.status, command) {
            (New, OrderCommand::Place { lines, .. }) if lines.is_empty() => {
                return Err(OrderError::Empty);
            }
            (
                New,
                OrderCommand::Place {
                    customer,
                    lines,
                    card,
                },
            ) => vec![OrderEvent::Placed {
                customer: customer.clone(),
                lines: lines.clone(),
                total_cents: total_cents(lines),
                card: *card,
            }],
            (_, OrderCommand::Place { .. }) => return Err(OrderError::AlreadyPlaced),
            (New, _) => return Err(OrderError::NotPlaced),
            // A fact that comes after the order was decided changes nothing (a rejected order
            // that is paid is refunded by the payment service when it sees the rejection).
            (Confirmed | Rejected(_), OrderCommand::NoteStockReserved | OrderCommand::NotePaid) => {
                vec![]
            }
            (Placed, OrderCommand::NoteStockReserved) if self.stock_reserved => vec![],
            (Placed, OrderCommand::NoteStockReserved) if self.paid => {
                vec![OrderEvent::StockReserved, OrderEvent::Confirmed]
            }
            (Placed, OrderCommand::NoteStockReserved) => vec![OrderEvent::StockReserved],
            (Placed, OrderCommand::NotePaid) if self.paid => vec![],
            (Placed, OrderCommand::NotePaid) if self.stock_reserved => {
                vec![OrderEvent::Paid, OrderEvent::Confirmed]
            }
            (Placed, OrderCommand::NotePaid) => vec![OrderEvent::Paid],
            (Placed, OrderCommand::Confirm) => vec![OrderEvent::Confirmed],
            (Placed, OrderCommand::Reject { reason, detail }) => vec![OrderEvent::Rejected {
                reason: *reason,
                detail: detail.clone(),
            }],
            (Confirmed, OrderCommand::Confirm) | (Rejected(_), OrderCommand::Reject { .. }) => {
                vec![]
            }
            (Confirmed, OrderCommand::Reject { .. }) => {
                return Err(OrderError::Decided("confirmed"));
            }
            (Rejected(_), OrderCommand::Confirm) => return Err(OrderError::Decided("rejected")),
        })
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed {
                lines, total_cents, ..
            } => {
                self.status = OrderStatus::Placed;
                self.lines = lines.clone();
                self.total_cents = *total_cents;
            }
            OrderEvent::StockReserved => self.stock_reserved = true,
            OrderEvent::Paid => self.paid = true,
            OrderEvent::Confirmed => self.status = OrderStatus::Confirmed,
            OrderEvent::Rejected { reason, .. } => self.status = OrderStatus::Rejected(*reason),
        }
    }
}

/// The order service's operations, in the caller's unit of work.
#[derive(Clone)]
pub struct Orders<S: EventStore> {
    orders: Repository<Order, S>,
}

impl<S: EventStore> Orders<S> {
    pub fn new(store: S) -> Self {
        Self {
            orders: Repository::new(store),
        }
    }

    /// An order.
    pub async fn order(&self, order_id: &str) -> Result<Order, BoxError> {
        Ok(self.orders.load(order_id).await?.state)
    }

    /// Places an order.
    pub async fn place(
        &self,
        uow: &mut S::UnitOfWork,
        order: &PlaceOrder,
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        let command = OrderCommand::Place {
            customer: order.customer.clone(),
            lines: order.lines.clone(),
            card: order.card,
        };
        self.orders
            .execute_in(uow, &order.order_id, &command, meta.clone())
            .await?;
        Ok(())
    }

    /// Confirms or rejects an order.
    pub async fn decide(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        command: &OrderCommand,
        meta: &CommandMetadata,
    ) -> Result<(), ExecuteError<OrderError>> {
        self.orders
            .execute_in(uow, order_id, command, meta.clone())
            .await?;
        Ok(())
    }
}
