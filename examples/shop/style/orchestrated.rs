//! The orchestrated style: the order service runs the place-order saga.
//!
//! ```text
//! accept_order      (local)           compensation: order.reject      → order service
//! reserve_stock     stock.reserve     compensation: stock.release     → inventory service
//! charge_payment    payment.charge    compensation: payment.refund    → payment service   (pivot, timeout)
//! schedule_shipment shipment.schedule                                 → inventory service (retried until done)
//! confirm_order     order.confirm                                     → order service     (retried until done)
//! ```
//!
//! Placing an order appends `order.placed` and starts the saga in **one transaction** of the
//! order service. The saga's commands go out through the order service's outbox; each service
//! handles them with a `ParticipantHandler` (once per request key, the reply in the same
//! transaction as its effects) and replies through its own outbox. When a step fails or the
//! payment times out, the saga compensates every step that started, in reverse order: refund,
//! release, reject. A payment that succeeds after its timeout is refunded all the same.

use std::time::{Duration, Instant};

use eventfold::eventstore::{ExecuteError, UnitOfWork};
use eventfold::outbox::{Consumer, Relay};
use eventfold::saga::runtime::{Orchestrator, Participant, ParticipantContext, ParticipantHandler};
use eventfold::saga::{
    Command, CommandKind, DefinitionError, Outcome, RetryPolicy, Saga, SagaDefinition, StepPhase,
};
use eventfold::{BoxError, CommandMetadata};
use uuid::Uuid;

use super::{Flow, Running};
use crate::inventory::Inventory;
use crate::messages::{
    Card, OrderRequest, PaymentRequest, PlaceOrder, StockRequest, Topics, types,
};
use crate::order::{OrderCommand, Orders, RejectReason};
use crate::payment::{LateAnswers, Payments};
use crate::services::{Services, ShopStore};
use crate::transport::Transport;
use crate::workload::Placed;

/// The saga's type.
pub const SAGA_TYPE: &str = "order.place";

/// How long the steps wait for their replies.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The payment step's timeout (each attempt of the charge and of the refund).
    pub payment_timeout: Duration,
    /// The other steps' timeout.
    pub step_timeout: Duration,
    /// How late the simulated gateway answers the cards that answer late: half a timeout after
    /// the charge's timeout, so that its success comes late, and half a timeout before the
    /// refund's (the refund waits behind the charge: see `LateAnswers`).
    pub late_answer: Duration,
}

impl Timing {
    pub fn new(payment_timeout: Duration) -> Self {
        Self {
            payment_timeout,
            step_timeout: Duration::from_secs(10),
            late_answer: payment_timeout * 3 / 2,
        }
    }
}

/// The place-order saga.
pub fn definition(
    topics: &Topics,
    timing: Timing,
) -> Result<SagaDefinition<PlaceOrder>, DefinitionError> {
    let (inventory, payments, orders) = (topics.inventory(), topics.payments(), topics.orders());
    // After the pivot the saga only goes forward: these steps are retried until they succeed.
    let until_done = RetryPolicy::exponential(
        u32::MAX,
        Duration::from_millis(100),
        2.0,
        Duration::from_secs(5),
    );
    Saga::<PlaceOrder>::define(SAGA_TYPE, 1)
        // The order was placed in the saga's starting transaction; if the saga cannot finish,
        // its compensation rejects the order.
        .step("accept_order", |s| {
            let orders = orders.clone();
            s.local(|_order| Ok(())).compensate(move |o| {
                Command::new(orders.as_str(), types::ORDER_REJECT, &o.order_request())
            })
        })
        .step("reserve_stock", |s| {
            let (to, back) = (inventory.clone(), inventory.clone());
            s.invoke(move |o| Command::new(to.as_str(), types::STOCK_RESERVE, &o.stock_request()))
                .compensate(move |o| {
                    Command::new(back.as_str(), types::STOCK_RELEASE, &o.stock_request())
                })
                .timeout(timing.step_timeout)
        })
        .pivot("charge_payment", |s| {
            let (to, back) = (payments.clone(), payments.clone());
            s.invoke(move |o| {
                Command::new(to.as_str(), types::PAYMENT_CHARGE, &o.payment_request())
            })
            .compensate(move |o| {
                Command::new(back.as_str(), types::PAYMENT_REFUND, &o.payment_request())
            })
            .timeout(timing.payment_timeout)
        })
        .step("schedule_shipment", |s| {
            let to = inventory.clone();
            s.invoke(move |o| {
                Command::new(to.as_str(), types::SHIPMENT_SCHEDULE, &o.stock_request())
            })
            .timeout(timing.step_timeout)
            .retry(until_done.clone())
        })
        .step("confirm_order", |s| {
            let to = orders.clone();
            s.invoke(move |o| Command::new(to.as_str(), types::ORDER_CONFIRM, &o.order_request()))
                .timeout(timing.step_timeout)
                .retry(until_done.clone())
        })
        .build()
}

