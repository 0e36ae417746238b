//! A choreographed flow across three services, each with its own database, talking only through
//! a broker: orders → (order.placed) → payments → (payment.charged) → inventory →
//! (stock.reserved) → orders, plus a reaction on the orders service's own log that sends a
//! notification. Run on SQLite with the in-process broker and on PostgreSQL with the
//! Kafka-protocol broker (tansu, started by `scripts/test.sh`; an unreachable broker fails the
//! test).
//!
//! Checked: every event and message of the flow carries its correlation id and the right
//! causation (copied by the reactions' context, not by hand), `ce_time` and the caller's
//! `traceparent` travel on the records, a redelivered record takes effect once, and the trace
//! merged from the three databases links the whole flow.
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventfold::eventstore::{
    EventStore, ExpectedVersion, InboxStore, OutboxRelayStore, OutboxRouting, ProjectionStore,
    Repository, TraceStore, UnitOfWork,
};
use eventfold::outbox::{Consumer, MessageSource, Publisher, Relay};
use eventfold::saga::choreography::{FlowContext, LocalReactor, Reaction, ReactionHandler};
use eventfold::trace::{TraceKind, TraceRecord};
use eventfold::{
    BoxError, CommandMetadata, Envelope, Event, OutboxMessage, RecordedEvent, StreamId, aggregate,
};
use eventfold_core::outbox::headers;
use uuid::Uuid;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed { cents: u64 },
    Confirmed,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum PaymentEvent {
    Charged { order: String, cents: u64 },
}

#[derive(Debug, Clone, PartialEq, Event)]
enum StockEvent {
    Reserved { order: String },
}

#[derive(Debug, Default)]
struct Order {
    placed: bool,
    confirmed: bool,
}

enum OrderCommand {
    Place { cents: u64 },
    Confirm,
}

#[derive(Debug, thiserror::Error)]
#[error("the order is not open")]
struct NotOpen;

#[aggregate]
impl Order {
    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, NotOpen> {
        match command {
            OrderCommand::Place { cents } if !self.placed => {
                Ok(vec![OrderEvent::Placed { cents: *cents }])
            }
            OrderCommand::Confirm if self.placed && !self.confirmed => {
                Ok(vec![OrderEvent::Confirmed])
            }
            _ => Err(NotOpen),
        }
    }
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { .. } => self.placed = true,
            OrderEvent::Confirmed => self.confirmed = true,
        }
    }
}

/// The reactions to a placed order.
enum OnPlaced {
    /// Payments: charges the order.
    Charge,
    /// Orders, on its own log: asks for a confirmation e-mail, on the topic.
    Notify(String),
}

impl<U: UnitOfWork> Reaction<U> for OnPlaced {
    type Event = OrderEvent;
    fn name(&self) -> &str {
        match self {
            OnPlaced::Charge => "charge-placed-orders",
            OnPlaced::Notify(_) => "notify-customer",
        }
    }
    fn event_types(&self) -> Vec<String> {
        vec!["order.placed".into()]
    }
    async fn react(
        &self,
        ctx: &mut FlowContext<'_, U>,
        event: &Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        match self {
            OnPlaced::Charge => {
                if let OrderEvent::Placed { cents } = event.payload {
                    let order = event.stream_id.id().to_owned();
                    let payment = StreamId::new("payment", &order)?;
                    let charged = PaymentEvent::Charged { order, cents };
                    ctx.append(&payment, ExpectedVersion::NoStream, &[charged])
                        .await?;
                }
            }
            OnPlaced::Notify(topic) => {
                let message = OutboxMessage::new(
                    topic.as_str(),
                    event.stream_id.id(),
                    "email.requested",
                    b"{}".to_vec(),
                );
                ctx.send(vec![message]).await?;
            }
        }
        Ok(())
    }
}

/// Inventory: reserves the stock of a paid order.
struct Reserve;

