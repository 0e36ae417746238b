//! What a failed run of `saga_crash` prints to say where a message stopped: how far each group
//! consumed each topic, the flow of a saga as both databases recorded it, and where its
//! messages sent and never received are on the topics.

use std::time::{Duration, Instant};

use eventfold::eventstore::postgres::PgStore;
use uuid::Uuid;

/// Per topic and partition: the high watermark and how far the consuming group committed
/// of each `(topic, group)` of `pairs` (`topic/partition: committed/end`), to tell a stuck
/// consumer from a stuck relay.
pub async fn lag_report(brokers: &str, pairs: Vec<(String, String)>, partitions: i32) -> String {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        use eventfold::outbox::kafka::rdkafka::Offset;
        let mut lines = Vec::new();
        for (topic, group) in pairs {
            let offsets =
                crate::common::crash::partition_offsets(&brokers, &group, &topic, partitions);
            let mut parts = Vec::new();
            for (p, (committed, end)) in offsets.into_iter().enumerate() {
                let at = match committed {
                    Some(Offset::Offset(o)) => o.to_string(),
                    Some(other) => format!("{other:?}"),
                    None => "?".to_owned(),
                };
                parts.push(format!("{p}: {at}/{end}"));
            }
            lines.push(format!("{topic} [{}]", parts.join(", ")));
        }
        lines.join("; ")
    })
    .await
    .expect("the lag report")
}

/// What the two databases recorded of one flow (events, messages sent and received, timers),
/// merged by time: where a message stopped shows which hop lost it.
/// Also the ids of the messages sent and received nowhere.
pub async fn flow_report(
    orders: &PgStore,
    services: &PgStore,
    correlation_id: Uuid,
) -> (String, Vec<Uuid>) {
    use eventfold::eventstore::TraceStore;
    use eventfold::trace::TraceKind;
    let mut records = Vec::new();
    for (db, store) in [("orders", orders), ("services", services)] {
        match store.trace(correlation_id).await {
            Ok(found) => records.extend(found.into_iter().map(|r| (db, r))),
            Err(e) => {
                return (
                    format!("the trace of {correlation_id} in {db} failed: {e}"),
                    Vec::new(),
                );
            }
        }
    }
    records.sort_by_key(|(_, r)| r.at);
    let unreceived: Vec<Uuid> = records
        .iter()
        .filter(|(_, r)| r.kind == TraceKind::Sent)
        .filter(|(_, sent)| {
            !records
                .iter()
                .any(|(_, r)| r.kind == TraceKind::Received && r.id == sent.id)
        })
        .map(|(_, r)| r.id)
        .collect();
    let flow = records
        .iter()
        .map(|(db, r)| {
            format!(
                "  {} {db:8} {:10} {} {} ({}) cause {:?}",
                r.at.format("%H:%M:%S%.3f"),
                r.kind.label(),
                r.name,
                r.id,
                r.subject,
                r.causation_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    (flow, unreceived)
}

/// Where the messages `ids` are on the run's topics (read from the start by a fresh consumer),
/// to tell a message the broker never had from one a consumer skipped.
pub async fn where_in_topics(
    brokers: &str,
    topics: impl IntoIterator<Item = String>,
    partitions: i32,
    ids: &[Uuid],
) -> String {
    use eventfold::outbox::kafka::rdkafka::message::Message;
    use eventfold::outbox::kafka_source::message_headers;
    let mut found = Vec::new();
    for topic in topics {
        let consumer = crate::common::consumer_from_start(
            brokers,
            format!("diagnose-{}", Uuid::now_v7().simple()),
            &topic,
            partitions,
        );
        let mut records = 0;
        loop {
            let until = Instant::now() + Duration::from_secs(3);
            let Some(message) = crate::common::recv_before(&consumer, until, &topic).await else {
                break;
            };
            records += 1;
            let headers = message_headers(&message);
            let id = headers
                .get(eventfold::outbox::headers::ID)
                .and_then(|id| id.parse::<Uuid>().ok());
            if let Some(id) = id.filter(|id| ids.contains(id)) {
                found.push(format!(
                    "{id} at {topic}/{} offset {}",
                    message.partition(),
                    message.offset()
                ));
            }
        }
        found.push(format!("({records} records read from {topic})"));
    }
    found.join("; ")
}
