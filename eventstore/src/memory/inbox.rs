//! The in-memory inbox: parked messages of consumers ([`InboxStore`]).

use super::store::MemoryStore;
use crate::error::StoreError;
use crate::inbox::{InboxStore, ParkedMessage};

impl InboxStore for MemoryStore {
    async fn park_message(&self, mut message: ParkedMessage) -> Result<(), StoreError> {
        let _writer = self.inner.writer.clone().lock_owned().await;
        message.parked_at = eventfold_core::metadata::now_micros();
        let mut state = self.lock();
        state
            .inbox
            .insert((message.consumer.clone(), message.message_id));
        state
            .parked
            .retain(|p| !(p.consumer == message.consumer && p.message_id == message.message_id));
        state.parked.push(message);
        Ok(())
    }

    async fn parked_messages(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<ParkedMessage>, StoreError> {
        Ok(self
            .lock()
            .parked
            .iter()
            .filter(|p| p.consumer == consumer)
            .take(limit)
            .cloned()
            .collect())
    }
}
