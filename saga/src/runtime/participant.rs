//! The participant's side: consume saga commands, execute them in the consumer's unit of work,
//! reply through the outbox in the same transaction.
//!
//! A [`ParticipantHandler`] is a consumer [`Handler`]: the command's inbox mark, the
//! participant's effects (events it appends, SQL it runs through the unit of work), the
//! recorded outcome and the reply all commit together. A command is executed **once per request
//! key**: retries of a step (new attempts, new message ids) find the stored outcome and repeat it
//! under the new attempt number, so a participant never charges twice because a reply was
//! slow. A transient failure ([`Outcome::retryable`]) is not stored, so the next attempt runs
//! again.
//!
//! The reply copies the saga id, step, attempt and kind (the machine's fence), and carries the
//! command's correlation id with the command's message id as causation. Use
//! [`ParticipantContext::metadata`] for the events the participant appends, so that they carry
//! the same correlation and causation.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use eventfold_core::{BoxError, CommandMetadata};
use eventfold_eventstore::{InboxStore, SagaStore, UnitOfWork};
use eventfold_outbox::{Batch, BatchFailure, Consumer, Handler, MessageSource, Record};
use uuid::Uuid;

use crate::message::{Outcome, SagaCommand};
use crate::runtime::error::RuntimeError;
use crate::runtime::wire;

/// What a participant knows about the command it executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantContext {
    /// The command (saga id, step, attempt, kind, request key, payload).
    pub command: SagaCommand,
    /// The id of the message that carried it (the causation of what the participant writes).
    pub message_id: Uuid,
}

impl ParticipantContext {
    /// Metadata for what the participant appends: the saga's correlation id, the command message
    /// as causation, and the saga's headers (`eventfold_saga_id`, `eventfold_saga_step`,
    /// `eventfold_saga_attempt`).
    pub fn metadata(&self) -> CommandMetadata {
        CommandMetadata::new()
            .correlation_id(self.command.correlation_id)
            .causation_id(self.message_id)
            .header(wire::SAGA_ID, self.command.saga_id.to_string())
            .header(wire::SAGA_STEP, self.command.step.clone())
            .header(wire::SAGA_ATTEMPT, self.command.attempt.to_string())
    }

    /// Decodes the command's payload.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, BoxError> {
        serde_json::from_value(self.command.payload.clone()).map_err(|e| {
            format!(
                "saga {} step {}: the payload of {} does not decode: {e}",
                self.command.saga_id, self.command.step, self.command.message_type
            )
            .into()
        })
    }
}

/// A service's handling of saga commands. `execute` runs in the consumer's unit of work `U`:
/// whatever it writes through `U` commits with the inbox mark and the reply.
///
/// Return an [`Outcome`] for what the business says (success with a payload for `on_reply`, a
/// definitive refusal, or a retryable failure); return `Err` for a technical failure (the
/// consumer retries the message, then parks it; the saga's timeout then decides). Compensations
/// arrive as commands too (`context.command.kind` is `Compensation`) and must be idempotent and
/// accept "nothing to undo".
pub trait Participant<U: UnitOfWork>: Send + Sync {
    /// Executes one command.
    fn execute(
        &self,
        uow: &mut U,
        context: &ParticipantContext,
    ) -> impl Future<Output = Result<Outcome, BoxError>> + Send;

