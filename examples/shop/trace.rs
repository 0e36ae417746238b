//! The trace of one order's flow across the three services, from their databases alone:
//! each service's store gives what it recorded about the flow's correlation id (events, messages
//! sent and received, saga timers; `TraceStore::trace`), and `eventfold::trace::Trace` links the
//! records of all three into one causal tree, drawn as text, Mermaid, DOT or JSON.

use eventfold::BoxError;
use eventfold::eventstore::TraceStore;
use eventfold::trace::Trace;
use uuid::Uuid;

use crate::services::{Services, ShopStore};

/// The flow of `correlation_id`, merged from every service's database.
pub async fn of<S: ShopStore>(
    services: &Services<S>,
    correlation_id: Uuid,
) -> Result<Trace, BoxError> {
    let mut records = Vec::new();
    for (service, store) in services.each() {
        let found = TraceStore::trace(store, correlation_id)
            .await
            .map_err(|e| format!("the trace of {correlation_id} in the {service} service: {e}"))?;
        records.extend(found);
    }
    Ok(Trace::build(correlation_id, records))
}
