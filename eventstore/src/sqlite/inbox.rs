//! The consumer inbox's parked messages.

use super::*;
use crate::error::StoreError;
use crate::inbox::{InboxStore, ParkedMessage};
use crate::sql::{self, db_err};
use crate::trace::InboxEntry;

impl InboxStore for SqliteStore {
    async fn park_message(&self, message: ParkedMessage) -> Result<(), StoreError> {
        let err = || db_err("parking a consumer message", &self.sql.inbox);
        let now = eventfold_core::metadata::now_micros();
        let (_turn, mut tx) = self
            .begin_immediate("parking a consumer message", &self.sql.inbox)
            .await?;
        // The mark only deduplicates: the parked message is traced from its own row.
        let entry = InboxEntry::id(message.message_id);
        let mark = &self.sql.mark_inbox;
        sql::unit_of_work::bind_mark(sqlx::query(mark), &message.consumer, &entry, &self.source)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        sqlx::query(&self.sql.park_message)
            .bind(&message.consumer)
            .bind(message.message_id)
            .bind(&message.topic)
            .bind(i64::from(message.partition))
            .bind(i64::try_from(message.offset).unwrap_or(i64::MAX))
            .bind(&message.key)
            .bind(&message.message_type)
            .bind(&message.payload)
            .bind(sql::headers_json(&message.headers))
            .bind(i64::from(message.attempts))
            .bind(&message.error)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        tx.commit().await.map_err(err())
    }

    crate::sql::outbox::parked_message_reads!();
}
