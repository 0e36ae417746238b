//! The payment service: a payment per order (stream `payment-{order_id}`), charged through a
//! payment gateway (simulated here) and refunded when the order does not go through.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventfold::eventstore::{EventStore, ExecuteError, Repository, UnitOfWork};
use eventfold::outbox::{Handler, Record};
use eventfold::{BoxError, CommandMetadata, Event, aggregate};
use serde::{Deserialize, Serialize};

use crate::messages::Card;

/// What happens to an order's payment.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum PaymentEvent {
    /// The gateway took the money: `payment.charged`.
    Charged { cents: u64 },
    /// The gateway refused: `payment.declined`.
    Declined { reason: String },
    /// The money went back: `payment.refunded`.
    Refunded { cents: u64 },
}

/// What the gateway answered to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Approved,
    Declined(String),
}

/// What the payment service asks a payment to do. The gateway's answer is an input: the
/// aggregate decides, the service talks to the outside world.
#[derive(Debug, Clone)]
pub enum PaymentCommand {
    Charge {
        cents: u64,
        authorization: Authorization,
    },
    Refund,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PaymentError {
    #[error("the payment was refunded and cannot be charged again")]
    Refunded,
}

/// An order's payment.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Payment {
    /// Taken, in all.
    pub charged: u64,
    /// Given back, in all.
    pub refunded: u64,
    /// The gateway's refusal, if it refused.
    pub declined: Option<String>,
}

#[aggregate]
impl Payment {
    // Idempotent, like every command a saga sends: a second charge of a charged payment changes
    // nothing, and refunding a payment that was never charged is nothing to undo.
    fn handle(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        Ok(match command {
            PaymentCommand::Charge { .. } if self.refunded > 0 => {
                return Err(PaymentError::Refunded);
            }
            PaymentCommand::Charge { .. } if self.charged > 0 || self.declined.is_some() => {
                vec![]
            }
            PaymentCommand::Charge {
                cents,
                authorization: Authorization::Approved,
            } => vec![PaymentEvent::Charged { cents: *cents }],
            PaymentCommand::Charge {
                authorization: Authorization::Declined(reason),
                ..
            } => vec![PaymentEvent::Declined {
                reason: reason.clone(),
            }],
            PaymentCommand::Refund if self.charged > self.refunded => {
                vec![PaymentEvent::Refunded {
                    cents: self.charged - self.refunded,
                }]
            }
            PaymentCommand::Refund => vec![],
        })
    }

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::Charged { cents } => self.charged += cents,
            PaymentEvent::Declined { reason } => self.declined = Some(reason.clone()),
            PaymentEvent::Refunded { cents } => self.refunded += cents,
        }
    }
}

/// The payment gateway, simulated: it answers by the card.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gateway;

impl Gateway {
    /// Asks the gateway to charge a card.
    pub fn authorize(&self, card: Card, _cents: u64) -> Authorization {
        match card {
            Card::Approves | Card::AnswersLate => Authorization::Approved,
            Card::Declines => Authorization::Declined("card declined".to_owned()),
        }
    }
}

/// Why a charge did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Declined(pub String);

/// The payment service's operations, in the caller's unit of work.
#[derive(Clone)]
pub struct Payments<S: EventStore> {
    payments: Repository<Payment, S>,
    gateway: Gateway,
}

impl<S: EventStore> Payments<S> {
    pub fn new(store: S) -> Self {
        Self {
            payments: Repository::new(store),
            gateway: Gateway,
        }
    }

    /// An order's payment.
    pub async fn payment(&self, order_id: &str) -> Result<Payment, BoxError> {
        Ok(self.payments.load(order_id).await?.state)
    }

