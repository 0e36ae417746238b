//! The unit of work of the SQL backends: a transaction the application's own SQL joins. What
//! PostgreSQL and SQLite do the same way is stamped into each backend's `unit_of_work.rs` by the
//! macros below (see [`super::read`] for why macros); appending and marking the inbox are each
//! backend's.

use sqlx::{Database, Executor, IntoArguments};

use super::dialect::Dialect;
use crate::error::StoreError;

/// Binds the first eight values of one inbox mark, in [`mark_inbox`]'s order (consumer, message
/// id, type, topic, correlation id, causation id, sender, receiver), to `query`: the time (`$9`)
/// is the caller's. A multi-row mark binds them once per row.
pub(crate) fn bind_mark<'q, DB: Database>(
    query: sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>,
    consumer: &'q str,
    entry: &'q crate::trace::InboxEntry,
    received_by: &'q str,
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    uuid::Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<uuid::Uuid>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(consumer)
        .bind(entry.message_id)
        .bind(entry.message_type.as_deref())
        .bind(entry.topic.as_deref())
        .bind(entry.correlation_id)
        .bind(entry.causation_id)
        .bind(entry.sent_by.as_deref())
        .bind(received_by)
}

/// The statement of `mark_received` on inbox table `inbox`: `$1` consumer, `$2` message id, `$3`
/// type, `$4` topic, `$5` correlation id, `$6` causation id, `$7` sender, `$8` receiver, `$9`
/// processed at; a message already marked is left as it is.
pub(crate) fn mark_inbox<D: Dialect>(inbox: &str) -> String {
    D::placeholders(&format!(
        "INSERT INTO {inbox} ({MARK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT DO NOTHING"
    ))
}

/// The columns an inbox mark writes, in the order of its values (the one-row mark, PostgreSQL's
/// `UNNEST` mark and SQLite's multi-row marks all write these).
pub(crate) const MARK_COLUMNS: &str = "consumer, message_id, message_type, topic, correlation_id, \
     causation_id, sent_by, received_by, processed_at";

/// A step of a savepoint ([`savepoint`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Savepoint {
    /// Before the append's first row, or at [`UnitOfWork::savepoint`](crate::store::UnitOfWork::savepoint).
    Open,
    /// After the append's last row, or when the unit of work releases its savepoint.
    Release,
    /// When the append failed, or the unit of work rolls back to its savepoint: undoes the rows
    /// since the savepoint (which stays open).
    RollBack,
}

/// Whose savepoint: an append's, so that a failed append leaves its unit of work as it was (a
/// unit of work is a transaction of its own), or a unit of work's own
/// ([`UnitOfWork::savepoint`](crate::store::UnitOfWork::savepoint)). They nest, and an append's
/// nests inside a unit of work's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SavepointOf {
    /// `eventfold_append`; a failure is one of appending events.
    Append,
    /// `eventfold_step`; a failure names the step.
    UnitOfWork,
}

/// Runs `step` of `owner`'s savepoint (one of ours, never the application's text) in `tx`; a
/// failure names the step and `events_table`.
pub(crate) async fn savepoint<DB: Database>(
    tx: &mut sqlx::Transaction<'static, DB>,
    owner: SavepointOf,
    step: Savepoint,
    events_table: &str,
) -> Result<(), StoreError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    let (name, operation) = match (owner, step) {
        (SavepointOf::Append, _) => ("eventfold_append", "appending events"),
        (SavepointOf::UnitOfWork, Savepoint::Open) => ("eventfold_step", "opening a savepoint"),
        (SavepointOf::UnitOfWork, Savepoint::Release) => {
            ("eventfold_step", "releasing a savepoint")
        }
        (SavepointOf::UnitOfWork, Savepoint::RollBack) => {
            ("eventfold_step", "rolling back to a savepoint")
        }
    };
    let statement = match step {
        Savepoint::Open => format!("SAVEPOINT {name}"),
        Savepoint::Release => format!("RELEASE SAVEPOINT {name}"),
        Savepoint::RollBack => format!("ROLLBACK TO SAVEPOINT {name}"),
    };
    sqlx::query::<DB>(&statement)
        .execute(&mut **tx)
        .await
        .map_err(super::db_err(operation, events_table))?;
    Ok(())
}