impl<U: UnitOfWork> Reaction<U> for Reserve {
    type Event = PaymentEvent;
    fn name(&self) -> &str {
        "reserve-paid-orders"
    }
    async fn react(
        &self,
        ctx: &mut FlowContext<'_, U>,
        event: &Envelope<PaymentEvent>,
    ) -> Result<(), BoxError> {
        let PaymentEvent::Charged { order, .. } = &event.payload;
        let stock = StreamId::new("stock", order)?;
        let reserved = StockEvent::Reserved {
            order: order.clone(),
        };
        ctx.append(&stock, ExpectedVersion::NoStream, &[reserved])
            .await?;
        Ok(())
    }
}

/// Orders: confirms the order once its stock is reserved, through the repository.
struct Confirm<S: EventStore>(Repository<Order, S>);

impl<S: EventStore> Reaction<S::UnitOfWork> for Confirm<S> {
    type Event = StockEvent;
    fn name(&self) -> &str {
        "confirm-reserved-orders"
    }
    async fn react(
        &self,
        ctx: &mut FlowContext<'_, S::UnitOfWork>,
        event: &Envelope<StockEvent>,
    ) -> Result<(), BoxError> {
        let StockEvent::Reserved { order } = &event.payload;
        ctx.execute(&self.0, order, &OrderCommand::Confirm).await?;
        Ok(())
    }
}

/// Every event of a stream (read directly, not through the global log, whose PostgreSQL
/// horizon may hold back what other tests' transactions overlap).
async fn stream_events<S: EventStore>(
    store: &S,
    stream_type: &str,
    id: &str,
) -> Vec<RecordedEvent> {
    let stream = StreamId::new(stream_type, id).expect("stream id");
    store
        .read_stream(&stream, 1, 1000)
        .await
        .expect("read the stream")
}

/// What the scenario needs from a broker: a publisher for the relays, a consumer source per
/// group and topic, and the records a topic holds.
trait Broker {
    type Pub: Publisher + Clone;
    type Src: MessageSource;
    fn publisher(&self) -> Self::Pub;
    fn source(&self, group: &str, topic: &str) -> Self::Src;
    /// The headers of every record of `topic`.
    async fn headers_of(&self, topic: &str) -> Vec<BTreeMap<String, String>>;
}

struct Outcome {
    records: Vec<TraceRecord>,
    flow: Uuid,
}