    /// Executes the new commands of one shared transaction at once, in order, and answers an
    /// outcome for each, in the same order: what lets a participant write a whole batch's
    /// effects in a few statements ([`UnitOfWork::append_many`]: one statement per run of
    /// distinct streams on PostgreSQL) instead of a few per command.
    ///
    /// [`ParticipantHandler`] calls it with shared commits (`Consumer::shared_commits`): the
    /// commands whose request key has no stored outcome, each request key once (a repeat of a
    /// key in the same batch takes the outcome of its first command, or runs
    /// [`execute`](Self::execute) alone after the batch when that outcome was a retryable
    /// failure). The default runs [`execute`](Self::execute) for each. An override must write
    /// what `execute` would for each command; when it fails (`BatchFailure::at` the index in
    /// `contexts`, or `BatchFailure::whole`) the transaction is rolled back and the consumer
    /// handles the messages again, as for [`Handler::handle_batch`].
    ///
    /// ```
    /// use eventfold_core::{BoxError, NewEvent, StreamId};
    /// use eventfold_eventstore::{ExpectedVersion, StreamAppend, UnitOfWork};
    /// use eventfold_outbox::BatchFailure;
    /// use eventfold_saga::Outcome;
    /// use eventfold_saga::runtime::{Participant, ParticipantContext};
    ///
    /// /// Notes each command in its saga's stream: one statement for a whole batch.
    /// struct Ledger;
    ///
    /// fn noted(cx: &ParticipantContext) -> Result<StreamAppend, BoxError> {
    ///     let stream = StreamId::new("ledger", cx.command.saga_id.to_string())?;
    ///     let mut event = NewEvent::raw(cx.command.message_type.clone(), 1, b"{}".to_vec());
    ///     event.causation_id = Some(cx.message_id);
    ///     Ok(StreamAppend::new(stream, ExpectedVersion::Any, vec![event]))
    /// }
    ///
    /// impl<U: UnitOfWork> Participant<U> for Ledger {
    ///     async fn execute(&self, uow: &mut U, cx: &ParticipantContext) -> Result<Outcome, BoxError> {
    ///         let a = noted(cx)?;
    ///         uow.append(&a.stream_id, a.expected, a.events).await?;
    ///         Ok(Outcome::success(serde_json::json!({ "noted": true })))
    ///     }
    ///
    ///     async fn execute_batch(
    ///         &self,
    ///         uow: &mut U,
    ///         contexts: &[ParticipantContext],
    ///     ) -> Result<Vec<Outcome>, BatchFailure> {
    ///         let mut appends = Vec::with_capacity(contexts.len());
    ///         for (index, cx) in contexts.iter().enumerate() {
    ///             appends.push(noted(cx).map_err(|e| BatchFailure::at(index, e))?);
    ///         }
    ///         uow.append_many(appends).await?;
    ///         Ok(contexts
    ///             .iter()
    ///             .map(|_| Outcome::success(serde_json::json!({ "noted": true })))
    ///             .collect())
    ///     }
    /// }
    /// ```
    ///
    /// [`Handler::handle_batch`]: eventfold_outbox::Handler::handle_batch
    fn execute_batch(
        &self,
        uow: &mut U,
        contexts: &[ParticipantContext],
    ) -> impl Future<Output = Result<Vec<Outcome>, BatchFailure>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(contexts.len());
            for (index, context) in contexts.iter().enumerate() {
                let outcome = self
                    .execute(uow, context)
                    .await
                    .map_err(|e| BatchFailure::at(index, e))?;
                outcomes.push(outcome);
            }
            Ok(outcomes)
        }
    }
}

/// Wraps a [`Participant`] as a consumer handler. See the [runtime docs](crate::runtime).
pub struct ParticipantHandler<S, P> {
    name: String,
    store: S,
    participant: P,
}

impl<S: SagaStore, P: Participant<S::UnitOfWork>> ParticipantHandler<S, P> {
    /// A participant named `name` (its request outcomes are kept under that name).
    pub fn new(name: impl Into<String>, store: S, participant: P) -> Self {
        Self {
            name: name.into(),
            store,
            participant,
        }
    }

    /// A consumer of `source` (the participant's command topics) running this handler, with
    /// the consumer's name equal to the participant's.
    pub fn consumer<Src: MessageSource>(self, source: Src) -> Consumer<S, Src, Self>
    where
        S: InboxStore,
    {
        let store = self.store.clone();
        Consumer::new(self.name.clone(), store, source, self)
    }
}

/// A command a record carried, and the topic its reply goes to.
struct Incoming {
    command: SagaCommand,
    reply_to: String,
}

impl<S: SagaStore, P: Participant<S::UnitOfWork>> ParticipantHandler<S, P> {
    /// The command of `record` (`None` for a reply that shares the topic).
    fn incoming(record: &Record) -> Result<Option<Incoming>, RuntimeError> {
        if record.message_type == wire::REPLY_TYPE {
            return Ok(None);
        }
        let command = wire::decode_command(record)?;
        let Some(reply_to) = record.headers.get(wire::REPLY_TO).cloned() else {
            return Err(RuntimeError::MissingReplyTo {
                saga_id: command.saga_id,
                step: command.step.clone(),
                message_id: record.message_id,
                header: wire::REPLY_TO,
            });
        };
        Ok(Some(Incoming { command, reply_to }))
    }