    /// Charges an order's payment through the gateway.
    pub async fn charge(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        cents: u64,
        card: Card,
        meta: &CommandMetadata,
    ) -> Result<Result<(), Declined>, BoxError> {
        let authorization = self.gateway.authorize(card, cents);
        let command = PaymentCommand::Charge {
            cents,
            authorization,
        };
        let done = match self
            .payments
            .execute_in(uow, order_id, &command, meta.clone())
            .await
        {
            Ok(done) => done,
            Err(ExecuteError::Rejected { source, .. }) => {
                return Ok(Err(Declined(source.to_string())));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(match done.state.declined {
            Some(reason) => Err(Declined(reason)),
            None => Ok(()),
        })
    }

    /// Refunds whatever was charged for an order (nothing, if nothing was).
    pub async fn refund(
        &self,
        uow: &mut S::UnitOfWork,
        order_id: &str,
        meta: &CommandMetadata,
    ) -> Result<(), BoxError> {
        self.payments
            .execute_in(uow, order_id, &PaymentCommand::Refund, meta.clone())
            .await?;
        Ok(())
    }
}

/// **Simulation**: the payment service answers some cards late, as if the gateway took longer
/// than the shop waits. A consumer handler that wraps the service's real one:
///
/// * a message for which `answers_late` holds is kept aside, and handed to the real handler
///   `delay` later, in a unit of work of its own (its inbox mark committed when it was set aside);
/// * later messages with the same key (the same order's refund) wait behind it, so they are
///   handled in their order, as the broker delivered them;
/// * everything else goes straight through, so a late card holds up nobody else.
///
/// Messages set aside live in memory: a crash loses them, and the saga's timeout then decides,
/// as it would for a gateway that never answered.
pub struct LateAnswers<S, H> {
    shared: Arc<Shared<S, H>>,
}

struct Shared<S, H> {
    store: S,
    inner: H,
    delay: Duration,
    answers_late: fn(&Record) -> bool,
    /// Messages set aside, by key, oldest first; a key is present until its last one is handled.
    waiting: Mutex<HashMap<String, VecDeque<Record>>>,
}

impl<S, H> LateAnswers<S, H>
where
    S: EventStore,
    H: Handler<S::UnitOfWork> + Send + Sync + 'static,
{
    pub fn new(store: S, inner: H, delay: Duration, answers_late: fn(&Record) -> bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                inner,
                delay,
                answers_late,
                waiting: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S, H> Shared<S, H>
where
    S: EventStore,
    H: Handler<S::UnitOfWork> + Send + Sync + 'static,
{
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Record>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets `record` aside if it answers late or its key has messages waiting; `false` when it
    /// is to be handled now.
    fn set_aside(self: &Arc<Self>, record: &Record) -> bool {
        let mut waiting = self.waiting();
        if let Some(queue) = waiting.get_mut(&record.key) {
            queue.push_back(record.clone());
            return true;
        }
        if !(self.answers_late)(record) {
            return false;
        }
        waiting.insert(record.key.clone(), VecDeque::from([record.clone()]));
        tokio::spawn(Arc::clone(self).answer_later(record.key.clone()));
        true
    }

    /// After the delay, hands the key's messages to the real handler, one at a time.
    async fn answer_later(self: Arc<Self>, key: String) {
        tokio::time::sleep(self.delay).await;
        loop {
            let next = self.waiting().get(&key).and_then(|q| q.front().cloned());
            let Some(record) = next else { break };
            if let Err(e) = self.handle_now(&record).await {
                // As if the gateway's answer was lost: the saga's timeout has decided already.
                eprintln!("a late answer for {key} was lost: {e}");
            }
            let mut waiting = self.waiting();
            if let Some(queue) = waiting.get_mut(&key) {
                queue.pop_front();
                if queue.is_empty() {
                    waiting.remove(&key);
                }
            }
        }
    }

    /// Runs the real handler in a unit of work of its own, a few times if it fails.
    async fn handle_now(&self, record: &Record) -> Result<(), BoxError> {
        let mut last = None;
        for _ in 0..5 {
            let mut uow = self.store.begin().await?;
            match self.inner.handle(&mut uow, record).await {
                Ok(()) => return Ok(uow.commit().await?),
                Err(e) => {
                    let _ = uow.rollback().await;
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| "no attempt".into()))
    }
}

impl<S, H> Handler<S::UnitOfWork> for LateAnswers<S, H>
where
    S: EventStore,
    H: Handler<S::UnitOfWork> + Send + Sync + 'static,
{
    async fn handle(&self, uow: &mut S::UnitOfWork, record: &Record) -> Result<(), BoxError> {
        if self.shared.set_aside(record) {
            return Ok(());
        }
        self.shared.inner.handle(uow, record).await
    }
}