/// Runs the flow for one order on the three stores and checks it; returns the merged trace
/// records.
async fn choreographed_flow<S, B>(services: [S; 3], broker: B, prefix: &str) -> Outcome
where
    S: EventStore + OutboxRelayStore + InboxStore + ProjectionStore + TraceStore,
    B: Broker,
{
    let topic = |name: &str| format!("{prefix}{name}");
    let routing = || OutboxRouting::new().topic_prefix(prefix);
    let [orders, payments, inventory] = services;
    let orders = orders.with_outbox(routing());
    let payments = payments.with_outbox(routing());
    let inventory = inventory.with_outbox(routing());
    let repo = Repository::<Order, S>::new(orders.clone());

    let flow = Uuid::now_v7();
    let order = format!("o-{}", flow.simple());
    repo.execute(
        &order,
        &OrderCommand::Place { cents: 1250 },
        CommandMetadata::new()
            .correlation_id(flow)
            .header("traceparent", TRACEPARENT),
    )
    .await
    .expect("place the order");

    let mut relays = [
        Relay::new(orders.clone(), broker.publisher()),
        Relay::new(payments.clone(), broker.publisher()),
        Relay::new(inventory.clone(), broker.publisher()),
    ];
    let mut charge = Consumer::new(
        "charge-placed-orders",
        payments.clone(),
        broker.source("payments", &topic("order")),
        ReactionHandler::new(OnPlaced::Charge),
    );
    let mut reserve = Consumer::new(
        "reserve-paid-orders",
        inventory.clone(),
        broker.source("inventory", &topic("payment")),
        ReactionHandler::new(Reserve),
    );
    let mut confirm = Consumer::new(
        "confirm-reserved-orders",
        orders.clone(),
        broker.source("orders", &topic("stock")),
        ReactionHandler::new(Confirm(repo.clone())),
    );
    let mut notify = LocalReactor::new(orders.clone(), OnPlaced::Notify(topic("notifications")));

    let order_stream = StreamId::new("order", &order).expect("stream id");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut duplicates = 0;
    let mut redelivered = false;
    loop {
        for relay in &mut relays {
            relay.run_once().await.expect("relay");
        }
        notify.run_once().await.expect("local reaction");
        for consumer_report in [
            charge.run_once(Duration::from_millis(50)).await,
            reserve.run_once(Duration::from_millis(50)).await,
            confirm.run_once(Duration::from_millis(50)).await,
        ] {
            duplicates += consumer_report.expect("consumer").duplicates;
        }
        let confirmed = orders.stream_version(&order_stream).await.expect("version") == 2;
        let notified = orders.outbox_status().await.expect("status").pending == 0;
        if confirmed && notified && !redelivered {
            // The broker delivers the order again (a relay retry after a lost acknowledgement).
            let placed = &orders.read_stream(&order_stream, 1, 1).await.expect("read")[0];
            let again = OutboxMessage::from_event(placed, &topic("order"), "application/json");
            for r in broker.publisher().publish(&[again]).await {
                r.expect("publish again");
            }
            redelivered = true;
        } else if confirmed && notified && duplicates > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flow completes within 60 s (confirmed {confirmed}, notified {notified}, duplicates {duplicates})"
        );
    }
    assert_eq!(duplicates, 1, "the redelivered record was recognised once");

    // The events of the three services.
    let order_events = stream_events(&orders, "order", &order).await;
    let payment_events = stream_events(&payments, "payment", &order).await;
    let stock_events = stream_events(&inventory, "stock", &order).await;
    let placed = &order_events[0];
    assert_eq!(
        payment_events.len(),
        1,
        "the redelivered order was charged once"
    );
    let charged = &payment_events[0];
    let reserved = &stock_events[0];
    let confirmed = &order_events[1];
    assert_eq!(
        (
            placed.event_type.as_str(),
            charged.event_type.as_str(),
            reserved.event_type.as_str(),
            confirmed.event_type.as_str()
        ),
        (
            "order.placed",
            "payment.charged",
            "stock.reserved",
            "order.confirmed"
        )
    );
    for event in [placed, charged, reserved, confirmed] {
        assert_eq!(
            event.correlation_id, flow,
            "{} carries the flow's correlation id",
            event.event_type
        );
        assert_eq!(
            event.headers.get("traceparent").map(String::as_str),
            Some(TRACEPARENT),
            "{} carries the caller's trace context",
            event.event_type
        );
    }
    assert_eq!(charged.causation_id, Some(placed.event_id));
    assert_eq!(reserved.causation_id, Some(charged.event_id));
    assert_eq!(confirmed.causation_id, Some(reserved.event_id));
    assert_eq!(
        (
            charged.source.as_str(),
            reserved.source.as_str(),
            confirmed.source.as_str()
        ),
        ("payments", "inventory", "orders")
    );

    // The records on the broker carry the flow's headers.
    let start = placed.timestamp - chrono::Duration::seconds(5);
    for (name, cause) in [
        ("order", None),
        ("payment", Some(placed.event_id)),
        ("stock", Some(charged.event_id)),
        ("notifications", Some(placed.event_id)),
    ] {
        let records = broker.headers_of(&topic(name)).await;
        assert!(!records.is_empty(), "records on {}", topic(name));
        for h in records.iter().filter(|h| {
            // The order topic also holds order.confirmed, caused by the reservation.
            h.get(headers::TYPE).map(String::as_str) != Some("order.confirmed")
        }) {
            assert_eq!(
                h.get(headers::CORRELATION_ID),
                Some(&flow.to_string()),
                "{name}: {h:?}"
            );
            assert_eq!(
                h.get(headers::CAUSATION_ID).cloned(),
                cause.map(|c: Uuid| c.to_string()),
                "{name}: {h:?}"
            );
            assert_eq!(
                h.get("traceparent").map(String::as_str),
                Some(TRACEPARENT),
                "{name}: {h:?}"
            );
            if name != "notifications" {
                let time = chrono::DateTime::parse_from_rfc3339(&h[headers::TIME])
                    .unwrap_or_else(|e| panic!("{name}: ce_time is RFC 3339: {e}"));
                assert!(time >= start, "{name}: ce_time {time} after the start");
            }
        }
    }

    // What each database recorded of the flow, merged.
    let mut records = Vec::new();
    for store in [&orders, &payments, &inventory] {
        records.extend(store.trace(flow).await.expect("trace"));
    }
    let count = |kind: TraceKind, name: &str| {
        records
            .iter()
            .filter(|r| r.kind == kind && r.name == name)
            .count()
    };
    assert_eq!(count(TraceKind::Event, "order.placed"), 1);
    assert_eq!(count(TraceKind::Event, "order.confirmed"), 1);
    assert_eq!(count(TraceKind::Sent, "email.requested"), 1);
    assert_eq!(
        count(TraceKind::Received, "order.placed"),
        1,
        "the duplicate is not a second receipt"
    );
    assert_eq!(count(TraceKind::Received, "payment.charged"), 1);
    assert_eq!(count(TraceKind::Received, "stock.reserved"), 1);
    let receipt = records
        .iter()
        .find(|r| r.kind == TraceKind::Received && r.name == "payment.charged")
        .expect("a receipt");
    assert_eq!(
        (
            receipt.id,
            receipt.service.as_str(),
            receipt.from_service.as_deref()
        ),
        (charged.event_id, "inventory", Some("payments")),
        "the inventory inbox kept what it received from payments"
    );
    Outcome { records, flow }
}