    /// An outcome recorded before for the command's request key.
    fn recorded(
        &self,
        value: serde_json::Value,
        command: &SagaCommand,
        record: &Record,
    ) -> Result<Outcome, RuntimeError> {
        serde_json::from_value::<Outcome>(value).map_err(|e| RuntimeError::CorruptHistory {
            saga_id: command.saga_id,
            event_id: record.message_id,
            version: 0,
            reason: format!(
                "the outcome stored by participant {} for {} does not decode: {e}",
                self.name, command.request_key
            ),
        })
    }

    /// Executes the command alone; the outcome, and its JSON when it must be recorded.
    async fn execute(
        &self,
        uow: &mut S::UnitOfWork,
        command: &SagaCommand,
        record: &Record,
    ) -> Result<(Outcome, Option<serde_json::Value>), RuntimeError> {
        let context = ParticipantContext {
            command: command.clone(),
            message_id: record.message_id,
        };
        let outcome = self
            .participant
            .execute(uow, &context)
            .await
            .map_err(|source| self.failed(command, source))?;
        self.settled(command, outcome)
    }

    /// The participant's failure to execute `command`.
    fn failed(&self, command: &SagaCommand, source: BoxError) -> RuntimeError {
        RuntimeError::Participant {
            participant: self.name.clone(),
            saga_id: command.saga_id,
            step: command.step.clone(),
            attempt: command.attempt,
            source,
        }
    }

    /// The outcome of `command`, and its JSON when it must be recorded (a retryable failure is
    /// not, so that the next attempt runs again).
    fn settled(
        &self,
        command: &SagaCommand,
        outcome: Outcome,
    ) -> Result<(Outcome, Option<serde_json::Value>), RuntimeError> {
        if matches!(
            outcome,
            Outcome::Failure {
                retryable: true,
                ..
            }
        ) {
            return Ok((outcome, None));
        }
        let value = serde_json::to_value(&outcome).map_err(|e| RuntimeError::Encode {
            saga_id: command.saga_id,
            what: format!("the outcome of {}", command.request_key),
            reason: e.to_string(),
        })?;
        Ok((outcome, Some(value)))
    }

    /// Runs [`Participant::execute_batch`] for the batch's new commands (`contexts`, at `places`
    /// in the batch); each outcome with its JSON when it must be recorded.
    async fn execute_new(
        &self,
        uow: &mut S::UnitOfWork,
        contexts: &[ParticipantContext],
        places: &[usize],
    ) -> Result<Vec<(Outcome, Option<serde_json::Value>)>, BatchFailure> {
        if contexts.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self
            .participant
            .execute_batch(uow, contexts)
            .await
            .map_err(|failure| match failure.index {
                Some(at) if at < contexts.len() => BatchFailure::at(
                    places[at],
                    self.failed(&contexts[at].command, failure.source),
                ),
                _ => BatchFailure::whole(format!(
                    "participant {}: {} commands executed at once: {}",
                    self.name,
                    contexts.len(),
                    failure.source
                )),
            })?;
        if outcomes.len() != contexts.len() {
            return Err(BatchFailure::whole(format!(
                "participant {}: execute_batch answered {} outcomes for {} commands",
                self.name,
                outcomes.len(),
                contexts.len()
            )));
        }
        outcomes
            .into_iter()
            .zip(contexts.iter().zip(places))
            .map(|(outcome, (cx, place))| {
                self.settled(&cx.command, outcome)
                    .map_err(|e| BatchFailure::at(*place, e))
            })
            .collect()
    }

    /// The error of a request key whose outcome another delivery recorded first.
    fn raced(&self, command: &SagaCommand) -> BoxError {
        format!(
            "participant {}: {} was executed concurrently; retrying",
            self.name, command.request_key
        )
        .into()
    }

    /// The reply to `incoming` with `outcome`, as an outbox message.
    fn reply(
        &self,
        incoming: &Incoming,
        outcome: Outcome,
        record: &Record,
    ) -> Result<eventfold_core::OutboxMessage, RuntimeError> {
        let command = &incoming.command;
        wire::reply_message(
            &command.reply(outcome),
            command,
            &incoming.reply_to,
            self.store.source(),
            record.message_id,
        )
    }
}

