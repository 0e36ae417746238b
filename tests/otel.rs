//! One distributed trace across services (feature `otel`): an OpenTelemetry tracer provider
//! (SDK, spans exported in memory) is installed as a `tracing-opentelemetry` layer, a span on
//! the orders side places orders through a store with outbox routing, the relay publishes them,
//! and the payments side consumes them through a `Consumer` running a `ReactionHandler`; a
//! reaction on the orders service's own log reacts too.
//!
//! Checked: the record on the broker carries the placing span's trace (its `traceparent` names a
//! span under the request span), a caller's explicit `traceparent` wins; the consumer's span and
//! the reaction's span continue the record's trace (the request span is their ancestor); what a
//! reaction writes (an event, an outbox message) records the reaction's own span. Run on SQLite
//! with the in-process broker and on PostgreSQL with the Kafka-protocol broker (tansu, started
//! by `scripts/test.sh`; an unreachable broker fails the test).
#![cfg(feature = "otel")]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use eventfold::eventstore::{
    Checkpoint, EventStore, ExpectedVersion, InboxStore, LogFilter, OutboxRelayStore,
    OutboxRouting, OutboxStore, ProjectionStore, Repository, UnitOfWork,
};
use eventfold::outbox::{Consumer, MessageSource, Publisher, Relay};
use eventfold::saga::choreography::{FlowContext, LocalReactor, Reaction, ReactionHandler};
use eventfold::trace_context::{TRACEPARENT, parse_traceparent};
use eventfold::{
    BoxError, CommandMetadata, Envelope, Event, Headers, OutboxMessage, StreamId, aggregate,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

/// A caller's own trace context, set explicitly on the second order.
const EXPLICIT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Clone, PartialEq, Event)]
enum OrderEvent {
    Placed { cents: u64 },
}

#[derive(Debug, Clone, PartialEq, Event)]
enum PaymentEvent {
    Charged { order: String },
}

#[derive(Debug, Default)]
struct Order {
    placed: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the order is already placed")]
struct AlreadyPlaced;

#[aggregate]
impl Order {
    fn handle(&self, cents: &u64) -> Result<Vec<OrderEvent>, AlreadyPlaced> {
        if self.placed {
            return Err(AlreadyPlaced);
        }
        Ok(vec![OrderEvent::Placed { cents: *cents }])
    }
    fn apply(&mut self, _: &OrderEvent) {
        self.placed = true;
    }
}

/// The ended spans, as the SDK exports them.
#[derive(Debug, Clone, Default)]
struct Exported(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Exported {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("exported spans").extend(batch);
        Ok(())
    }
}

impl Exported {
    fn by_id(&self) -> HashMap<SpanId, SpanData> {
        let spans = self.0.lock().expect("exported spans");
        spans
            .iter()
            .map(|s| (s.span_context.span_id(), s.clone()))
            .collect()
    }

    /// `span` and its ancestors among the exported spans, nearest first, up to a root. A span is
    /// exported when its last handle is dropped, which may be on another thread (a SQLite
    /// connection's worker enters the caller's span) a moment after the call that used it
    /// returned: the walk waits (up to [`EXPORT_WAIT`]) for a missing ancestor to be exported.
    async fn lineage(&self, span: SpanId) -> Vec<SpanId> {
        let deadline = Instant::now() + EXPORT_WAIT;
        loop {
            let spans = self.by_id();
            let mut line = vec![span];
            let mut reached_root = false;
            while let Some(parent) = spans.get(line.last().expect("not empty")) {
                if parent.parent_span_id == SpanId::INVALID || line.len() > 64 {
                    reached_root = true;
                    break;
                }
                line.push(parent.parent_span_id);
            }
            if reached_root || Instant::now() >= deadline {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// (name, span id, parent span id) of every exported span, for failure messages.
    fn names(&self) -> Vec<(String, SpanId, SpanId)> {
        let spans = self.0.lock().expect("exported spans");
        spans
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.span_context.span_id(),
                    s.parent_span_id,
                )
            })
            .collect()
    }

