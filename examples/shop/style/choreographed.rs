//! The choreographed style: the same flow with nobody in charge. Each service publishes its
//! events (through its outbox, in the transaction that appends them) and reacts to the others':
//!
//! ```text
//! order.placed        → inventory reserves the stock     → reservation.made | reservation.refused
//!                     → payment charges the card          → payment.charged  | payment.declined
//! reservation.made    → order notes it; confirms once paid too       → order.confirmed
//! payment.charged     → order notes it; confirms once reserved too   → order.confirmed
//! reservation.refused → order rejects (out of stock)                 → order.rejected
//! payment.declined    → order rejects (payment declined)             → order.rejected
//! order.confirmed     → inventory ships
//! order.rejected      → inventory releases what it holds; payment refunds what it charged
//! ```
//!
//! The reactions are eventfold's choreography `Reaction`s, run by a `Consumer` with its inbox
//! (`ReactionHandler`): what a reaction writes commits with the inbox mark of the event it
//! reacts to, and carries the event's correlation id with the event as causation, so the trace
//! of an order follows it across the services with no code of the shop's own.
//!
//! What the comparison with the saga shows: nobody here waits with a clock. A payment that
//! answers late makes a slow order, not a rejected one; a timeout needs someone who owns the
//! deadline, which is what the orchestrator is for. And the order's progress (reserved? paid?)
//! lives in the order itself, where the saga kept it in its own state.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eventfold::eventstore::{ExecuteError, OutboxRouting, UnitOfWork};
use eventfold::outbox::{Consumer, Record, Relay};
use eventfold::saga::choreography::{FlowContext, Reaction, ReactionHandler};
use eventfold::{BoxError, CommandMetadata, Envelope, Upcasters};
use uuid::Uuid;

use super::orchestrated::Timing;
use super::{Flow, Running};
use crate::inventory::{Inventory, ReservationEvent, ReservationStatus};
use crate::messages::{Card, PlaceOrder, Topics};
use crate::order::{OrderCommand, OrderError, OrderEvent, OrderStatus, Orders, RejectReason};
use crate::payment::{LateAnswers, PaymentEvent, Payments};
use crate::services::{Services, ShopStore};
use crate::transport::Transport;
use crate::workload::Placed;

/// The order service's side: places orders (their `order.placed` starts everything).
pub struct Choreographed<S: ShopStore> {
    orders: Orders<S>,
    /// The order service's store, publishing its events.
    store: S,
    inventory: Inventory<S>,
    payments: Payments<S>,
}

impl<S: ShopStore> Flow for Choreographed<S> {
    async fn place(&self, order: &PlaceOrder, correlation_id: Uuid) -> Result<(), BoxError> {
        let mut uow = self.store.begin().await?;
        let meta = CommandMetadata::new().correlation_id(correlation_id);
        self.orders.place(&mut uow, order, &meta).await?;
        uow.commit().await?;
        Ok(())
    }

