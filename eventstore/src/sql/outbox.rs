//! The outbox and the consumer inbox: what the two SQL backends run the same way, stamped into
//! each backend's trait impls by the macros below (see [`super::read`] for why macros). The
//! statements themselves are each backend's (`statements.rs`); where they differ in shape (the
//! lease and claim statements, PostgreSQL's one-statement park and retry, SQLite's bound clock)
//! the code stays in the backend's `outbox.rs` and `inbox.rs`.

use crate::error::StoreError;
use crate::outbox::OutboxRow;

/// Turns fetched outbox rows into [`OutboxRow`]s.
pub(crate) fn outbox_rows(
    rows: Vec<super::OutboxDbRow>,
    table: &str,
) -> Result<Vec<OutboxRow>, StoreError> {
    rows.into_iter()
        .map(|row| super::outbox_row(row, table))
        .collect()
}

/// The slots a relay holds once its leases are settled, in order (a value that is no slot number
/// is left out).
pub(crate) fn held_slots<S: TryInto<u32>>(mine: Vec<S>) -> Vec<u32> {
    let mut slots: Vec<u32> = mine.into_iter().filter_map(|s| s.try_into().ok()).collect();
    slots.sort_unstable();
    slots
}

/// A limit as a SQL `BIGINT`.
pub(crate) fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Stamps [`OutboxStore`](crate::outbox::OutboxStore)'s `with_outbox` and `read_outbox` (inside
/// its impl): the store's inherent `with_outbox`, its fields `pool` and `sql` (with `outbox`
/// and `read_outbox`). `outbox_status` is each backend's (PostgreSQL adds the floor's lag).
macro_rules! outbox_reads {
    () => {
        fn with_outbox(self, routing: $crate::outbox::OutboxRouting) -> Self {
            Self::with_outbox(self, routing)
        }

        async fn read_outbox(
            &self,
            limit: usize,
        ) -> Result<Vec<$crate::outbox::OutboxRow>, $crate::error::StoreError> {
            let rows: Vec<$crate::sql::OutboxDbRow> = sqlx::query_as(&self.sql.read_outbox)
                .bind($crate::sql::outbox::limit(limit))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::sql::db_err("reading the outbox", &self.sql.outbox))?;
            $crate::sql::outbox::outbox_rows(rows, &self.sql.outbox)
        }
    };
}
pub(crate) use outbox_reads;

/// Stamps [`OutboxRelayStore`](crate::outbox::OutboxRelayStore)'s `dead_letters` and
/// `skip_dead_letter` (inside its impl): its fields `pool` and `relay` (with `dead`, `skip` and
/// `dead_table`).
macro_rules! dead_letter_reads {
    () => {
        async fn dead_letters(
            &self,
            limit: usize,
        ) -> Result<Vec<$crate::outbox::DeadLetter>, $crate::error::StoreError> {
            let table = &self.relay.dead_table;
            let rows: Vec<$crate::sql::DeadDbRow> = sqlx::query_as(&self.relay.dead)
                .bind($crate::sql::outbox::limit(limit))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::sql::db_err("reading dead letters", table))?;
            rows.into_iter()
                .map(|row| $crate::sql::dead_letter(row, table))
                .collect()
        }

        async fn skip_dead_letter(&self, seq: u64) -> Result<bool, $crate::error::StoreError> {
            let _turn = self
                .gate
                .enter("skipping a dead letter", &self.relay.dead_table)
                .await?;
            let done = sqlx::query(&self.relay.skip)
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .execute(&self.pool)
                .await
                .map_err($crate::sql::db_err(
                    "skipping a dead letter",
                    &self.relay.dead_table,
                ))?;
            Ok(done.rows_affected() == 1)
        }
    };
}
pub(crate) use dead_letter_reads;

/// Stamps [`InboxStore`](crate::inbox::InboxStore)'s `parked_messages` (inside its impl): its
/// fields `pool` and `sql` (with `inbox` and `parked_messages`).
macro_rules! parked_message_reads {
    () => {
        async fn parked_messages(
            &self,
            consumer: &str,
            limit: usize,
        ) -> Result<Vec<$crate::inbox::ParkedMessage>, $crate::error::StoreError> {
            let rows: Vec<$crate::sql::ParkedRow> = sqlx::query_as(&self.sql.parked_messages)
                .bind(consumer)
                .bind($crate::sql::outbox::limit(limit))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::sql::db_err(
                    "reading parked messages",
                    &self.sql.inbox,
                ))?;
            rows.into_iter()
                .map(|row| $crate::sql::parked(consumer, row, &self.sql.inbox))
                .collect()
        }
    };
}
pub(crate) use parked_message_reads;