    /// The exported span `id`, waiting (up to [`EXPORT_WAIT`]) for it to be exported.
    async fn get(&self, id: SpanId) -> SpanData {
        let deadline = Instant::now() + EXPORT_WAIT;
        loop {
            if let Some(span) = self.by_id().remove(&id) {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "span {id} was exported: {:?}",
                self.names()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long a span may take to be exported after the call that used it returned.
const EXPORT_WAIT: Duration = Duration::from_secs(10);

/// Installs the OpenTelemetry layer over an SDK tracer provider as the global subscriber (once
/// per process) and returns its exporter. Global, not per thread: SQLite's connection threads
/// enter the caller's span, and a span entered where another dispatcher is the default is never
/// closed, so never exported. Spans of other tests in the process are told apart by their ids.
fn install() -> Exported {
    static INSTALLED: OnceLock<(Exported, SdkTracerProvider)> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let exported = Exported::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exported.clone())
                .build();
            let layer =
                tracing_opentelemetry::layer().with_tracer(provider.tracer("eventfold-otel-test"));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("no other global subscriber in this test binary");
            (exported, provider)
        })
        .0
        .clone()
}

/// What a reaction saw, per order: the span context it ran in and the incoming headers.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, (SpanContext, Headers)>>>);

impl Seen {
    fn note<P>(&self, event: &Envelope<P>) {
        let cx = tracing::Span::current().context();
        self.0.lock().expect("seen").insert(
            event.stream_id.id().to_owned(),
            (cx.span().span_context().clone(), event.headers.clone()),
        );
    }