/// The order service's side of the saga: places orders and starts their sagas.
pub struct Orchestrated<S: ShopStore> {
    orders: Orders<S>,
    orchestrator: Orchestrator<S, PlaceOrder>,
}

impl<S: ShopStore> Flow for Orchestrated<S> {
    async fn place(&self, order: &PlaceOrder, correlation_id: Uuid) -> Result<(), BoxError> {
        let store = self.orchestrator.store();
        let mut uow = store.begin().await?;
        let meta = CommandMetadata::new().correlation_id(correlation_id);
        self.orders.place(&mut uow, order, &meta).await?;
        self.orchestrator
            .start_in(
                &mut uow,
                &order.order_id,
                order.clone(),
                Some(correlation_id),
            )
            .await?;
        uow.commit().await?;
        Ok(())
    }

    async fn settle(&self, _orders: &[Placed], limit: Duration) -> Result<(), BoxError> {
        // Every saga ends after its order's last effect: when none runs, all is done.
        let deadline = Instant::now() + limit;
        loop {
            let counts = self.orchestrator.store().count_sagas().await?;
            let open: u64 = counts
                .iter()
                .filter(|(saga_type, status, _)| {
                    saga_type == SAGA_TYPE
                        && !["completed", "compensated", "failed"].contains(&status.as_str())
                })
                .map(|(_, _, n)| n)
                .sum();
            if open == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(
                    format!("{open} sagas have not ended after {limit:?}: {counts:?}").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts the services of the orchestrated style on `transport`; returns how to place orders
/// and the background work.
pub async fn start<S: ShopStore, T: Transport>(
    services: &Services<S>,
    transport: &T,
    topics: &Topics,
    timing: Timing,
) -> Result<(Orchestrated<S>, Running<S>), BoxError> {
    transport.create_topics(&topics.orchestrated()).await?;
    let mut running = Running::default();

    // The order service: the saga's orchestrator, its replies, its timers; the order commands.
    let order = &services.order;
    let orchestrator = Orchestrator::new(order.clone(), definition(topics, timing)?)
        .with_reply_topic(topics.saga_replies());
    let replies =
        orchestrator.reply_consumer(transport.source("order-saga", &[orchestrator.reply_topic()])?);
    running.spawn("order saga replies", replies.run(running.shutdown()));
    let timers = orchestrator.scheduler();
    let shutdown = running.shutdown();
    running.spawn("order saga timers", async move {
        timers.run(shutdown).await;
        Ok::<_, BoxError>(())
    });
    let desk = OrderDesk {
        orders: Orders::new(order.clone()),
        store: order.clone(),
    };
    let commands = ParticipantHandler::new("order", order.clone(), desk)
        .consumer(transport.source("order", &[&topics.orders()])?);
    running.spawn("order commands", commands.run(running.shutdown()));

    // The inventory service.
    let inventory = &services.inventory;
    let desk = InventoryDesk(Inventory::new(inventory.clone()));
    let commands = ParticipantHandler::new("inventory", inventory.clone(), desk)
        .consumer(transport.source("inventory", &[&topics.inventory()])?);
    running.spawn("inventory commands", commands.run(running.shutdown()));

    // The payment service, whose gateway answers some cards late (a simulation, see
    // `LateAnswers`).
    let payment = &services.payment;
    let desk = ParticipantHandler::new(
        "payment",
        payment.clone(),
        PaymentDesk(Payments::new(payment.clone())),
    );
    let late = LateAnswers::new(payment.clone(), desk, timing.late_answer, answers_late);
    let commands = Consumer::new(
        "payment",
        payment.clone(),
        transport.source("payment", &[&topics.payments()])?,
        late,
    );
    running.spawn("payment commands", commands.run(running.shutdown()));

    // Every service: a relay from its outbox to the broker, and its read models.
    for (name, store) in services.each() {
        let relay = Relay::new(store.clone(), transport.publisher());
        running.spawn(format!("{name} relay"), relay.run(running.shutdown()));
    }
    running.keep(order, order.order_projections().runner().start());
    running.keep(
        inventory,
        inventory.inventory_projections().runner().start(),
    );

    let flow = Orchestrated {
        orders: Orders::new(order.clone()),
        orchestrator,
    };
    Ok((flow, running))
}

/// The payment commands of cards that answer late (see `LateAnswers`).
fn answers_late(record: &eventfold::outbox::Record) -> bool {
    let Ok(command) = serde_json::from_slice::<eventfold::saga::SagaCommand>(&record.payload)
    else {
        return false;
    };
    command.message_type == types::PAYMENT_CHARGE
        && serde_json::from_value::<PaymentRequest>(command.payload)
            .is_ok_and(|request| request.card == Card::AnswersLate)
}

/// The order service's saga commands: confirm or reject an order.
struct OrderDesk<S: ShopStore> {
    orders: Orders<S>,
    store: S,
}

impl<S: ShopStore> Participant<S::UnitOfWork> for OrderDesk<S> {
    async fn execute(
        &self,
        uow: &mut S::UnitOfWork,
        cx: &ParticipantContext,
    ) -> Result<Outcome, BoxError> {
        let request: OrderRequest = cx.payload()?;
        let command = match cx.command.message_type.as_str() {
            types::ORDER_CONFIRM => OrderCommand::Confirm,
            types::ORDER_REJECT => self.why_rejected(cx.command.saga_id).await?,
            other => return Ok(Outcome::failure(format!("unknown command {other}"))),
        };
        match self
            .orders
            .decide(uow, &request.order_id, &command, &cx.metadata())
            .await
        {
            Ok(()) => Ok(Outcome::success(serde_json::Value::Null)),
            Err(ExecuteError::Rejected { source, .. }) => Ok(Outcome::failure(source.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

impl<S: ShopStore> OrderDesk<S> {
    /// Why the saga is compensating, from the saga itself (the order service owns it).
    async fn why_rejected(&self, saga_id: Uuid) -> Result<OrderCommand, BoxError> {
        let saga = eventfold::saga::runtime::load(&self.store, saga_id)
            .await?
            .ok_or_else(|| format!("saga {saga_id} does not exist"))?;
        let (step, detail) = saga
            .state
            .compensation_cause
            .clone()
            .unwrap_or_else(|| (String::new(), "the saga was compensated".to_owned()));
        let timed_out = saga
            .state
            .step(&step)
            .is_some_and(|s| s.phase == StepPhase::TimedOut);
        let reason = match step.as_str() {
            "reserve_stock" => RejectReason::OutOfStock,
            "charge_payment" if timed_out => RejectReason::PaymentTimedOut,
            "charge_payment" => RejectReason::PaymentDeclined,
            _ => RejectReason::Other,
        };
        Ok(OrderCommand::Reject { reason, detail })
    }
}

/// The inventory service's saga commands.
struct InventoryDesk<S: ShopStore>(Inventory<S>);

impl<S: ShopStore> Participant<S::UnitOfWork> for InventoryDesk<S> {
    async fn execute(
        &self,
        uow: &mut S::UnitOfWork,
        cx: &ParticipantContext,
    ) -> Result<Outcome, BoxError> {
        let StockRequest { order_id, lines } = cx.payload()?;
        let meta = cx.metadata();
        match cx.command.message_type.as_str() {
            types::STOCK_RESERVE => {
                if let Err(short) = self.0.reserve(uow, &order_id, &lines, &meta).await? {
                    return Ok(Outcome::failure(short.to_string()));
                }
            }
            types::STOCK_RELEASE => self.0.release(uow, &order_id, &meta).await?,
            types::SHIPMENT_SCHEDULE => self.0.ship(uow, &order_id, &meta).await?,
            other => return Ok(Outcome::failure(format!("unknown command {other}"))),
        }
        Ok(Outcome::success(serde_json::Value::Null))
    }
}

/// The payment service's saga commands.
struct PaymentDesk<S: ShopStore>(Payments<S>);

impl<S: ShopStore> Participant<S::UnitOfWork> for PaymentDesk<S> {
    async fn execute(
        &self,
        uow: &mut S::UnitOfWork,
        cx: &ParticipantContext,
    ) -> Result<Outcome, BoxError> {
        let PaymentRequest {
            order_id,
            cents,
            card,
        } = cx.payload()?;
        let meta = cx.metadata();
        match (cx.command.message_type.as_str(), cx.command.kind) {
            (types::PAYMENT_CHARGE, CommandKind::Action) => {
                if let Err(declined) = self.0.charge(uow, &order_id, cents, card, &meta).await? {
                    return Ok(Outcome::failure(declined.to_string()));
                }
            }
            (types::PAYMENT_REFUND, CommandKind::Compensation) => {
                self.0.refund(uow, &order_id, &meta).await?
            }
            (other, _) => return Ok(Outcome::failure(format!("unknown command {other}"))),
        }
        Ok(Outcome::success(serde_json::Value::Null))
    }
}
