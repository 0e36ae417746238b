//! What a consumer runs for its messages: a [`Handler`], one message at a time or, with shared
//! commits, a [`Batch`] of them at once.

use std::future::Future;

use eventfold_core::BoxError;
use eventfold_eventstore::{StoreError, UnitOfWork};
use tracing::Instrument;

use crate::in_process::Record;

/// Handles one message inside the consumer's unit of work `U`: whatever it writes through `U`
/// (events, outbox messages, SQL through `uow.connection()`) commits with the inbox mark.
pub trait Handler<U: UnitOfWork>: Send + Sync {
    /// Handles `record`. An error rolls the unit of work back; the message is retried, then
    /// parked.
    fn handle(
        &self,
        uow: &mut U,
        record: &Record,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Handles the new messages of one shared transaction ([`Consumer::shared_commits`]), in
    /// order, in one unit of work: what lets a handler write a whole batch's effects in a few
    /// statements ([`UnitOfWork::append_many`]: one statement per run of distinct streams on
    /// PostgreSQL) instead of a few per message. Duplicates are not in the batch: the inbox
    /// marks were taken first.
    ///
    /// The default runs [`handle`](Self::handle) for each record, in its `consume` span, and
    /// says which one failed. An override must write what `handle` would for each record: when
    /// it fails, the transaction is rolled back and the consumer handles the messages again
    /// with `handle`, one per transaction ([`BatchFailure::whole`]) or from the failed one on
    /// ([`BatchFailure::at`]).
    ///
    /// ```
    /// use eventfold_core::{BoxError, NewEvent, StreamId};
    /// use eventfold_eventstore::{ExpectedVersion, StreamAppend, UnitOfWork};
    /// use eventfold_outbox::{Batch, BatchFailure, Handler, Record};
    ///
    /// /// Notes each message as an event of its key's stream: one statement for a whole batch.
    /// struct Ledger;
    ///
    /// fn noted(record: &Record) -> Result<StreamAppend, BoxError> {
    ///     let stream = StreamId::new("ledger", &record.key)?;
    ///     let event = NewEvent::raw("ledger.noted", 1, record.payload.clone());
    ///     Ok(StreamAppend::new(stream, ExpectedVersion::Any, vec![event]))
    /// }
    ///
    /// impl<U: UnitOfWork> Handler<U> for Ledger {
    ///     async fn handle(&self, uow: &mut U, record: &Record) -> Result<(), BoxError> {
    ///         let a = noted(record)?;
    ///         uow.append(&a.stream_id, a.expected, a.events).await?;
    ///         Ok(())
    ///     }
    ///
    ///     async fn handle_batch(&self, uow: &mut U, batch: &Batch<'_>) -> Result<(), BatchFailure> {
    ///         let mut appends = Vec::with_capacity(batch.records().len());
    ///         for (index, record) in batch.records().iter().enumerate() {
    ///             appends.push(noted(record).map_err(|e| BatchFailure::at(index, e))?);
    ///         }
    ///         uow.append_many(appends).await?;
    ///         Ok(())
    ///     }
    /// }
    /// ```
    ///
    /// [`Consumer::shared_commits`]: crate::Consumer::shared_commits
    fn handle_batch(
        &self,
        uow: &mut U,
        batch: &Batch<'_>,
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send {
        async move {
            for (index, record) in batch.records.iter().enumerate() {
                self.handle(uow, record)
                    .instrument(batch.span(record))
                    .await
                    .map_err(|e| BatchFailure::at(index, e))?;
            }
            Ok(())
        }
    }
}

/// The new messages of one shared transaction, handed to [`Handler::handle_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub(crate) consumer: &'a str,
    pub(crate) records: &'a [&'a Record],
}

impl<'a> Batch<'a> {
    /// The messages, in the order they must be handled.
    pub fn records(&self) -> &'a [&'a Record] {
        self.records
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &'a str {
        self.consumer
    }

    /// The `consume` span of `record`, as the consumer opens it around [`Handler::handle`]
    /// (with the feature `otel`, continuing the trace the record carries).
    pub fn span(&self, record: &Record) -> tracing::Span {
        consume_span(self.consumer, record)
    }

    /// The records `decode` takes (`Ok(Some(..))`), each with its index and record, in order;
    /// records it skips (`Ok(None)`: another message type on the topic) are left out. A record
    /// that fails to decode fails the batch at its index ([`BatchFailure::at`]).
    pub fn decoded<T, E: Into<BoxError>>(
        &self,
        mut decode: impl FnMut(&Record) -> Result<Option<T>, E>,
    ) -> Result<Vec<(usize, &'a Record, T)>, BatchFailure> {
        let mut decoded = Vec::with_capacity(self.records.len());
        for (index, &record) in self.records.iter().enumerate() {
            if let Some(value) = decode(record).map_err(|e| BatchFailure::at(index, e))? {
                decoded.push((index, record, value));
            }
        }
        Ok(decoded)
    }
}

/// The `consume` span of one message.
pub(crate) fn consume_span(consumer: &str, record: &Record) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        consumer = %consumer,
        topic = %record.topic,
        message_type = %record.message_type,
        message_id = %record.message_id,
    );
    #[cfg(feature = "otel")]
    eventfold_core::trace_context::continue_trace(&span, &record.headers);
    span
}

/// Why [`Handler::handle_batch`] failed, and which message failed if it knows.
#[derive(Debug)]
pub struct BatchFailure {
    /// The index in [`Batch::records`] of the message that failed, if one did.
    pub index: Option<usize>,
    /// What failed.
    pub source: BoxError,
}

impl std::fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(index) => write!(
                f,
                "the message at {index} of the batch failed: {}",
                self.source
            ),
            None => write!(f, "the batch failed: {}", self.source),
        }
    }
}

impl std::error::Error for BatchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl BatchFailure {
    /// The message at `index` failed: the messages before it are handled again in one shared
    /// transaction, then it alone (its first attempt counted), then the rest.
    pub fn at(index: usize, error: impl Into<BoxError>) -> Self {
        Self {
            index: Some(index),
            source: error.into(),
        }
    }

    /// The batch failed as a whole (a write of several messages at once): its messages are
    /// handled again one per transaction, with [`Handler::handle`], none of them losing an
    /// attempt.
    pub fn whole(error: impl Into<BoxError>) -> Self {
        Self {
            index: None,
            source: error.into(),
        }
    }
}

impl From<StoreError> for BatchFailure {
    fn from(error: StoreError) -> Self {
        Self::whole(error)
    }
}

impl From<BoxError> for BatchFailure {
    fn from(error: BoxError) -> Self {
        Self::whole(error)
    }
}