/// Runs `steps` of the unit of work's own savepoint ([`SavepointOf::UnitOfWork`]) in `tx`, in
/// order, stopping at the first that fails: [`UnitOfWork`](crate::store::UnitOfWork)'s
/// `savepoint`, `rollback_to_savepoint` and `release_savepoint`.
pub(crate) async fn own_savepoint<DB: Database>(
    tx: &mut sqlx::Transaction<'static, DB>,
    steps: &[Savepoint],
    events_table: &str,
) -> Result<(), StoreError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    for step in steps {
        savepoint(tx, SavepointOf::UnitOfWork, *step, events_table).await?;
    }
    Ok(())
}

/// Which of `messages` a mark of all of them marked, given the ids the database answered as
/// newly marked: of an id given twice, the first is the one marked.
pub(crate) fn marked_flags(
    messages: &[crate::trace::InboxEntry],
    mut fresh: std::collections::HashSet<uuid::Uuid>,
) -> Vec<bool> {
    messages
        .iter()
        .map(|m| fresh.remove(&m.message_id))
        .collect()
}

/// Declares the backend's unit of work `$uow` (documented by `$doc`): a transaction of the
/// database `$db` on a `$conn`, with the fields [`begin_unit_of_work!`] fills, its public
/// `connection` and `transaction`, and the store `$store`'s `begin_unit_of_work` in the dialect
/// `$dialect`.
macro_rules! unit_of_work_type {
    ($uow:ident, $store:ty, $db:ty, $conn:ty, $dialect:ty, $doc:literal) => {
        #[doc = $doc]
        pub struct $uow {
            pub(super) source: std::sync::Arc<str>,
            pub(super) routing: Option<std::sync::Arc<$crate::outbox::OutboxRouting>>,
            pub(super) tx: sqlx::Transaction<'static, $db>,
            pub(super) sql: std::sync::Arc<Statements>,
            pub(super) appended: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
            pub(super) wrote_events: bool,
            /// This writer's turn through the store's gate, held until the transaction ends.
            pub(super) _turn: $crate::sql::gate::WritePermit,
        }

        impl $uow {
            /// The connection of this transaction, for the application's own SQL.
            pub fn connection(&mut self) -> &mut $conn {
                &mut self.tx
            }

            /// The `sqlx` transaction itself.
            pub fn transaction(&mut self) -> &mut sqlx::Transaction<'static, $db> {
                &mut self.tx
            }
        }

        impl $store {
            $crate::sql::unit_of_work::begin_unit_of_work!($uow, $dialect);
        }
    };
}
pub(crate) use unit_of_work_type;