    fn of(&self, order: &str) -> (SpanContext, Headers) {
        self.0
            .lock()
            .expect("seen")
            .get(order)
            .cloned()
            .unwrap_or_else(|| panic!("the reaction saw {order}"))
    }
}

/// A reaction to a placed order: notes the span it runs in and the event's headers, then acts.
struct Noted(Seen, Act);

/// What a [`Noted`] reaction does.
enum Act {
    /// Payments, on the broker: charges the order (an event of its own).
    Charge,
    /// Orders, on its own log: sends a notification message to the topic.
    Notify(String),
}

impl<U: UnitOfWork> Reaction<U> for Noted {
    type Event = OrderEvent;
    fn name(&self) -> &str {
        match self.1 {
            Act::Charge => "charge",
            Act::Notify(_) => "notify",
        }
    }
    async fn react(
        &self,
        ctx: &mut FlowContext<'_, U>,
        event: &Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        self.0.note(event);
        let order = event.stream_id.id().to_owned();
        match &self.1 {
            Act::Charge => {
                let stream = StreamId::new("payment", &order)?;
                let charged = PaymentEvent::Charged { order };
                ctx.append(&stream, ExpectedVersion::NoStream, &[charged])
                    .await?;
            }
            Act::Notify(topic) => {
                let payload = b"{}".to_vec();
                let message = OutboxMessage::new(topic.clone(), order, "email.requested", payload);
                ctx.send(vec![message]).await?;
            }
        }
        Ok(())
    }
}

fn traceparent_of(headers: &Headers, what: &str) -> SpanContext {
    let value = headers
        .get(TRACEPARENT)
        .unwrap_or_else(|| panic!("{what} has a traceparent: {headers:?}"));
    parse_traceparent(value, None)
        .unwrap_or_else(|| panic!("{what}: a valid traceparent, not {value:?}"))
}

/// Places two orders in a request span (the second with an explicit `traceparent`), reacts to
/// them on the orders log, relays them through `publisher`, consumes them from `source` on the
/// payments side, and checks the trace.
async fn one_trace_across_services<S, P, Src>(
    orders: S,
    payments: S,
    publisher: P,
    source: Src,
    prefix: &str,
    exported: &Exported,
) where
    S: EventStore + OutboxStore + OutboxRelayStore + InboxStore + ProjectionStore,
    P: Publisher,
    Src: MessageSource,
{
    let orders = orders.with_outbox(OutboxRouting::new().topic_prefix(prefix));
    let repo = Repository::<Order, S>::new(orders.clone());
    let run = Uuid::now_v7().simple();
    let (traced, explicit) = (format!("o-{run}-1"), format!("o-{run}-2"));

    let request = tracing::info_span!("place-orders");
    async {
        repo.execute(&traced, &1250, CommandMetadata::new())
            .await
            .expect("place the traced order");
        repo.execute(
            &explicit,
            &990,
            CommandMetadata::new().header(TRACEPARENT, EXPLICIT),
        )
        .await
        .expect("place the order with an explicit traceparent");
    }
    .instrument(request.clone())
    .await;
    let request_cx = request.context().span().span_context().clone();
    assert!(
        request_cx.is_valid(),
        "the OpenTelemetry layer is installed"
    );
    drop(request); // ends it: exported
    let trace = request_cx.trace_id();
    let explicit_cx = parse_traceparent(EXPLICIT, None).expect("valid");
    let request_span = request_cx.span_id();
    let under_request = async |span: SpanId| exported.lineage(span).await.contains(&request_span);

    // The orders service reacts on its own log, outside any span: the reaction's span continues
    // the event's trace, and the message it sends records that span.
    let notified = Seen::default();
    let mut notify = LocalReactor::new(
        orders.clone(),
        Noted(
            notified.clone(),
            Act::Notify(format!("{prefix}notifications")),
        ),
    );
    // The log holds events back behind any transaction open in the cluster (never skip, ADR
    // 0007), and other tests run beside this one: read until both were handled.
    let mut handled = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled < 2 {
        assert!(
            Instant::now() < deadline,
            "the local reaction handled {handled} of 2 events within 60 s"
        );
        handled += notify.run_once().await.expect("local reaction").handled;
        if handled < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(handled, 2);
    let outbox = orders.read_outbox(100).await.expect("read the outbox");
    for (order, expected_trace) in [(&traced, trace), (&explicit, explicit_cx.trace_id())] {
        let (reaction, _) = notified.of(order);
        assert_eq!(
            reaction.trace_id(),
            expected_trace,
            "the local reaction to {order} continues the event's trace"
        );
        let sent = outbox
            .iter()
            .find(|r| r.message.message_type == "email.requested" && r.message.key == *order)
            .unwrap_or_else(|| panic!("a notification for {order} in the outbox"));
        let sent_cx = traceparent_of(&sent.message.headers, "the notification");
        assert_eq!(
            (sent_cx.trace_id(), sent_cx.span_id()),
            (reaction.trace_id(), reaction.span_id()),
            "the notification for {order} records the reaction's span"
        );
    }
    let (notify_traced, _) = notified.of(&traced);
    assert!(
        under_request(notify_traced.span_id()).await,
        "the local reaction's span descends from the request span: {:?}",
        exported.lineage(notify_traced.span_id()).await
    );

    let mut relay = Relay::new(orders.clone(), publisher);
    let deadline = Instant::now() + Duration::from_secs(60);
    while orders.outbox_status().await.expect("status").pending > 0 {
        assert!(Instant::now() < deadline, "the relay drains the outbox");
        relay.run_once().await.expect("relay");
    }

    // The payments service consumes the records.
    let charged = Seen::default();
    let mut consumer = Consumer::new(
        "charge",
        payments.clone(),
        source,
        ReactionHandler::new(Noted(charged.clone(), Act::Charge)),
    );
    let mut handled = 0;
    while handled < 2 {
        assert!(
            Instant::now() < deadline,
            "the payments side consumes both records ({handled})"
        );
        handled += consumer
            .run_once(Duration::from_millis(100))
            .await
            .expect("consume")
            .handled;
    }
    // Both effects are committed; the log shows them once no older transaction is open in the
    // cluster (other tests run beside this one).
    let payment_events = loop {
        let events = payments
            .read_log(Checkpoint::START, 100, &LogFilter::all())
            .await
            .expect("read the payments log")
            .events;
        let charged = events
            .iter()
            .filter(|e| [traced.as_str(), explicit.as_str()].contains(&e.event.stream_id.id()))
            .count();
        if charged >= 2 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the payments log shows {charged} of 2 charges"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The record on the broker carries the request's trace; an explicit traceparent wins.
    let (reaction, record) = charged.of(&traced);
    let record_cx = traceparent_of(&record, "the traced order's record");
    assert_eq!(
        record_cx.trace_id(),
        trace,
        "the record carries the request's trace"
    );
    assert!(
        under_request(record_cx.span_id()).await,
        "the record's parent span is under the request span"
    );
    let (explicit_reaction, explicit_record) = charged.of(&explicit);
    assert_eq!(
        explicit_record.get(TRACEPARENT).map(String::as_str),
        Some(EXPLICIT)
    );

    // The consumer's span and the reaction's span continue the record's trace.
    assert_eq!(reaction.trace_id(), trace, "the reaction is in the trace");
    let reaction_span = exported.get(reaction.span_id()).await;
    assert_eq!(reaction_span.name, "reaction");
    let consume_span = exported.get(reaction_span.parent_span_id).await;
    assert_eq!(
        (
            consume_span.name.as_ref(),
            consume_span.span_context.trace_id()
        ),
        ("consume", trace),
        "the reaction runs in the consumer's span, which continues the trace"
    );
    assert_eq!(
        consume_span.parent_span_id,
        record_cx.span_id(),
        "the consumer's span is a child of the record's parent span"
    );
    assert!(
        under_request(reaction.span_id()).await,
        "the request span is an ancestor of the reaction: {:?}",
        exported.lineage(reaction.span_id()).await
    );
    assert_eq!(
        explicit_reaction.trace_id(),
        explicit_cx.trace_id(),
        "the explicit trace is continued too"
    );

    // What the reaction wrote records the reaction's span.
    for (order, cx) in [(&traced, &reaction), (&explicit, &explicit_reaction)] {
        let event = payment_events
            .iter()
            .find(|e| e.event.stream_id.id() == order)
            .unwrap_or_else(|| panic!("payment.charged for {order}"));
        let written = traceparent_of(&event.event.headers, "payment.charged");
        assert_eq!(
            (written.trace_id(), written.span_id()),
            (cx.trace_id(), cx.span_id()),
            "payment.charged for {order} records the reaction's span"
        );
    }
}

mod sqlite_in_process {
    use eventfold::outbox::InProcessBroker;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn one_trace_spans_the_services() {
        let exported = install();
        let (orders, _a) = common::sqlite().await;
        let (payments, _b) = common::sqlite().await;
        let broker = InProcessBroker::new();
        let source = broker.consumer("payments", &["order"]);
        one_trace_across_services(
            orders.with_source("orders"),
            payments.with_source("payments"),
            broker,
            source,
            "",
            &exported,
        )
        .await;
    }
}

#[cfg(feature = "kafka")]
mod postgres_kafka {
    use eventfold::outbox::KafkaSource;
    use eventfold::outbox::kafka::KafkaPublisher;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn one_trace_spans_the_services_through_kafka() {
        let exported = install();
        let brokers = common::kafka_bootstrap();
        let run = Uuid::now_v7().simple().to_string();
        let prefix = format!("eventfold.test.otel.{run}.");
        let (order_topic, notifications) =
            (format!("{prefix}order"), format!("{prefix}notifications"));
        let publisher = KafkaPublisher::new(&brokers).expect("a Kafka publisher");
        publisher
            .create_topics(&[(&order_topic, 1), (&notifications, 1)])
            .await
            .unwrap_or_else(|e| panic!("creating the topics of {prefix}: {e}"));
        let mut config = eventfold::outbox::kafka::rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("payments-{run}"))
            // tansu holds an empty fetch for the whole wait.
            .set("fetch.wait.max.ms", "10");
        let source = KafkaSource::from_config(config, &[&order_topic]).expect("a Kafka source");
        let (orders, _a) = common::postgres().await;
        let (payments, _b) = common::postgres().await;
        one_trace_across_services(
            orders.with_source("orders"),
            payments.with_source("payments"),
            publisher,
            source,
            &prefix,
            &exported,
        )
        .await;
    }
}
