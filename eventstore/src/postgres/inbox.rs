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

    async fn parked_messages(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<ParkedMessage>, StoreError> {
        let rows: Vec<sql::ParkedRow> = sqlx::query_as(&self.sql.parked_messages)
            .bind(consumer)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("reading parked messages", &self.sql.inbox))?;
        rows.into_iter()
            .map(|r| sql::parked(consumer, r, &self.sql.inbox))
            .collect()
    }
}