/// Stamps every method of [`UnitOfWork`](crate::store::UnitOfWork) (inside its impl): `append` (over the backend's `append_events`), the reads, snapshot and command writes,
/// `enqueue` (over the backend's `insert_outbox`), `commit` and `rollback`. Uses its fields `tx`
/// (the transaction), `sql` (statements with a [`ReadSql`](super::read::ReadSql) named `read`),
/// `wrote_events` and `appended`, and `read_stream_on` & co. in scope.
macro_rules! unit_of_work_methods {
    () => {
        async fn mark_received(
            &mut self,
            consumer: &str,
            message: &$crate::trace::InboxEntry,
        ) -> Result<bool, $crate::error::StoreError> {
            $crate::store::validate_consumer_name(consumer)?;
            let query = $crate::sql::unit_of_work::bind_mark(
                sqlx::query(&self.sql.mark_inbox),
                consumer,
                message,
                &self.source,
            );
            // The client's clock, like the events' times (the trace orders them together).
            let done = query
                .bind(eventfold_core::metadata::now_micros())
                .execute(&mut *self.tx)
                .await
                .map_err($crate::sql::db_err("marking the inbox", &self.sql.inbox))?;
            Ok(done.rows_affected() == 1)
        }

        async fn append(
            &mut self,
            stream_id: &eventfold_core::StreamId,
            expected: $crate::error::ExpectedVersion,
            events: Vec<eventfold_core::NewEvent>,
        ) -> Result<$crate::store::AppendResult, $crate::error::StoreError> {
            self.append_events(stream_id, expected, events).await
        }

        async fn enqueue(
            &mut self,
            messages: Vec<eventfold_core::OutboxMessage>,
        ) -> Result<(), $crate::error::StoreError> {
            $crate::store::validate_messages(&messages)?;
            self.insert_outbox(messages).await?;
            // Wakes the relay at commit, like an append does.
            self.wrote_events = true;
            Ok(())
        }

        $crate::sql::read::stream_reads!(transaction, &mut);

        async fn save_snapshot(
            &mut self,
            snapshot: $crate::store::Snapshot,
        ) -> Result<(), $crate::error::StoreError> {
            use $crate::sql::{db_err, to_i64};
            sqlx::query(&self.sql.read.save_snapshot)
                .bind(snapshot.stream_id.stream_type())
                .bind(snapshot.stream_id.id())
                .bind(to_i64(snapshot.version, &snapshot.stream_id)?)
                .bind(i64::from(snapshot.snapshot_version))
                .bind(&snapshot.state)
                .bind(snapshot.taken_at)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("saving a snapshot", &self.sql.read.snapshots))?;
            Ok(())
        }

        async fn record_command(
            &mut self,
            record: $crate::store::CommandRecord,
        ) -> Result<bool, $crate::error::StoreError> {
            use $crate::sql::{db_err, to_i64};
            let done = sqlx::query(&self.sql.read.record_command)
                .bind(record.command_id)
                .bind(record.stream_id.stream_type())
                .bind(record.stream_id.id())
                .bind(to_i64(record.version_before, &record.stream_id)?)
                .bind(to_i64(record.version_after, &record.stream_id)?)
                .bind(record.recorded_at)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("recording a command", &self.sql.read.commands))?;
            Ok(done.rows_affected() == 1)
        }

        async fn savepoint(&mut self) -> Result<(), $crate::error::StoreError> {
            use $crate::sql::unit_of_work::Savepoint::Open;
            $crate::sql::unit_of_work::own_savepoint(&mut self.tx, &[Open], &self.sql.read.events)
                .await
        }

        async fn rollback_to_savepoint(&mut self) -> Result<(), $crate::error::StoreError> {
            use $crate::sql::unit_of_work::Savepoint::{Release, RollBack};
            let steps = [RollBack, Release];
            $crate::sql::unit_of_work::own_savepoint(&mut self.tx, &steps, &self.sql.read.events)
                .await
        }

        async fn release_savepoint(&mut self) -> Result<(), $crate::error::StoreError> {
            use $crate::sql::unit_of_work::Savepoint::Release;
            $crate::sql::unit_of_work::own_savepoint(&mut self.tx, &[Release], &self.sql.read.events)
                .await
        }

        async fn commit(self) -> Result<(), $crate::error::StoreError> {
            self.tx
                .commit()
                .await
                .map_err($crate::sql::db_err("committing", &self.sql.read.events))?;
            if self.wrote_events {
                self.appended.send_modify(|n| *n += 1);
            }
            Ok(())
        }

        async fn rollback(self) -> Result<(), $crate::error::StoreError> {
            self.tx
                .rollback()
                .await
                .map_err($crate::sql::db_err("rolling back", &self.sql.read.events))
        }
    };
}
pub(crate) use unit_of_work_methods;

/// Stamps `begin_unit_of_work` (inside the store's impl): a write transaction started the
/// dialect's way ([`Dialect::BEGIN_WRITE`](super::dialect::Dialect::BEGIN_WRITE)) on a task of
/// its own ([`begin_owned`](super::begin_owned)), with the store's source, routing, statements
/// and wake-up signal.
macro_rules! begin_unit_of_work {
    ($uow:ident, $dialect:ty) => {
        pub(super) async fn begin_unit_of_work(&self) -> Result<$uow, $crate::error::StoreError> {
            use $crate::sql::dialect::Dialect;
            let turn = self
                .gate
                .enter("starting a unit of work", &self.sql.events)
                .await?;
            let tx = $crate::sql::begin_owned(&self.pool, <$dialect>::BEGIN_WRITE)
                .await
                .map_err($crate::sql::db_err(
                    "starting a unit of work",
                    &self.sql.events,
                ))?;
            Ok($uow {
                source: self.source.clone(),
                routing: self.routing.clone(),
                tx,
                sql: self.sql.clone(),
                appended: self.appended.clone(),
                wrote_events: false,
                _turn: turn,
            })
        }
    };
}
pub(crate) use begin_unit_of_work;