    async fn settle(&self, orders: &[Placed], limit: Duration) -> Result<(), BoxError> {
        // Done when each order's reservation and payment are where its decision leaves them.
        let deadline = Instant::now() + limit;
        let mut open: BTreeSet<&str> = orders.iter().map(|o| o.order.order_id.as_str()).collect();
        loop {
            let mut still_open = BTreeSet::new();
            for &order_id in &open {
                if !self.is_done(order_id).await? {
                    still_open.insert(order_id);
                }
            }
            open = still_open;
            let Some(first) = open.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} orders are not done after {limit:?}, {first} among them",
                    open.len()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl<S: ShopStore> Choreographed<S> {
    /// Whether an order's stock and money are where its decision leaves them.
    async fn is_done(&self, order_id: &str) -> Result<bool, BoxError> {
        let order = self.orders.order(order_id).await?;
        let reservation = self.inventory.reservation(order_id).await?.status;
        let payment = self.payments.payment(order_id).await?;
        Ok(match order.status {
            OrderStatus::Confirmed => reservation == ReservationStatus::Shipped,
            OrderStatus::Rejected(_) => {
                matches!(
                    reservation,
                    ReservationStatus::Refused | ReservationStatus::Released
                ) && (payment.declined.is_some()
                    || (payment.charged > 0 && payment.refunded == payment.charged))
            }
            _ => false,
        })
    }
}

/// Starts the services of the choreographed style on `transport`.
pub async fn start<S: ShopStore, T: Transport>(
    services: &Services<S>,
    transport: &T,
    topics: &Topics,
    timing: Timing,
) -> Result<(Choreographed<S>, Running<S>), BoxError> {
    let (order_events, reservation_events, payment_events) = (
        topics.topic("order"),
        topics.topic("reservation"),
        topics.topic("payment"),
    );
    transport
        .create_topics(&[
            order_events.clone(),
            reservation_events.clone(),
            payment_events.clone(),
        ])
        .await?;
    // Each service publishes the events the others react to, and nothing else.
    let order = services.order.publishing(
        OutboxRouting::new()
            .only_routed()
            .route_stream_type("order", &order_events)
            .skip_event_type("order.stock_reserved")
            .skip_event_type("order.paid"),
    );
    let inventory = services.inventory.publishing(
        OutboxRouting::new()
            .only_routed()
            .route_stream_type("reservation", &reservation_events),
    );
    let payment = services.payment.publishing(
        OutboxRouting::new()
            .only_routed()
            .route_stream_type("payment", &payment_events),
    );
    let mut running = Running::default();

    // The inventory service reacts to the orders.
    let warehouse = Warehouse(Inventory::new(inventory.clone()));
    let consumer = Consumer::new(
        "inventory",
        inventory.clone(),
        transport.source("inventory", &[&order_events])?,
        ReactionHandler::new(warehouse),
    );
    running.spawn("inventory reactions", consumer.run(running.shutdown()));

    // The payment service reacts to the orders; its gateway answers some cards late.
    let cashier = ReactionHandler::new(Cashier(Payments::new(payment.clone())));
    let late = LateAnswers::new(payment.clone(), cashier, timing.late_answer, answers_late);
    let consumer = Consumer::new(
        "payment",
        payment.clone(),
        transport.source("payment", &[&order_events])?,
        late,
    );
    running.spawn("payment reactions", consumer.run(running.shutdown()));

    // The order service reacts to the reservations and the payments.
    let orders = Orders::new(order.clone());
    let consumer = Consumer::new(
        "order-reservations",
        order.clone(),
        transport.source("order-reservations", &[&reservation_events])?,
        ReactionHandler::new(Stockroom(orders.clone())),
    );
    running.spawn(
        "order reactions to reservations",
        consumer.run(running.shutdown()),
    );
    let consumer = Consumer::new(
        "order-payments",
        order.clone(),
        transport.source("order-payments", &[&payment_events])?,
        ReactionHandler::new(Till(orders.clone())),
    );
    running.spawn(
        "order reactions to payments",
        consumer.run(running.shutdown()),
    );

    for (name, store) in [
        ("order", &order),
        ("payment", &payment),
        ("inventory", &inventory),
    ] {
        let relay = Relay::new(store.clone(), transport.publisher());
        running.spawn(format!("{name} relay"), relay.run(running.shutdown()));
    }
    running.keep(&order, order.order_projections().runner().start());
    running.keep(
        &inventory,
        inventory.inventory_projections().runner().start(),
    );

    let flow = Choreographed {
        orders,
        store: order,
        inventory: Inventory::new(inventory),
        payments: Payments::new(payment),
    };
    Ok((flow, running))
}

/// The `order.placed` events of cards that answer late (see `LateAnswers`).
fn answers_late(record: &Record) -> bool {
    matches!(
        record.decode::<OrderEvent>(&Upcasters::default()),
        Ok(OrderEvent::Placed {
            card: Card::AnswersLate,
            ..
        })
    )
}

/// The inventory service: reserves a placed order's stock, ships a confirmed one's, releases a
/// rejected one's.
struct Warehouse<S: ShopStore>(Inventory<S>);

impl<S: ShopStore> Reaction<S::UnitOfWork> for Warehouse<S> {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        "inventory"
    }

    fn event_types(&self) -> Vec<String> {
        ["order.placed", "order.confirmed", "order.rejected"]
            .map(String::from)
            .to_vec()
    }

    async fn react(
        &self,
        ctx: &mut FlowContext<'_, S::UnitOfWork>,
        event: &Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        let order_id = event.stream_id.id();
        let meta = ctx.metadata();
        match &event.payload {
            // A refusal is recorded as `reservation.refused`, which the order hears of.
            OrderEvent::Placed { lines, .. } => {
                let _ = self.0.reserve(ctx.uow(), order_id, lines, &meta).await?;
            }
            OrderEvent::Confirmed => self.0.ship(ctx.uow(), order_id, &meta).await?,
            OrderEvent::Rejected { .. } => self.0.release(ctx.uow(), order_id, &meta).await?,
            OrderEvent::StockReserved | OrderEvent::Paid => {}
        }
        Ok(())
    }
}

/// The payment service: charges a placed order, refunds a rejected one.
struct Cashier<S: ShopStore>(Payments<S>);

impl<S: ShopStore> Reaction<S::UnitOfWork> for Cashier<S> {
    type Event = OrderEvent;

