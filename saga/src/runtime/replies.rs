//! The orchestrator's side of the reply topic: a consumer [`Handler`] that applies replies in the
//! consumer's unit of work, beside the reply's inbox mark.

use std::collections::HashMap;

use eventfold_core::BoxError;
use eventfold_eventstore::{InboxStore, SagaStore};
use eventfold_outbox::{Batch, BatchFailure, Consumer, Handler, MessageSource, Record};
use tracing::Instrument;
use uuid::Uuid;

use crate::definition::SagaData;
use crate::machine::Input;
use crate::message::Reply;
use crate::runtime::error::RuntimeError;
use crate::runtime::orchestrator::Orchestrator;
use crate::runtime::transition::{Known, Planned, Prepared};
use crate::runtime::wire;

/// The lanes of [`Orchestrator::reply_consumer`]: replies of different instances applied on up
/// to this many connections at once. One: a batch's transitions are written with one call
/// (`SagaStore::write_saga_transitions`, one statement on PostgreSQL), so one lane writes a
/// batch with the fewest statements, and on a database short of cores it completes the most
/// sagas (measured in the book's performance chapter: 4 lanes made 10–20% fewer). Where the
/// database has cores to spare or is far away, more lanes overlap the round trips: call
/// `.concurrency(n)` on the consumer.
pub const REPLY_LANES: usize = 1;

/// Applies the replies of one saga type (see [`Orchestrator::reply_handler`]). Records that are
/// not replies, or replies of another saga type sharing the topic, are acknowledged and skipped.
/// A reply that does not decode is an error (the consumer retries, then parks it, visible in
/// the consumer's parked messages); so is a conflict with another transition of the same
/// instance, which the consumer's retry resolves.
pub struct ReplyHandler<S, D> {
    orchestrator: Orchestrator<S, D>,
}

impl<S: SagaStore, D: SagaData> Orchestrator<S, D> {
    /// The consumer handler of this saga type's replies.
    pub fn reply_handler(&self) -> ReplyHandler<S, D> {
        ReplyHandler {
            orchestrator: self.clone(),
        }
    }

    /// The name of this saga type's reply consumer (its inbox and parked messages): `saga:{type}`.
    pub fn reply_consumer_name(&self) -> String {
        format!("saga:{}", self.saga_type())
    }

    /// A consumer of this saga type's replies from `source` (subscribed to
    /// [`reply_topic`](Self::reply_topic)), with 20 attempts per reply (conflicts with timers
    /// or other consumers are retried, not parked), a 10 ms first backoff, and
    /// [shared commits](Consumer::shared_commits): the replies of a polled batch are applied in
    /// one transaction and committed once. The reply handler reads the instance through the
    /// unit of work, so a batch holding two replies of one instance applies the second on the
    /// state the first left; a reply that fails is undone alone (the transaction is rolled back
    /// and the replies before it applied again) and retried on its own; and
    /// [overlapped commits](Consumer::overlap_commits): while a batch's transaction commits, the
    /// next batch is polled and applied on a second connection (a reply of an instance in the
    /// committing batch waits for that commit). Call `.shared_commits(false)` on the result for
    /// one transaction per reply, `.overlap_commits(false)` for one transaction at a time.
    pub fn reply_consumer<Src: MessageSource>(
        &self,
        source: Src,
    ) -> Consumer<S, Src, ReplyHandler<S, D>>
    where
        S: InboxStore,
    {
        Consumer::new(
            self.reply_consumer_name(),
            self.store().clone(),
            source,
            self.reply_handler(),
        )
        .max_attempts(20)
        .backoff(std::time::Duration::from_millis(10))
        .shared_commits(true)
        .overlap_commits(true)
        .concurrency(REPLY_LANES)
    }
}

impl<S: SagaStore, D: SagaData> ReplyHandler<S, D> {
    /// The reply `record` carries for this orchestrator's saga type; `None` for anything else
    /// on the topic (another message type, another saga type's reply).
    fn reply_of(&self, record: &Record) -> Result<Option<Reply>, RuntimeError> {
        if record.message_type != wire::REPLY_TYPE {
            return Ok(None);
        }
        if let Some(saga_type) = record.headers.get(wire::SAGA_TYPE)
            && saga_type != self.orchestrator.saga_type()
        {
            return Ok(None);
        }
        wire::decode_reply(record).map(Some)
    }
}

impl<S: SagaStore, D: SagaData> Handler<S::UnitOfWork> for ReplyHandler<S, D> {
    async fn handle(&self, uow: &mut S::UnitOfWork, record: &Record) -> Result<(), BoxError> {
        let Some(reply) = self.reply_of(record)? else {
            return Ok(());
        };
        self.orchestrator
            .handle_reply_in(uow, reply, Some(record.message_id))
            .await?;
        Ok(())
    }

    /// The replies of a shared transaction: the rows of their instances locked with one call
    /// (`SagaStore::lock_sagas_with_clock`: one statement on PostgreSQL, in id order), then each
    /// reply's transition decided in order under its lock, in its `consume` span, and the
    /// transitions written together (`SagaStore::write_saga_transitions`: one statement on
    /// PostgreSQL). A second reply of an instance in the batch waits for the write of the ones
    /// before it, then locks again (its row moved with the first).
    async fn handle_batch(
        &self,
        uow: &mut S::UnitOfWork,
        batch: &Batch<'_>,
    ) -> Result<(), BatchFailure> {
        let replies = batch.decoded(|record| self.reply_of(record))?;
        let ids: Vec<Uuid> = replies.iter().map(|(_, _, r)| r.saga_id).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let orchestrator = &self.orchestrator;
        let mut locked: HashMap<Uuid, _> = orchestrator
            .inner
            .store
            .lock_sagas_with_clock(uow, &ids)
            .await?
            .into_iter()
            .map(|(record, now)| (record.saga_id, (record, now)))
            .collect();
        // The decided transitions not yet written, with their messages' indexes.
        let mut run: Vec<(usize, Planned)> = Vec::new();
        for (index, record, reply) in replies {
            if run.iter().any(|(_, p)| p.saga_id() == reply.saga_id) {
                self.write(uow, std::mem::take(&mut run)).await?;
            }
            let span = batch.span(record);
            let Some(first) = locked.remove(&reply.saga_id) else {
                orchestrator
                    .handle_reply_in(uow, reply, Some(record.message_id))
                    .instrument(span)
                    .await
                    .map_err(|e| BatchFailure::at(index, e))?;
                continue;
            };
            let prepared = orchestrator
                .prepare_locked(
                    uow,
                    first,
                    Known::Load,
                    Input::Reply(reply),
                    Some(record.message_id),
                )
                .instrument(span)
                .await
                .map_err(|e| BatchFailure::at(index, e))?;
            if let Prepared::Write(planned) = prepared {
                run.push((index, *planned));
            }
        }
        self.write(uow, run).await
    }
}

impl<S: SagaStore, D: SagaData> ReplyHandler<S, D> {
    /// Writes the transitions decided for a batch of replies; a failure of one transition fails
    /// the batch at its message, any other the batch as a whole.
    async fn write(
        &self,
        uow: &mut S::UnitOfWork,
        run: Vec<(usize, Planned)>,
    ) -> Result<(), BatchFailure> {
        let (indexes, planned): (Vec<usize>, Vec<Planned>) = run.into_iter().unzip();
        match self.orchestrator.write_planned(uow, planned).await {
            Ok(_) => Ok(()),
            Err((Some(at), e)) => Err(BatchFailure::at(indexes[at], e)),
            Err((None, e)) => Err(BatchFailure::whole(e)),
        }
    }
}
