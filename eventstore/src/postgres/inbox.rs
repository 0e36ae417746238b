//! The consumer inbox's parked messages.

use super::*;
use crate::error::StoreError;
use crate::inbox::{InboxStore, ParkedMessage};
use crate::sql::{self, db_err};

impl InboxStore for PgStore {
    async fn park_message(&self, message: ParkedMessage) -> Result<(), StoreError> {
        sqlx::query(&self.sql.park_message)
            .bind(&message.consumer)
            .bind(message.message_id)
            .bind(&message.topic)
            .bind(i32::try_from(message.partition).unwrap_or(i32::MAX))
            .bind(i64::try_from(message.offset).unwrap_or(i64::MAX))
            .bind(&message.key)
            .bind(&message.message_type)
            .bind(&message.payload)
            .bind(sql::headers_json(&message.headers))
            .bind(i32::try_from(message.attempts).unwrap_or(i32::MAX))
            .bind(&message.error)
            .execute(&self.pool)
            .await
            .map_err(db_err("parking a consumer message", &self.sql.inbox))?;
        Ok(())
    }

    crate::sql::outbox::parked_message_reads!();
}
