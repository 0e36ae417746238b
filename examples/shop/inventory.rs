//! The inventory service: one stock item per product (stream `stock_item-{sku}`), which
//! reserves, releases and ships stock for orders, and a reservation per order (stream
//! `reservation-{order_id}`): the inventory's answer to the order, which the other services hear
//! of in the choreographed style.

use std::collections::BTreeMap;

use eventfold::eventstore::{EventStore, ExecuteError, Repository};
use eventfold::{BoxError, CommandMetadata, Event, aggregate};
use serde::{Deserialize, Serialize};

use crate::messages::OrderLine;

/// What happens to a product's stock.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum StockEvent {
    /// Goods arrived: `stock.restocked`.
    Restocked { quantity: u64 },
    /// Held for an order until it ships or is released: `stock.reserved`.
    Reserved { order_id: String, quantity: u64 },
    /// An order's reservation was put back: `stock.released`.
    Released { order_id: String, quantity: u64 },
    /// An order's reservation left the warehouse: `stock.shipped`.
    Shipped { order_id: String, quantity: u64 },
}

/// What the inventory service asks a stock item to do.
#[derive(Debug, Clone)]
pub enum StockCommand {
    Restock { quantity: u64 },
    Reserve { order_id: String, quantity: u64 },
    Release { order_id: String },
    Ship { order_id: String },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StockError {
    #[error("out of stock: {available} available, {wanted} wanted")]
    OutOfStock { available: u64, wanted: u64 },
    #[error("order {0} has no reservation to ship")]
    NotReserved(String),
}

/// A product's stock: what decisions need, and what the balance check reads.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StockItem {
    /// Everything that ever arrived.
    pub restocked: u64,
    /// On the shelf, free to reserve.
    pub available: u64,
    /// Held for orders, by order.
    pub reserved: BTreeMap<String, u64>,
    /// Left the warehouse, by order.
    pub shipped: BTreeMap<String, u64>,
}

#[aggregate]
impl StockItem {
    // Every command is idempotent: a redelivered or retried command changes nothing the second
    // time, and "nothing to undo" is not an error (a compensation may come for a step whose
    // outcome the saga never learnt).
    fn handle(&self, command: &StockCommand) -> Result<Vec<StockEvent>, StockError> {
        Ok(match command {
            StockCommand::Restock { quantity } => vec![StockEvent::Restocked {
                quantity: *quantity,
            }],
            StockCommand::Reserve { order_id, .. }
                if self.reserved.contains_key(order_id) || self.shipped.contains_key(order_id) =>
            {
                vec![]
            }
            StockCommand::Reserve { quantity, .. } if *quantity > self.available => {
                return Err(StockError::OutOfStock {
                    available: self.available,
                    wanted: *quantity,
                });
            }
            StockCommand::Reserve { order_id, quantity } => vec![StockEvent::Reserved {
                order_id: order_id.clone(),
                quantity: *quantity,
            }],
            StockCommand::Release { order_id } => match self.reserved.get(order_id) {
                Some(quantity) => vec![StockEvent::Released {
                    order_id: order_id.clone(),
                    quantity: *quantity,
                }],
                None => vec![],
            },
            StockCommand::Ship { order_id } if self.shipped.contains_key(order_id) => vec![],
            StockCommand::Ship { order_id } => match self.reserved.get(order_id) {
                Some(quantity) => vec![StockEvent::Shipped {
                    order_id: order_id.clone(),
                    quantity: *quantity,
                }],
                None => return Err(StockError::NotReserved(order_id.clone())),
            },
        })
    }

    fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::Restocked { quantity } => {
                self.restocked += quantity;
                self.available += quantity;
            }
            StockEvent::Reserved { order_id, quantity } => {
                self.available -= quantity;
                self.reserved.insert(order_id.clone(), *quantity);
            }
            StockEvent::Released { order_id, quantity } => {
                self.reserved.remove(order_id);
                self.available += quantity;
            }
            StockEvent::Shipped { order_id, quantity } => {
                self.reserved.remove(order_id);
                self.shipped.insert(order_id.clone(), *quantity);
            }
        }
    }
}

impl StockItem {
    /// Held for orders, in all.
    pub fn reserved_total(&self) -> u64 {
        self.reserved.values().sum()
    }

    /// Shipped, in all.
    pub fn shipped_total(&self) -> u64 {
        self.shipped.values().sum()
    }
}

/// What happens to an order's reservation.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum ReservationEvent {
    /// Every line is held for the order: `reservation.made`.
    Made { lines: Vec<OrderLine> },
    /// A product is short, nothing is held: `reservation.refused`.
    Refused { reason: String },
    /// The stock went back on the shelf: `reservation.released`.
    Released,
    /// The stock left the warehouse: `reservation.shipped`.
    Shipped,
}

#[derive(Debug, Clone)]
pub enum ReservationCommand {
    Make { lines: Vec<OrderLine> },
    Refuse { reason: String },
    Release,
    Ship,
}

/// Where an order's reservation is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    #[default]
    None,
    Made,
    Refused,
    Released,
    Shipped,
}

/// An order's reservation.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reservation {
    pub status: ReservationStatus,
    /// What it holds (or held).
    pub lines: Vec<OrderLine>,
}

#[aggregate]
impl Reservation {
    fn handle(&self, command: &ReservationCommand) -> Result<Vec<ReservationEvent>, StockError> {
        use ReservationStatus as S;
        Ok(match (self.status, command) {
            (S::None, ReservationCommand::Make { lines }) => vec![ReservationEvent::Made {
                lines: lines.clone(),
            }],
            (S::None, ReservationCommand::Refuse { reason }) => vec![ReservationEvent::Refused {
                reason: reason.clone(),
            }],
            (S::Made, ReservationCommand::Release) => vec![ReservationEvent::Released],
            (S::Made, ReservationCommand::Ship) => vec![ReservationEvent::Shipped],
            (S::Shipped, ReservationCommand::Ship) => vec![],
            (_, ReservationCommand::Ship) => return Err(StockError::NotReserved(String::new())),
            // Making it twice, or releasing what is not held, changes nothing.
            _ => vec![],
        })
    }