impl<S: SagaStore, P: Participant<S::UnitOfWork>> Handler<S::UnitOfWork>
    for ParticipantHandler<S, P>
{
    async fn handle(&self, uow: &mut S::UnitOfWork, record: &Record) -> Result<(), BoxError> {
        let Some(incoming) = Self::incoming(record)? else {
            return Ok(());
        };
        let command = &incoming.command;
        let saga_id = command.saga_id;
        let stored = self
            .store
            .find_request_outcome(uow, &self.name, &command.request_key)
            .await
            .map_err(RuntimeError::store(saga_id))?;
        let outcome = match stored {
            Some(value) => self.recorded(value, command, record)?,
            None => {
                let (outcome, value) = self.execute(uow, command, record).await?;
                if let Some(value) = value {
                    let first = self
                        .store
                        .record_request_outcome(uow, &self.name, &command.request_key, &value)
                        .await
                        .map_err(RuntimeError::store(saga_id))?;
                    if !first {
                        return Err(self.raced(command));
                    }
                }
                outcome
            }
        };
        let message = self.reply(&incoming, outcome, record)?;
        uow.enqueue(vec![message])
            .await
            .map_err(RuntimeError::store(saga_id))?;
        Ok(())
    }

    /// The commands of a shared transaction together: their stored outcomes read with one
    /// call, the new ones executed at once ([`Participant::execute_batch`], each request key
    /// once), the new outcomes recorded with one call and the replies enqueued with one (on
    /// PostgreSQL, one statement each).
    async fn handle_batch(
        &self,
        uow: &mut S::UnitOfWork,
        batch: &Batch<'_>,
    ) -> Result<(), BatchFailure> {
        /// Where a command's outcome comes from.
        enum Source {
            /// Recorded by an earlier delivery.
            Stored(serde_json::Value),
            /// The next of the batch's new commands (executed at once, in order).
            New,
            /// A request key that came earlier in the batch.
            Repeat,
        }
        let commands = batch.decoded(Self::incoming)?;
        if commands.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = commands
            .iter()
            .map(|(_, _, i)| i.command.request_key.as_str())
            .collect();
        let stored = self
            .store
            .find_request_outcomes(uow, &self.name, &keys)
            .await?;
        // The first command of each new request key, with its place in the batch.
        let mut contexts = Vec::new();
        let mut places = Vec::new();
        let mut first_of: HashSet<&str> = HashSet::new();
        let mut sources = Vec::with_capacity(commands.len());
        for ((index, record, incoming), stored) in commands.iter().zip(stored) {
            let key = incoming.command.request_key.as_str();
            sources.push(match stored {
                Some(value) => Source::Stored(value),
                None if first_of.insert(key) => {
                    contexts.push(ParticipantContext {
                        command: incoming.command.clone(),
                        message_id: record.message_id,
                    });
                    places.push(*index);
                    Source::New
                }
                None => Source::Repeat,
            });
        }
        let mut executed = self.execute_new(uow, &contexts, &places).await?.into_iter();
        let mut decided: HashMap<&str, Outcome> = HashMap::new();
        // The new outcomes to record: each with its command's place in the batch.
        let mut to_record: Vec<(usize, &SagaCommand, serde_json::Value)> = Vec::new();
        let mut replies = Vec::with_capacity(commands.len());
        for ((index, record, incoming), source) in commands.iter().zip(sources) {
            let at = |e| BatchFailure::at(*index, e);
            let command = &incoming.command;
            let key = command.request_key.as_str();
            let settled = match source {
                Source::Stored(value) => (self.recorded(value, command, record).map_err(at)?, None),
                Source::New => executed.next().ok_or_else(|| {
                    BatchFailure::whole(format!(
                        "participant {}: no outcome for {}",
                        self.name, command.request_key
                    ))
                })?,
                Source::Repeat => match decided.get(key) {
                    Some(outcome) => (outcome.clone(), None),
                    // Its first command failed retryably: this delivery runs again, alone.
                    None => self.execute(uow, command, record).await.map_err(at)?,
                },
            };
            let (outcome, value) = settled;
            if let Some(value) = value {
                to_record.push((*index, command, value));
                decided.insert(key, outcome.clone());
            }
            replies.push(self.reply(incoming, outcome, record).map_err(at)?);
        }
        let outcomes: Vec<(&str, &serde_json::Value)> = to_record
            .iter()
            .map(|(_, command, value)| (command.request_key.as_str(), value))
            .collect();
        let first = self
            .store
            .record_request_outcomes(uow, &self.name, &outcomes)
            .await?;
        if let Some((index, command, _)) = first
            .iter()
            .zip(&to_record)
            .find_map(|(first, raced)| (!first).then_some(raced))
        {
            return Err(BatchFailure::at(*index, self.raced(command)));
        }
        uow.enqueue(replies).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use eventfold_eventstore::memory::{MemoryStore, MemoryUnitOfWork};
    use eventfold_eventstore::{EventStore, OutboxStore};
    use eventfold_outbox::{InProcessBroker, Publisher};

    use super::*;
    use crate::message::{CommandKind, Reply};

    const TOPIC: &str = "ledger.commands";

    /// Executes every command it is given and notes how: `batch` for `execute_batch`, `one` for
    /// `execute`, with the request keys. A key whose step is `flaky` fails retryably the first
    /// time it runs; every other outcome names its key and which run of that key it was.
    /// How each call ran (`batch` or `one`) and with which request keys.
    type Calls = Arc<Mutex<Vec<(&'static str, Vec<String>)>>>;

    #[derive(Default, Clone)]
    struct Ledger {
        calls: Calls,
        runs: Arc<Mutex<HashMap<String, u32>>>,
    }

    impl Ledger {
        fn run(&self, cx: &ParticipantContext) -> Outcome {
            let key = cx.command.request_key.clone();
            let mut runs = self.runs.lock().expect("runs");
            let run = runs.entry(key.clone()).or_default();
            *run += 1;
            if cx.command.step == "flaky" && *run == 1 {
                return Outcome::retryable(format!("{key} is flaky"));
            }
            Outcome::success(serde_json::json!({ "key": key, "run": *run }))
        }

        fn calls(&self) -> Vec<(&'static str, Vec<String>)> {
            self.calls.lock().expect("calls").clone()
        }
    }

    impl Participant<MemoryUnitOfWork> for Ledger {
        async fn execute(
            &self,
            _uow: &mut MemoryUnitOfWork,
            cx: &ParticipantContext,
        ) -> Result<Outcome, BoxError> {
            let key = cx.command.request_key.clone();
            self.calls.lock().expect("calls").push(("one", vec![key]));
            Ok(self.run(cx))
        }

        async fn execute_batch(
            &self,
            _uow: &mut MemoryUnitOfWork,
            contexts: &[ParticipantContext],
        ) -> Result<Vec<Outcome>, BatchFailure> {
            let keys = contexts
                .iter()
                .map(|cx| cx.command.request_key.clone())
                .collect();
            self.calls.lock().expect("calls").push(("batch", keys));
            Ok(contexts.iter().map(|cx| self.run(cx)).collect())
        }
    }

    fn command(saga_id: Uuid, step: &str, attempt: u32) -> SagaCommand {
        SagaCommand {
            saga_id,
            saga_type: "ledger.test".to_owned(),
            step: step.to_owned(),
            attempt,
            kind: CommandKind::Action,
            request_key: SagaCommand::request_key_for(saga_id, step, CommandKind::Action),
            correlation_id: saga_id,
            topic: TOPIC.to_owned(),
            message_type: "ledger.note".to_owned(),
            payload: serde_json::json!({}),
        }
    }

    async fn publish(broker: &InProcessBroker, commands: &[SagaCommand]) {
        let messages: Vec<_> = commands
            .iter()
            .map(|c| wire::command_message(c, "ledger.replies", "test", None).expect("encodes"))
            .collect();
        for delivery in broker.publish(&messages).await {
            delivery.expect("published");
        }
    }

    /// The replies in the outbox, oldest first: (step, attempt, outcome).
    async fn replies(store: &MemoryStore) -> Vec<(String, u32, Outcome)> {
        store
            .read_outbox(100)
            .await
            .expect("outbox")
            .into_iter()
            .map(|row| {
                let reply: Reply = serde_json::from_slice(&row.message.payload).expect("a reply");
                (reply.step, reply.attempt, reply.outcome)
            })
            .collect()
    }

    fn done(key: &str, run: u32) -> Outcome {
        Outcome::success(serde_json::json!({ "key": key, "run": run }))
    }

    /// One shared transaction with a stored key, a new key twice and a flaky key twice:
    /// `execute_batch` gets each new key once, in order; the repeat of the new key repeats its
    /// outcome; the repeat of the flaky key (whose first outcome was retryable, so not recorded)
    /// runs `execute` alone; the stored key is not executed. Each command is answered, in order.
    #[tokio::test]
    async fn a_batch_executes_each_new_request_once_and_repeats_retry_alone() {
        let store = MemoryStore::new();
        // One partition: the batch holds the commands in the order they were published.
        let broker = InProcessBroker::new().with_default_partitions(1);
        let ledger = Ledger::default();
        let mut consumer = ParticipantHandler::new("ledger", store.clone(), ledger.clone())
            .consumer(broker.consumer("ledger", &[TOPIC]))
            .shared_commits(true);
        let (stored, new, flaky) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let key =
            |id: Uuid, step: &str| SagaCommand::request_key_for(id, step, CommandKind::Action);

        publish(&broker, &[command(stored, "done", 1)]).await;
        let first = consumer
            .run_once(Duration::from_secs(1))
            .await
            .expect("first batch");
        assert_eq!(first.handled, 1);

        publish(
            &broker,
            &[
                command(new, "pay", 1),
                command(flaky, "flaky", 1),
                command(new, "pay", 2),
                command(stored, "done", 2),
                command(flaky, "flaky", 2),
            ],
        )
        .await;
        let second = consumer
            .run_once(Duration::from_secs(1))
            .await
            .expect("second batch");
        assert_eq!(second.handled, 5, "one shared transaction handles all five");

        assert_eq!(
            ledger.calls(),
            vec![
                // A batch of one message is handled alone (`handle`).
                ("one", vec![key(stored, "done")]),
                ("batch", vec![key(new, "pay"), key(flaky, "flaky")]),
                ("one", vec![key(flaky, "flaky")]),
            ],
            "each new request key executed once at once; the flaky repeat alone after"
        );
        let (paid, flaked, noted) = (key(new, "pay"), key(flaky, "flaky"), key(stored, "done"));
        // Commands are keyed by saga id, so order holds per saga (a partition each).
        let mut by_saga: HashMap<String, Vec<(u32, Outcome)>> = HashMap::new();
        for (step, attempt, outcome) in replies(&store).await {
            by_saga.entry(step).or_default().push((attempt, outcome));
        }
        assert_eq!(
            by_saga,
            HashMap::from([
                (
                    "done".to_owned(),
                    vec![(1, done(&noted, 1)), (2, done(&noted, 1))]
                ),
                (
                    "pay".to_owned(),
                    vec![(1, done(&paid, 1)), (2, done(&paid, 1))]
                ),
                (
                    "flaky".to_owned(),
                    vec![
                        (1, Outcome::retryable(format!("{flaked} is flaky"))),
                        (2, done(&flaked, 2)),
                    ]
                ),
            ]),
            "every command answered, in order per saga; repeats carry the recorded outcome"
        );
        let recorded = store
            .find_request_outcomes(&mut store.begin().await.expect("uow"), "ledger", &[&flaked])
            .await
            .expect("outcomes");
        assert_eq!(
            recorded,
            vec![Some(serde_json::to_value(done(&flaked, 2)).expect("json"))],
            "the flaky key's second run is the recorded outcome"
        );
    }

    /// A failure `execute_batch` reports at an index of its commands fails the batch at that
    /// command's place in the batch (the consumer then runs the commands before it shared, and it
    /// alone with `execute`).
    #[tokio::test]
    async fn a_failure_in_execute_batch_is_reported_at_its_command() {
        struct FailsSecond;
        impl Participant<MemoryUnitOfWork> for FailsSecond {
            async fn execute(
                &self,
                _uow: &mut MemoryUnitOfWork,
                _cx: &ParticipantContext,
            ) -> Result<Outcome, BoxError> {
                Ok(Outcome::success(serde_json::json!({})))
            }

            async fn execute_batch(
                &self,
                _uow: &mut MemoryUnitOfWork,
                contexts: &[ParticipantContext],
            ) -> Result<Vec<Outcome>, BatchFailure> {
                match contexts.len() {
                    1 => Ok(vec![Outcome::success(serde_json::json!({}))]),
                    _ => Err(BatchFailure::at(1, "the second command fails")),
                }
            }
        }
        let store = MemoryStore::new();
        let handler = ParticipantHandler::new("fails", store.clone(), FailsSecond);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let contexts: Vec<ParticipantContext> = [command(a, "x", 1), command(b, "y", 1)]
            .into_iter()
            .map(|command| ParticipantContext {
                command,
                message_id: Uuid::now_v7(),
            })
            .collect();
        let mut uow = store.begin().await.expect("uow");
        let failure = handler
            .execute_new(&mut uow, &contexts, &[3, 7])
            .await
            .expect_err("the second command fails");
        assert_eq!(
            failure.index,
            Some(7),
            "the place in the batch of the failing command"
        );
        let message = failure.source.to_string();
        assert!(
            message.contains(&b.to_string()) && message.contains("fails"),
            "names the saga of the failing command and the participant: {message}"
        );
    }
}