    fn name(&self) -> &str {
        "payment"
    }

    fn event_types(&self) -> Vec<String> {
        ["order.placed", "order.rejected"]
            .map(String::from)
            .to_vec()
    }

    async fn react(
        &self,
        ctx: &mut FlowContext<'_, S::UnitOfWork>,
        event: &Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        let order_id = event.stream_id.id();
        let meta = ctx.metadata();
        match &event.payload {
            // A refusal is recorded as `payment.declined`, which the order hears of.
            OrderEvent::Placed {
                total_cents, card, ..
            } => {
                let _ = self
                    .0
                    .charge(ctx.uow(), order_id, *total_cents, *card, &meta)
                    .await?;
            }
            OrderEvent::Rejected { .. } => self.0.refund(ctx.uow(), order_id, &meta).await?,
            _ => {}
        }
        Ok(())
    }
}

/// The order service, hearing from the inventory.
struct Stockroom<S: ShopStore>(Orders<S>);

impl<S: ShopStore> Reaction<S::UnitOfWork> for Stockroom<S> {
    type Event = ReservationEvent;

    fn name(&self) -> &str {
        "order-reservations"
    }

    fn event_types(&self) -> Vec<String> {
        ["reservation.made", "reservation.refused"]
            .map(String::from)
            .to_vec()
    }

    async fn react(
        &self,
        ctx: &mut FlowContext<'_, S::UnitOfWork>,
        event: &Envelope<ReservationEvent>,
    ) -> Result<(), BoxError> {
        let command = match &event.payload {
            ReservationEvent::Made { .. } => OrderCommand::NoteStockReserved,
            ReservationEvent::Refused { reason } => OrderCommand::Reject {
                reason: RejectReason::OutOfStock,
                detail: reason.clone(),
            },
            _ => return Ok(()),
        };
        decide(&self.0, ctx, event.stream_id.id(), &command).await
    }
}

/// The order service, hearing from the payments.
struct Till<S: ShopStore>(Orders<S>);

impl<S: ShopStore> Reaction<S::UnitOfWork> for Till<S> {
    type Event = PaymentEvent;

    fn name(&self) -> &str {
        "order-payments"
    }

    fn event_types(&self) -> Vec<String> {
        ["payment.charged", "payment.declined"]
            .map(String::from)
            .to_vec()
    }

    async fn react(
        &self,
        ctx: &mut FlowContext<'_, S::UnitOfWork>,
        event: &Envelope<PaymentEvent>,
    ) -> Result<(), BoxError> {
        let command = match &event.payload {
            PaymentEvent::Charged { .. } => OrderCommand::NotePaid,
            PaymentEvent::Declined { reason } => OrderCommand::Reject {
                reason: RejectReason::PaymentDeclined,
                detail: reason.clone(),
            },
            PaymentEvent::Refunded { .. } => return Ok(()),
        };
        decide(&self.0, ctx, event.stream_id.id(), &command).await
    }
}

/// Applies a fact to an order. The second failure of an order finds it rejected already: that
/// refusal changes nothing and is no error.
async fn decide<S: ShopStore>(
    orders: &Orders<S>,
    ctx: &mut FlowContext<'_, S::UnitOfWork>,
    order_id: &str,
    command: &OrderCommand,
) -> Result<(), BoxError> {
    let meta = ctx.metadata();
    match orders.decide(ctx.uow(), order_id, command, &meta).await {
        Ok(())
        | Err(ExecuteError::Rejected {
            source: OrderError::Decided(_),
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