/// `text` with what changes from run to run replaced: ids (each distinct UUID, dashed or
/// simple, becomes `<id1>`, `<id2>`, ... in order of appearance), times (`<time>`) and the
/// relative times and durations of the text form (`+T`, `(<span>)`).
fn normalized(text: &str) -> String {
    let mut ids: Vec<String> = Vec::new();
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let hex_run = |from: usize| {
        chars[from..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit() || **c == '-')
            .count()
    };
    while i < chars.len() {
        let boundary = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        let run = if boundary { hex_run(i) } else { 0 };
        let token: String = chars[i..i + run].iter().collect();
        let is_uuid = Uuid::parse_str(&token).is_ok() && (run == 36 || run == 32);
        if is_uuid {
            let id = Uuid::parse_str(&token)
                .map(|u| u.to_string())
                .unwrap_or_default();
            let n = ids.iter().position(|x| *x == id).unwrap_or_else(|| {
                ids.push(id);
                ids.len() - 1
            });
            out.push_str(&format!("<id{}>", n + 1));
            i += run;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out.lines()
        .map(|line| {
            // The text form's time column is right-aligned: keep what follows it verbatim.
            let trimmed = line.trim_start();
            let line = match trimmed.strip_prefix('+') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                    let tail = rest.find(' ').map_or("", |at| &rest[at..]);
                    format!("+T{tail}")
                }
                _ => line.to_owned(),
            };
            line.split(' ')
                .map(|w| {
                    let b = w.as_bytes();
                    if w.len() >= 20 && b[4] == b'-' && w.contains('T') && w.ends_with('Z') {
                        "<time>".to_owned()
                    } else if w.starts_with('(')
                        && w.ends_with(')')
                        && b.len() > 2
                        && b[1].is_ascii_digit()
                    {
                        "(<span>)".to_owned()
                    } else {
                        w.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compares `actual` (normalized) with `tests/golden/{name}`, or rewrites it with
/// `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let actual = normalized(actual);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("golden folder");
        std::fs::write(&path, &actual).expect("write the golden file");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        expected == actual,
        "{} differs; expected:\n{expected}\nactual:\n{actual}\n\
         If intended: UPDATE_GOLDEN=1 cargo nextest run --all-features --test choreography",
        path.display()
    );
}

fn check_tree(outcome: &Outcome) {
    let trace = eventfold::trace::Trace::build(outcome.flow, outcome.records.clone());
    let text = trace.to_text();
    for name in [
        "order.placed",
        "payment.charged",
        "stock.reserved",
        "order.confirmed",
        "email.requested",
    ] {
        assert!(text.contains(name), "the trace shows {name}:\n{text}");
    }
    assert_eq!(trace.roots().len(), 1, "one root, order.placed:\n{text}");
    let mermaid = trace.to_mermaid();
    assert!(mermaid.starts_with("sequenceDiagram"), "{mermaid}");
    for service in ["orders", "payments", "inventory"] {
        assert!(mermaid.contains(service), "{service} in:\n{mermaid}");
    }
}

mod sqlite_in_process {
    use eventfold::outbox::{InProcessBroker, InProcessConsumer};

    use super::*;

    struct Local(InProcessBroker);

    impl Broker for Local {
        type Pub = InProcessBroker;
        type Src = InProcessConsumer;
        fn publisher(&self) -> InProcessBroker {
            self.0.clone()
        }
        fn source(&self, group: &str, topic: &str) -> InProcessConsumer {
            self.0.consumer(group, &[topic])
        }
        async fn headers_of(&self, topic: &str) -> Vec<BTreeMap<String, String>> {
            self.0
                .records(topic)
                .into_iter()
                .map(|r| r.headers)
                .collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_choreographed_flow_is_correlated_and_traced() {
        let (orders, _a) = common::sqlite().await;
        let (payments, _b) = common::sqlite().await;
        let (inventory, _c) = common::sqlite().await;
        let outcome = choreographed_flow(
            [
                orders.with_source("orders"),
                payments.with_source("payments"),
                inventory.with_source("inventory"),
            ],
            Local(InProcessBroker::new()),
            "",
        )
        .await;
        check_tree(&outcome);
        let trace = eventfold::trace::Trace::build(outcome.flow, outcome.records);
        golden("choreography_trace.txt", &trace.to_text());
        golden("choreography_trace.mmd", &trace.to_mermaid());
    }
}

#[cfg(feature = "kafka")]
mod postgres_kafka {
    use eventfold::outbox::KafkaSource;
    use eventfold::outbox::kafka::KafkaPublisher;

    use super::*;

    struct Kafka {
        brokers: String,
        publisher: KafkaPublisher,
        run: String,
    }

    impl Broker for Kafka {
        type Pub = KafkaPublisher;
        type Src = KafkaSource;
        fn publisher(&self) -> KafkaPublisher {
            self.publisher.clone()
        }
        fn source(&self, group: &str, topic: &str) -> KafkaSource {
            let mut config = eventfold::outbox::kafka::rdkafka::ClientConfig::new();
            config
                .set("bootstrap.servers", &self.brokers)
                .set("group.id", format!("{group}-{}", self.run))
                // tansu holds an empty fetch for the whole wait.
                .set("fetch.wait.max.ms", "10");
            KafkaSource::from_config(config, &[topic]).expect("a Kafka source")
        }
        async fn headers_of(&self, topic: &str) -> Vec<BTreeMap<String, String>> {
            let consumer = common::consumer_from_start(
                &self.brokers,
                format!("headers-{}", Uuid::now_v7().simple()),
                topic,
                1,
            );
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(3);
            while let Some(message) = common::recv_before(&consumer, until, topic).await {
                seen.push(eventfold::outbox::kafka_source::message_headers(&message));
            }
            seen
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_choreographed_flow_is_correlated_and_traced_through_kafka() {
        let brokers = common::kafka_bootstrap();
        let run = Uuid::now_v7().simple().to_string();
        let prefix = format!("eventfold.test.choreo.{run}.");
        let publisher = KafkaPublisher::new(&brokers).expect("a Kafka publisher");
        let topics: Vec<String> = ["order", "payment", "stock", "notifications"]
            .iter()
            .map(|t| format!("{prefix}{t}"))
            .collect();
        let specs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
        publisher
            .create_topics(&specs)
            .await
            .unwrap_or_else(|e| panic!("creating {topics:?}: {e}"));
        let (orders, _a) = common::postgres().await;
        let (payments, _b) = common::postgres().await;
        let (inventory, _c) = common::postgres().await;
        let outcome = choreographed_flow(
            [
                orders.with_source("orders"),
                payments.with_source("payments"),
                inventory.with_source("inventory"),
            ],
            Kafka {
                brokers,
                publisher,
                run,
            },
            &prefix,
        )
        .await;
        check_tree(&outcome);
    }
}
