//! What the services say to each other. They share no tables and no code paths, only these
//! message types and the topics they travel on.

use serde::{Deserialize, Serialize};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The unit price.
    pub price_cents: u64,
}

/// A payment method of the simulated payment gateway (see `payment::Gateway`). A real shop would
/// carry a card token here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Card {
    /// The gateway approves the charge at once.
    Approves,
    /// The gateway declines the charge at once.
    Declines,
    /// The gateway approves the charge, but answers later than the shop waits for it.
    AnswersLate,
}

/// An order as the customer placed it: the order service's `place` request, and the data of the
/// place-order saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The order's id (also its business key: placing it twice is one order).
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// What.
    pub lines: Vec<OrderLine>,
    /// How the customer pays.
    pub card: Card,
}

impl PlaceOrder {
    /// The order's total.
    pub fn total_cents(&self) -> u64 {
        total_cents(&self.lines)
    }

    /// What the inventory service needs to reserve, release or ship this order's stock.
    pub fn stock_request(&self) -> StockRequest {
        StockRequest {
            order_id: self.order_id.clone(),
            lines: self.lines.clone(),
        }
    }

    /// What the payment service needs to charge or refund this order.
    pub fn payment_request(&self) -> PaymentRequest {
        PaymentRequest {
            order_id: self.order_id.clone(),
            cents: self.total_cents(),
            card: self.card,
        }
    }

    /// What the order service needs to confirm or reject this order.
    pub fn order_request(&self) -> OrderRequest {
        OrderRequest {
            order_id: self.order_id.clone(),
        }
    }
}

/// The total of some order lines.
pub fn total_cents(lines: &[OrderLine]) -> u64 {
    lines
        .iter()
        .map(|l| u64::from(l.quantity) * l.price_cents)
        .sum()
}

/// `stock.reserve`, `stock.release`, `shipment.schedule`: to the inventory service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRequest {
    /// The order.
    pub order_id: String,
    /// Its lines.
    pub lines: Vec<OrderLine>,
}

/// `payment.charge`, `payment.refund`: to the payment service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    /// The order (a payment per order).
    pub order_id: String,
    /// The amount.
    pub cents: u64,
    /// The payment method.
    pub card: Card,
}

/// `order.confirm`, `order.reject`: to the order service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The order.
    pub order_id: String,
}

/// The message types of the commands.
pub mod types {
    /// Reserve an order's stock.
    pub const STOCK_RESERVE: &str = "stock.reserve";
    /// Put an order's reserved stock back (idempotent; nothing reserved is nothing to do).
    pub const STOCK_RELEASE: &str = "stock.release";
    /// Ship an order's reserved stock.
    pub const SHIPMENT_SCHEDULE: &str = "shipment.schedule";
    /// Charge an order's payment.
    pub const PAYMENT_CHARGE: &str = "payment.charge";
    /// Refund an order's payment (idempotent; nothing charged is nothing to do).
    pub const PAYMENT_REFUND: &str = "payment.refund";
    /// Confirm an order.
    pub const ORDER_CONFIRM: &str = "order.confirm";
    /// Reject an order.
    pub const ORDER_REJECT: &str = "order.reject";
}

/// The topics, under a prefix that is empty on the in-process broker and unique per run on Kafka
/// (a Kafka broker keeps its topics between runs; the databases of a run start empty).
#[derive(Debug, Clone)]
pub struct Topics {
    /// The prefix of every topic.
    pub prefix: String,
}

impl Topics {
    /// The topics under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// A topic of this run.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The inventory service's commands.
    pub fn inventory(&self) -> String {
        self.topic("inventory.commands")
    }

    /// The payment service's commands.
    pub fn payments(&self) -> String {
        self.topic("payments.commands")
    }

    /// The order service's commands.
    pub fn orders(&self) -> String {
        self.topic("orders.commands")
    }

    /// The replies to the order service's saga.
    pub fn saga_replies(&self) -> String {
        self.topic("order.place.replies")
    }

    /// Every topic the orchestrated style uses.
    pub fn orchestrated(&self) -> Vec<String> {
        vec![
            self.inventory(),
            self.payments(),
            self.orders(),
            self.saga_replies(),
        ]
    }
}