    fn apply(&mut self, event: &ReservationEvent) {
        if let ReservationEvent::Made { lines } = event {
            self.lines = lines.clone();
        }
        self.status = match event {
            ReservationEvent::Made { .. } => ReservationStatus::Made,
            ReservationEvent::Refused { .. } => ReservationStatus::Refused,
            ReservationEvent::Released => ReservationStatus::Released,
            ReservationEvent::Shipped => ReservationStatus::Shipped,
        };
    }
}

/// Why an order's stock could not be reserved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("out of stock: {sku} ({available} available, {wanted} wanted)")]
pub struct OutOfStock {
    pub sku: String,
    pub available: u64,
    pub wanted: u64,
}

/// The inventory service's operations. Each one runs in the caller's unit of work (a consumer's,
/// with the message's inbox mark and the reply), so it commits with them or not at all.
#[derive(Clone)]
pub struct Inventory<S: EventStore> {
    stock: Repository<StockItem, S>,
    reservations: Repository<Reservation, S>,
}

impl<S: EventStore> Inventory<S> {
    pub fn new(store: S) -> Self {
        Self {
            stock: Repository::new(store.clone()),
            reservations: Repository::new(store),
        }
    }

    /// An order's reservation.
    pub async fn reservation(&self, order_id: &str) -> Result<Reservation, BoxError> {
        Ok(self.reservations.load(order_id).await?.state)
    }

    async fn note(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        command: ReservationCommand,
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        self.reservations
            .execute_in(uow, order_id, &command, meta.clone())
            .await?;
        Ok(())
    }

    /// The stock of a product.
    pub async fn item(&self, sku: &str) -> Result<StockItem, BoxError> {
        Ok(self.stock.load(sku).await?.state)
    }

    /// Goods arrive (the shop's opening stock).
    pub async fn restock(&self, sku: &str, quantity: u64) -> Result<(), BoxError> {
        let command = StockCommand::Restock { quantity };
        self.stock
            .execute(sku, &command, CommandMetadata::new())
            .await?;
        Ok(())
    }

    /// Reserves every line of an order, or none: when a product is short, the lines reserved
    /// before it are released again in the same unit of work, and the order is refused.
    pub async fn reserve(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        lines: &[OrderLine],
        meta: &CommandMetadata,
    ) -> Result<Result<(), OutOfStock>, BoxError> {
        for (sku, quantity) in quantities(lines) {
            let command = StockCommand::Reserve {
                order_id: order_id.to_owned(),
                quantity,
            };
            match self
                .stock
                .execute_in(uow, &sku, &command, meta.clone())
                .await
            {
                Ok(_) => {}
                Err(ExecuteError::Rejected {
                    source: StockError::OutOfStock { available, wanted },
                    ..
                }) => {
                    self.release_stock(uow, order_id, lines, meta).await?;
                    let short = OutOfStock {
                        sku,
                        available,
                        wanted,
                    };
                    let reason = short.to_string();
                    self.note(uow, order_id, ReservationCommand::Refuse { reason }, meta)
                        .await?;
                    return Ok(Err(short));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let lines = lines.to_vec();
        self.note(uow, order_id, ReservationCommand::Make { lines }, meta)
            .await?;
        Ok(Ok(()))
    }

    /// Puts what an order's reservation holds back on the shelf (nothing, if it holds
    /// nothing).
    pub async fn release(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        self.settle(uow, order_id, Settle::Release, meta).await
    }

    /// Puts what an order holds of each of its products back on the shelf.
    async fn release_stock(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        lines: &[OrderLine],
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        let command = StockCommand::Release {
            order_id: order_id.to_owned(),
        };
        self.on_each_product(uow, lines, &command, meta).await
    }

    /// Executes `command` on the stock of each product of `lines`, in `uow`.
    async fn on_each_product(
        &self,
        uow: &mut S::UnitOfWork,
        lines: &[OrderLine],
        command: &StockCommand,
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        for (sku, _) in quantities(lines) {
            self.stock
                .execute_in(uow, &sku, command, meta.clone())
                .await?;
        }
        Ok(())
    }

    /// Ships what an order's reservation holds.
    pub async fn ship(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        self.settle(uow, order_id, Settle::Ship, meta).await
    }

    /// Settles an order's reservation: each of its products' stock, then the reservation itself.
    async fn settle(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        how: Settle,
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        let held = self.reservation(order_id).await?;
        let order_id_owned = order_id.to_owned();
        let (stock, reservation) = match how {
            Settle::Release => (
                StockCommand::Release {
                    order_id: order_id_owned,
                },
                ReservationCommand::Release,
            ),
            Settle::Ship => (
                StockCommand::Ship {
                    order_id: order_id_owned,
                },
                ReservationCommand::Ship,
            ),
        };
        self.on_each_product(uow, &held.lines, &stock, meta).await?;
        self.note(uow, order_id, reservation, meta).await
    }
}

/// How an order's reservation is settled: its stock put back on the shelf, or shipped.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Release,
    Ship,
}

/// The quantity per product of some order lines (a product may be on several lines).
pub fn quantities(lines: &[OrderLine]) -> BTreeMap<String, u64> {
    let mut per_sku = BTreeMap::new();
    for line in lines {
        *per_sku.entry(line.sku.clone()).or_insert(0) += u64::from(line.quantity);
    }
    per_sku
}
